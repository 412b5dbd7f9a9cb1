"""``deepspeed lavin_model/train.py`` on the CPU: the loss drops, a stopped run resumes with
identical losses, initialisation from a released-format checkpoint, the exported model
feeds ``python -m lavin_model.infer``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lavin_data.shards import iter_tar_samples
from lavin_data.testing import synthetic_latent_shards

ROOT = Path(__file__).resolve().parents[1]
TINY_VAE = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}
pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow  # minutes: make test-fast leaves them out


def _env() -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _train(out: Path, latents: Path, *extra: str, launcher: bool = False, check: bool = True):
    args = ["--latents", str(latents), "--out", str(out), "--size", "tiny", "--micro-batch", "4",
            "--context", "1-3", "--lr", "1e-3", "--warmup", "5", "--log-every", "5", "--sample-every", "0",
            "--num-workers", "2", *extra]
    if launcher:
        ds = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
        cmd = [ds, "--num_gpus", "1", str(ROOT / "lavin_model" / "train.py"), *args]
    else:
        cmd = [sys.executable, "-m", "lavin_model.train", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _val(out: Path) -> dict[int, dict[str, float]]:
    return {(rec := json.loads(line))["step"]: rec["val_loss"] for line in (out / "val.jsonl").read_text().splitlines()}


def _losses(out: Path) -> dict[int, float]:
    return {(rec := json.loads(line))["step"]: rec["loss"] for line in (out / "log.jsonl").read_text().splitlines()}


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    # every 4th source item held out as val: the validation loss has examples of every task
    return synthetic_latent_shards(tmp_path_factory.mktemp("lat"), tasks=3, shards=4, per_shard=8, latent=8,
                                   val_every=4)


def test_stopped_and_resumed_run_matches_an_uninterrupted_one(latents, tmp_path):
    from safetensors.torch import load_file

    val = ("--val-every", "4", "--ema-decay", "0.9")
    _train(tmp_path / "a", latents, "--steps", "12", *val, launcher=True)
    _train(tmp_path / "b", latents, "--steps", "5", *val, launcher=True)
    assert (tmp_path / "b" / "checkpoints" / "step00000005" / "ema.safetensors").is_file()
    r = _train(tmp_path / "b", latents, "--steps", "12", *val, launcher=True)
    assert "resumed from" in r.stdout and "at step 5" in r.stdout
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 13))
    assert [a[s] for s in range(6, 13)] == [b[s] for s in range(6, 13)]  # bit-identical
    assert len({a[s] for s in range(6, 13)}) > 1
    # The EMA resumes exactly: checkpoint and exported model (the EMA by default) are the same bytes.
    for rel in ("checkpoints/step00000012/ema.safetensors", "model/model.safetensors"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    exported = load_file(tmp_path / "a" / "model" / "model.safetensors")
    ema = load_file(tmp_path / "a" / "checkpoints" / "step00000012" / "ema.safetensors")
    assert exported.keys() == ema.keys() and all(torch.equal(v, ema[k]) for k, v in exported.items())
    # The validation loss: per task, at the same steps, and the same numbers after the resume.
    va, vb = (_val(tmp_path / x) for x in "ab")
    assert sorted(va) == [4, 8, 12] and set(va[12]) == {"task0", "task1", "task2"}
    assert all(va[s] == vb[s] for s in (8, 12))


class _Planted:
    """Unpickling this object creates ``path``: proof that a loader ran code from a file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_checkpoints_read_with_weights_only_and_resume_never_unpickles(latents, tmp_path):
    """Our checkpoints hold only what torch.load(weights_only=True) accepts (``--init`` from a
    run's checkpoints/ gives the exported weights); DeepSpeed itself reads checkpoints with a
    full unpickle, so the trainer swaps in weights_only=True and a planted file runs nothing."""
    from safetensors.torch import load_file

    from lavin_data.weights import read_state_dict

    out, marker = tmp_path / "run", tmp_path / "pwned"
    _train(out, latents, "--steps", "1", "--save-every", "1", "--num-workers", "0")
    sd, exported = read_state_dict(out / "checkpoints"), load_file(out / "model" / "model.safetensors")
    assert sorted(sd) == sorted(exported) and len(sd) > 10
    assert all(torch.equal(sd[k].float(), exported[k]) for k in sd)
    optim = next((out / "checkpoints" / "step00000001").glob("*optim_states.pt"))
    state = torch.load(optim, weights_only=False)  # our own file, just written
    state["planted"] = _Planted(marker)
    torch.save(state, optim)
    r = _train(out, latents, "--steps", "2", "--num-workers", "0", check=False)
    assert r.returncode == 2 and not marker.exists(), r.stdout[-2000:] + r.stderr[-2000:]
    assert f"error: {optim}: not a checkpoint that loads with torch.load(weights_only=True)" in r.stderr


