"""lavin_data.verify on the demo build and on copies of it with one thing broken; and the
stats' sizes and hashes that let a re-run rebuild a shard whose tar was deleted or cut."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lavin_data.codecs import encode_npy
from lavin_data.shards import ShardWriter, index_path, iter_tar_samples, read_stats, shard_done, stats_path
from lavin_data.sidecar import encode_depth
from lavin_data.spec import parse_spec
from lavin_data.verify import main, verify
from pipelines.build import build
from tests.conftest import ROOT


def _copy(demo_build, tmp_path: Path) -> Path:
    """A private copy of the shared demo build (the fixture itself must stay untouched)."""
    return Path(shutil.copytree(demo_build[0].output, tmp_path / "out", symlinks=True))


def _pair_tar_with(out: Path, suffix: str, shard: str = "synthetic-000001.tar") -> tuple[Path, tarfile.TarInfo]:
    """The first pair shard (tasks sorted) holding a member ending in ``suffix``, and that member."""
    for tar in sorted((out / "pairs").glob(f"*/{shard}")):
        with tarfile.open(tar) as tf:
            info = next((i for i in tf if i.name.endswith(suffix)), None)
        if info is not None:
            return tar, info
    raise AssertionError(f"no pair shard {shard} with a member *{suffix}")


def _rewrite_tar(tar: Path, drop: str) -> None:
    """Write ``tar`` again without member ``drop`` (every other member as it was)."""
    with tarfile.open(tar) as src:
        kept = [(i, src.extractfile(i).read()) for i in src if i.name != drop]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for info, data in kept:
            dst.addfile(info, io.BytesIO(data))
    tar.write_bytes(buf.getvalue())


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _rel(out: Path, p: Path) -> str:
    return str(p.relative_to(out))


def test_the_demo_build_verifies_clean_through_the_cli(demo_build):
    out = Path(demo_build[0].output)
    stats = [json.loads(p.read_text()) for p in out.rglob("*.stats.json")]
    for args in ([], ["--quick"]):
        r = subprocess.run([sys.executable, "-m", "lavin_data.verify", str(out), *args], capture_output=True,
                           text=True, cwd=ROOT)
        assert r.returncode == 0, r.stdout + r.stderr
        (line,) = r.stdout.splitlines()
        assert line.startswith(f"[verify] {out}: OK: ")
        # Counted independently: every committed shard, every ok sample of them.
        assert f"{len(stats)} shards, {sum(s['n_ok'] for s in stats)} samples checked" in line
    listed = json.loads((out / "manifest.json").read_text())["shards"]
    assert len(stats) == sum(map(len, listed.values())) > 0 and all(len(s["tar_sha256"]) == 64 for s in stats)


def test_stats_record_sizes_and_hashes_and_shard_done_checks_the_sizes(tmp_path):
    def write(path: Path) -> dict:
        w = ShardWriter(path, stage="t")
        for k in ("b", "a"):  # unsorted: the commit rewrites the tar; the hash is of the final file
            w.add(k, {"json": b'{"x": 1}', "x.npy": encode_npy(np.arange(5, dtype=np.int16))})
        w.fail("c", "t", "ValueError: no")
        return w.commit({"stage": "t"})

    tar = tmp_path / "one" / "s-000000.tar"
    st = write(tar)
    assert st == read_stats(tar)
    assert st["bytes"] == tar.stat().st_size and st["tar_sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest()
    idx = index_path(tar).read_bytes()
    assert st["index_bytes"] == len(idx) and st["index_sha256"] == hashlib.sha256(idx).hexdigest()
    # The same shard written again: the same stats bytes.
    again = tmp_path / "two" / "s-000000.tar"
    write(again)
    assert stats_path(again).read_bytes() == stats_path(tar).read_bytes()

    assert shard_done(tar)
    index_path(tar).write_bytes(idx[:-1])  # an index cut short
    assert not shard_done(tar)
    index_path(tar).write_bytes(idx)
    whole = tar.read_bytes()
    tar.write_bytes(whole[:-512])  # a tar cut short
    assert not shard_done(tar)
    tar.unlink()
    assert not shard_done(tar)
    # Stats of older code (no index size, no hashes): done when the tar has its recorded size.
    tar.write_bytes(whole)
    old = {k: v for k, v in st.items() if k not in ("tar_sha256", "index_bytes", "index_sha256")}
    stats_path(tar).write_text(json.dumps(old))
    index_path(tar).unlink()
    assert shard_done(tar)
    tar.write_bytes(whole[:1024])
    assert not shard_done(tar)
    stats_path(tar).write_text('{"bytes": 17')  # a stats file cut short: rebuild
    assert not shard_done(tar)


def test_a_flipped_byte_in_a_png_is_found_and_named(demo_build, tmp_path):
    out = _copy(demo_build, tmp_path)
    tar, info = _pair_tar_with(out, ".target.png")
    png = tar.read_bytes()[info.offset_data:info.offset_data + info.size]
    idat = png.index(b"IDAT")
    length = int.from_bytes(png[idat - 4:idat], "big")
    _flip(tar, info.offset_data + idat + 4 + length // 2)  # the middle of the first IDAT chunk's data
    problems = verify(out)
    rel = _rel(out, tar)
    assert any(p.startswith(f"{rel}: {info.name}: cannot decode") for p in problems), problems
    assert any(p.startswith(f"{rel}: SHA-256 differs") for p in problems), problems
    assert all(p.startswith(f"{rel}: ") for p in problems), problems
    # --quick decodes no image: the hash still finds the change.
    assert verify(out, check_images=False) == [p for p in problems if "SHA-256" in p]


def test_changed_bytes_that_only_the_hashes_see_are_found(demo_build, tmp_path):
    """A changed value inside a raw array (it still loads with its shape and dtype), and a
    changed letter in the index's footer (it still reads, with the same rows)."""
    out = _copy(demo_build, tmp_path)
    tar, info = _pair_tar_with(out, ".target_raw.npy")
    _flip(tar, info.offset_data + info.size - 3)
    index = index_path(_pair_tar_with(out, ".json", "synthetic-000003.tar")[0])
    rows = pq.read_table(index).to_pylist()
    footer = index.read_bytes().rindex(b"parquet-cpp-arrow")
    _flip(index, footer)
    assert pq.read_table(index).to_pylist() == rows
    problems = verify(out)
    assert sorted(problems) == sorted([
        f"{_rel(out, tar)}: SHA-256 differs from the one the stats record: the file changed after its commit; "
        "delete it and re-run the build",
        f"{_rel(out, index)}: SHA-256 differs from the one the stats record: the file changed after its commit; "
        "delete the shard's tar and re-run the build",
    ])


