"""Every command's ``--help`` (run in-process) and the benchmarks' contention notes.

``--help``: the usage line names the real invocation (``python -m <module>``), a description
follows it, every option has help text, and every option with a default shows it (argparse's
ArgumentDefaultsHelpFormatter appends "(default: X)" only to options that have help).

Contention (:mod:`benchmarks.contention`): the decision is fed constructed figures; the load
averages it reads back are made by simulating the kernel's own update (fixed point, every 5 s)
rather than by the closed form the module uses."""

from __future__ import annotations

import argparse
import importlib
import math
import re

import pytest

from benchmarks import bench_build
from benchmarks.contention import (
    ADVICE,
    LOAD_SLACK,
    Figures,
    Meter,
    contention_note,
    others_load,
    weighted_own,
)
from tests.conftest import ROOT

# Commands and the function that parses their argv (``--help`` exits there).
COMMANDS = {
    "pipelines.build": "main",
    "pipelines.report": "main",
    "lavin_data.encode_latents": "main",
    "lavin_data.verify": "main",
    "lavin_data.export_templates": "main",
    "lavin_model.train": "parse_args",
    "lavin_model.infer": "main",
    "lavin_model.evaluate": "main",
}
# Every benchmarks module with a command line, found rather than listed (a new one is covered).
BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if "def main(" in p.read_text())
ALL = {**COMMANDS, **{f"benchmarks.{name}": "main" for name in BENCHMARKS}}


def help_of(module: str, capsys, monkeypatch) -> tuple[str, argparse.ArgumentParser]:
    """(the --help text, the parser that printed it) of ``module``, run in this process."""
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal width
    mod = pytest.importorskip(module) if module == "lavin_data.export_templates" else importlib.import_module(module)
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def recording(self, *a, **k):
        seen.append(self)
        return original(self, *a, **k)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        getattr(mod, ALL[module])(["--help"])
    assert exc.value.code == 0, f"{module}: --help exited {exc.value.code}"
    assert seen, f"{module}: no argparse parser ran"
    return capsys.readouterr().out, seen[-1]


def entries(text: str) -> dict[str, str]:
    """{first option string: its help entry, whitespace collapsed} of a --help text."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^  (-{1,2}[\w-]+)", line)
        if m:
            current = m.group(1)
            out[current] = line
        elif current and line.startswith("   "):
            out[current] += " " + line
        elif not line.startswith(" "):
            current = None
    # textwrap may break after a hyphen ("1-\n8"): join those before collapsing spaces.
    return {k: " ".join(re.sub(r"-\s+", "-", v).split()) for k, v in out.items()}


def test_benchmarks_are_found():
    assert {"bench_build", "bench_train", "bench_video", "context_probe"} <= set(BENCHMARKS)
    assert "contention" not in BENCHMARKS


@pytest.mark.parametrize("module", sorted(ALL))
def test_help_names_the_command_describes_it_and_shows_defaults(module, capsys, monkeypatch):
    text, parser = help_of(module, capsys, monkeypatch)
    assert re.match(rf"usage: python -m {re.escape(module)}(\s|$)", text), text.splitlines()[0]
    paragraphs = text.split("\n\n")
    description = paragraphs[1] if len(paragraphs) > 1 else ""
    assert not description.startswith(("options:", "positional arguments:")), f"{module}: no description"
    assert len(description.split()) >= 5, f"{module}: description {description!r}"
    valued = [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS and a.nargs != 0
              and a.default not in (None, argparse.SUPPRESS) and not a.required]
    assert "(default:" in text or not valued, f"{module}: no option shows its default (HelpFormatter?)"
    shown = entries(text)
    problems = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        name = action.option_strings[0]
        if not action.help:
            problems.append(f"{name}: no help text")
            continue
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or action.required:
            continue  # nothing worth showing (a flag is off unless given): lavin_data.cli.HelpFormatter
        entry = shown.get(name, "")
        if f"(default: {action.default})" not in entry:
            problems.append(f"{name}: default {action.default!r} not shown in {entry!r}")
    assert not problems, f"{module}: " + "; ".join(problems)


# --- contention: the decision on constructed figures ---------------------------------------

KERNEL_DECAY = 1884 / 2048  # the kernel's EXP_1: one 5-second update, in 11-bit fixed point


def kernel_load(before: float, runnable: list[float]) -> float:
    """The 1-minute load average after one update per entry of ``runnable`` (tasks runnable
    during that 5 s), computed the kernel's way."""
    load = before
    for n in runnable:
        load = load * KERNEL_DECAY + n * (1 - KERNEL_DECAY)
    return load


def figures(**kw) -> Figures:
    base = {"cpus": 2, "own_cpus": 1.0, "peak_own_cpus": 1.0, "seconds": 20.0}
    return Figures(**{**base, **kw})


