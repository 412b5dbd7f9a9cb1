"""lavin_data.export_templates: pair shards -> <task>/<id>_input.<ext> + <id>_target.<ext>, the
bytes of the shard members, the pairs of one split, never a file outside <out>/<task>/.
Expectations come from reading the tars here with ``tarfile`` and each sample's json."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from lavin_data.export_templates import main
from lavin_data.shards import ShardWriter, stats_path
from lavin_model.infer import template_pairs

ROOT = Path(__file__).resolve().parents[1]

# (task, source, shard, input extension, [(key, split)]): two sources of denoise so that shard order
# (alpha-... before synthetic-...) is not key order alone; a variant key; a source named my_input.
LAYOUT = [
    ("denoise", "alpha", 0, "jpg", [("alpha_000001", "train"), ("alpha_000000", "val")]),
    ("denoise", "synthetic", 0, "jpg", [("synthetic_000000", "train"), ("synthetic_000001", "val"),
                                        ("synthetic_000001_v1", "train"), ("synthetic_000002", "train")]),
    ("denoise", "synthetic", 1, "jpg", [("synthetic_000004", "val"), ("synthetic_000005", "train"),
                                        ("synthetic_000006", "val"), ("synthetic_000007", "train")]),
    ("depth_to_image", "synthetic", 0, "png", [("synthetic_000000", "train"), ("synthetic_000001", "train"),
                                               ("synthetic_000002", "val"), ("synthetic_000003", "train")]),
    ("colorization", "synthetic", 0, "jpg", [("synthetic_000000", "train"), ("synthetic_000001", "train")]),
    ("edge_detection", "my_input", 0, "jpg", [("my_input_000000", "train"), ("my_input_000001_target", "train")]),
]


def _image(rng: np.random.Generator, ext: str) -> bytes:
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(f".{ext}", img, [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == "jpg" else [])
    assert ok
    return buf.tobytes()


def make_pairs(root: Path) -> Path:
    """A small pairs/ folder written with the project's ShardWriter, as the render stage does."""
    rng = np.random.default_rng(0)
    pairs = root / "pairs"
    for task, source, shard, ext, samples in LAYOUT:
        w = ShardWriter(pairs / task / f"{source}-{shard:06d}.tar", stage="render")
        for key, split in samples:
            meta = {"task": task, "source": source, "base_key": key.removesuffix("_v1"), "split": split,
                    "input": f"input.{ext}", "target": "target.png", "raw": []}
            w.add(key, {f"input.{ext}": _image(rng, ext), "target.png": _image(rng, "png"),
                        "json": json.dumps(meta).encode()}, split=split)
        w.commit({"stage": "render", "task": task, "source": source})
    # an uncommitted shard (a build in progress): a tar without its stats, never read
    shutil.copy(pairs / "depth_to_image" / "synthetic-000000.tar", pairs / "depth_to_image" / "synthetic-000001.tar")
    # a video task: clip pairs (input_000.jpg, ...)
    w = ShardWriter(pairs / "frame_prediction" / "synthetic-video-000000.tar", stage="render")
    meta = {"task": "frame_prediction", "split": "train", "input": ["input_000.jpg", "input_001.jpg"],
            "target": ["target_000.jpg"]}
    w.add("synthetic-video_000000", {"input_000.jpg": _image(rng, "jpg"), "input_001.jpg": _image(rng, "jpg"),
                                     "target_000.jpg": _image(rng, "jpg"), "json": json.dumps(meta).encode()},
          split="train")
    w.commit({"stage": "render", "task": "frame_prediction"})
    return pairs


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("build"))


def read_task(pairs: Path, task: str) -> list[dict]:
    """Every sample of a task's committed shards, read here with tarfile: shard order (sorted names),
    then key order; {"key", "split", "members": {ext: bytes}}."""
    out = []
    for tar_path in sorted((pairs / task).glob("*.tar")):
        if not stats_path(tar_path).exists():
            continue
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(tar_path) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
        for key in sorted(samples):
            out.append({"key": key, "split": json.loads(samples[key]["json"])["split"], "members": samples[key]})
    return out