@pytest.mark.parametrize(("folder", "suffix", "expected"), [
    ("pairs", ".target.png", "{key}: missing member target.png (the json names it)"),
    ("pairs", ".target_raw.npy", "{key}: missing member target_raw.npy (the json names it)"),
    ("clip pairs", ".input_003.jpg", "{key}: missing member input_003.jpg (the json names it)"),
    ("base", ".image.png", "{key}: expected one image member (image.jpg or image.png), has none"),
])
def test_a_deleted_member_is_found(demo_build, tmp_path, folder, suffix, expected):
    out = _copy(demo_build, tmp_path)
    if folder == "pairs":
        tar, info = _pair_tar_with(out, suffix)
    elif folder == "clip pairs":
        tar, info = _pair_tar_with(out, suffix, "synthetic-video-000000.tar")
    else:
        tar = out / "base" / "synthetic" / "synthetic-000002.tar"
        with tarfile.open(tar) as tf:
            info = next(i for i in tf if i.name.endswith(suffix))
    _rewrite_tar(tar, info.name)
    problems = verify(out)
    rel, key = _rel(out, tar), info.name.partition(".")[0]
    assert f"{rel}: " + expected.format(key=key) in problems, problems
    assert any(p.startswith(f"{rel}: {key}: the index says ") for p in problems), problems  # bytes column
    assert any(re.match(rf"{re.escape(rel)}: \d+ bytes, the stats record \d+", p) for p in problems), problems
    assert all(p.startswith(f"{rel}: ") for p in problems), problems


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_deleted_or_truncated_tar_is_found_and_a_rerun_rebuilds_it(ray_session, demo_build, tmp_path, capsys,
                                                                     damage):
    out = _copy(demo_build, tmp_path)
    spec = parse_spec(dict(demo_build[0].model_dump(mode="json"), output=str(out)))
    victim, _ = _pair_tar_with(out, ".json", "synthetic-000002.tar")
    original = victim.read_bytes()
    assert shard_done(victim)
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(original[:len(original) // 2])
    assert main([str(out)]) == 1
    printed = capsys.readouterr().out.splitlines()
    rel = _rel(out, victim)
    what = "missing (the stats say" if damage == "delete" else f"{len(original) // 2} bytes, the stats record"
    assert any(p.startswith(f"{rel}: {what}") for p in printed), printed
    assert printed[-1].startswith(f"[verify] {out}: ") and " problem(s); " in printed[-1]
    assert not shard_done(victim)

    lines: list[str] = []
    build(spec, echo=lines.append)
    assert "4 already done, 1 to do" in lines[0]  # the source shard of the victim, only
    assert victim.read_bytes() == original
    assert verify(out) == []


def test_an_index_whose_ok_keys_disagree_with_the_tar_is_found(demo_build, tmp_path):
    out = _copy(demo_build, tmp_path)
    tar, info = _pair_tar_with(out, ".json")
    key = info.name.partition(".")[0]
    rows = pq.read_table(index_path(tar)).to_pylist()
    assert sum(r["key"] == key for r in rows) == 1
    for r in rows:
        if r["key"] == key:
            r["key"] = "synthetic_999999"
    rows.append(dict(rows[-1]))  # and one row twice
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(index_path(tar))), sink)
    data = sink.getvalue().to_pybytes()
    index_path(tar).write_bytes(data)
    # A writer's mistake, not bit rot: the stats agree with the new index, so only its content can tell.
    st = read_stats(tar)
    st.update(index_bytes=len(data), index_sha256=hashlib.sha256(data).hexdigest())
    st[f"n_{rows[-1]['status']}"] += 1
    stats_path(tar).write_text(json.dumps(st))
    problems = verify(out, check_images=False)
    rel, irel = _rel(out, tar), _rel(out, index_path(tar))
    assert sorted(problems) == sorted([
        f"{rel}: 1 key(s) the index lists as ok are not in the tar: synthetic_999999",
        f"{rel}: 1 sample(s) in the tar are not ok in the index: {key}",
        f"{irel}: 1 key(s) listed more than once: {rows[-1]['key']}",
    ])