def test_a_quiet_run_has_no_note():
    assert contention_note(figures()) is None
    assert contention_note(figures(single_s=10.0, single_cpu_s=9.9, wait_s=0.2)) is None
    assert contention_note(figures(seconds=60.0, load_before=0.3, load_after=kernel_load(0.3, [1.2] * 12))) is None


def test_run_queue_wait_over_a_tenth_of_the_timed_sections_is_contention():
    assert contention_note(figures(single_s=10.0, single_cpu_s=9.0, wait_s=0.9)) is None
    note = contention_note(figures(single_s=10.0, single_cpu_s=7.5, wait_s=2.5))
    assert note == ("contended: the timing thread waited for a CPU for 25% of its timed sections (2.5 s of 10.0 s); "
                    + ADVICE)
    # Sections too short to tell say nothing, whatever they measured.
    assert contention_note(figures(single_s=0.3, single_cpu_s=0.0, wait_s=0.3)) is None


def test_without_schedstat_the_cpu_share_of_single_threaded_sections_decides():
    assert contention_note(figures(single_s=10.0, single_cpu_s=8.5, wait_s=None)) is None
    note = contention_note(figures(single_s=10.0, single_cpu_s=6.0, wait_s=None))
    assert note.startswith("contended: this process was on a CPU for only 60% of its single-threaded timed "
                           "sections (6.0 s of 10.0 s)") and note.endswith(ADVICE)
    # With schedstat, a low CPU share without run-queue wait is I/O, not contention.
    assert contention_note(figures(single_s=10.0, single_cpu_s=6.0, wait_s=0.1)) is None