def _name_vae_in_latents(root: Path, vae: str, weight_hash: str | None, resolution: int | None = None) -> None:
    """Rewrite every sample's json as encode_latents writes it for the ST-VAE ``vae``."""
    import io
    import tarfile

    from lavin_data.testing import restamp_stats

    for tar in root.glob("*/*.tar"):
        buf = io.BytesIO()
        with tarfile.open(tar) as src, tarfile.open(fileobj=buf, mode="w") as dst:
            for info in src:
                data = src.extractfile(info).read()
                if info.name.endswith(".json"):
                    data = json.dumps({**json.loads(data), "vae": vae, "vae_config": TINY_VAE,
                                       "weight_hash": weight_hash, "resolution": resolution}).encode()
                info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
        tar.write_bytes(buf.getvalue())
        restamp_stats(tar)  # as encode_latents would have committed it


def test_a_vae_named_in_the_latents_is_never_loaded(tmp_path):
    """Shards are untrusted: without --vae the trainer decodes no samples, whatever VAE path
    the latents' json names (here a planted checkpoint that would create a file if unpickled)."""
    from lavin_data.stvae import build_stvae
    from lavin_data.weights import weight_hash

    root = synthetic_latent_shards(tmp_path / "lat", tasks=1, shards=1, per_shard=8, latent=8)
    planted, marker = tmp_path / "stvae.pt", tmp_path / "pwned"
    torch.save({"state_dict": build_stvae(TINY_VAE).state_dict(), "extra": _Planted(marker)}, planted)
    _name_vae_in_latents(root, str(planted), weight_hash(planted))
    out = tmp_path / "run"
    r = _train(out, root, "--steps", "2", "--sample-every", "1", "--save-every", "0", "--micro-batch", "2",
               "--num-workers", "0")
    assert not marker.exists(), "the trainer loaded the VAE named in the shard metadata"
    assert "no --vae given, so sample previews are not decoded" in r.stdout and not (out / "samples").exists()
    assert max(_losses(out)) == 2


def test_a_vae_that_is_not_the_recorded_one_is_refused(tmp_path):
    from lavin_data.stvae import build_stvae
    from lavin_data.weights import weight_hash

    root = synthetic_latent_shards(tmp_path / "lat", tasks=1, shards=1, per_shard=8, latent=8)
    vae = tmp_path / "vae.pt"
    torch.save({"state_dict": build_stvae(TINY_VAE).state_dict()}, vae)
    _name_vae_in_latents(root, "/models/stvae-released.pt", "0123456789abcdef")
    out = tmp_path / "run"
    args = ("--steps", "1", "--sample-every", "1", "--save-every", "0", "--micro-batch", "2", "--num-workers", "0",
            "--sample-count", "1", "--vae", str(vae), "--vae-config", json.dumps(TINY_VAE))
    r = _train(out, root, *args, check=False)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert (f"error: --vae {vae} has weight hash {weight_hash(vae)}, but " in r.stderr
            and "with the ST-VAE /models/stvae-released.pt of weight hash 0123456789abcdef" in r.stderr), r.stderr
    assert not (out / "log.jsonl").exists()  # refused before any training
    _name_vae_in_latents(root, "/models/stvae-released.pt", weight_hash(vae))  # the same weights elsewhere: fine
    _train(out, root, *args)
    assert cv2.imread(str(out / "samples" / "step00000001.png")).shape == (64, 5 * 64, 3)