def expected(pairs: Path, task: str, split: str, count: int) -> list[dict]:
    return [s for s in read_task(pairs, task) if split == "any" or s["split"] == split][:count]


def run(*args) -> int:
    return main([str(a) for a in args])


def test_layout_names_and_bytes_equal_to_the_shard_members(pairs, tmp_path, capsys):
    out = tmp_path / "templates"
    assert run("--pairs", pairs, "--out", out, "--count", 3) == 0
    printed = capsys.readouterr()
    # every image task, not the video task (a note says so), not an uncommitted tar's samples
    assert sorted(p.name for p in out.iterdir()) == ["colorization", "denoise", "depth_to_image", "edge_detection"]
    assert "frame_prediction" in printed.err and "video" in printed.err
    for task in ("colorization", "denoise", "depth_to_image"):
        want = expected(pairs, task, "train", 3)
        ext = "png" if task == "depth_to_image" else "jpg"
        names = set()
        for i, s in enumerate(want):
            tid = f"{i:04d}_{s['key']}"
            names |= {f"{tid}_input.{ext}", f"{tid}_target.png", f"{tid}.json"}
            assert (out / task / f"{tid}_input.{ext}").read_bytes() == s["members"][f"input.{ext}"]
            assert (out / task / f"{tid}_target.png").read_bytes() == s["members"]["target.png"]
            assert (out / task / f"{tid}.json").read_bytes() == s["members"]["json"]
        assert {p.name for p in (out / task).iterdir()} == names
        assert f"[export] {task}: {len(want)} pair(s) (train) -> {out / task}" in printed.out
    # denoise: alpha's shard first (its train key alpha_000001), then synthetic's, the variant in key order
    assert [s["key"] for s in expected(pairs, "denoise", "train", 3)] == \
        ["alpha_000001", "synthetic_000000", "synthetic_000001_v1"]
    assert printed.out.rstrip().splitlines()[-1] == f"[export] 10 pair(s) of 4 task(s) -> {out}"


def test_ids_carry_no_inner_input_or_target(pairs, tmp_path):
    out = tmp_path / "t"
    assert run("--pairs", pairs, "--out", out, "--tasks", "edge_detection") == 0
    assert sorted(p.name for p in (out / "edge_detection").glob("*.jpg")) == \
        ["0000_my-input_000000_input.jpg", "0001_my-input_000001-target_input.jpg"]
    for p in (out / "edge_detection").iterdir():
        assert p.stem.count("_input") + p.stem.count("_target") == (p.suffix != ".json")


def test_split_val_takes_only_val_pairs(pairs, tmp_path):
    out = tmp_path / "t"
    assert run("--pairs", pairs, "--out", out, "--split", "val", "--tasks", "denoise,depth_to_image") == 0
    for task in ("denoise", "depth_to_image"):
        jsons = sorted((out / task).glob("*.json"))
        assert jsons and all(json.loads(p.read_text())["split"] == "val" for p in jsons)
        want = [s["key"] for s in read_task(pairs, task) if s["split"] == "val"]
        assert [p.stem.split("_", 1)[1] for p in jsons] == want
    assert [p.stem.split("_", 1)[1] for p in sorted((out / "denoise").glob("*.json"))] == \
        ["alpha_000000", "synthetic_000001", "synthetic_000004", "synthetic_000006"]
    out_any = tmp_path / "any"
    assert run("--pairs", pairs, "--out", out_any, "--split", "any", "--tasks", "denoise", "--count", 100) == 0
    assert len(list((out_any / "denoise").glob("*_input.jpg"))) == 10


def test_count_and_tasks_filter(pairs, tmp_path, capsys):
    out = tmp_path / "t"
    assert run("--pairs", pairs, "--out", out, "--tasks", "denoise", "--count", 2) == 0
    assert [p.name for p in out.iterdir()] == ["denoise"]
    assert sorted(p.name for p in (out / "denoise").glob("*_input.jpg")) == \
        ["0000_alpha_000001_input.jpg", "0001_synthetic_000000_input.jpg"]
    capsys.readouterr()
    assert run("--pairs", pairs, "--out", out, "--tasks", "colorization", "--count", 5) == 0
    assert len(list((out / "colorization").glob("*_target.png"))) == 2  # all it has
    assert "only 2 train pair(s)" in capsys.readouterr().err