def _latent_output(root: Path, task: str, pair_tar: Path, keys: list[str]) -> Path:
    """A latent shard as encode_latents writes it (members, json fields, stats), without a VAE."""
    rng = np.random.default_rng(0)
    tar = root / task / pair_tar.name
    w = ShardWriter(tar, stage="encode_latents")
    for k in sorted(keys):
        info = {"resolution": 64, "frames": 1, "latent_frames": 1, "shift": 0.0, "scale": 1.0, "pair": {"task": task}}
        w.add(k, {"input_moments.npy": encode_npy(rng.standard_normal((32, 1, 8, 8)).astype(np.float16)),
                  "target_moments.npy": encode_npy(rng.standard_normal((32, 1, 8, 8)).astype(np.float16)),
                  "json": json.dumps(info).encode()})
    w.commit({"stage": "encode_latents", "source_shard": str(pair_tar), "resolution": 64})
    return tar


def test_latent_keys_that_are_not_pair_keys_are_found(demo_build, tmp_path):
    out = _copy(demo_build, tmp_path)
    pair, _ = _pair_tar_with(out, ".json")
    task = pair.parent.name
    keys = [k for k, _ in iter_tar_samples(pair)]
    root = out / "latents" / "stvae-64"
    _latent_output(root, task, pair, keys)
    assert verify(out, check_images=False) == [] and verify(root) == []
    _latent_output(root, task, pair, keys[1:] + ["synthetic_999999"])
    want = [f"latents/stvae-64/{task}/{pair.name}: synthetic_999999: latent key is not a pair key of task {task} "
            f"(pairs/{task})"]
    assert verify(out, check_images=False) == want
    # Given alone, the latent output finds its pairs in the build around it.
    assert verify(root) == [f"{task}/{pair.name}: synthetic_999999: latent key is not a pair key of task {task} "
                            f"({out / 'pairs' / task})"]


