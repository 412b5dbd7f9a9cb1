"""The build against hostile or unlucky conditions: a second writer, runs that must give the
same bytes, a full disk, a read-only output, broken spec.json, colliding item ids, huge
images and paths that climb out of their root. Each test reproduces a defect first found
by trying it (see the issue); the build must end with a clear message (exit 2) or a
recorded per-sample failure, never a traceback or silently mixed output."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from lavin_data.output_lock import OutputLock, OutputLockError
from lavin_data.shards import ShardWriter, index_path
from lavin_data.spec import Spec, parse_spec
from pipelines.build import BuildError, build, main
from pipelines.layout import base_tar, pair_tar
from tests.conftest import ROOT, small_demo_spec

quiet = {"echo": lambda *_: None}


def photo_spec(root: Path, out: Path, **src) -> dict:
    return {"name": "t", "output": str(out), "shard_size": 8,
            "sources": [dict({"name": "p", "kind": "image_folder", "root": str(root)}, **src)],
            "tasks": [{"task": "colorization", "source": "p"}]}


def write_photos(root: Path, n: int = 3, size: tuple[int, int] = (48, 40)) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(root / f"im{i}.png"), rng.integers(0, 255, (size[1], size[0], 3), np.uint8))


# --------------------------------------------------------------------------- one writer


def test_a_second_build_into_the_same_output_is_refused_naming_the_holder(tmp_path):
    """Two builds started together both passed the spec.json check and mixed their shards.
    The output lock is held for the whole build; the second gets the holder's pid and host.
    A lock file left by a dead process does not block."""
    out = tmp_path / "o"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from lavin_data.output_lock import OutputLock
        with OutputLock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = rf"{out} is being written by another run \(pid {holder.pid} on host "
        with pytest.raises(OutputLockError, match=busy), OutputLock(out):
            pass
        write_photos(tmp_path / "photos")
        spec = parse_spec(photo_spec(tmp_path / "photos", out))
        with pytest.raises(BuildError, match=busy):
            build(spec, **quiet)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written beside the holder
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: its lock file remains but no longer blocks.
    assert (out / ".lock").exists()
    with OutputLock(str(out)) as lock:
        assert lock.stale_holder is not None and f"pid {holder.pid}" in lock.stale_holder
    with OutputLock(str(out)) as lock:
        assert lock.stale_holder is None  # released cleanly last time


# --------------------------------------------------------------------------- reproducible


def test_index_does_not_depend_on_object_addresses(tmp_path):
    """Error strings carried object reprs (`<_io.BytesIO object at 0x7f...>`), so the same
    input gave different parquet bytes on every run."""
    blobs = []
    for addr in ("0x7f3a1c2b9d60", "0x7fe01234abcd"):
        path = tmp_path / addr / "x.tar"
        w = ShardWriter(path, "ingest")
        w.fail("a", "ingest", f"UnidentifiedImageError: cannot identify image file <_io.BytesIO object at {addr}>")
        w.commit({})
        blobs.append(index_path(path).read_bytes())
    assert blobs[0] == blobs[1]
    err = pq.read_table(index_path(tmp_path / "0x7f3a1c2b9d60" / "x.tar")).to_pylist()[0]["error"]
    assert "cannot identify image file <_io.BytesIO object>" in err


def test_spec_hash_ignores_the_output_path_and_survives_a_json_round_trip(tmp_path):
    """The hash included the output path (a moved build was 'a different spec') and changed
    after a JSON round trip (80 -> 80.0), so stats never matched spec.json."""
    a = small_demo_spec(tmp_path / "a")
    b = small_demo_spec(tmp_path / "b")
    assert a.spec_hash() == b.spec_hash()
    assert Spec.model_validate_json(a.model_dump_json()).spec_hash() == a.spec_hash()
    assert a.spec_hash() != parse_spec(dict(a.model_dump(mode="json"), seed=1)).spec_hash()


def test_stats_are_reproducible_and_timings_are_apart(demo_build, tmp_path):
    """Timings made every stats file differ between runs: they now live in `<shard>.timing.json`,
    and the stats (with the spec hash of spec.json) are the same bytes on every run."""
    spec, _ = demo_build
    out = Path(spec.output)
    held = json.loads((out / "spec.json").read_text())["spec_hash"]
    stats = sorted(out.rglob("*.stats.json"))
    assert stats and all("seconds" not in json.loads(p.read_text()) for p in stats)
    assert {json.loads(p.read_text())["spec_hash"] for p in stats} == {held}
    assert all(p.with_name(p.name.replace(".stats.json", ".timing.json")).exists() for p in stats)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "seconds" not in manifest and manifest["spec_hash"] == held


# --------------------------------------------------------------------------- failures end cleanly


def test_full_disk_ends_with_a_message_and_no_temp_files(ray_session, tmp_path, monkeypatch, capsys):
    """A full disk ended in an uncaught OSError, a 0-byte manifest.json, temp files left
    and the per-shard errors never printed. Now: exit 2 naming the path, the shard errors
    printed, the manifest whole or absent, and the next run removes the temp files."""
    write_photos(tmp_path / "photos")
    spec_file = tmp_path / "s.yaml"
    out = tmp_path / "o"
    spec_file.write_text(json.dumps(photo_spec(tmp_path / "photos", out)))
    import pipelines.build as build_module

    real_write = build_module.atomic_write

    def full(path, data):
        if Path(path).name == "manifest.json":
            Path(path).with_name(".manifest.json.tmp-1").write_bytes(data[:10])  # a partial write, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data)

    monkeypatch.setattr(build_module, "atomic_write", full)
    assert main(["--spec", str(spec_file), "--num-cpus", "1"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(out) in err and "Traceback" not in err
    assert not (out / "manifest.json").exists()  # never a truncated manifest
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert leftovers  # the partial manifest's temp file
    monkeypatch.setattr(build_module, "atomic_write", real_write)
    assert main(["--spec", str(spec_file), "--num-cpus", "1"]) == 0
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert json.loads((out / "manifest.json").read_text())["counts"]["colorization"]["p"] == 3


def test_shard_errors_are_printed_as_they_come(ray_session, tmp_path, capsys):
    """A shard that cannot be written (here a file stands where its folder goes) is printed
    with its error and counted, the build exits 2, and no temp file is left."""
    write_photos(tmp_path / "photos")
    spec_file = tmp_path / "s.yaml"
    out = tmp_path / "o"
    spec_file.write_text(json.dumps(photo_spec(tmp_path / "photos", out)))
    out.mkdir()
    (out / "pairs").write_text("not a folder")
    assert main(["--spec", str(spec_file), "--num-cpus", "1"]) == 2
    err = capsys.readouterr().err
    assert "1 shard(s) failed" in err and "p-000000: " in err and "pairs/colorization" in err
    assert "Traceback" not in err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_read_only_output_is_exit_2(tmp_path, monkeypatch, capsys):
    """A read-only output ended in a traceback. (Tests run as root, who may write anywhere:
    the read-only file system is injected.)"""
    write_photos(tmp_path / "photos")
    out = tmp_path / "ro" / "o"
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if str(self).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(json.dumps(photo_spec(tmp_path / "photos", out)))
    assert main(["--spec", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}" in err and "Read-only file system" in err and "Traceback" not in err


@pytest.mark.parametrize("content", ["", "{\"spec_hash\": \"ab", "[1, 2]", "\x00\x01"])
def test_broken_spec_json_is_exit_2(tmp_path, capsys, content):
    write_photos(tmp_path / "photos")
    out = tmp_path / "o"
    out.mkdir()
    (out / "spec.json").write_text(content)
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(json.dumps(photo_spec(tmp_path / "photos", out)))
    assert main(["--spec", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'spec.json'} is unreadable" in err and "Traceback" not in err


def test_colliding_item_ids_are_exit_2(tmp_path, capsys):
    write_photos(tmp_path / "photos", 1)
    cv2.imwrite(str(tmp_path / "photos" / "im0.jpg"), np.zeros((8, 8, 3), np.uint8))
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(json.dumps(photo_spec(tmp_path / "photos", tmp_path / "o")))
    assert main(["--spec", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert "two files map to the item id 'im0'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- bounded resources, paths


def test_images_over_max_image_pixels_fail_before_decoding(ray_session, tmp_path, monkeypatch):
    """One 12000^2 PNG took 2.1 GB in one worker. The header is read first: an image over
    the source's `max_image_pixels` is a recorded failure and is never decoded."""
    from PIL import Image

    write_photos(tmp_path / "photos", 2)
    write_photos(tmp_path / "photos" / "big", 1, size=(300, 200))
    decoded = []
    real_load = Image.Image.load

    def load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", load)
    spec = parse_spec(photo_spec(tmp_path / "photos", tmp_path / "o", max_image_pixels=50_000))
    from pipelines.build import shard_jobs
    from pipelines.stages import ingest_shard

    (tmp_path / "o").mkdir()
    jobs, _ = shard_jobs(spec)
    ingest_shard(spec, "p", 0, json.loads(jobs[0]["items"]), {})
    rows = pq.read_table(index_path(base_tar(spec.output, "p", 0))).to_pylist()
    big = next(r for r in rows if r["key"] == "p_big-im0")
    assert big["status"] == "error" and "300x200 = 60000 pixels, over max_image_pixels 50000" in big["error"]
    assert "big/im0.png" in big["error"]
    assert (300, 200) not in decoded and (48, 40) in decoded
    assert [r["status"] for r in rows if r["key"] != "p_big-im0"] == ["ok", "ok"]


