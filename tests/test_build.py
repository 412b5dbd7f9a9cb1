"""The build end to end on a small demo spec: outputs, resume, determinism, readers, failures."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lavin_data.codecs import decode_image
from lavin_data.registry import TASKS
from lavin_data.render import decode_boxes
from lavin_data.shards import (
    ShardWriter,
    decoded_batches,
    index_path,
    iter_tar_samples,
    stats_path,
    timing_path,
)
from lavin_data.spec import parse_spec
from pipelines.build import BuildError, build, main
from pipelines.layout import base_tar, pair_tar
from pipelines.stages import ingest_shard, render_shard
from tests.conftest import ROOT, fixture_path, small_demo_spec

quiet = dict(echo=lambda *_: None)


def all_tars(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.tar"))}


def test_demo_build_writes_every_task_with_index_stats_and_manifest(demo_build):
    spec, manifest = demo_build
    out = Path(spec.output)
    tasks = sorted(p.name for p in (out / "pairs").iterdir())
    assert len(tasks) == 26 and set(tasks) == {t.task for t in spec.tasks} == set(TASKS) - {
        "pose_estimation", "pose_to_image", "segmentation_to_image"}  # the COCO-only tasks
    n_shards = {"synthetic": 4, "synthetic-video": 1}  # 16 items / 4 per shard; 4 clips
    for t in spec.tasks:
        for s in range(n_shards[t.source]):
            tar = pair_tar(out, t.task, t.source, s)
            assert tar.exists() and index_path(tar).exists() and stats_path(tar).exists()
            st = json.loads(stats_path(tar).read_text())
            idx = pq.read_table(index_path(tar)).to_pylist()
            assert st["n_ok"] == sum(r["status"] == "ok" for r in idx) and st["n_error"] == 0
            assert st["task"] == t.task
    m = json.loads((out / "manifest.json").read_text())
    assert m["spec_hash"] == spec.spec_hash() and m["counts"].keys() == set(tasks)
    assert m["counts"]["colorization"]["synthetic"] == 16 and m["counts"]["optical_flow"]["synthetic-video"] == 4
    assert all(n >= 1 for v in m["counts"].values() for n in v.values())
    assert (out / "report" / "counts.md").exists()
    assert pq.read_table(out / "plan" / "synthetic.parquet").num_rows == 16


def test_pair_samples_are_well_formed(demo_build):
    spec, _ = demo_build
    out = Path(spec.output)
    for t in spec.tasks:
        task = t.task
        for key, m in iter_tar_samples(pair_tar(out, task, t.source, 0)):
            assert "." not in key and key.startswith(f"{t.source}_")
            meta = json.loads(m["json"])
            assert meta["task"] == task and meta["licence"]
            if TASKS[task].frames == "video":
                n_in = t.options.get("input_frames", 9)
                n_out = t.options.get("target_frames", 9)
                assert meta["frames"] == n_in and meta["target_frames"] == n_out
                frames_out = task in ("frame_prediction", "depth_to_video", "normal_to_video")
                ext = "png" if task in ("depth_to_video", "normal_to_video") else "jpg"  # renderings / photos
                assert meta["input"] == [f"input_{i:03d}.{ext}" for i in range(n_in)]
                ext = "jpg" if frames_out else "png"  # video frames / renderings
                assert meta["target"] == [f"target_{i:03d}.{ext}" for i in range(n_out)]
                frames = [decode_image(m[n]) for n in meta["input"] + meta["target"]]
                assert all(f.shape == (256, 256, 3) for f in frames)
                assert meta["frame_indices"] == list(range(9))
                break
            assert meta["frames"] == 1
            inp = decode_image(m[meta["input"]])
            tgt = decode_image(m["target.png"])
            assert inp.shape == tgt.shape == (256, 256, 3) and tgt.dtype == np.uint8
            if task == "object_detection":
                boxes, _ = decode_boxes(tgt)
                assert len(boxes) >= 0.8 * len(meta["params"]["boxes"])
            if task == "depth_estimation":
                raw = np.load(io.BytesIO(m["target_raw.npy"]))
                assert raw.shape == (256, 256) and raw.dtype == np.float32
            break


@pytest.mark.slow
def test_rerun_does_no_work_and_rebuilds_exactly_a_deleted_shard(ray_session, demo_build, tmp_path):
    spec0, _ = demo_build
    spec = small_demo_spec(tmp_path / "b")
    build(spec, **quiet)
    out = Path(spec.output)
    # Two builds of the same spec into different folders: byte-identical tars.
    assert all_tars(out) == all_tars(Path(spec0.output))

    # Shards and plans (manifest and report are refreshed on every run).
    mtimes = {p: p.stat().st_mtime_ns for d in ("base", "pairs", "plan") for p in (out / d).rglob("*") if p.is_file()}
    lines = []
    m = build(spec, echo=lines.append)
    assert "0 to do" in lines[0] and m["run"]["pairs_written"] == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten

    victim = pair_tar(out, "denoise", "synthetic", 2)
    before = victim.read_bytes()
    stats_path(victim).unlink()
    m = build(spec, **quiet)
    assert victim.read_bytes() == before
    assert stats_path(victim).exists()
    changed = [p for p, t in mtimes.items() if p.stat().st_mtime_ns != t]
    assert sorted(changed) == sorted([victim, index_path(victim), timing_path(victim), stats_path(victim)])
    assert m["run"]["pairs_written"] == json.loads(stats_path(victim).read_text())["n_ok"]


def test_webdataset_reads_pairs(demo_build):
    import webdataset as wds

    spec, _ = demo_build
    url = str(pair_tar(spec.output, "semantic_segmentation", "synthetic", 1))
    ds = wds.WebDataset(url, shardshuffle=False).decode("rgb8")
    samples = list(ds)
    assert len(samples) == 4
    for s in samples:
        assert s["__key__"].startswith("synthetic_")
        assert s["input.jpg"].shape == (256, 256, 3) and s["target.png"].dtype == np.uint8
        assert s["json"]["task"] == "semantic_segmentation"


def test_ray_data_reads_pairs(demo_build):
    import ray

    spec, _ = demo_build
    paths = [str(pair_tar(spec.output, "depth_estimation", "synthetic", s)) for s in range(4)]
    rows = ray.data.read_webdataset(paths).take_all()
    assert len(rows) == 16
    keys = {r["__key__"] for r in rows}
    assert keys == {f"synthetic_{i:06d}" for i in range(16)}
    r = rows[0]
    assert np.asarray(r["target.png"]).shape == (256, 256, 3)
    assert np.asarray(r["target_raw.npy"]).shape == (256, 256)


def test_hf_datasets_reads_pairs(demo_build, tmp_path):
    from datasets import load_dataset

    spec, _ = demo_build
    files = [str(pair_tar(spec.output, "colorization", "synthetic", s)) for s in range(4)]
    ds = load_dataset("webdataset", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 16
    row = ds[0]
    assert row["__key__"].startswith("synthetic_")
    assert np.asarray(row["target.png"]).shape == (256, 256, 3)
    assert row["json"]["task"] == "colorization"


def test_bad_samples_are_recorded_and_the_rest_written(demo_build, tmp_path, monkeypatch):
    spec = small_demo_spec(tmp_path / "f")
    out = Path(spec.output)
    good = base_tar(demo_build[0].output, "synthetic", 0)
    samples = dict(iter_tar_samples(good))
    keys = sorted(samples)
    # A truncated image and a missing json in a copy of a real base shard.
    samples[keys[1]]["image.png"] = samples[keys[1]]["image.png"][:100]
    del samples[keys[2]]["json"]
    w = ShardWriter(base_tar(out, "synthetic", 0), stage="ingest")
    for k in keys:
        w.add(k, samples[k])
    w.fail("synthetic_999999", "ingest", "OSError: unreadable")
    w.commit({"stage": "ingest"})
    stats = render_shard(spec, "synthetic", 0, ["colorization", "object_detection"])
    for st in stats:
        assert st["n_ok"] == 2 and st["n_error"] == 3
        idx = {r["key"]: r for r in pq.read_table(index_path(pair_tar(out, st["task"], "synthetic", 0))).to_pylist()}
        assert idx[keys[1]]["status"] == "error" and "cannot decode" in idx[keys[1]]["error"]
        assert idx[keys[2]]["status"] == "error" and "no json member" in idx[keys[2]]["error"]
        assert idx["synthetic_999999"]["stage"] == "ingest"
        assert {k for k, _ in iter_tar_samples(pair_tar(out, st["task"], "synthetic", 0))} == {keys[0], keys[3]}

    # An item the reader cannot read is recorded; the other items of the shard are written.
    from lavin_data.sources import synthetic_reader

    real = synthetic_reader.read

    def flaky(src, item, seed, source_meta):
        if item["item_id"] == "000005":
            raise OSError("disk on fire")
        return real(src, item, seed, source_meta)

    monkeypatch.setattr(synthetic_reader, "read", flaky)
    st = ingest_shard(spec, "synthetic", 1, [{"item_id": f"{i:06d}"} for i in range(4, 8)])
    assert st["n_ok"] == 3 and st["n_error"] == 1
    idx = pq.read_table(index_path(base_tar(out, "synthetic", 1))).to_pylist()
    assert [r["error"] for r in idx if r["status"] == "error"] == ["OSError: disk on fire"]


def test_preflight_refuses_before_any_work(tmp_path):
    d = {"name": "t", "output": str(tmp_path / "o"), "sources": [{"name": "s", "kind": "synthetic", "num_items": 2}],
         "tasks": [{"task": "frame_prediction", "source": "s"}]}
    with pytest.raises(BuildError, match="task 'frame_prediction' works on clips, but source 's' gives images"):
        build(parse_spec(d), **quiet)
    d["sources"] = [{"name": "s", "kind": "synthetic", "num_items": 2, "clip_frames": 9}]
    with pytest.raises(BuildError, match=r"frame_prediction 9 -> 13 frames needs clips of 21 frames; source 's' "
                                         r"cuts 9"):
        build(parse_spec(d), **quiet)
    d["sources"] = [{"name": "s", "kind": "video_folder", "root": "/nowhere"}]
    d["tasks"] = [{"task": "colorization", "source": "s"}]
    with pytest.raises(BuildError, match="(?s)source 's': /nowhere: video folder not found.*task 'colorization' works "
                                         "on images, but source 's' gives clips"):
        build(parse_spec(d), **quiet)
    assert not (tmp_path / "o").exists()


def test_preflight_compares_what_tasks_consume_with_what_sources_provide(tmp_path):
    """The registry says what each task consumes; a source lacking it (and no labeler making
    it) is refused before any work, not failed sample by sample."""
    photos = str(fixture_path("photos"))
    d = {"name": "t", "output": str(tmp_path / "o"),
         "sources": [{"name": "p", "kind": "image_folder", "root": photos},
                     {"name": "k", "kind": "coco", "images": photos,
                      "instances": str(fixture_path("coco_keypoints", "test_coco.json"))}],
         "tasks": [{"task": "depth_estimation", "source": "p"}, {"task": "colorization", "source": "p"},
                   {"task": "pose_estimation", "source": "k"}, {"task": "semantic_segmentation", "source": "k"},
                   {"task": "object_detection", "source": "k"}]}
    with pytest.raises(BuildError) as e:
        build(parse_spec(d), **quiet)
    msg = str(e.value)
    assert "tasks[0]: task 'depth_estimation' needs depth, which source 'p' (image_folder) does not provide; " \
           "give it a `labeler:` that makes depth" in msg
    assert "tasks[2]: task 'pose_estimation' needs keypoints, which source 'k' (coco)" in msg
    assert "tasks[3]: task 'semantic_segmentation' needs segments" in msg
    assert "tasks[1]" not in msg and "tasks[4]" not in msg
    assert not (tmp_path / "o").exists()


def test_output_in_an_older_base_format_is_refused(tmp_path):
    """A folder whose base shards were written in another layout is not resumed (its views
    would silently lose annotations)."""
    spec = small_demo_spec(tmp_path / "o")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "spec.json").write_text(json.dumps({"spec_hash": spec.spec_hash()}))  # no base_format: 1
    with pytest.raises(BuildError, match="base-sample format 1, and this version writes format 2"):
        build(spec, **quiet)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".lock", "spec.json"]


def test_output_of_another_spec_is_refused(demo_build):
    spec, _ = demo_build
    data = spec.model_dump(mode="json")
    data["seed"] = 1
    with pytest.raises(BuildError, match="different spec"):
        build(parse_spec(data), **quiet)


def test_cli_reports_bad_spec_cleanly(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\noutput: /tmp/x\nresolution: -3\nsources: [{name: s, kind: synthetic}]\n"
                 "tasks: [{task: colorization, source: s}]\n")
    assert main(["--spec", str(p)]) == 2
    err = capsys.readouterr().err
    assert "s.yaml" in err and "field resolution" in err and "Traceback" not in err


def test_items_with_nothing_to_render_are_recorded_as_skipped(demo_build, tmp_path):
    spec = small_demo_spec(tmp_path / "s")
    out = Path(spec.output)
    samples = dict(iter_tar_samples(base_tar(demo_build[0].output, "synthetic", 0)))
    keys = sorted(samples)
    meta = json.loads(samples[keys[0]]["json"])
    meta["segments_info"] = [s for s in meta["segments_info"] if not s["isthing"]]  # no objects listed
    samples[keys[0]]["json"] = json.dumps(meta).encode()
    w = ShardWriter(base_tar(out, "synthetic", 0), stage="ingest")
    for k in keys:
        w.add(k, samples[k])
    w.commit({"stage": "ingest"})
    (st,) = render_shard(spec, "synthetic", 0, ["single_object_detection"])
    assert st["n_ok"] == 3 and st["n_skipped"] == 1 and st["n_error"] == 0
    idx = {r["key"]: r for r in pq.read_table(index_path(pair_tar(out, "single_object_detection", "synthetic", 0)))
           .to_pylist()}
    assert idx[keys[0]]["status"] == "skipped" and "no object" in idx[keys[0]]["error"]


def test_pixel_stages_import_neither_torch_nor_torchvision():
    """Workers of the pixel build must start light: no torch (seconds and hundreds of MB
    per worker), and no torchvision, which has no CPU build on every platform."""
    import subprocess
    import sys

    code = ("import sys, pipelines.build, pipelines.stages, lavin_data.shards as s; "
            "from lavin_data.sources import reader_for; [reader_for(k) for k in ('synthetic', 'coco', 'nyu')]; "
            "print(sorted(m for m in ('torch', 'torchvision', 'transformers', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_decoded_batches_record_bad_samples_and_keep_the_rest():
    def decode(key, members):
        if key == "b":
            raise ValueError(f"{key}: truncated")
        return members["x"] * 2

    samples = [(k, {"x": i}) for i, k in enumerate("abcde")]
    got = list(decoded_batches(iter(samples), decode, 2))
    assert got == [([("a", 0)], [("b", "ValueError: b: truncated")]), ([("c", 4), ("d", 6)], []), ([("e", 8)], [])]