def _leftover(pattern: str) -> list[int]:
    """Processes (the trainer and its loader workers share its command line) still alive."""
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if pattern in " ".join(p.info["cmdline"] or [])]


def _pixel_shards(root: Path) -> Path:
    """A build's pairs/ folder in miniature: render-stage shards of input/target images."""
    from lavin_data.codecs import encode_png
    from lavin_data.shards import ShardWriter

    img = encode_png(np.zeros((16, 16, 3), np.uint8))
    for task in ("colorization", "depth_estimation"):
        w = ShardWriter(root / "pairs" / task / "synthetic-000000.tar", stage="render")
        for k in range(4):
            w.add(f"synthetic_{k:06d}", {"input.png": img, "target.png": img, "json": b'{"split": "train"}'},
                  split="train")
        w.commit({"stage": "render", "task": task})
    return root


@pytest.mark.parametrize("folder", ["pairs", "build"])
def test_pixel_shards_as_latents_end_the_run_at_once_with_exit_2(tmp_path, folder):
    """The pairs/ folder (or the build folder) given as --latents by mistake: one line naming
    the shard and what --latents takes, exit 2, before any worker starts; nothing left running."""
    build = _pixel_shards(tmp_path / "out")
    given = build / "pairs" if folder == "pairs" else build
    out = tmp_path / "run"
    r = _train(out, given, "--steps", "5", check=False)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    if folder == "pairs":
        assert (f"error: {given / 'colorization' / 'synthetic-000000.tar'}: a pixel pair (render stage) shard, not "
                "a latent shard" in r.stderr and "python -m lavin_data.encode_latents" in r.stderr), r.stderr
    else:
        assert f"{given} looks like a build folder: encode its pairs/" in r.stderr, r.stderr
    assert not (out / "log.jsonl").exists() and not _leftover(str(out))


def test_a_bad_sample_met_by_a_loader_worker_ends_the_run(tmp_path):
    """Latents whose first samples are fine (so the start-up check passes) but a later shard's
    samples lack their target moments: a loader worker raises, the run ends with exit 2 and the
    worker's message in one line, and no process is left (the run used to hang for good)."""
    from lavin_data.codecs import encode_npy
    from lavin_data.shards import ShardWriter

    root = synthetic_latent_shards(tmp_path / "lat", tasks=1, shards=2, per_shard=8, latent=8)
    bad = root / "task0" / "s-000001.tar"
    w = ShardWriter(bad, stage="encode_latents")
    for k in range(8):
        w.add(f"bad_{k:04d}", {"input_moments.npy": encode_npy(np.zeros((32, 1, 8, 8), np.float16)),
                               "json": json.dumps({"split": "train", "item": f"bad{k}"}).encode()}, split="train")
    w.commit({"stage": "encode_latents"})
    out = tmp_path / "run"
    r = _train(out, root, "--steps", "200", "--micro-batch", "4", "--save-every", "0", "--val-every", "0",
               check=False)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: sample bad_") and "has no target_moments.npy" in last, r.stderr[-2000:]
    assert not _leftover(str(out))


