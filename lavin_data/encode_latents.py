"""``python -m lavin_data.encode_latents --pixels OUT/pairs --out OUT/latents/stvae-256 --resolution 256
--vae stvae.pt [--tasks depth_estimation,...] [--num-cpus N] [--num-gpus G] [--dtype bf16] [--preview 4]``

Pixel pair shards -> latent shards, one to one: ``<out>/<task>/<shard>.tar`` with the
same shard names and sample keys. Each sample holds the ST-VAE posterior moments of its
input and target (fp16, (32, T', R/8, R/8): mean then log-variance) and a json with the
VAE id, weight hash, shift/scale, resolution and frame count, the pair's ``split`` (train |
val, also in the index) and source ``item``, plus the pair's own json.
Done shards (stats present) are skipped; a pair that cannot be decoded is recorded in the
index and the rest of its shard is encoded. Encoders are a Ray Data actor pool (one model
per actor, on a GPU when ``--num-gpus`` > 0); the next batch is decoded in a background
thread while the VAE runs. ``--preview N`` decodes the first N latents of each task back to
PNG beside the originals in ``<out>/preview/``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path

import cv2
import numpy as np

from lavin_data.codecs import decode_image, encode_npy
from lavin_data.geometry import plan_resize
from lavin_data.output_lock import OutputLock, OutputLockError, os_problem
from lavin_data.shards import (
    ShardWriter,
    decoded_batches,
    iter_tar_samples,
    prefetch,
    read_stats,
    remove_temporaries,
    shard_done,
)
from lavin_data.split import pair_split

MEMBERS = ("input_moments.npy", "target_moments.npy", "json")


def _to_square(img: np.ndarray, res: int) -> np.ndarray:
    """Pair images are square already (the build's resize policy); other sizes are squashed."""
    if img.shape[:2] == (res, res):
        return img
    return plan_resize(img.shape[1], img.shape[0], res, "squash").image(img)


def _decode_pair(key: str, m: dict[str, bytes], res: int) -> tuple[np.ndarray, np.ndarray, dict]:
    meta = json.loads(m["json"])
    inp = next((e for e in m if e.startswith("input.")), None)
    if inp is None or "target.png" not in m:
        raise ValueError(f"pair {key} lacks an input or target image (has {sorted(m)})")
    a = _to_square(decode_image(m[inp], f"{key}.{inp}"), res)
    b = _to_square(decode_image(m["target.png"], f"{key}.target.png"), res)
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"pair {key}: expected RGB images")
    return a, b, meta


