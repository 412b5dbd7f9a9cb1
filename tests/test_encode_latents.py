"""encode_latents: pixel pair shards -> latent shards with the same names and keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # a multiple of the VAE's 8 but not of 16: latents J-DiT's 2x2 patches cannot tile
    assert main(["--pixels", str(tmp_path / "p"), "--out", str(tmp_path / "o"), "--vae-config", "{}",
                 "--resolution", "72"]) == 2
    assert "--resolution must be a positive multiple of 16" in capsys.readouterr().err


# --------------------------------------------------------------------------- what --pixels and --tasks may name


def _pairs(demo_build, pixels: Path, tasks=("colorization", "denoise"), n: int = 3) -> Path:
    """``pixels/<task>/synthetic-000000.tar``: the first ``n`` pairs of the demo's first shard
    of each task, committed as the render stage commits them (a few pairs: a fast encode)."""
    spec, _ = demo_build
    for task in tasks:
        src = Path(spec.output) / "pairs" / task / "synthetic-000000.tar"
        w = ShardWriter(pixels / task / src.name, stage="render")
        for key, m in list(iter_tar_samples(src))[:n]:
            w.add(key, m)
        w.commit({"stage": "render", "task": task})
    return pixels


def _video_task(pixels: Path, task: str = "video_depth") -> None:
    """A committed pair shard in a video task's folder (its content is never read)."""
    w = ShardWriter(pixels / task / "synthetic-video-000000.tar", stage="render")
    w.add("clip_000000", {"json": b"{}"})
    w.commit({"stage": "render", "task": task})


def _refused(pixels, out, *extra) -> int:
    """A run that must stop before loading a VAE: random weights by config, no checkpoint."""
    return main(["--pixels", str(pixels), "--out", str(out), "--vae-config", json.dumps(TINY), *extra])


def test_an_unknown_task_is_exit_2_naming_it_and_the_task_folders(demo_build, tmp_path, capsys):
    pixels, out = _pairs(demo_build, tmp_path / "pairs"), tmp_path / "lat"
    found = ", ".join(sorted(p.name for p in pixels.iterdir()))
    assert found == "colorization, denoise"
    assert _refused(pixels, out, "--tasks", "colourization") == 2
    err = capsys.readouterr().err
    assert "no task folder colourization (did you mean colorization?)" in err
    assert f"task folders there: {found}" in err and "Traceback" not in err
    assert not out.exists()  # not even the lock: a fresh --out is removed again
    # One good name does not let a typo through; an --out that exists keeps what it holds.
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert _refused(pixels, out, "--tasks", "denoise,colourization,nope") == 2
    err = capsys.readouterr().err
    assert "no task folders colourization (did you mean colorization?), nope in" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock", "keep.txt"]
    assert not list(out.rglob("*.tar"))


def test_only_video_tasks_are_exit_2_saying_clips_are_not_encoded(demo_build, tmp_path, capsys):
    pixels = _pairs(demo_build, tmp_path / "pairs", tasks=("colorization",))
    _video_task(pixels)
    assert _refused(pixels, tmp_path / "lat", "--tasks", "video_depth") == 2
    err = capsys.readouterr().err
    assert "--tasks names only video tasks (video_depth): clip pairs are not encoded yet" in err
    assert "image task folders there: colorization" in err
    videos = tmp_path / "videos"
    _video_task(videos)
    _video_task(videos, "optical_flow")
    assert _refused(videos, tmp_path / "lat") == 2
    assert "holds only video task folders (optical_flow, video_depth)" in capsys.readouterr().err
    assert not (tmp_path / "lat").exists()
    # --out two levels down: the run made both folders, and leaves neither behind
    assert _refused(videos, tmp_path / "build" / "latents" / "tiny-64") == 2
    assert not (tmp_path / "build").exists()
    (tmp_path / "kept").mkdir()  # a parent that was there before stays
    assert _refused(videos, tmp_path / "kept" / "latents" / "tiny-64") == 2
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