@pytest.mark.parametrize("seconds", [30, 60, 125])
@pytest.mark.parametrize("others", [0.0, 0.7, 2.0])
def test_others_load_recovers_the_simulated_load_of_other_work(seconds, others):
    own, before = 1.0, 0.6
    after = kernel_load(before, [own + others] * (seconds // 5))
    assert others_load(before, after, seconds, own) == pytest.approx(others, abs=0.03)


def test_a_busy_machine_is_contended_by_its_load_average():
    # 2 CPUs, the benchmark keeps 1 busy, other work keeps 2 busy: 1 CPU free, 2 wanted.
    after = kernel_load(0.5, [1 + 2] * 12)
    note = contention_note(figures(seconds=60.0, load_before=0.5, load_after=after))
    assert note is not None and note.startswith("contended: other work averaged 2.0 runnable tasks beside this "
                                                "benchmark's 1.0 on 2 CPUs (1-minute load average 0.50 -> ")
    # Other work that fits the free CPU (plus the slack) is not contention.
    after = kernel_load(0.5, [1 + 1 + LOAD_SLACK - 0.1] * 12)
    assert contention_note(figures(seconds=60.0, load_before=0.5, load_after=after)) is None
    # A benchmark on every CPU leaves none free: a little other work is already contention.
    after = kernel_load(0.0, [2 + 0.8] * 12)
    assert contention_note(figures(seconds=60.0, own_cpus=2.0, peak_own_cpus=2.0, load_before=0.0,
                                   load_after=after)) is not None


def test_a_high_load_before_a_quiet_run_is_not_contention():
    """The minute before the run (an earlier benchmark, now over) decays away: not held
    against this run."""
    after = kernel_load(2.5, [1.1] * 12)  # the run itself: own 1 + a little
    assert contention_note(figures(seconds=60.0, load_before=2.5, load_after=after)) is None
    # Too short a run to tell apart: no load verdict at all.
    assert others_load(2.5, 2.5, 20.0, 1.0) is None
    assert contention_note(figures(seconds=20.0, load_before=9.0, load_after=9.0)) is None


def test_weighted_own_weighs_sections_as_the_load_average_does():
    # A 120 s run: 2 CPUs busy for the first 60 s, 1 for the rest; simulate the kernel with no
    # other work: what the load average says of it, as a mean, is what weighted_own gives.
    after = kernel_load(0.0, [2.0] * 12 + [1.0] * 12)
    simulated_mean = after / (1 - KERNEL_DECAY ** 24)
    assert weighted_own([(0.0, 60.0, 2.0)], 120.0, 1.0) == pytest.approx(simulated_mean, abs=0.01)
    assert weighted_own([(60.0, 120.0, 1.0)], 120.0, 2.0) == pytest.approx(simulated_mean, abs=0.01)
    assert simulated_mean < 1.5  # the recent minute weighs more than a plain mean
    assert weighted_own([(0.0, 50.0, 3.0)], 50.0, 1.0) == pytest.approx(3.0)


def test_findings_come_first_and_the_note_ends_with_the_advice():
    note = contention_note(figures(single_s=10.0, single_cpu_s=7.0, wait_s=3.0), ["the floor ran slower"])
    assert note.startswith("contended: the floor ran slower; the timing thread waited")
    assert note.endswith("; " + ADVICE)
    assert contention_note(figures(), ["x"]) == "contended: x; " + ADVICE


def test_meter_records_its_sections():
    """The meter's bookkeeping (no timing asserted): peak CPUs, single-threaded time and a
    run-queue wait that is either unavailable or a non-negative number."""
    m = Meter(own_cpus=1)
    with m.section(own_cpus=3):
        pass
    with m.section(single_threaded=True):
        sum(range(1000))
    assert m.note() is None or m.note().startswith("contended:")
    f = m.figures
    assert f.peak_own_cpus == 3 and f.cpus >= 1 and f.single_s > 0 and f.single_cpu_s >= 0
    assert f.wait_s is None or f.wait_s >= 0
    assert f.as_dict()["peak_own_cpus"] == 3


# --- bench_build: its own figures, and what it prints ---------------------------------------

def test_build_findings_name_what_only_contention_explains():
    assert bench_build.build_findings(160.0, 270.0, 180.0) == []  # the README's idle figures
    (f,) = bench_build.build_findings(160.0, 270.0, 150.0)
    assert "floor (150.0 pairs/s" in f and "slower than the 1-CPU build (160.0 pairs/s)" in f
    (f,) = bench_build.build_findings(160.0, 150.0, 180.0)
    assert "2-CPU build (150.0 pairs/s) ran slower than the 1-CPU build (160.0)" in f
    (f,) = bench_build.build_findings(100.0, 210.0, 180.0)
    assert "more than twice as fast as the 1-CPU build (100.0)" in f
    fs = bench_build.build_findings(100.0, 210.0, 100.0)  # floor == 1 CPU: consistent; 2 x floor exceeded
    assert len(fs) == 2 and "faster than twice the floor (100.0)" in fs[0]


def test_render_findings_allow_noise_only():
    assert bench_build.render_findings(100.0, 100.0 * 1.04) == []
    assert bench_build.render_findings(100.0 * 1.04, 100.0) == []
    (f,) = bench_build.render_findings(120.0, 100.0)
    assert "render stage (120.0 pairs/s/core) ran faster than the same work" in f


def test_the_builds_do_the_floors_work_only():
    """The floor replays the first source; the builds are cut to it and its tasks."""
    from lavin_data.safe_yaml import safe_load
    from lavin_data.spec import load_spec

    raw = safe_load((ROOT / "manifests" / "demo.yaml").read_text())
    first = raw["sources"][0]["name"]
    want = [t["task"] for t in raw["tasks"] if t["source"] == first]
    assert len(raw["sources"]) > 1 and 0 < len(want) < len(raw["tasks"])  # the cut matters for the demo
    spec = bench_build.first_source(load_spec(str(ROOT / "manifests" / "demo.yaml"), output="/nonexistent"))
    assert [s.name for s in spec.sources] == [first]
    assert [t.task for t in spec.tasks] == want and {t.source for t in spec.tasks} == {first}


def run_bench_build(monkeypatch, capsys, one: float, two: float, floor: float) -> str:
    """bench_build's output for constructed throughputs (no Ray, no build)."""
    rates = {1: one, 2: two}
    monkeypatch.setattr(bench_build, "timed_build", lambda spec, cpus: (rates[cpus], 1000, 1000 / rates[cpus]))
    monkeypatch.setattr(bench_build, "floor", lambda spec, out: (floor, 3 * floor, 1000))
    monkeypatch.chdir(ROOT)  # the default --spec is relative to the repository
    capsys.readouterr()
    assert bench_build.main([]) == 0
    return capsys.readouterr().out


def test_bench_build_says_contended_instead_of_missing_its_targets(monkeypatch, capsys):
    out = run_bench_build(monkeypatch, capsys, one=160.0, two=200.0, floor=150.0)
    assert "scaling 2 CPUs / 1 CPU:         1.25x   (target >= 1.7; not comparable: contended, see below)" in out
    assert "2 CPUs / (2 x floor):           0.67    (target >= 0.7; not comparable: contended, see below)" in out
    assert "below it" not in out and "reached" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("contended: the floor (150.0 pairs/s") and last.endswith("rerun on an idle machine")


def test_bench_build_shows_where_quiet_ratios_stand(monkeypatch, capsys):
    out = run_bench_build(monkeypatch, capsys, one=160.0, two=272.0, floor=180.0)
    assert "1.70x   (target >= 1.7: reached)" in out
    assert "0.76    (target >= 0.7: reached)" in out
    assert "contended" not in out
    assert "goals, not test results" in out
    out = run_bench_build(monkeypatch, capsys, one=160.0, two=240.0, floor=180.0)
    assert "1.50x   (target >= 1.7: below it)" in out and "contended" not in out


def test_targets_are_never_worded_as_test_results():
    for contended in (True, False):
        for value in (0.5, 2.0):
            text = bench_build.versus_target(value, 1.7, contended).lower()
            assert "target >= 1.7" in text and not re.search(r"\b(fail|failed|pass|passed|ok)\b", text)
    assert math.isclose(bench_build.TARGET_SCALING, 1.7) and math.isclose(bench_build.TARGET_FLOOR_SHARE, 0.7)