def test_the_build_folder_is_accepted(pairs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("--pairs", pairs, "--out", a, "--count", 2) == 0
    assert run("--pairs", pairs.parent, "--out", b, "--count", 2) == 0
    files_a = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    assert files_a and files_a == {p.relative_to(b): p.read_bytes() for p in b.rglob("*") if p.is_file()}


def test_template_pairs_reads_the_export_in_order(pairs, tmp_path):
    out = tmp_path / "t"
    assert run("--pairs", pairs, "--out", out, "--tasks", "denoise", "--count", 5) == 0
    got = template_pairs(out / "denoise")
    want = expected(pairs, "denoise", "train", 5)
    assert [(a.name, b.name) for a, b in got] == \
        [(f"{i:04d}_{s['key']}_input.jpg", f"{i:04d}_{s['key']}_target.png") for i, s in enumerate(want)]
    assert [a.read_bytes() for a, _ in got] == [s["members"]["input.jpg"] for s in want]


def test_seeded_draw_is_repeatable_and_of_the_split(pairs, tmp_path):
    picks = []
    for seed in (1, 1, 2, 3, 4):
        out = tmp_path / f"s{len(picks)}"
        assert run("--pairs", pairs, "--out", out, "--tasks", "denoise", "--count", 3, "--seed", seed) == 0
        picks.append([p.stem.split("_", 1)[1] for p in sorted((out / "denoise").glob("*.json"))])
    order = [s["key"] for s in read_task(pairs, "denoise") if s["split"] == "train"]
    assert picks[0] == picks[1]
    for keys in picks:
        assert len(keys) == 3 and keys == [k for k in order if k in keys]  # train keys, in shard and key order
    assert len({tuple(k) for k in picks}) > 1  # the seed matters


def test_rerun_overwrites_only_its_files(pairs, tmp_path, capsys):
    out = tmp_path / "t"
    (out / "denoise").mkdir(parents=True)
    (out / "denoise" / "mine.txt").write_text("keep")
    (out / "denoise" / "zz_own_input.png").write_bytes(b"x")
    (out / "denoise" / "zz_own_target.png").write_bytes(b"y")
    assert run("--pairs", pairs, "--out", out, "--tasks", "denoise", "--count", 2) == 0
    first = {p.name: p.read_bytes() for p in (out / "denoise").iterdir()}
    (out / "denoise" / "0000_alpha_000001_input.jpg").write_bytes(b"stale")
    assert run("--pairs", pairs, "--out", out, "--tasks", "denoise", "--count", 2) == 0
    assert {p.name: p.read_bytes() for p in (out / "denoise").iterdir()} == first
    assert first["mine.txt"] == b"keep" and first["zz_own_input.png"] == b"x"
    assert "1 other template pair(s)" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--tasks", "nope"], ["nope", "colorization, denoise, depth_to_image, edge_detection, frame_prediction"]),
    (["--tasks", "../denoise"], ["../denoise", "found"]),
    (["--tasks", "frame_prediction"], ["frame_prediction", "video", "images"]),
    (["--tasks", "colorization", "--split", "val"], ["colorization", "no val pairs"]),
])
def test_user_mistakes_exit_2_naming_the_problem(pairs, tmp_path, capsys, args, words):
    out = tmp_path / "t"
    assert run("--pairs", pairs, "--out", out, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert all(w in err for w in words), err
    assert not out.exists()  # nothing written before the error


def test_missing_folder_and_out_inside_pairs(pairs, tmp_path, capsys):
    assert run("--pairs", tmp_path / "none", "--out", tmp_path / "t") == 2
    assert f"{tmp_path / 'none'}: no such folder" in capsys.readouterr().err
    assert run("--pairs", pairs, "--out", pairs / "templates") == 2
    assert "inside the pairs folder" in capsys.readouterr().err
    assert not (pairs / "templates").exists()


def _evil_shard(task_dir: Path, outside: Path) -> Path:
    """A hand-made committed shard: samples whose members escape, are absolute, nested or links,
    and one good sample."""
    good_json = json.dumps({"split": "train", "input": "input.png", "target": "target.png"}).encode()
    members = [
        ("../../escape_000000.input.png", b"E"), ("../../escape_000000.json", good_json),
        ("../../escape_000000.target.png", b"E"),
        (f"{outside}/abs_000000.input.png", b"A"), (f"{outside}/abs_000000.json", good_json),
        (f"{outside}/abs_000000.target.png", b"A"),
        ("good_000000.input.png", b"good input"), ("good_000000.json", good_json),
        ("good_000000.target.png", b"good target"),
        ("link_000000.json", good_json), ("link_000000.target.png", b"L"),
        ("mixed_000000.json", good_json), ("mixed_000000.target.png", b"M"),
        ("../mixed_000000.input.png", b"M"),
        ("sub/nested_000000.input.png", b"N"), ("sub/nested_000000.json", good_json),
        ("sub/nested_000000.target.png", b"N"),
    ]
    task_dir.mkdir(parents=True)
    tar_path = task_dir / "evil-000000.tar"
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link_000000.input.png")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside / "victim.png")
        tar.addfile(link)
    with tarfile.open(tar_path) as tar:  # the names really are stored as written
        assert "../../escape_000000.input.png" in tar.getnames() and f"{outside}/abs_000000.json" in tar.getnames()
    stats_path(tar_path).write_text(json.dumps({"bytes": tar_path.stat().st_size, "n_ok": 6,
                                                "splits": {"train": 6}}))
    return tar_path


def test_path_escaping_members_write_nothing_outside(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"victim")
    build = tmp_path / "deep" / "a" / "b" / "build"
    tar_path = _evil_shard(build / "pairs" / "evil_task", outside)
    out = tmp_path / "deep" / "a" / "b" / "out"
    # a link planted where a template will go: it is replaced, never written through
    (out / "evil_task").mkdir(parents=True)
    os.symlink(outside / "victim.png", out / "evil_task" / "0000_good_000000_input.png")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}

    rc = run("--pairs", build, "--out", out, "--count", 10)
    err = capsys.readouterr().err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}
    new = {p for p in after if p not in before}
    assert {p for p in new if out / "evil_task" not in p.parents} == set()  # the filesystem first, then the rest
    assert rc == 0, err
    assert new == {out / "evil_task" / n for n in
                   ("0000_good_000000_input.png", "0000_good_000000_target.png", "0000_good_000000.json")}
    assert {p: after[p] for p in before} == before  # nothing else changed, the victim included
    assert after[out / "evil_task" / "0000_good_000000_input.png"] == b"good input"
    assert not (out / "evil_task" / "0000_good_000000_input.png").is_symlink()
    assert not list(tmp_path.rglob("*escape*")) and not list(tmp_path.rglob("*abs_000000*"))
    for member in ("../../escape_000000.input.png", f"{outside}/abs_000000.input.png", "link_000000.input.png",
                   "../mixed_000000.input.png", "sub/nested_000000.input.png"):
        assert f"{tar_path}: sample" in err and repr(member) in err, member
    assert template_pairs(out / "evil_task") == [(out / "evil_task" / "0000_good_000000_input.png",
                                                  out / "evil_task" / "0000_good_000000_target.png")]


def test_module_entry_point_and_help(pairs, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "lavin_data.export_templates", "--help"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    text = " ".join(res.stdout.split())  # argparse wraps lines
    assert res.returncode == 0 and "python -m lavin_data.export_templates" in text
    assert "(default: train)" in text and "(default: 8)" in text
    res = subprocess.run([sys.executable, "-m", "lavin_data.export_templates", "--pairs", str(pairs), "--out",
                          str(tmp_path / "t"), "--tasks", "nope"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "nope" in res.stderr
