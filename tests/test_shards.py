"""The shard writer streams to disk and still writes the byte-reproducible tar of docs/design.md (Stages over shards);
the shard reader gives random access by key without loading the shard."""

from __future__ import annotations

import io
import tarfile
import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import pytest

from lavin_data.shards import ShardReader, ShardWriter, index_path, iter_tar_samples, read_stats


def expected_tar(samples: dict[str, dict[str, bytes]]) -> bytes:
    """The reference layout, built here independently: members sorted by key then extension,
    mtime 0, mode 0644, no owners, USTAR."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in sorted(samples):
            for ext in sorted(samples[key]):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(samples[key][ext]), 0, 0o644, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(samples[key][ext]))
    return buf.getvalue()


def make_samples(n: int, seed: int = 0) -> dict[str, dict[str, bytes]]:
    rng = np.random.default_rng(seed)
    # Keys whose arrival order (item, then its variants) is not their sorted order:
    # "a1_c3" > "a10" because "_" > "0".
    keys = []
    for i in range(n):
        keys += [f"a{i}", f"a{i}_c3"]
    return {k: {"json": b'{"k": "%s"}' % k.encode(), "input.jpg": rng.bytes(int(rng.integers(1, 3000))),
                "target.png": rng.bytes(int(rng.integers(0, 1500)))} for k in keys}


@pytest.mark.parametrize("order", ["sorted", "arrival", "reversed"])
def test_writer_tar_is_sorted_and_byte_identical_whatever_the_arrival_order(tmp_path, order):
    samples = make_samples(12)
    keys = {"sorted": sorted(samples), "arrival": list(samples), "reversed": sorted(samples, reverse=True)}[order]
    assert keys != sorted(keys) or order == "sorted"
    w = ShardWriter(tmp_path / "s-000000.tar", stage="render")
    for k in keys:
        w.add(k, samples[k])
    w.fail("zz_bad", "render", "ValueError: broken")
    w.skip("a5_c9", "render", "nothing to render")
    st = w.commit({"stage": "render"})
    assert (tmp_path / "s-000000.tar").read_bytes() == expected_tar(samples)
    assert [k for k, _ in iter_tar_samples(tmp_path / "s-000000.tar")] == sorted(samples)
    rows = pq.read_table(index_path(tmp_path / "s-000000.tar")).to_pylist()
    assert [r["key"] for r in rows] == sorted(list(samples) + ["zz_bad", "a5_c9"])
    assert {r["key"]: r["bytes"] for r in rows if r["status"] == "ok"} == \
        {k: sum(map(len, m.values())) for k, m in samples.items()}
    assert st == read_stats(tmp_path / "s-000000.tar") and (st["n_ok"], st["n_error"], st["n_skipped"]) == (24, 1, 1)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_writer_holds_one_sample_not_the_shard(tmp_path):
    """40 samples of 2 MB: the writer's peak traced memory stays near one sample (a writer
    that kept the shard, as it once did, peaks above 80 MB)."""
    size, n = 2 << 20, 40
    tracemalloc.start()
    try:
        w = ShardWriter(tmp_path / "big-000000.tar", stage="ingest")
        for i in range(n):
            w.add(f"k{i:03d}", {"image.png": np.full(size, i % 251, np.uint8).tobytes(), "json": b"{}"})
        w.commit({})
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * size, f"peak {peak / 2**20:.1f} MiB"
    got = dict(iter_tar_samples(tmp_path / "big-000000.tar"))
    assert len(got) == n and got["k007"]["image.png"] == bytes([7]) * size


def test_abandoned_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "s-000001.tar", stage="render") as w:
        w.add("a", {"json": b"{}"})
        raise RuntimeError("shard-level failure")
    assert list(tmp_path.iterdir()) == []


def test_reader_gives_each_sample_by_key(tmp_path):
    samples = make_samples(5, seed=1)
    w = ShardWriter(tmp_path / "s-000000.tar", stage="label")
    for k in samples:
        w.add(k, samples[k])
    w.commit({})
    with ShardReader(tmp_path / "s-000000.tar") as r:
        assert r.keys() == sorted(samples)
        for k in reversed(list(samples)):  # any order
            assert r[k] == samples[k]
        assert "nope" not in r and "a3_c3" in r
        with pytest.raises(KeyError, match="no sample 'nope'"):
            r["nope"]


def test_a_sample_that_cannot_be_written_leaves_nothing_in_the_tar(tmp_path):
    """A member name over the tar format's limit fails the sample before any of its bytes are
    written; the shard's other samples are committed as usual."""
    w = ShardWriter(tmp_path / "s-000000.tar", stage="render")
    w.add("a", {"json": b"{}", "target.png": b"x"})
    long_key = "k" * 200
    with pytest.raises(ValueError, match="too long"):
        w.add(long_key, {"input.jpg": b"1", "json": b"{}", "target.png": b"2"})
    w.fail(long_key, "render", "name too long")
    w.add("b", {"json": b"{}", "target.png": b"y"})
    w.commit({})
    assert (tmp_path / "s-000000.tar").read_bytes() == expected_tar({"a": {"json": b"{}", "target.png": b"x"},
                                                                   "b": {"json": b"{}", "target.png": b"y"}})
