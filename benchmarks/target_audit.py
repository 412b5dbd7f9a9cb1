"""``python -m benchmarks.target_audit OUT [--min-coverage 0.0005]``: junk pairs in a build.

Junk pairs in a build, measured apart from its gate code: per task, the ok pairs whose target
(or rendered input) is near-empty, and the smallest coverage and valid fraction seen. Exits 1
when any ok pair is near-empty.

Decodes every ``ok`` pair of a build output and measures, apart from the build's own gate
code, the fraction of non-black pixels of its target (and of its input where the input is
a rendering, stored as PNG), and the valid fraction of its ``target_raw`` (depth > 0,
normals of unit length, finite flow). Prints per task the number of ok pairs, how many are
near-empty (coverage under ``--min-coverage``) and the smallest coverage and valid fraction
seen; exits 1 when any ok pair is near-empty.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from lavin_data.cli import HelpFormatter
from lavin_data.shards import iter_tar_samples


def _images(m: dict[str, bytes], role: str) -> list[np.ndarray]:
    names = sorted(k for k in m if re.fullmatch(rf"{role}(_\d+)?\.(png|jpg)", k))
    return [np.asarray(Image.open(io.BytesIO(m[n])).convert("RGB")) for n in names]


def _coverage(frames: list[np.ndarray]) -> float:
    return float(np.mean([(f.max(-1) > 0).mean() for f in frames]))


def _valid_fraction(raw: np.ndarray) -> float:
    if raw.ndim >= 3 and raw.shape[-1] == 3:  # normals
        return float((np.linalg.norm(raw.astype(np.float32), axis=-1) > 0.5).mean())
    if raw.ndim >= 3 and raw.shape[-1] == 2:  # flow
        return float(np.isfinite(raw).all(-1).mean())
    return float((np.isfinite(raw) & (raw > 0)).mean())  # depth or disparity


def audit(out: str | Path, min_coverage: float = 0.0005) -> dict[str, dict]:
    """{task: {"ok", "near_empty": [keys], "min_coverage", "min_valid_fraction"}} over every
    ok pair of the build in ``out``."""
    report: dict[str, dict] = {}
    for tar in sorted(Path(out, "pairs").glob("*/*.tar")):
        task = tar.parent.name
        r = report.setdefault(task, {"ok": 0, "near_empty": [], "min_coverage": 1.0, "min_valid_fraction": None})
        ok = {row["key"] for row in pq.read_table(tar.with_suffix(".parquet")).to_pylist() if row["status"] == "ok"}
        for key, m in iter_tar_samples(tar):
            if key not in ok:
                continue
            meta = json.loads(m["json"])
            sides = [_images(m, "target")] + ([_images(m, "input")] if meta.get("input_format") == "png" else [])
            cov = min(_coverage(s) for s in sides)
            r["ok"] += 1
            r["min_coverage"] = min(r["min_coverage"], cov)
            if cov < min_coverage:
                r["near_empty"].append(key)
            if "target_raw.npy" in m:
                vf = _valid_fraction(np.load(io.BytesIO(m["target_raw.npy"]), allow_pickle=False))
                r["min_valid_fraction"] = vf if r["min_valid_fraction"] is None else min(r["min_valid_fraction"], vf)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.target_audit", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("output", help="a build's output folder")
    ap.add_argument("--min-coverage", type=float, default=0.0005,
                    help="a rendering with a smaller fraction of non-black pixels counts as near-empty")
    args = ap.parse_args(argv)
    if not Path(args.output, "pairs").is_dir():
        print(f"error: {args.output} has no pairs/ folder; is it a build output?", file=sys.stderr)
        return 2
    rep = audit(args.output, args.min_coverage)
    print(f"| task | ok pairs | near-empty (< {args.min_coverage:.2%} non-black) | min coverage | min valid fraction |")
    print("|---|---:|---:|---:|---:|")
    for task, r in sorted(rep.items()):
        vf = "" if r["min_valid_fraction"] is None else f"{r['min_valid_fraction']:.3f}"
        print(f"| {task} | {r['ok']} | {len(r['near_empty'])} | {r['min_coverage']:.4f} | {vf} |")
    bad = sum(len(r["near_empty"]) for r in rep.values())
    print(f"{sum(r['ok'] for r in rep.values())} ok pairs, {bad} near-empty")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