def test_a_folder_without_pair_shards_is_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _refused(empty, tmp_path / "lat") == 2
    err = capsys.readouterr().err
    assert f"{empty}: no pair shards; expected <pixels>/<task>/<shard>.tar" in err and "pairs/ folder" in err
    # A task folder whose shard was never committed (no stats: a build still running).
    (empty / "colorization").mkdir()
    (empty / "colorization" / "synthetic-000000.tar").write_bytes(b"")
    assert _refused(empty, tmp_path / "lat") == 2
    assert "no committed pair shards (1 .tar files without their .stats.json" in capsys.readouterr().err
    assert not (tmp_path / "lat").exists()


def test_a_latent_base_or_task_folder_as_pixels_is_exit_2(demo_build, tmp_path, capsys):
    from lavin_data.testing import synthetic_latent_shards

    spec, _ = demo_build
    latents = synthetic_latent_shards(tmp_path / "latents", tasks=1, shards=1, per_shard=1)
    assert _refused(latents, tmp_path / "lat") == 2
    assert f"{latents} holds latent shards (an encode_latents output), not pixel pair shards" in \
        capsys.readouterr().err
    base = Path(spec.output) / "base"
    assert _refused(base, tmp_path / "lat") == 2
    err = capsys.readouterr().err
    assert f"{base} holds base shards" in err and f"the pair shards of this build are in {base.parent / 'pairs'}" in err
    task = Path(spec.output) / "pairs" / "colorization"
    assert _refused(task, tmp_path / "lat") == 2
    assert f"--pixels {task.parent} --tasks colorization" in capsys.readouterr().err
    assert not (tmp_path / "lat").exists()


@pytest.mark.slow
def test_the_build_folder_encodes_like_its_pairs_folder(ray_session, demo_build, tmp_path, capsys):
    build, vae = tmp_path / "build", _vae(tmp_path)
    pairs = _pairs(demo_build, build / "pairs")
    _video_task(pairs)  # skipped with a note, as in a real build
    shutil.copytree(Path(demo_build[0].output) / "base", build / "base")  # a build's other folders are ignored
    (build / "spec.json").write_text("{}")
    capsys.readouterr()
    assert _run(build, tmp_path / "a", vae) == 0
    printed = capsys.readouterr().out.splitlines()
    assert _run(pairs, tmp_path / "b", vae) == 0
    assert f"[encode] note: {build} is a build folder: encoding its pair shards in {pairs}" in printed
    # Before any shard is encoded: how much there is to do, counted here from the source shards.
    sources = sorted(pairs.glob("[!v]*/*.tar"))
    n = sum(1 for tar in sources for _ in iter_tar_samples(tar))
    plan = (f"[encode] 2 tasks, {len(sources)} pair shards ({n} pairs): 0 shards already done, {len(sources)} to "
            f"encode ({n} pairs) -> {tmp_path / 'a'}")
    first_done = next(i for i, line in enumerate(printed) if line.startswith(f"[encode] 1/{len(sources)} shards"))
    assert plan in printed and printed.index(plan) < first_done
    names = [str(t.relative_to(pairs)) for t in sources]
    for out in (tmp_path / "a", tmp_path / "b"):
        assert sorted(str(t.relative_to(out)) for t in out.rglob("*.tar")) == names
    for name in names:
        a, b = dict(iter_tar_samples(tmp_path / "a" / name)), dict(iter_tar_samples(tmp_path / "b" / name))
        assert list(a) == list(b) == [k for k, _ in iter_tar_samples(pairs / name)]
        assert a == b  # the same moments and json, byte for byte
        assert json.loads(stats_path(tmp_path / "a" / name).read_text())["source_shard"] == str(pairs / name)
    # Everything done already is a resumption, not a mistake: exit 0, nothing to encode.
    assert _run(build, tmp_path / "a", vae) == 0
    assert f"{len(sources)} shards already done, 0 to encode (0 pairs)" in capsys.readouterr().out


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert text.startswith("usage: python -m lavin_data.encode_latents")
    for option, default in [("--resolution", 256), ("--batch-size", 8), ("--num-gpus", 0), ("--num-actors", 1),
                            ("--dtype", "bf16"), ("--preview", 0)]:
        assert f"(default: {default})" in text.split(f" {option} ", 1)[1].split(" --", 1)[0], option
    assert "(default: None)" not in text and "(default: every image task folder)" in text
