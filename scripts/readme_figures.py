"""Rewrite the test-suite figures in README.md from a measurement, so they cannot go stale by hand.

    python scripts/readme_figures.py                      # the test count only (pytest --collect-only)
    make test PYTEST_ARGS=--junitxml=/tmp/suite.xml       # then, with the run's own figures:
    python scripts/readme_figures.py --junit /tmp/suite.xml --where "a fresh clone, 2 cores"

The figures live between ``<!-- figures:tests -->`` and ``<!-- /figures:tests -->``;
tests/test_standalone.py checks that the count there is the suite's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- figures:tests -->", "<!-- /figures:tests -->"
COUNT = re.compile(r"`make test` runs (\d+) tests")


def collected_count(root: Path = ROOT) -> int:
    """The number of tests pytest collects in ``root`` (all of them, slow ones included)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                       cwd=root, capture_output=True, text=True, check=False)
    m = re.search(r"^(\d+) tests? collected", r.stdout, re.M)
    if m is None:
        raise SystemExit(f"pytest --collect-only gave no count:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return int(m.group(1))


def readme_count(text: str) -> int | None:
    """The test count stated in the figures block of ``text``, or None."""
    block = text.partition(BEGIN)[2].partition(END)[0]
    m = COUNT.search(block)
    return int(m.group(1)) if m else None


def junit_figures(path: Path) -> dict:
    """passed/failed/skipped counts and wall seconds from a pytest ``--junitxml`` file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"] + n["errors"],
            "skipped": n["skipped"], "seconds": sum(float(s.get("time", 0)) for s in suites),
            "date": (suites[0].get("timestamp") or dt.date.today().isoformat())[:10]}


def block(count: int, run: dict | None, where: str) -> str:
    lines = [BEGIN, f"`make test` runs {count} tests."]
    if run is not None:
        lines.append(f"Measured on {run['date']} ({where}): {run['passed']} passed, {run['failed']} failed, "
                     f"{run['skipped']} skipped in {run['seconds'] / 60:.1f} minutes.")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--junit", type=Path, help="a pytest --junitxml file of a whole-suite run")
    ap.add_argument("--where", default=f"a fresh clone, {os.cpu_count()} cores", help="what the measured run ran on")
    a = ap.parse_args(argv)
    text = a.readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"{a.readme}: no {BEGIN} ... {END} block", file=sys.stderr)
        return 2
    head, _, rest = text.partition(BEGIN)
    old, _, tail = rest.partition(END)
    if a.junit is None:  # keep the measured line, refresh the count
        kept = [ln for ln in old.strip().splitlines() if ln.startswith("Measured on")]
        new = "\n".join([BEGIN, f"`make test` runs {collected_count()} tests.", *kept, END])
    else:
        new = block(collected_count(), junit_figures(a.junit), a.where)
    a.readme.write_text(head + new + tail)
    print(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