def test_a_dead_loader_worker_ends_the_run_and_signals_still_act(latents, tmp_path):
    """A loader worker killed under a running trainer (out of memory, say): the run ends by
    itself with a non-zero status, and a SIGTERM sent meanwhile does not keep it alive."""
    import psutil

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lavin_model.train", "--latents", str(latents), "--out", str(out), "--size", "tiny",
           "--steps", "100000", "--micro-batch", "2", "--context", "1-2", "--log-every", "1", "--sample-every", "0",
           "--save-every", "0", "--val-every", "0", "--num-workers", "2"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # log.jsonl is opened before the loader forks its workers: wait for a logged step, then
        # for both workers (a slow, shared machine may take a while to get there).
        trainer, workers = psutil.Process(p.pid), []
        deadline = time.time() + 180
        while time.time() < deadline and p.poll() is None and len(workers) < 2:
            if (out / "log.jsonl").exists() and (out / "log.jsonl").stat().st_size > 0:
                try:
                    workers = [c for c in trainer.children() if c.cmdline() == trainer.cmdline()]  # forked workers
                except psutil.Error:  # a short-lived child ended while being listed
                    workers = []
            time.sleep(0.2)
        assert len(workers) == 2, (trainer.children() if p.poll() is None else p.communicate()[0][-3000:])
        workers[0].kill()
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        stdout, _ = p.communicate(timeout=60)  # a hang fails here
    finally:
        p.kill()
    assert p.returncode not in (0, None), stdout[-3000:]
    assert "exited unexpectedly" in stdout or "is killed by signal" in stdout, stdout[-3000:]
    assert not _leftover(str(out))


def test_the_loss_drops_and_samples_are_written(latents, tmp_path):
    out = tmp_path / "run"
    r = _train(out, latents, "--steps", "150", "--micro-batch", "8", "--sample-every", "150", "--sample-count", "2",
               "--vae-config", json.dumps(TINY_VAE), "--save-every", "1000")
    loss = _losses(out)
    first, last = np.mean([loss[s] for s in range(1, 11)]), np.mean([loss[s] for s in range(131, 151)])
    assert last < 0.93 * first, (first, last)
    assert "tokens/s" in r.stdout and "data wait" in r.stdout and "MiB" in r.stdout
    grid = cv2.imread(str(out / "samples" / "step00000150.png"))
    assert grid.shape == (2 * 64, 5 * 64, 3)  # 2 queries x (ctx in, ctx tgt, query, prediction, target)
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["hidden_size"] == 96 and (out / "model" / "model.safetensors").is_file()


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(latents, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lavin_model.train", "--latents", str(latents), "--out", str(out), "--size", "tiny",
           "--steps", "100000", "--micro-batch", "2", "--context", "1-2", "--log-every", "1", "--sample-every", "0",
           "--num-workers", "0"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "log.jsonl").exists():
            time.sleep(0.2)
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        stdout, _ = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, stdout[-3000:]
    step = max(_losses(out))
    assert (out / "checkpoints" / f"step{step:08d}").is_dir() and "saving a checkpoint" in stdout
    r = _train(out, latents, "--steps", str(step + 2), "--micro-batch", "2", "--context", "1-2", "--num-workers", "0")
    assert f"at step {step}" in r.stdout and max(_losses(out)) == step + 2