def test_coco_file_name_outside_images_is_a_sample_failure(ray_session, tmp_path):
    """A COCO `file_name` of `../outside.jpg` was read from outside `images`."""
    images = tmp_path / "coco" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("inside.jpg", "../outside.jpg"):
        cv2.imwrite(str(images / name), rng.integers(0, 255, (40, 48, 3), np.uint8))
    ann = {"images": [{"id": i + 1, "file_name": f, "width": 48, "height": 40} for i, f in
                      enumerate(["inside.jpg", "../outside.jpg", "/etc/hostname"])],
           "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
                            "iscrowd": 0} for i in range(3)],
           "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(ann))
    spec = parse_spec({"name": "t", "output": str(tmp_path / "o"), "max_failure_fraction": 1.0,
                       "sources": [{"name": "c", "kind": "coco", "images": str(images),
                                    "instances": str(tmp_path / "coco" / "ann.json")}],
                       "tasks": [{"task": "object_detection", "source": "c"}]})
    build(spec, **quiet)
    rows = {r["key"]: r for r in pq.read_table(index_path(pair_tar(spec.output, "object_detection", "c", 0)))
            .to_pylist()}
    assert rows["c_000000000001"]["status"] == "ok"
    for key, name in (("c_000000000002", "../outside.jpg"), ("c_000000000003", "/etc/hostname")):
        assert rows[key]["status"] == "error" and f"path {name!r} must be relative to {images}" in rows[key]["error"]