class Encoder:
    """Holds one ST-VAE (loaded once) and encodes whole pair shards."""

    def __init__(self, vae: str | None, vae_config: dict | None, device: str, dtype: str):
        import torch

        from lavin_data.devices import device_and_dtype
        from lavin_data.stvae import build_stvae
        from lavin_data.weights import weight_hash

        self.torch = torch
        self.device, self.dtype = device_and_dtype(device == "cuda", dtype)
        self.vae = build_stvae(vae_config, vae).to(self.device, self.dtype)
        self.info = {"vae": str(vae) if vae else "random-init", "vae_config": vae_config or {},
                     "weight_hash": weight_hash(vae) if vae else None}

    def moments(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 32, 1, H/8, W/8) float16 moments."""
        from lavin_data.stvae import encode_uint8

        return encode_uint8(self.vae, images).float().cpu().numpy().astype(np.float16)

    def encode_shard(self, src: Path, dst: Path, res: int, batch_size: int) -> dict:
        if shard_done(dst):
            return dict(read_stats(dst), skipped=True)
        from lavin_data.stvae import SCALE, SHIFT

        t0 = time.perf_counter()
        decode = functools.partial(_decode_pair, res=res)
        with ShardWriter(dst, stage="encode_latents") as w:
            for ok, failed in prefetch(decoded_batches(iter_tar_samples(src), decode, batch_size)):
                for key, err in failed:
                    w.fail(key, "decode", err)
                if not ok:
                    continue
                mom = self.moments([a for _k, (a, _b, _m) in ok] + [b for _k, (_a, b, _m) in ok])
                n = len(ok)
                for i, (key, (_a, _b, meta)) in enumerate(ok):
                    split, item = pair_split(key, meta)
                    info = dict(self.info, shift=SHIFT, scale=SCALE, resolution=res, frames=1,
                                latent_frames=int(mom.shape[2]), moments="fp16 (2*16, T', R/8, R/8): mean, logvar",
                                split=split, item=item, pair=meta)
                    w.add(key, {"input_moments.npy": encode_npy(mom[i]),
                                "target_moments.npy": encode_npy(mom[n + i]),
                                "json": json.dumps(info, sort_keys=True).encode()}, split=split)
            return dict(w.commit({"stage": "encode_latents", "source_shard": str(src), "resolution": res},
                                 {"seconds": round(time.perf_counter() - t0, 3)}), skipped=False)


class EncodeWorker:
    """Ray Data actor: one Encoder per actor."""

    def __init__(self, vae, vae_config, device, dtype, res, batch_size):
        self.enc = Encoder(vae, vae_config, device, dtype)
        self.res, self.batch_size = res, batch_size

    def __call__(self, row: dict) -> dict:
        try:
            st = self.enc.encode_shard(Path(row["src"]), Path(row["dst"]), self.res, self.batch_size)
            return dict(row, stats=json.dumps(st), error="")
        except Exception as e:  # noqa: BLE001
            return dict(row, stats="{}", error=f"{row['src']}: {type(e).__name__}: {e}\n{traceback.format_exc()}")


def shard_pairs(pixels: Path, out: Path, tasks: list[str] | None) -> list[dict]:
    """Every committed pair shard (stats present) with its latent destination. Video tasks
    (clip pairs) are left out with a note: encoding clips is not built yet."""
    from lavin_data.registry import TASKS

    rows = []
    for task_dir in sorted(p for p in pixels.iterdir() if p.is_dir()):
        if tasks and task_dir.name not in tasks:
            continue
        if task_dir.name in TASKS and TASKS[task_dir.name].frames == "video":
            print(f"[encode] skipping {task_dir.name}: clip pairs are not encoded yet (image pairs only)")
            continue
        for tar in sorted(task_dir.glob("*.tar")):
            if shard_done(tar):
                rows.append({"src": str(tar), "dst": str(out / task_dir.name / tar.name)})
    return rows


def preview(pixels: Path, out: Path, vae: str | None, vae_config: dict | None, n: int) -> list[Path]:
    """For the first ``n`` samples of each task: original target | target decoded from its
    latent (posterior mean), side by side, in ``<out>/preview/<task>/<key>.png``."""
    import torch

    from lavin_data.codecs import decode_npy
    from lavin_data.stvae import build_stvae, decode_to_uint8, mean_latent

    model = build_stvae(vae_config, vae)
    written = []
    for task_dir in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "preview"):
        done = 0
        for tar in sorted(task_dir.glob("*.tar")):
            originals = dict(iter_tar_samples(pixels / task_dir.name / tar.name))
            for key, m in iter_tar_samples(tar):
                res = json.loads(m["json"])["resolution"]
                mom = torch.from_numpy(decode_npy(m["target_moments.npy"]).astype(np.float32))[None]
                rec = decode_to_uint8(model, mean_latent(mom))[0]
                orig = _to_square(decode_image(originals[key]["target.png"]), res)
                d = out / "preview" / task_dir.name
                d.mkdir(parents=True, exist_ok=True)
                p = d / f"{key}.png"
                cv2.imwrite(str(p), cv2.cvtColor(np.concatenate([orig, rec], 1), cv2.COLOR_RGB2BGR))
                written.append(p)
                done += 1
                if done == n:
                    break
            if done == n:
                break
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lavin_data.encode_latents", description=__doc__.split("\n\n")[1])
    ap.add_argument("--pixels", required=True, help="a build's pairs/ folder")
    ap.add_argument("--out", required=True, help="e.g. OUT/latents/stvae-256")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--vae", help="released stvae.pt, a .safetensors file or a diffusers folder")
    ap.add_argument("--vae-config", help="JSON overrides of the architecture (tests: a tiny VAE)")
    ap.add_argument("--tasks", help="comma-separated task folders (default: all)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per forward (2x images)")
    ap.add_argument("--num-cpus", type=int, help="local Ray CPUs (ignored with RAY_ADDRESS)")
    ap.add_argument("--num-gpus", type=float, default=0, help="GPUs per encoder actor")
    ap.add_argument("--num-actors", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="bf16", help="on GPU; CPU runs fp32")
    ap.add_argument("--preview", type=int, default=0, help="decode N latents per task to PNG")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    pixels, out = Path(args.pixels), Path(args.out)
    if args.resolution % 8:
        print(f"error: --resolution must be a multiple of 8, got {args.resolution}", file=sys.stderr)
        return 2
    if not pixels.is_dir():
        print(f"error: {pixels}: no such pairs folder", file=sys.stderr)
        return 2
    vae_config = json.loads(args.vae_config) if args.vae_config else None
    if args.vae is None and vae_config is None:
        print("error: give --vae (a checkpoint) or --vae-config (random weights, for tests)", file=sys.stderr)
        return 2
    if args.vae and not Path(args.vae).exists():
        print(f"error: {args.vae}: VAE checkpoint not found", file=sys.stderr)
        return 2
    if args.num_gpus > 0:
        import torch

        if not torch.cuda.is_available():
            print(f"error: --num-gpus {args.num_gpus} but no CUDA device is visible to torch", file=sys.stderr)
            return 2
    try:
        with OutputLock(out):
            remove_temporaries(out)  # of killed runs; this run is the only writer now
            return _encode(args, pixels, out, vae_config)
    except OutputLockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only or foreign folder
        print(f"error: {os_problem(e, str(out))}", file=sys.stderr)
        return 2


def _encode(args, pixels: Path, out: Path, vae_config: dict | None) -> int:
    rows = shard_pairs(pixels, out, args.tasks.split(",") if args.tasks else None)
    todo = [r for r in rows if not shard_done(r["dst"])]
    print(f"[encode] {len(rows)} pair shards, {len(rows) - len(todo)} already done, {len(todo)} to do -> {out}")
    errors = []
    if todo:
        import ray

        from lavin_data.ray_session import ensure_ray

        ensure_ray(args.num_cpus)
        device = "cuda" if args.num_gpus > 0 else "cpu"
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map(
            EncodeWorker, fn_constructor_args=(args.vae, vae_config, device, args.dtype, args.resolution,
                                               args.batch_size),
            compute=ray.data.ActorPoolStrategy(size=args.num_actors, max_tasks_in_flight_per_actor=2),
            num_gpus=args.num_gpus or None, num_cpus=1)
        t0, n = time.perf_counter(), 0
        for i, row in enumerate(ds.iter_rows(), 1):
            st = json.loads(row["stats"])
            n += st.get("n_ok", 0) if not st.get("skipped") else 0
            if row["error"]:
                errors.append(row["error"])
            el = time.perf_counter() - t0
            print(f"[encode] {len(rows) - len(todo) + i}/{len(rows)} shards | {n} pairs | {n / max(el, 1e-9):.2f} "
                  f"pairs/s" + (" | ERROR" if row["error"] else ""), flush=True)
    if args.preview:
        for p in preview(pixels, out, args.vae, vae_config, args.preview):
            print(p)
    if errors:
        print("error: " + "\n".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
