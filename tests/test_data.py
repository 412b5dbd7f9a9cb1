"""The in-context loader: batch layout against the stored moments, task sampling, context
drop, node/worker splitting, bad samples, and exact resume."""

from __future__ import annotations

import copy
import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lavin_data.codecs import decode_npy
from lavin_data.shards import iter_tar_samples
from lavin_data.stvae import mean_latent
from lavin_data.testing import restamp_stats, synthetic_latent_shards
from lavin_model.data import (
    InContextBatches,
    InContextLoader,
    LatentDataError,
    find_task_shards,
    reader_slice,
)


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    # log-variance -30: z equals the normalised posterior mean to fp32 precision
    return synthetic_latent_shards(tmp_path_factory.mktemp("lat"), tasks=3, shards=4, per_shard=6, latent=4,
                                   logvar=-30.0)


def _stored(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for tar in sorted(root.glob("*/*.tar")):
        for key, m in iter_tar_samples(tar):
            out[key] = {name: mean_latent(torch.from_numpy(decode_npy(m[f"{name}_moments.npy"]).astype(np.float32))
                                          [None])[0] for name in ("input", "target")}
    return out


def test_batches_interleave_context_pairs_then_query(latents):
    stored = _stored(latents)
    ds = InContextBatches(latents, batch_size=5, context=(1, 4), drop_rate=0.0, seed=3)
    seen_n = set()
    for _, b in zip(range(12), InContextLoader(ds, num_workers=0)):
        n = b["n_context"]
        seen_n.add(n)
        assert b["cond"].shape == (5, 16, 2 * n + 1, 4, 4) and b["target"].shape == (5, 16, 1, 4, 4)
        assert b["cond"].dtype == torch.float32
        for e, (task, keys) in enumerate(zip(b["tasks"], b["keys"])):
            assert len(keys) == n + 1
            assert all(k.startswith(f"t{task[-1]}_") for k in keys), (task, keys)  # one task per example
            for i, key in enumerate(keys[:-1]):
                torch.testing.assert_close(b["cond"][e, :, 2 * i], stored[key]["input"][:, 0], atol=1e-5, rtol=0)
                torch.testing.assert_close(b["cond"][e, :, 2 * i + 1], stored[key]["target"][:, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(b["cond"][e, :, -1], stored[keys[-1]]["input"][:, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(b["target"][e, :, 0], stored[keys[-1]]["target"][:, 0], atol=1e-5, rtol=0)
    assert seen_n <= {1, 2, 3, 4} and len(seen_n) > 1


def test_z_is_a_fresh_posterior_sample_on_every_read(tmp_path):
    root = synthetic_latent_shards(tmp_path, tasks=1, shards=1, per_shard=2, latent=4, logvar=-2.0)
    ds = InContextBatches(root, batch_size=1, context=(1, 1), drop_rate=0.0)
    reads = {}
    for _, b in zip(range(6), InContextLoader(ds, num_workers=0)):
        k = b["keys"][0][0]
        reads.setdefault(k, []).append(b["cond"][0, :, 0])
    key, zs = max(reads.items(), key=lambda kv: len(kv[1]))
    assert len(zs) >= 2
    mean = _stored(root)[key]["input"][:, 0]
    assert not torch.equal(zs[0], zs[1])
    # std = exp(-1) * SCALE around the mean
    assert 0.2 < float((zs[0] - mean).std()) < 0.6


def test_task_weights_and_context_drop_rate(latents):
    ds = InContextBatches(latents, batch_size=8, context=(1, 2), drop_rate=0.25, seed=1,
                          task_weights={"task0": 1, "task2": 3})
    counts, drops = Counter(), 0
    for _, b in zip(range(200), InContextLoader(ds, num_workers=0)):
        counts.update(b["tasks"])
        if b["dropped"]:
            drops += 1
            assert b["cond"].shape[2] == 1 and not b["cond"].any()
        else:
            assert b["cond"].any()
    assert set(counts) == {"task0", "task2"}
    assert 2.5 < counts["task2"] / counts["task0"] < 3.5
    assert 30 < drops < 70  # 200 x 0.25 = 50
    with pytest.raises(ValueError, match=r"no committed latent shards with train samples for task\(s\) \[.nope.\]"):
        InContextBatches(latents, batch_size=2, task_weights={"nope": 1})


def test_shards_are_split_by_node_and_worker():
    urls = [f"s{i}" for i in range(12)]
    parts = [reader_slice(urls, r, 2, w, 3) for r in range(2) for w in range(3)]
    assert sorted(sum(parts, [])) == sorted(urls)  # disjoint and complete
    assert all(len(p) == 2 for p in parts)
    assert reader_slice(urls[:2], 1, 2, 2, 3) == ["s1"]  # fewer shards than workers: share the node's part
    assert reader_slice(urls[:1], 1, 2, 0, 1) == ["s0"]  # fewer shards than nodes: share everything


@pytest.mark.parametrize("workers,stop", [(0, 5), (2, 7)])
def test_resume_continues_with_exactly_the_same_batches(latents, workers, stop):
    def make():
        return InContextBatches(latents, batch_size=3, context=(1, 3), drop_rate=0.2, seed=5,
                                shards_per_round=2, shuffle_buffer=4)

    loader = InContextLoader(make(), num_workers=workers)
    it = iter(loader)
    for _ in range(stop):
        next(it)
    state = copy.deepcopy(loader.state_dict())
    expected = [next(it) for _ in range(8)]
    resumed = InContextLoader(make(), num_workers=workers)
    resumed.load_state_dict(state)
    got = list(zip(range(8), resumed))
    for a, (_, b) in zip(expected, got):
        assert a["keys"] == b["keys"] and a["dropped"] == b["dropped"]
        assert torch.equal(a["cond"], b["cond"]) and torch.equal(a["target"], b["target"])


def test_bad_folders_and_samples_are_named(tmp_path):
    with pytest.raises(LatentDataError, match="no such latent folder"):
        find_task_shards(tmp_path / "missing")
    (tmp_path / "empty" / "task").mkdir(parents=True)
    with pytest.raises(ValueError, match="no committed latent shards"):
        find_task_shards(tmp_path / "empty")
    root = synthetic_latent_shards(tmp_path / "lat", tasks=1, shards=1, per_shard=2, latent=4)
    tar = next(root.glob("*/*.tar"))
    buf = io.BytesIO()  # rewrite the shard without the target moments
    with tarfile.open(tar) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for info in src:
            if not info.name.endswith("target_moments.npy"):
                dst.addfile(info, src.extractfile(info))
    tar.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=rf"{tar}: changed or cut short after its commit"):
        find_task_shards(root)
    restamp_stats(tar)  # as if committed so: the loader must name the sample
    ds = InContextBatches(root, batch_size=1, context=(1, 1))
    with pytest.raises(ValueError, match=rf"{tar}: sample t0_000_000[01] has no target_moments.npy"):
        next(iter(InContextLoader(ds, num_workers=0)))


def _items_and_splits(root: Path) -> dict[str, tuple[str, str]]:
    """{key: (item, split)} read straight from the shards' json (independently of the loader)."""
    import json

    out = {}
    for tar in sorted(root.glob("*/*.tar")):
        for key, m in iter_tar_samples(tar):
            info = json.loads(m["json"])
            out[key] = (info["item"], info["split"])
    return out


def test_context_never_comes_from_the_query_source_item(tmp_path):
    # Three variants per source item, stored next to each other, and a shuffle buffer of 4: without
    # the check, a query's own variants would land in its context in most batches.
    root = synthetic_latent_shards(tmp_path, tasks=2, shards=2, per_shard=12, latent=2, variants=3)
    truth = _items_and_splits(root)
    ds = InContextBatches(root, batch_size=8, context=(3, 6), drop_rate=0.0, seed=2, shuffle_buffer=4,
                          shards_per_round=1)
    draws = 0
    for _, b in zip(range(120), InContextLoader(ds, num_workers=0)):
        for keys in b["keys"]:
            query_item = truth[keys[-1]][0]
            assert all(truth[k][0] != query_item for k in keys[:-1]), keys
            draws += len(keys) - 1
    assert draws > 3000


def test_a_task_with_a_single_source_item_is_a_clear_error(tmp_path):
    root = synthetic_latent_shards(tmp_path, tasks=1, shards=1, per_shard=3, latent=2, variants=3)
    ds = InContextBatches(root, batch_size=1, context=(1, 1), drop_rate=0.0)
    with pytest.raises(ValueError, match="task task0: 1000 samples in a row come from the query's own source item"):
        next(iter(InContextLoader(ds, num_workers=0)))


def test_training_batches_hold_train_items_only(tmp_path):
    root = synthetic_latent_shards(tmp_path, tasks=2, shards=3, per_shard=8, latent=2, val_every=4)
    truth = _items_and_splits(root)
    val_keys = {k for k, (_i, s) in truth.items() if s == "val"}
    assert 0 < len(val_keys) < len(truth)
    seen = set()
    ds = InContextBatches(root, batch_size=6, context=(1, 4), drop_rate=0.0, seed=1)
    for _, b in zip(range(80), InContextLoader(ds, num_workers=0)):
        seen.update(k for keys in b["keys"] for k in keys)
    assert seen and not seen & val_keys
    assert seen == set(truth) - val_keys  # every train sample is read
    # and a val-only loader reads val samples only
    vds = InContextBatches(root, batch_size=2, context=(1, 1), drop_rate=0.0, split="val")
    vseen = {k for _, b in zip(range(20), InContextLoader(vds, num_workers=0)) for keys in b["keys"] for k in keys}
    assert vseen and vseen <= val_keys