def test_image_folder_file_list_outside_root_is_a_sample_failure(tmp_path):
    from lavin_data.sources import image_folder_reader

    write_photos(tmp_path / "photos", 1)
    write_photos(tmp_path / "elsewhere", 1)
    (tmp_path / "list.txt").write_text("im0.png\n../elsewhere/im0.png\n")
    src = parse_spec(photo_spec(tmp_path / "photos", tmp_path / "o", file_list=str(tmp_path / "list.txt"))).sources[0]
    items = image_folder_reader.plan(src)
    bad = [it for it in items if it.get("error")]
    assert len(items) == 2 and len(bad) == 1 and "'../elsewhere/im0.png' must be relative to" in bad[0]["error"]


def test_output_inside_a_source_root_is_refused(tmp_path):
    """An output folder inside a source folder made the next build ingest its own report images."""
    write_photos(tmp_path / "photos")
    spec = parse_spec(photo_spec(tmp_path / "photos", tmp_path / "photos" / "out"))
    with pytest.raises(BuildError, match=r"output .*photos/out is inside source 'p' \(root .*photos\)"):
        build(spec, **quiet)
    assert not (tmp_path / "photos" / "out").exists()


def test_encode_latents_takes_the_output_lock(tmp_path, capsys):
    """A second `encode_latents` into a folder another run is writing is refused (exit 2)."""
    from lavin_data.encode_latents import main as encode_main

    (tmp_path / "pairs").mkdir()
    with OutputLock(tmp_path / "lat"):
        assert encode_main(["--pixels", str(tmp_path / "pairs"), "--out", str(tmp_path / "lat"),
                            "--vae-config", "{}"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'lat'} is being written by another run (pid {os.getpid()}" in err
    assert "or use another --out\n" in err  # encode_latents' own option


def test_encode_latents_output_that_cannot_be_written_is_exit_2(tmp_path, capsys):
    from lavin_data.encode_latents import main as encode_main

    (tmp_path / "pairs").mkdir()
    (tmp_path / "taken").write_text("a file where the output folder goes")
    assert encode_main(["--pixels", str(tmp_path / "pairs"), "--out", str(tmp_path / "taken" / "lat"),
                        "--vae-config", "{}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'taken' / 'lat'}" in err and "Traceback" not in err
