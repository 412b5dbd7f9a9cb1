"""A clone stands on its own: the figures the README states, real-data samples found or named,
spec subsets, hints that name what exists, quiet builds, demo splits, sensible plot axes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lavin_data.spec import SpecError, load_spec
from tests.conftest import ROOT


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_readme_states_the_suites_own_test_count():
    """The README's count is the suite's (pytest --collect-only, counted independently here)."""
    figures = _script("readme_figures")
    stated = figures.readme_count((ROOT / "README.md").read_text())
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                       capture_output=True, text=True)
    n = sum(1 for line in r.stdout.splitlines() if "::" in line)
    assert n > 100 and stated == n, f"README says {stated} tests, the suite has {n}: run scripts/readme_figures.py"


def test_readme_figures_script_rewrites_only_its_block(tmp_path):
    figures = _script("readme_figures")
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite name="pytest" tests="10" failures="1" errors="0" skipped="2" '
                     'time="125.0" timestamp="2026-12-07T10:00:00"></testsuite></testsuites>')
    assert figures.junit_figures(junit) == {"passed": 7, "failed": 1, "skipped": 2, "seconds": 125.0,
                                            "date": "2026-12-07"}
    readme = tmp_path / "R.md"
    readme.write_text(f"before\n{figures.BEGIN}\nold\n{figures.END}\nafter\n")
    orig = figures.collected_count
    figures.collected_count = lambda root=ROOT: 42
    try:
        assert figures.main(["--readme", str(readme), "--junit", str(junit), "--where", "here"]) == 0
    finally:
        figures.collected_count = orig
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "old" not in text
    assert figures.readme_count(text) == 42 and "7 passed, 1 failed, 2 skipped in 2.1 minutes" in text


def _conftest_in(root: Path) -> dict:
    """tests/conftest.py as a clone at ``root`` would see it (its own tests/fixtures, ../shared)."""
    (root / "tests").mkdir(parents=True)
    src = (ROOT / "tests" / "conftest.py").read_text()
    (root / "tests" / "conftest.py").write_text(src)
    spec = importlib.util.spec_from_file_location("conftest_copy", root / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_missing_sample_skips_naming_the_fetch_script_and_fails_under_ci(tmp_path, monkeypatch):
    mod = _conftest_in(tmp_path / "alone" / "x")  # nothing beside the clone
    monkeypatch.delenv("LAVIN_FIXTURES", raising=False)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=r"scripts/fetch_fixtures.sh nyu_v2"):
        mod.fixture_path("nyu_v2", "depth")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"scripts/fetch_fixtures.sh davis"):
        mod.fixture_path("davis")
    # found in the clone's tests/fixtures first, then in ../shared/fixtures beside the clone
    (tmp_path / "alone" / "x" / "tests" / "fixtures" / "nyu_v2").mkdir(parents=True)
    (tmp_path / "alone" / "shared" / "fixtures" / "davis").mkdir(parents=True)
    assert mod.fixture_path("nyu_v2") == tmp_path / "alone" / "x" / "tests" / "fixtures" / "nyu_v2"
    assert mod.fixture_path("davis") == tmp_path / "alone" / "shared" / "fixtures" / "davis"


def test_vendored_samples_carry_their_licence_and_the_rest_are_named_by_the_fetch_script():
    fixtures = ROOT / "tests" / "fixtures"
    for folder in ("photos", "videos"):
        assert "Apache License" in (fixtures / folder / "LICENSE").read_text()
    tracked = subprocess.run(["git", "ls-files", "tests/fixtures"], cwd=ROOT, capture_output=True, text=True).stdout
    if tracked:  # in a git checkout: nothing under a non-redistributable folder is committed
        assert not [f for f in tracked.split() if f.split("/")[2] in ("coco_keypoints", "coco_panoptic", "nyu_v2",
                                                                       "davis", "flow")]
    listed = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_fixtures.sh"), "--list"], capture_output=True,
                            text=True, check=True).stdout
    for folder in ("coco_keypoints", "coco_panoptic", "nyu_v2", "davis", "flow"):
        assert f"{folder}: github.com/" in listed
        assert "/" in listed.split(f"{folder}: github.com/")[1].split(" @ ")[0]


def test_fetch_fixtures_copies_from_a_mirror_and_refuses_unknown_names(tmp_path):
    clone = tmp_path / "x"
    (clone / "scripts").mkdir(parents=True)
    (clone / "tests" / "fixtures").mkdir(parents=True)
    (clone / "scripts" / "fetch_fixtures.sh").write_text((ROOT / "scripts" / "fetch_fixtures.sh").read_text())
    mirror = tmp_path / "mirror" / "flow"
    mirror.mkdir(parents=True)
    script = (ROOT / "scripts" / "fetch_fixtures.sh").read_text()
    names = script.split("\nflow|")[1].split("\n")[0].split("|")[2].split()
    for pair in names:
        local = pair.split("=")[0]
        (mirror / local).write_bytes(local.encode())
    r = subprocess.run(["bash", "scripts/fetch_fixtures.sh", "--from", str(tmp_path / "mirror"), "flow"], cwd=clone,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = sorted(p.name for p in (clone / "tests" / "fixtures" / "flow").iterdir())
    assert got == sorted(p.split("=")[0] for p in names) and not list((clone / "tests" / "fixtures").glob(".*partial"))
    r = subprocess.run(["bash", "scripts/fetch_fixtures.sh", "flw"], cwd=clone, capture_output=True, text=True)
    assert r.returncode == 2 and "no sample folder 'flw'" in r.stderr


# --------------------------------------------------------------------------- spec subsets


UVD_SOURCES = {"coco", "nyu", "imagenet", "videos", "davis", "ytvis", "sav", "chairs", "sintel"}


def test_a_subset_of_uvd_needs_only_its_own_variables(monkeypatch):
    for v in [k for k in os.environ if k.endswith(("_ROOT", "_DIR")) or k == "UVD_OUT"]:
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(SpecError) as err:
        load_spec(ROOT / "manifests" / "uvd.yaml", output="/tmp/o")
    assert "COCO_ROOT" in str(err.value)
    monkeypatch.setenv("IMAGENET_ROOT", "/data/imagenet")
    monkeypatch.setenv("DEPTH_ANYTHING_DIR", "/models/da2")
    spec = load_spec(ROOT / "manifests" / "uvd.yaml", output="/tmp/o", only_sources=["imagenet"],
                     only_tasks=["colorization", "depth_estimation", "depth_to_image"])
    assert [s.name for s in spec.sources] == ["imagenet"]
    assert sorted((t.task, t.source, t.labeler) for t in spec.tasks) == [
        ("colorization", "imagenet", None), ("depth_estimation", "imagenet", "da2"),
        ("depth_to_image", "imagenet", "da2")]
    assert [lab.name for lab in spec.labelers] == ["da2"]


def test_a_subset_keeps_the_labelers_a_labeler_takes_depth_from(monkeypatch):
    monkeypatch.setenv("VIDEO_ROOT", "/data/v")
    monkeypatch.setenv("DEPTH_ANYTHING_DIR", "/m")
    spec = load_spec(ROOT / "manifests" / "uvd.yaml", output="/tmp/o", only_sources=["videos"],
                     only_tasks=["video_normal"])
    uses = {t.labeler for t in spec.tasks}
    assert uses == {"normals-video"} and [lab.name for lab in spec.labelers] == ["da2-video", "normals-video"]


def test_subset_names_that_are_not_in_the_spec_exit_2_listing_the_spec(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipelines.build", "--spec", "manifests/uvd.yaml", "--only-sources",
                        "imagenett", "--output", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "imagenett" in r.stderr and all(s in r.stderr for s in UVD_SOURCES)
    with pytest.raises(SpecError, match="--only-tasks names colourization"):
        load_spec(ROOT / "manifests" / "demo.yaml", only_tasks=["colourization"])
    assert not (tmp_path / "o").exists()
    # a named source without any named task, or an empty list, is not quietly a smaller build
    with pytest.raises(SpecError, match="source synthetic-video has none of the tasks"):
        load_spec(ROOT / "manifests" / "demo.yaml", only_sources=["synthetic", "synthetic-video"],
                  only_tasks=["colorization"])
    with pytest.raises(SpecError, match="--only-sources names nothing"):
        load_spec(ROOT / "manifests" / "demo.yaml", only_sources=[])
    r = subprocess.run([sys.executable, "-m", "pipelines.build", "--spec", "manifests/demo.yaml", "--only-tasks", ",",
                        "--output", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--only-tasks names nothing" in r.stderr


# --------------------------------------------------------------------------- demo splits


def test_every_demo_task_holds_out_val_items_video_tasks_included(tmp_path):
    """Split by an independent hash of each planned key: every source that feeds a task has
    train and val items (the video source had none held out)."""
    import hashlib

    from pipelines.build import plan_sources

    spec = load_spec(ROOT / "manifests" / "demo.yaml", output=str(tmp_path / "o"))
    plans = plan_sources(spec, write=False)
    for src in spec.sources:
        rows, _ = plans[src.name]
        keys = [r["key"] for r in rows]
        mine = ["val" if int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") / 2**64 < src.val_fraction
                else "train" for k in keys]
        assert mine == [r["split"] for r in rows]
        assert mine.count("val") >= 1 and mine.count("train") >= 1, src.name
    assert {t.source for t in spec.tasks} == {s.name for s in spec.sources}


# --------------------------------------------------------------------------- hints and noise


def test_weight_download_hints_name_the_installed_hub_command(tmp_path):
    """Each labeler's missing-weights message names `hf download`, a command huggingface_hub
    installs (its console scripts), not `huggingface-cli`, which recent releases dropped."""
    from importlib.metadata import entry_points

    from lavin_data.labelers import LabelerError, labeler_class
    from lavin_data.spec import Labeler as LabelerSpec

    scripts = {e.name for e in entry_points(group="console_scripts") if e.value.startswith("huggingface_hub")}
    assert "hf" in scripts
    from lavin_data.labelers.stable_normal import check_weights

    for kind in ("depth_anything_v2", "marigold_normals", "stable_normal"):
        lab = LabelerSpec(name="x", kind=kind, source="s", model=str(tmp_path / "nowhere"))
        with pytest.raises(LabelerError) as err:
            if kind == "stable_normal":  # its clone is checked first; the weights' message is the one meant
                check_weights(lab, tmp_path / "nowhere")
            else:
                labeler_class(kind).preflight(lab)
        assert "`hf download " in str(err.value) and "huggingface-cli" not in str(err.value), kind


def test_ray_noise_filter_drops_only_the_two_deliberate_warnings():
    import logging

    from lavin_data.ray_session import _DropNoise

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("ray", logging.WARNING, __file__, 1, msg, None, None)

    f = _DropNoise()
    assert not f.filter(rec("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled ..."))
    assert not f.filter(rec("Progress bars disabled. To enable, set ..."))
    assert f.filter(rec("Token authentication is disabled for this Ray cluster. Anyone with network access ..."))
    assert f.filter(rec("Task failed: ValueError"))


@pytest.mark.slow
def test_a_build_prints_no_ray_noise(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "q", "output": str(tmp_path / "o"), "resolution": 64, "shard_size": 4,
                                    "sources": [{"name": "s", "kind": "synthetic", "num_items": 4}],
                                    "tasks": [{"task": "colorization", "source": "s"}]}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's default, which warns
    r = subprocess.run([sys.executable, "-m", "pipelines.build", "--spec", str(spec), "--num-cpus", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    both = r.stdout + r.stderr
    assert "[build] done" in both
    assert "Token authentication" not in both and "Progress bars disabled" not in both


def test_metric_plot_axes_do_not_zoom_noise_into_a_trend():
    """Values that differ in the 5th digit: the y-axis spans the metric's range from 0, not the
    1e-5 between them; a negative metric gets at least 20 % of its magnitude."""
    from lavin_model.evaluate import figure

    res = {"denoise": {"higher_is_better": True, "main_metric": "ssim", "sweep": {"1": {"ssim": 0.51234},
                                                                                   "2": {"ssim": 0.51235}},
                       "probe": {"right_task": 0.5123, "other_task": 0.5124, "no_context": 0.5122,
                                 "other_task_name": "derain"}},
           "x": {"higher_is_better": False, "main_metric": "m", "sweep": {"1": {"m": -3.00001}, "4": {"m": -3.00002}}}}
    fig = figure(res)
    ax_d, ax_p, ax_x = fig.axes[0], fig.axes[1], fig.axes[2]
    for ax in (ax_d, ax_p):
        lo, hi = ax.get_ylim()
        assert lo <= 0 and hi >= 0.5123
    lo, hi = ax_x.get_ylim()
    assert hi - lo >= 0.2 * 3 and lo < -3.00002 and hi > -3.00001
    # a small error metric (lower is better) keeps its own scale: halving it stays visible
    res = {"colorization": {"higher_is_better": False, "main_metric": "mse",
                            "sweep": {"1": {"mse": 0.010}, "2": {"mse": 0.005}}}}
    lo, hi = figure(res).axes[0].get_ylim()
    assert lo == 0 and 0.010 <= hi <= 0.012
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_infer_hints_at_the_folder_meant(tmp_path):
    """A run folder for --checkpoint, a folder of task folders for --examples: one line each,
    naming the folder inside to give instead."""
    from lavin_data.weights import CheckpointError, read_state_dict
    from lavin_model.infer import template_pairs

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.safetensors").write_bytes(b"")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest").write_text("step00000010")
    with pytest.raises(CheckpointError) as err:
        read_state_dict(run)
    assert f"give {run / 'model'} or {run / 'checkpoints'}" in str(err.value)
    templates = tmp_path / "templates"
    for task in ("colorization", "depth_estimation"):
        (templates / task).mkdir(parents=True)
        for role in ("input", "target"):
            (templates / task / f"0_{role}.png").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        template_pairs(templates)
    assert "task folders (colorization, depth_estimation)" in str(err.value)
    assert f"--examples {templates / 'colorization'}" in str(err.value)


def test_every_shipped_manifest_parses_on_a_bare_clone(monkeypatch):
    """Spec parsing needs no data: each manifest validates with its variables given dummy values
    (real-data ones default to tests/fixtures, where a clone keeps or fetches its samples)."""
    import re

    for path in sorted((ROOT / "manifests").glob("*.yaml")):
        for var in set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", path.read_text())):
            monkeypatch.setenv(var, f"/data/{var.lower()}")
        monkeypatch.delenv("LAVIN_FIXTURES", raising=False)
        spec = load_spec(path)
        assert spec.sources and spec.tasks, path.name
        if path.name.endswith("_fixtures.yaml"):
            roots = [str(getattr(s, f, "")) for s in spec.sources for f in ("root", "images") if getattr(s, f, None)]
            assert roots and all(r.startswith("tests/fixtures/") for r in roots), roots


def test_every_docs_pointer_and_markdown_link_resolves_inside_the_repository():
    """Code, specs, scripts and docs point only at files the repository has: every `docs/<page>.md`
    named anywhere, every relative Markdown link of README.md and docs/, and no brief that lives
    outside it (DESIGN.md)."""
    import re

    roots = ["lavin_data", "lavin_model", "pipelines", "benchmarks", "scripts", "manifests", "docs", "tests"]
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"] + [
        p for r in roots for p in (ROOT / r).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".sh")
        and "fixtures" not in p.parts]
    bad = []
    for f in files:
        text = f.read_text()
        for ref in re.findall(r"(?<![\w/.])docs/[\w./-]+?\.md", text):
            if not (ROOT / ref).is_file():
                bad.append(f"{f.relative_to(ROOT)}: {ref}")
        if f.suffix == ".md":
            for link in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
                if "://" not in link and not (f.parent / link).resolve().exists():
                    bad.append(f"{f.relative_to(ROOT)}: link {link}")
        if "DESIGN.md" in text and f.name not in ("test_standalone.py", "test_report.py"):
            bad.append(f"{f.relative_to(ROOT)}: DESIGN.md")
    assert bad == []


def test_one_display_conversion_for_16_bit_images_everywhere():
    """infer, evaluate and the report share one 16-bit -> 8-bit conversion (scaled and rounded:
    the report used to shift: 65280 -> 255 shifted, 254 scaled)."""
    import numpy as np

    import lavin_model.evaluate as ev
    import lavin_model.infer as inf
    import pipelines.report as rep
    from lavin_data.codecs import to_rgb_uint8

    assert inf.to_rgb_uint8 is to_rgb_uint8 and ev.to_rgb_uint8 is to_rgb_uint8 and rep.to_rgb_uint8 is to_rgb_uint8
    v = np.array([[0, 257, 32896, 65280, 65535]], np.uint16)
    want = np.rint(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
    got = to_rgb_uint8(v)
    assert got.shape == (1, 5, 3) and (got == want[..., None]).all() and got[0, 3, 0] == 254
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 7, 99
    assert (to_rgb_uint8(rgba) == [7, 0, 0]).all()