def test_init_from_a_released_format_checkpoint_and_infer(latents, tmp_path):
    from lavin_data.stvae import build_stvae
    from lavin_model.jdit import JDiT, jdit_from_checkpoint

    torch.manual_seed(1)
    model = JDiT.from_size("tiny")
    for p in model.parameters():  # non-zero everywhere, unlike a fresh model
        torch.nn.init.normal_(p, std=0.02)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "released.pt")
    # The first warm-up step has lr 0: the exported weights are the initial ones.
    _train(tmp_path / "run", latents, "--steps", "1", "--init", str(tmp_path / "released.pt"))
    loaded = jdit_from_checkpoint(tmp_path / "run" / "model")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert jdit_from_checkpoint(tmp_path / "released.pt").config == model.config  # size from the shapes

    vae = tmp_path / "vae.pt"
    torch.save({"state_dict": build_stvae(TINY_VAE).state_dict()}, vae)
    tpl = tmp_path / "templates" / "colorization"
    tpl.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 255, (40, 50, 3), np.uint8)
        cv2.imwrite(str(tpl / f"{i:03d}_input.png"), img[..., :1].repeat(3, 2))
        cv2.imwrite(str(tpl / f"{i:03d}_target.png"), img)
    query = tmp_path / "q.jpg"
    cv2.imwrite(str(query), rng.integers(0, 255, (30, 70, 3), np.uint8))
    base = [sys.executable, "-m", "lavin_model.infer", "--vae", str(vae), "--vae-config", json.dumps(TINY_VAE),
            "--query", str(query), "--resolution", "64", "--steps", "4", "--context", "2"]
    r = subprocess.run([*base, "--checkpoint", str(tmp_path / "run" / "model"), "--examples", str(tpl),
                        "--out", str(tmp_path / "pred.png")], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert cv2.imread(str(tmp_path / "pred.png")).shape == (30, 70, 3)  # back to the query's size
    (tpl / "003_input.png").write_bytes((tpl / "000_input.png").read_bytes())
    r = subprocess.run([*base, "--checkpoint", str(tmp_path / "run" / "model"), "--examples", str(tpl),
                        "--out", str(tmp_path / "p2.png")], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "003_input.png: has no matching target image" in r.stderr


def test_infer_from_a_step_folder_with_the_vae_recorded_by_the_run(tmp_path):
    """The run records the latents' ST-VAE (architecture, weight hash) and resolution in
    training.json: infer then needs only --vae, from model/, checkpoints/ or a step folder (whose
    EMA weights it uses), warns at another resolution, names the recorded VAE when --vae is
    missing and refuses other weights; a .pt VAE of another architecture without --vae-config is
    one line naming the file, not a traceback."""
    from safetensors.torch import load_file

    from lavin_data.stvae import build_stvae
    from lavin_data.weights import weight_hash
    from lavin_model.jdit import jdit_from_checkpoint

    root = synthetic_latent_shards(tmp_path / "lat", tasks=2, shards=1, per_shard=8, latent=8)
    vae = tmp_path / "vae.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": build_stvae(TINY_VAE).state_dict()}, vae)
    _name_vae_in_latents(root, str(vae), weight_hash(vae), resolution=64)
    out = tmp_path / "run"
    _train(out, root, "--steps", "4", "--save-every", "4", "--num-workers", "0", "--micro-batch", "2",
           "--ema-decay", "0.5", "--val-every", "0")
    rec = json.loads((out / "model" / "training.json").read_text())
    assert rec["resolution"] == 64 and rec["vae"] == {"path": str(vae), "weight_hash": weight_hash(vae),
                                                       "vae_config": TINY_VAE}, rec
    step = out / "checkpoints" / "step00000004"
    ema, model = load_file(step / "ema.safetensors"), jdit_from_checkpoint(step).state_dict()
    exported = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(model[k], ema[k]) and torch.equal(exported[k], ema[k]) for k in ema)  # EMA, as model/
    raw = torch.load(step / "mp_rank_00_model_states.pt", weights_only=False)["module"]  # our own file
    assert any(not torch.equal(raw[k].float(), ema[k]) for k in ema)  # the step folder's EMA is not the raw one

    tpl = tmp_path / "templates" / "task0"
    tpl.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(tpl / f"{i:03d}_input.png"), rng.integers(0, 255, (40, 50, 3), np.uint8))
        cv2.imwrite(str(tpl / f"{i:03d}_target.png"), rng.integers(0, 255, (40, 50, 3), np.uint8))
    query = tmp_path / "q.png"
    cv2.imwrite(str(query), rng.integers(0, 255, (30, 70, 3), np.uint8))

    def infer(checkpoint: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lavin_model.infer", "--checkpoint", str(checkpoint),
                               "--examples", str(tpl), "--query", str(query), "--steps", "3", *extra],
                              cwd=ROOT, env=_env(), capture_output=True, text=True)

    for i, ckpt in enumerate((step, out / "checkpoints", out / "model")):
        r = infer(ckpt, "--vae", str(vae), "--out", str(tmp_path / f"p{i}.png"))
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"ST-VAE architecture from {out / ('model' if ckpt.name == 'model' else '') / 'training.json'}" \
            .replace("//", "/") in r.stdout, r.stdout
        assert "warning" not in r.stderr and cv2.imread(str(tmp_path / f"p{i}.png")).shape == (30, 70, 3)
    same = [cv2.imread(str(tmp_path / f"p{i}.png")) for i in range(3)]
    assert np.array_equal(same[0], same[1]) and np.array_equal(same[0], same[2])  # the same (EMA) weights

    r = infer(step, "--vae", str(vae), "--out", str(tmp_path / "p128.png"), "--resolution", "128")
    assert r.returncode == 0 and "warning: --resolution 128, but the model was trained at 64x64" in r.stderr, r.stderr

    r = infer(step, "--out", str(tmp_path / "x.png"))  # no --vae
    assert r.returncode == 2 and "error: give --vae" in r.stderr and f"ST-VAE {vae} (weight hash" in r.stderr, \
        r.stderr
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save({"state_dict": build_stvae(TINY_VAE).state_dict()}, other)
    r = infer(step, "--vae", str(other), "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and f"error: --vae {other} has weight hash" in r.stderr, r.stderr

    # A checkpoint without a record (released layout) and a VAE .pt of a non-released architecture:
    released = tmp_path / "released.pt"
    torch.save({"state_dict": jdit_from_checkpoint(out / "model").state_dict()}, released)
    r = infer(released, "--vae", str(vae), "--out", str(tmp_path / "x.png"), "--resolution", "64")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.startswith(f"error: {vae}: its weights do not fit the ST-VAE architecture released") \
        and "--vae-config" in r.stderr and r.stderr.count("\n") == 1, r.stderr[-3000:]
    r = infer(released, "--vae", str(vae), "--vae-config", json.dumps(TINY_VAE), "--out", str(tmp_path / "y.png"),
              "--resolution", "64")
    assert r.returncode == 0 and np.array_equal(cv2.imread(str(tmp_path / "y.png")), same[0]), r.stderr[-3000:]


def test_model_flops_match_torch_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench_train import model_flops
    from lavin_model.jdit import JDiT

    model = JDiT.from_size("tiny")
    for cond_frames, side in ((9, 8), (3, 16)):
        x, c = torch.randn(2, 16, 1, side, side), torch.randn(2, 16, cond_frames, side, side)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # math SDPA: bmm, counted
            model(x, torch.rand(2), c)
        ratio = counter.get_total_flops() / (2 * model_flops(model.config, cond_frames, 1, side, side))
        assert 1.0 <= ratio < 1.01, ratio  # the rest: modulation and timestep MLP, once per example


def test_bench_train_reports_throughput_and_data_wait():
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_train", "--size", "tiny", "--resolution", "64",
                        "--context", "2", "--micro-batch", "2", "--steps", "4", "--warmup-steps", "1",
                        "--num-workers", "1"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(s for s in r.stdout.splitlines() if s.startswith("BENCH_TRAIN "))
    res = json.loads(line[len("BENCH_TRAIN "):])
    assert res["steps"] == 4 and 0 <= res["data_wait_share"] < 1 and res["samples_per_s"] > 0
    tokens = 2 * (2 * 2 + 2) * (64 // 8 // 2) ** 2
    assert abs(res["tokens_per_s"] - tokens * res["samples_per_s"] / 2) < 1e-6 * res["tokens_per_s"]


def test_real_photos_through_latents_loader_and_inference(ray_session, tmp_path):
    """The fixture photos: pair build -> encode_latents -> in-context batches whose frames
    are posterior samples of the stored moments -> inference on a full-size real photo."""
    from lavin_data.codecs import decode_npy
    from lavin_data.encode_latents import main as encode_main
    from lavin_data.shards import iter_tar_samples
    from lavin_data.spec import parse_spec
    from lavin_data.stvae import SCALE, build_stvae, mean_latent
    from lavin_model.data import InContextBatches, InContextLoader
    from lavin_model.jdit import JDiT
    from pipelines.build import build
    from tests.conftest import fixture_path

    photos = fixture_path("photos")
    spec = parse_spec({"name": "p", "output": str(tmp_path / "pix"), "resolution": 64, "shard_size": 2,
                       "sources": [{"name": "photos", "kind": "image_folder", "root": str(photos)}],
                       "tasks": [{"task": "colorization", "source": "photos"},
                                 {"task": "denoise", "source": "photos"}]})
    build(spec, echo=lambda *_: None)
    torch.manual_seed(0)
    vae, model = tmp_path / "vae.pt", build_stvae(TINY_VAE)
    with torch.no_grad():  # posterior log-variance near -20: a sampled z is its mean to ~1e-4
        model.encoder.conv_out.conv.bias[16:] = -20.0
    torch.save({"state_dict": model.state_dict()}, vae)
    assert encode_main(["--pixels", str(tmp_path / "pix" / "pairs"), "--out", str(tmp_path / "lat"),
                        "--resolution", "64", "--vae", str(vae), "--vae-config", json.dumps(TINY_VAE)]) == 0

    stored = {}
    for tar in (tmp_path / "lat").glob("*/*.tar"):
        for key, m in iter_tar_samples(tar):
            for name in ("input", "target"):
                mom = torch.from_numpy(decode_npy(m[f"{name}_moments.npy"]).astype(np.float32))
                stored[(tar.parent.name, key, name)] = (mean_latent(mom[None])[0, :, 0],
                                                        torch.exp(0.5 * mom[16:, 0]) * SCALE)
    batch = next(iter(InContextLoader(InContextBatches(tmp_path / "lat", batch_size=3, context=(2, 2),
                                                       drop_rate=0.0), num_workers=0)))
    assert batch["cond"].shape == (3, 16, 5, 8, 8) and batch["target"].shape == (3, 16, 1, 8, 8)
    for e, (task, keys) in enumerate(zip(batch["tasks"], batch["keys"])):
        frames = [(keys[i // 2], "input" if i % 2 == 0 else "target") for i in range(4)] + [(keys[2], "input")]
        for f, (key, name) in enumerate(frames):
            mean, std = stored[(task, key, name)]
            assert float(std.max()) < 1e-3
            torch.testing.assert_close(batch["cond"][e, :, f], mean, atol=2e-3, rtol=0, msg=str((task, key, name)))
        mean, _std = stored[(task, keys[2], "target")]
        torch.testing.assert_close(batch["target"][e, :, 0], mean, atol=2e-3, rtol=0)
        assert (batch["cond"][e, :, 0] - batch["cond"][e, :, 1]).abs().max() > 0.05  # frames are distinguishable

    torch.manual_seed(2)
    torch.save({"state_dict": JDiT.from_size("tiny").state_dict()}, tmp_path / "released.pt")
    tpl = tmp_path / "templates" / "colorization"
    tpl.mkdir(parents=True)
    for _i, (key, m) in enumerate(iter_tar_samples(next((tmp_path / "pix" / "pairs" / "colorization").glob("*.tar")))):
        ext = next(k for k in m if k.startswith("input."))
        (tpl / f"{key}_input.{ext.split('.')[1]}").write_bytes(m[ext])
        (tpl / f"{key}_target.png").write_bytes(m["target.png"])
    query = sorted(photos.glob("*.jpg"))[0]
    r = subprocess.run([sys.executable, "-m", "lavin_model.infer", "--checkpoint", str(tmp_path / "released.pt"),
                        "--vae", str(vae), "--vae-config", json.dumps(TINY_VAE), "--examples", str(tpl),
                        "--query", str(query), "--out", str(tmp_path / "pred.png"), "--resolution", "64",
                        "--steps", "3"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert cv2.imread(str(tmp_path / "pred.png")).shape == cv2.imread(str(query)).shape


def test_ema_update_and_decay_schedule_by_hand():
    from lavin_model.train import ema_decay, update_ema

    assert ema_decay(0.9999, 0) == 0.1 and ema_decay(0.9999, 8) == 0.5 and ema_decay(0.9999, 10**6) == 0.9999
    assert ema_decay(0.9, 200) == 0.9
    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(4.0)
        ema.weight.copy_(torch.tensor([[3.0, -2.0]]))
        ema.bias.fill_(0.0)
    update_ema(ema, model.to(torch.bfloat16), 0.75)  # bf16 weights (a GPU run) into the fp32 EMA
    assert torch.equal(ema.weight, torch.tensor([[0.75 * 3 + 0.25 * 1, 0.75 * -2 + 0.25 * 2]]))  # [[2.5, -1.0]]
    assert torch.equal(ema.bias, torch.tensor([1.0])) and ema.weight.dtype == torch.float32


def test_validation_loss_uses_fixed_noise_the_t_grid_and_val_examples_only(latents):
    from lavin_model.data import VAL_T, validation_batches, validation_loss

    batches = validation_batches(latents, n_context=2, max_per_task=3, seed=0)
    assert sorted(batches) == ["task0", "task1", "task2"]
    truth = {}
    for tar in sorted(latents.glob("*/*.tar")):
        for key, m in iter_tar_samples(tar):
            truth[key] = json.loads(m["json"])
    for b in batches.values():
        assert b["cond"].shape == (3, 16, 5, 8, 8) and b["target"].shape == (3, 16, 1, 8, 8)
        for keys in b["keys"]:
            assert truth[keys[-1]]["split"] == "val" and all(truth[k]["split"] == "train" for k in keys[:-1])
            assert all(truth[k]["item"] != truth[keys[-1]]["item"] for k in keys[:-1])
    seen = []

    def model(x_t, t, cond):  # records what it is given; predicts zero velocity
        seen.append((x_t.clone(), t.clone(), cond.shape[0]))
        return torch.zeros_like(x_t)

    a = validation_loss(model, batches, seed=0, batch_size=2)
    calls = list(seen)
    assert validation_loss(model, batches, seed=0, batch_size=2) == a  # the same number every time
    assert a != validation_loss(model, batches, seed=1, batch_size=2)
    # Calls: per task, per chunk of 2 examples, one per grid time; x_t = t x1 + (1 - t) x0 with one
    # x0 per example shared by every t (fixed noise), so x0 is recovered from two grid points.
    x1 = batches["task0"]["target"][:2]
    (xa, ta, _), (xb, tb, _) = calls[0], calls[1]
    assert [float(c[1][0]) for c in calls[: len(VAL_T)]] == [pytest.approx(t) for t in VAL_T]
    x0a = (xa - ta[0] * x1) / (1 - ta[0])
    x0b = (xb - tb[0] * x1) / (1 - tb[0])
    torch.testing.assert_close(x0a, x0b, atol=1e-5, rtol=0)
    # Zero velocity: the loss of a chunk is mean (x1 - x0)^2 + 0.1 mean |x1 - x0| at every t; the
    # task's loss is the mean over its examples (chunks of 2 and 1).
    n = len(VAL_T)
    x1b, (xc, tc, _) = batches["task0"]["target"][2:], calls[n]
    x0c = (xc - tc[0] * x1b) / (1 - tc[0])
    parts = [(x1 - x0a, 2), (x1b - x0c, 1)]
    expect = sum(float(v.pow(2).mean() + 0.1 * v.abs().mean()) * k for v, k in parts) / 3
    assert a["task0"] == pytest.approx(expect, rel=1e-4)
