"""Planning at scale (columnar plans) gives exactly the rows the item-by-item definition
gives, and the label stage holds about two batches of decoded images, not a shard's worth.

The reference computations here are written out plainly (sorted set of listed paths, pathlib
per path, SHA-256 split rule, ``i // shard_size``), independently of the planner's code."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import weakref
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lavin_data.sources import SourceError, image_folder_reader
from lavin_data.spec import parse_spec
from pipelines.build import plan_sources, shard_items, shard_jobs
from pipelines.layout import plan_path

SOURCE = "inet"
COLUMNS = ["item_id", "path", "class_name", "error", "key", "shard", "split"]


# --------------------------------------------------------------------------- reference


def ref_split(key: str, val_fraction: float) -> str:
    """The documented rule (lavin_data/split.py): val when the first 64 bits of the key's
    SHA-256, as a fraction of 2**64, fall under val_fraction."""
    return "val" if int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64 < val_fraction \
        else "train"


def ref_image_folder_rows(root: Path, file_list: Path, shard_size: int, val_fraction: float,
                          limit: int | None = None, seed: int = 0) -> list[dict]:
    rels = sorted({ln.strip().split()[0] for ln in file_list.read_text().splitlines() if ln.strip()})
    if limit is not None and limit < len(rels):
        pick = np.random.default_rng(seed).choice(len(rels), size=limit, replace=False)
        rels = sorted(rels[i] for i in pick)
    rows, seen = [], set()
    for i, rel in enumerate(rels):
        p = PurePosixPath(rel)
        item_id = re.sub(r"[^A-Za-z0-9-]+", "-", str(p.with_suffix(""))).strip("-")
        assert item_id not in seen, f"the test's own list repeats the id {item_id}"
        seen.add(item_id)
        if p.is_absolute():
            ok = ".." not in p.parts and PurePosixPath(os.path.normpath(rel)).is_relative_to(root)
        else:
            ok = ".." not in p.parts
        key = f"{SOURCE}_{item_id}"
        rows.append({"item_id": item_id, "path": rel, "class_name": p.parts[0] if len(p.parts) > 1 else "",
                     "error": None if ok else f"{file_list}: path {rel!r} must be relative to {root}, inside it",
                     "key": key, "shard": i // shard_size, "split": ref_split(key, val_fraction)})
    return rows


def imagenet_like_list(root: Path, path: Path, n: int = 3000, seed: int = 0) -> None:
    """``n`` ImageNet-style paths in shuffled order, repeated and blank lines, lines with more
    words, whitespace and other line breaks that ``splitlines`` splits at, and unusual paths:
    unicode, quotes and percent signs, no suffix or a trailing dot, ``.``/``..``/``//`` parts,
    absolute paths inside and outside root, paths climbing out of root."""
    rng = np.random.default_rng(seed)
    syn = [f"n{1440764 + 7919 * k:08d}" for k in range(20)]
    paths = [f"{syn[k % 20]}/{syn[k % 20]}_{x}.JPEG" for k, x in enumerate(rng.choice(10**6, n, replace=False))]
    odd = ["flat.jpg", "été/café.JPEG", 'q"uo\\te/p%d%%.png', "a/..b", "a/b.", "x/.hid", "a/b.c.d.jpg",
           "../up.jpg", "/abs/out.jpg", "n1/../../esc.jpg", f"{root}/abs_in/x.jpg", "./dotdir/a.jpg", "dd//e.jpg",
           "trail/dir/", "n0/noext"]
    lines = paths + odd + [paths[i] for i in rng.choice(len(paths), 50)]  # 50 repeated
    lines = [lines[i] for i in rng.permutation(len(lines))]
    lines[10] = "  " + lines[10] + "\t 123 extra words"
    lines[20] = lines[20] + "\x0c" + "ff/split.jpg"  # a form feed: splitlines makes two lines
    lines[30] = lines[30] + "\u2028" + "ls/split.jpg"
    lines[40] = "   "
    path.write_text("\n".join(lines[:500]) + "\n\n" + "\n".join(lines[500:]) + "\n")


def spec_for(out: Path, src: dict, shard_size: int = 37):
    return parse_spec({"name": "scale", "output": str(out), "shard_size": shard_size,
                       "sources": [dict(src, name=SOURCE)], "tasks": [{"task": "colorization", "source": SOURCE}]})


def rows_of(plan) -> list[dict]:
    return plan.to_pylist() if isinstance(plan, pa.Table) else plan


def check_jobs(spec, expected: list[dict]) -> None:
    """Jobs: one per shard, the shard's rows in order without key/shard/split, as json.dumps of them."""
    jobs, total = shard_jobs(spec)
    want: dict[int, list[dict]] = {}
    for r in expected:
        want.setdefault(r["shard"], []).append({k: r[k] for k in COLUMNS[:4] if k in r})
    assert total == len(want) == len(jobs)
    assert [j["shard"] for j in jobs] == sorted(want)
    for j in jobs:
        assert j["items"] == json.dumps(want[j["shard"]])  # the same text a list of dicts gives


