"""encode_latents: pixel pair shards -> latent shards with the same names and keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from lavin_data.codecs import decode_npy
from lavin_data.encode_latents import main
from lavin_data.shards import ShardWriter, index_path, iter_tar_samples, stats_path
from lavin_data.stvae import SCALE, SHIFT, build_stvae

TINY = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}


def _vae(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "stvae.pt"
    torch.save({"state_dict": build_stvae(TINY).state_dict()}, path)
    return path


def _run(pixels, out, vae, *extra) -> int:
    return main(["--pixels", str(pixels), "--out", str(out), "--resolution", "64", "--vae", str(vae),
                 "--vae-config", json.dumps(TINY), "--batch-size", "4", *extra])


def test_latent_shards_mirror_pair_shards_and_resume(ray_session, demo_build, tmp_path):
    spec, _ = demo_build
    pixels, out, vae = Path(spec.output) / "pairs", tmp_path / "lat", _vae(tmp_path)
    assert _run(pixels, out, vae, "--tasks", "depth_estimation,edge_to_image", "--preview", "1") == 0
    for task in ("depth_estimation", "edge_to_image"):
        for tar in sorted((pixels / task).glob("*.tar")):
            lat = out / task / tar.name
            keys = [k for k, _ in iter_tar_samples(tar)]
            got = dict(iter_tar_samples(lat))
            assert list(got) == keys and stats_path(lat).exists()
            for _key, m in got.items():
                a, b = decode_npy(m["input_moments.npy"]), decode_npy(m["target_moments.npy"])
                assert a.shape == b.shape == (32, 1, 8, 8) and a.dtype == np.float16
                meta = json.loads(m["json"])
                assert meta["vae"] == str(vae) and len(meta["weight_hash"]) == 16
                assert (meta["shift"], meta["scale"], meta["resolution"], meta["frames"]) == (SHIFT, SCALE, 64, 1)
                assert meta["pair"]["task"] == task and meta["pair"]["base_key"]
    assert sorted(p.name for p in (out / "preview").iterdir()) == ["depth_estimation", "edge_to_image"]
    # Re-running does nothing: every shard is skipped, nothing is rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    assert _run(pixels, out, vae, "--tasks", "depth_estimation,edge_to_image") == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")} == mtimes


def test_a_corrupt_pair_is_recorded_and_the_rest_encoded(ray_session, demo_build, tmp_path):
    spec, _ = demo_build
    src = Path(spec.output) / "pairs" / "colorization" / "synthetic-000000.tar"
    samples = dict(iter_tar_samples(src))
    keys = sorted(samples)
    samples[keys[1]]["target.png"] = samples[keys[1]]["target.png"][:50]
    pixels = tmp_path / "pairs"
    w = ShardWriter(pixels / "colorization" / "synthetic-000000.tar", stage="render")
    for k in keys:
        w.add(k, samples[k])
    w.commit({})
    out = tmp_path / "lat"
    assert _run(pixels, out, _vae(tmp_path)) == 0
    lat = out / "colorization" / "synthetic-000000.tar"
    assert [k for k, _ in iter_tar_samples(lat)] == [k for k in keys if k != keys[1]]
    idx = {r["key"]: r for r in pq.read_table(index_path(lat)).to_pylist()}
    assert idx[keys[1]]["status"] == "error" and "cannot decode" in idx[keys[1]]["error"]


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert main(["--pixels", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--vae-config", "{}"]) == 2
    assert "no such pairs folder" in capsys.readouterr().err
    (tmp_path / "p").mkdir()
    assert main(["--pixels", str(tmp_path / "p"), "--out", str(tmp_path / "o"), "--vae", str(tmp_path / "x.pt")]) == 2
    assert "VAE checkpoint not found" in capsys.readouterr().err
    assert main(["--pixels", str(tmp_path / "p"), "--out", str(tmp_path / "o"), "--vae-config", "{}",
                 "--resolution", "100"]) == 2