def test_label_sidecars_are_checked_against_their_base_samples(demo_build, tmp_path):
    out = _copy(demo_build, tmp_path)
    base = out / "base" / "synthetic" / "synthetic-000000.tar"
    samples = dict(iter_tar_samples(base))
    lab = out / "labels" / "da" / "synthetic" / base.name
    w = ShardWriter(lab, stage="label")
    keys = sorted(samples)
    for k in keys:
        meta = json.loads(samples[k]["json"])
        h, w_ = (meta["height"], meta["width"]) if k != keys[2] else (meta["height"] // 2, meta["width"])
        w.add(k, encode_depth(np.linspace(1, 9, h * w_, dtype=np.float32).reshape(h, w_), "disparity", {}))
    w.commit({"stage": "label"})
    problems = verify(out)
    meta = json.loads(samples[keys[2]]["json"])
    assert problems == [f"labels/da/synthetic/{base.name}: {keys[2]}.depth.png: image is {meta['width']}x"
                        f"{meta['height'] // 2}, the json says {meta['width']}x{meta['height']}"]


def test_a_key_in_two_shards_of_a_task_is_found(demo_build, tmp_path):
    out = _copy(demo_build, tmp_path)
    tar, _ = _pair_tar_with(out, ".json")
    twin = tar.with_name("synthetic-000009.tar")
    for f in (tar, index_path(tar), stats_path(tar)):  # a whole committed shard, under another name
        shutil.copy(f, twin.with_name(f.name.replace(tar.stem, twin.stem)))
    keys = [k for k, _ in iter_tar_samples(tar)]
    assert keys and sorted(verify(out, check_images=False)) == sorted(
        f"{_rel(out, twin)}: {k}: key also in {tar.name} of the same pair folder {_rel(out, tar.parent)}" for k in keys)


def test_unfinished_shards_uncommitted_tars_and_temporaries_are_reported(demo_build, tmp_path):
    out = _copy(demo_build, tmp_path)
    listed = json.loads((out / "manifest.json").read_text())["shards"]["pairs"][0]
    stats_path(out / listed).unlink()
    tmp = out / "pairs" / "colorization" / ".synthetic-000000.tar.tmp-host-1-abcdef12"
    tmp.write_bytes(b"partial")
    stray = out / "base" / "synthetic" / "synthetic-000009.tar"
    stray.write_bytes(b"\0" * 1024)
    assert sorted(verify(out, check_images=False)) == sorted([
        f"{listed}: listed in manifest.json but not committed (no stats file): unfinished; re-run the build",
        f"{_rel(out, tmp)}: temporary file of a killed or failed run (the next run removes it)",
        f"{_rel(out, stray)}: no stats file: the shard was never committed (a killed run; re-run the build)",
    ])
    (out / "manifest.json").unlink()
    assert "manifest.json: missing: the build has not finished (re-run it)" in verify(out, check_images=False)


def test_a_folder_that_is_no_output_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "pairs" / "t").mkdir(parents=True)
    assert main([str(tmp_path)]) == 2
    assert "not a build output" in capsys.readouterr().err
