"""The held-out split: decided per source item when the build plans, recorded in every pair's
json and index and in the latents, never both sides for one item; the rule checked against
an independent SHA-256 computation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from lavin_data.shards import index_path, iter_tar_samples, read_stats
from lavin_data.sources import coco_reader, davis_reader, hf_dataset_reader, nyu_reader
from lavin_data.split import assign_split, key_fraction, names_val
from tests.conftest import small_demo_spec


def _hash_val(key: str, fraction: float) -> bool:
    """Independent statement of the rule: the first 8 bytes of SHA-256(key), big-endian, / 2^64."""
    h = hashlib.sha256(key.encode()).hexdigest()
    return int(h[:16], 16) / 2**64 < fraction


def test_hash_rule_by_hand_and_the_fraction_held_out():
    keys = [f"src_{i:06d}" for i in range(20000)]
    assert [assign_split(k, 0.01) == "val" for k in keys] == [_hash_val(k, 0.01) for k in keys]
    many = [f"src_{i:06d}" for i in range(100000)]
    share = sum(assign_split(k, 0.05) == "val" for k in many) / len(many)
    assert abs(share - 0.05) < 0.003  # 4 standard deviations of a binomial share
    assert all(0 <= key_fraction(k) < 1 for k in keys[:100])
    # a larger fraction only adds items to val: nothing moves from val back to train
    assert {k for k in keys if assign_split(k, 0.01) == "val"} <= {k for k in keys if assign_split(k, 0.05) == "val"}
    assert assign_split("a_1", 0.0, "val") == "val" and assign_split("a_1", 1.0) == "val"
    assert assign_split("a_1", 0.0, "auto", own="val") == "val"
    assert assign_split("a_1", 0.0, "hash", own="val") == "train"  # hash ignores the source's own split


def test_sources_own_val_splits_are_recognised():
    assert names_val("instances_val2017.json") and names_val("2017/val") and names_val("validation")
    assert names_val("nyudepthv2_test_files_with_gt.txt") and not names_val("instances_train2017.json")
    assert not names_val("interval_list.txt") and not names_val(None)  # a word, not a substring
    coco = SimpleNamespace(instances="/d/annotations/instances_val2017.json", keypoints=None, panoptic=None)
    assert coco_reader.own_split(coco, {}) == "val"
    coco.keypoints = "/d/person_keypoints_train2017.json"  # mixed files: not a val source
    assert coco_reader.own_split(coco, {}) is None
    nyu = SimpleNamespace(split_file="/s/nyudepthv2_test_files_with_gt.txt", annotations=None)
    assert nyu_reader.own_split(nyu, {}) == "val"
    assert nyu_reader.own_split(SimpleNamespace(split_file=None, annotations="/m/test_annotations.json"), {}) == "val"
    assert nyu_reader.own_split(SimpleNamespace(split_file=None, annotations=None), {}) is None
    assert hf_dataset_reader.own_split(SimpleNamespace(split="validation"), {}) == "val"
    assert hf_dataset_reader.own_split(SimpleNamespace(split="train"), {}) is None
    assert davis_reader.own_split(SimpleNamespace(split="2017/val"), {}) == "val"


@pytest.fixture(scope="module")
def split_build(ray_session, tmp_path_factory):
    from lavin_data.spec import parse_spec
    from pipelines.build import build

    out = tmp_path_factory.mktemp("split")
    data = small_demo_spec(out / "x").model_dump(mode="json")
    data.update(output=str(out), sources=[dict(data["sources"][0], num_items=16, val_fraction=0.4)],
                tasks=[{"task": "single_object_detection", "source": "synthetic"},
                       {"task": "foreground_segmentation", "source": "synthetic"},
                       {"task": "denoise", "source": "synthetic"}])
    spec = parse_spec(data, "split test")
    return spec, build(spec, echo=lambda *_: None)


def test_every_pair_carries_its_items_split_in_json_and_index(split_build):
    spec, manifest = split_build
    out = Path(spec.output)
    side: dict[str, set[str]] = {}
    for task in ("single_object_detection", "foreground_segmentation", "denoise"):
        n = {"train": 0, "val": 0}
        for tar in sorted((out / "pairs" / task).glob("*.tar")):
            index = {r["key"]: r for r in pq.read_table(index_path(tar)).to_pylist()}
            for key, m in iter_tar_samples(tar):
                meta = json.loads(m["json"])
                expect = "val" if _hash_val(meta["base_key"], 0.4) else "train"
                assert meta["split"] == index[key]["split"] == expect, (key, meta["split"], expect)
                side.setdefault(meta["base_key"], set()).add(meta["split"])
                n[meta["split"]] += 1
            for r in index.values():  # skipped samples carry their item's split too
                assert r["split"] == ("val" if _hash_val("_".join(r["key"].split("_")[:2]), 0.4) else "train")
            st = read_stats(tar)
            assert sum(st["splits"].values()) == st["n_ok"]
        assert n["val"] > 0 and n["train"] > 0, (task, n)
        assert manifest["splits"][task] == n
    assert all(len(s) == 1 for s in side.values())  # no source item on both sides, across tasks
    plan = pq.read_table(out / "plan" / "synthetic.parquet").to_pylist()
    assert all(r["split"] == ("val" if _hash_val(r["key"], 0.4) else "train") for r in plan)
    assert "| task | train pairs | val pairs |" in (out / "report" / "counts.md").read_text()


def test_latents_keep_the_split_and_the_source_item(split_build, tmp_path):
    from lavin_data.encode_latents import Encoder

    spec, _ = split_build
    src = sorted((Path(spec.output) / "pairs" / "single_object_detection").glob("*.tar"))[0]
    enc = Encoder(None, {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}, "cpu", "fp32")
    dst = tmp_path / "single_object_detection" / src.name
    enc.encode_shard(src, dst, 64, 8)
    pairs = {k: json.loads(m["json"]) for k, m in iter_tar_samples(src)}
    index = {r["key"]: r["split"] for r in pq.read_table(index_path(dst)).to_pylist()}
    for key, m in iter_tar_samples(dst):
        info = json.loads(m["json"])
        assert info["split"] == pairs[key]["split"] == index[key]
        assert info["item"] == pairs[key]["base_key"]