# --------------------------------------------------------------------------- image_folder


@pytest.fixture
def listed(tmp_path):
    root = tmp_path / "train"
    root.mkdir()
    imagenet_like_list(root, tmp_path / "files.txt")
    return root, tmp_path / "files.txt"


def test_image_folder_plan_equals_the_item_by_item_definition(listed, tmp_path):
    root, files = listed
    spec = spec_for(tmp_path / "out", {"kind": "image_folder", "root": str(root), "file_list": str(files),
                                      "val_fraction": 0.2})
    want = ref_image_folder_rows(root, files, 37, 0.2)
    assert len(want) > 3000 and sum(r["error"] is not None for r in want) == 3  # the list holds what it should
    assert {"ff/split.jpg", "ls/split.jpg", "trail/dir/", "/abs/out.jpg"} <= {r["path"] for r in want}
    assert 0.1 < np.mean([r["split"] == "val" for r in want]) < 0.3

    plans = plan_sources(spec, write=True)
    got, written = plans[SOURCE]
    assert not written and rows_of(got) == want
    table = pq.read_table(plan_path(spec.output, SOURCE))
    assert table.column_names == COLUMNS and table.to_pylist() == want
    assert [str(t) for t in table.schema.types] == ["string"] * 4 + ["string", "int64", "string"]
    check_jobs(spec, want)  # resumed: from the written plan
    # The reader's own list of item dicts is the plan's first four columns.
    assert image_folder_reader.plan(spec.sources[0]) == [{k: r[k] for k in COLUMNS[:4]} for r in want]


def test_image_folder_limit_seed_and_chunked_reading(listed, tmp_path, monkeypatch):
    root, files = listed
    monkeypatch.setattr(image_folder_reader, "_CHUNK_CHARS", 64)  # many chunks, cut after newlines
    for seed in (0, 7):
        spec = spec_for(tmp_path / f"out{seed}", {"kind": "image_folder", "root": str(root), "file_list": str(files),
                                                  "limit": 500, "seed": seed}, shard_size=100)
        want = ref_image_folder_rows(root, files, 100, 0.01, limit=500, seed=seed)
        assert len(want) == 500
        assert rows_of(plan_sources(spec)[SOURCE][0]) == want
        check_jobs(spec, want)
    assert rows_of(plan_sources(spec)[SOURCE][0]) != ref_image_folder_rows(root, files, 100, 0.01, 500, seed=0)


def test_image_folder_without_errors_types_error_as_null_like_from_pylist(tmp_path):
    root = tmp_path / "flat"
    (root / "b").mkdir(parents=True)
    for name in ("a.jpg", "b/c.png", "b/d.JPEG", "b/notes.txt"):
        (root / name).write_bytes(b"x")
    spec = spec_for(tmp_path / "out", {"kind": "image_folder", "root": str(root)}, shard_size=2)
    plan_sources(spec)
    table = pq.read_table(plan_path(spec.output, SOURCE))
    rows = [{"item_id": "a", "path": "a.jpg", "class_name": "", "error": None},
            {"item_id": "b-c", "path": "b/c.png", "class_name": "b", "error": None},
            {"item_id": "b-d", "path": "b/d.JPEG", "class_name": "b", "error": None}]
    want = pa.Table.from_pylist([dict(r, key=f"{SOURCE}_{r['item_id']}", shard=i // 2,
                                      split=ref_split(f"{SOURCE}_{r['item_id']}", 0.01)) for i, r in enumerate(rows)])
    assert table.schema == want.schema and table.equals(want)  # error: type null, as before


@pytest.mark.parametrize(("lines", "error", "match"), [
    (["b/x.jpg", "a/x.png", "a/x.jpg"], SourceError, r"two files map to the item id 'a-x' \(e\.g\. a/x\.png\)"),
    (["a_b.jpg", "z.jpg", "a-b.jpg"], SourceError, r"the item id 'a-b' \(e\.g\. a_b\.jpg\)"),
    # ./a/x.jpg is planned with pathlib (unusual), a/x.png column by column: the same id.
    (["./a/x.jpg", "a/x.png"], SourceError, r"the item id 'a-x' \(e\.g\. a/x\.png\)"),
    (["b.jpg", ".", "a.jpg"], ValueError, "has an empty name"),
])
def test_image_folder_errors_are_the_item_by_item_ones(tmp_path, lines, error, match):
    (tmp_path / "files.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "root").mkdir()
    spec = spec_for(tmp_path / "out", {"kind": "image_folder", "root": str(tmp_path / "root"),
                                      "file_list": str(tmp_path / "files.txt")})
    with pytest.raises(error, match=match):
        plan_sources(spec)
    assert not plan_path(spec.output, SOURCE).exists()


# --------------------------------------------------------------------------- hf_dataset, other plans


@pytest.mark.parametrize(("split", "limit"), [("train", None), ("train", 40), ("validation", 25)])
def test_hf_dataset_plan_equals_the_row_by_row_definition(tmp_path, split, limit):
    datasets = pytest.importorskip("datasets")
    d = datasets.Dataset.from_dict({"image": [bytes([i % 256]) for i in range(123)]})
    datasets.DatasetDict({"train": d, "validation": d}).save_to_disk(str(tmp_path / "ds"))
    spec = spec_for(tmp_path / "out", {"kind": "hf_dataset", "path": str(tmp_path / "ds"), "split": split,
                                      "limit": limit, "seed": 3, "val_fraction": 0.3}, shard_size=10)
    rows = list(range(123))
    if limit:
        rows = sorted(np.random.default_rng(3).choice(123, size=limit, replace=False).tolist())
    want = [{"item_id": f"{r:08d}", "row": r, "key": f"{SOURCE}_{r:08d}", "shard": i // 10,
             "split": "val" if split == "validation" else ref_split(f"{SOURCE}_{r:08d}", 0.3)}
            for i, r in enumerate(rows)]
    assert rows_of(plan_sources(spec)[SOURCE][0]) == want
    assert pq.read_table(plan_path(spec.output, SOURCE)).to_pylist() == want
    jobs, total = shard_jobs(spec)
    assert total == len(jobs) == -(-len(rows) // 10)
    assert [json.loads(j["items"]) for j in jobs] == [[{"item_id": r["item_id"], "row": r["row"]} for r in want
                                                       if r["shard"] == s] for s in range(total)]


def test_hf_parquet_folder_is_read_in_place_row_by_row(tmp_path, monkeypatch):
    """A folder of parquet files needs no ``datasets`` (nor its Arrow cache copy): rows are
    numbered across the sorted files and their row groups, and each reads its own image."""
    import io
    import sys

    from PIL import Image

    from lavin_data.sources import hf_dataset_reader

    monkeypatch.setitem(sys.modules, "datasets", None)  # importing it fails
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((3, 5, 3), (i, 255 - i, 7), np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    # Files in sorted order: a/part-0 (13 rows), a/part-1 (0 rows), b/sub/part-2 (20 rows); row groups of 6.
    start = 0
    for name, n in (("a/part-0.parquet", 13), ("a/part-1.parquet", 0), ("b/sub/part-2.parquet", 20)):
        (tmp_path / "ds" / name).parent.mkdir(parents=True, exist_ok=True)
        rows = range(start, start + n)
        table = pa.table({"label": pa.array(list(rows), pa.int64()),
                          "image": pa.array([{"bytes": png(i), "path": None} for i in rows], image_type)})
        pq.write_table(table, tmp_path / "ds" / name, row_group_size=6)
        start += n
    spec = spec_for(tmp_path / "out", {"kind": "hf_dataset", "path": str(tmp_path / "ds")})
    src = spec.sources[0]
    hf_dataset_reader.check(src)
    items = hf_dataset_reader.plan(src)
    assert [it["row"] for it in items] == list(range(33))
    for batch_rows in (64, 4):  # one batch per row group, or several
        monkeypatch.setattr(hf_dataset_reader.ParquetRows, "BATCH_ROWS", batch_rows)
        for i in (0, 5, 6, 12, 13, 32, 31, 7, 18, 0, 4, 9, 10, 11, 8, 2):  # across batches, groups, files; back
            sample = hf_dataset_reader.read(src, items[i], 0, {})
            assert (sample.image == (i, 255 - i, 7)).all(), (batch_rows, i)
    with pytest.raises(SourceError, match="no column 'picture'"):
        hf_dataset_reader.check(src.model_copy(update={"image_column": "picture"}))


def test_table_plans_give_the_json_of_their_row_dicts():
    """A plan read back (any reader's columns) makes the same items JSON as json.dumps of its
    rows: nulls, unicode, quotes, percent signs, floats, bools, lists and structs."""
    rows = [{"item_id": f"i{i}", "n": i * 7 - 3, "x": i / 3, "ok": i % 2 == 0, "name": ["é\"%s", None, "a\\b\n"][i % 3],
             "boxes": [[i, 1.5]] if i % 4 else [], "ann": {"a": i, "b": None}, "nothing": None,
             "key": f"s_i{i}", "shard": i // 4, "split": "train"} for i in range(11)]
    got = dict(shard_items(pa.Table.from_pylist(rows)))
    want = {s: json.dumps([{k: v for k, v in r.items() if k not in ("key", "shard", "split")}
                           for r in pa.Table.from_pylist(rows).to_pylist() if r["shard"] == s]) for s in range(3)}
    assert got == want
    # Rows out of shard order (not written by a build) are grouped as the dict path groups them.
    shuffled = [rows[i] for i in (5, 0, 9, 1, 4, 10, 2, 3, 8, 6, 7)]
    table = pa.Table.from_pylist(shuffled)
    assert dict(shard_items(table)) == dict(shard_items(table.to_pylist()))
    assert dict(shard_items(pa.Table.from_pylist(rows), lambda s: s != 1))[1] is None


def test_written_plan_row_groups_hold_whole_shards(listed, tmp_path):
    root, files = listed
    spec = spec_for(tmp_path / "out", {"kind": "image_folder", "root": str(root), "file_list": str(files)},
                    shard_size=1000)
    plan_sources(spec)
    meta = pq.ParquetFile(plan_path(spec.output, SOURCE)).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) > 3000 and all(n % 1000 == 0 for n in sizes[:-1])


# --------------------------------------------------------------------------- label stage streams


class Alive:
    """Counts decoded images alive at once (weakref finalizers: freed when nothing holds them)."""

    def __init__(self):
        self.now = self.peak = self.total = 0
        self.lock = threading.Lock()

    def track(self, arr: np.ndarray) -> None:
        with self.lock:
            self.now += 1
            self.total += 1
            self.peak = max(self.peak, self.now)
        weakref.finalize(arr, self._gone)

    def _gone(self) -> None:
        with self.lock:
            self.now -= 1


def test_decoded_batches_with_prefetch_hold_two_batches():
    from lavin_data import shards

    alive, bs, n = Alive(), 4, 50

    def decode(key, members):
        img = np.full((32, 32, 3), int(key) % 256, np.uint8)
        alive.track(img)
        return img

    seen = []
    for ok, failed in shards.prefetch(shards.decoded_batches(((str(i), {}) for i in range(n)), decode, bs)):
        assert not failed
        seen += [int(k) for k, _ in ok]
        assert all(int(img[0, 0, 0]) == int(k) % 256 for k, img in ok)
    assert seen == list(range(n)) and alive.total == n
    assert bs <= alive.peak <= 2 * bs + 1, alive.peak  # this batch, the next one being decoded (+1 in flight)


def test_label_shard_holds_about_two_batches_of_decoded_images(tmp_path, monkeypatch):
    from lavin_data import shards
    from lavin_data.base import BaseSample, encode_base
    from lavin_data.labelers import Labeler
    from lavin_data.shards import ShardWriter, iter_tar_samples
    from pipelines import stages
    from pipelines.layout import base_tar, label_tar

    n, bs = 48, 4
    spec = parse_spec({"name": "stream", "output": str(tmp_path / "out"),
                       "sources": [{"name": "photos", "kind": "image_folder", "root": str(tmp_path)}],
                       "labelers": [{"name": "da", "kind": "depth_anything_v2", "source": "photos", "batch_size": bs}],
                       "tasks": [{"task": "depth_estimation", "source": "photos", "labeler": "da"}]})
    rng = np.random.default_rng(0)
    with ShardWriter(base_tar(spec.output, "photos", 0), stage="ingest") as w:
        for i in range(n):
            img = rng.integers(0, 256, (24, 32, 3), np.uint8)
            w.add(f"photos_{i:03d}", encode_base(BaseSample({"source": "photos", "item_id": f"{i:03d}"}, image=img)))
        w.commit({"stage": "ingest"})
    alive = Alive()

    def counting_batches(samples, decode, batch_size):
        def tracked(key, members):
            xs, clip = decode(key, members)
            for x in xs:
                alive.track(x.image)
            return xs, clip

        return shards.decoded_batches(samples, tracked, batch_size)

    monkeypatch.setattr(stages, "decoded_batches", counting_batches)

    class Mean(Labeler):
        """Depth = the image's mean grey level + 1 (a value to check), and the images alive now."""

        def __init__(self, lab):
            super().__init__(lab)
            self.at_label: list[int] = []

        def label(self, inputs):
            self.at_label.append(alive.now)
            return [np.full(x.image.shape[:2], x.image.mean() + 1.0, np.float32) for x in inputs]

    labeler = Mean(spec.labelers[0])
    st = stages.label_shard(spec, "da", "photos", 0, labeler)
    assert st["n_ok"] == n and alive.total == n
    base = dict(iter_tar_samples(base_tar(spec.output, "photos", 0)))
    from lavin_data.base import base_image
    from lavin_data.sidecar import decode_sidecar

    for key, members in iter_tar_samples(label_tar(spec.output, "da", "photos", 0)):
        _what, depth, _meta = decode_sidecar(members, key)
        assert np.allclose(depth, base_image(key, base[key])[0].mean() + 1.0, rtol=1e-4)
    # While the model works on one batch, at most the next is being decoded: never the shard.
    assert max(labeler.at_label) >= bs and alive.peak <= 2 * bs + 2, (alive.peak, labeler.at_label)
