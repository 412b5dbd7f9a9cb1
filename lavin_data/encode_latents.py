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
PNG beside the originals in ``<out>/preview/``. ``--pixels`` may also be the build folder
itself (its ``pairs/`` is used); a folder of other shards (base, labels, latents), a
``--tasks`` name without a folder, or nothing to encode is an error (exit 2).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path

import cv2
import numpy as np

from lavin_data.cli import HelpFormatter, fail
from lavin_data.codecs import decode_image, encode_npy
from lavin_data.geometry import plan_resize
from lavin_data.output_lock import OutputLock, OutputLockError, os_problem
from lavin_data.shards import (
    ShardWriter,
    build_pairs_folder,
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


class PixelsError(ValueError):
    """``--pixels``/``--tasks`` give nothing this run can encode; the message says what was
    found there and what was expected (the CLI prints it and exits 2)."""


EXPECTED = "<pixels>/<task>/<shard>.tar, each with its <shard>.stats.json (a build's pairs/ folder)"
# What each ``stage`` in a shard's stats means, for telling a user which folder they gave.
STAGE_KINDS = {"render": "pair shards", "ingest": "base shards (a build's base/ folder)",
               "label": "label shards (a build's labels/ folder)",
               "encode_latents": "latent shards (an encode_latents output)"}


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _first_stats(folder: Path) -> dict | None:
    """The first readable ``*.stats.json`` directly in ``folder`` (None: there is none)."""
    for f in sorted(folder.glob("*.stats.json")):
        try:
            stats = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(stats, dict):
            return stats
    return None


def _stats_below(folder: Path) -> tuple[Path, dict] | None:
    """(sub-folder, stats) of the first shard one folder below ``folder``; one stats file
    per sub-folder is read, so a large build costs a few dozen reads."""
    for d in _subdirs(folder):
        stats = _first_stats(d)
        if stats is not None:
            return d, stats
    return None


def _not_pairs(stats: dict) -> str | None:
    """What shards of another stage are (``STAGE_KINDS``), None for pair shards. A stats
    file that records no stage counts as pairs: only a known other stage is refused."""
    stage = stats.get("stage")
    return STAGE_KINDS[stage] if stage in STAGE_KINDS and stage != "render" else None


def resolve_pixels(pixels: Path) -> tuple[Path, list[str]]:
    """The pair-shard folder that ``--pixels`` names, and notes for the user. A build folder
    (one with ``pairs/`` holding task folders) stands for its ``pairs/``. Raises
    :class:`PixelsError` for a folder of other shards (base, labels, latents: told apart by
    the ``stage`` their stats record), a single task's folder, or one with no pair shards."""
    pairs = build_pairs_folder(pixels)
    if pairs is not None:
        return pairs, [f"{pixels} is a build folder: encoding its pair shards in {pairs}"]
    here = _first_stats(pixels)
    if here is not None:
        kind = _not_pairs(here)
        if kind is None:
            raise PixelsError(f"{pixels} is one task's folder of pair shards; give the pairs/ folder above it: "
                              f"--pixels {pixels.parent} --tasks {pixels.name}")
        raise PixelsError(f"{pixels} holds {kind}, not pixel pair shards; expected {EXPECTED}")
    below = _stats_below(pixels)
    if below is not None:
        stats = below[1]
        kind = _not_pairs(stats)
        if kind is None:
            return pixels, []
        hint = ""
        if stats.get("stage") == "encode_latents" and stats.get("source_shard"):
            hint = f" (its shards were encoded from {Path(stats['source_shard']).parent.parent})"
        elif (pixels.parent / "pairs").is_dir():  # base/ or labels/<labeler>/ of a build
            hint = f"; the pair shards of this build are in {pixels.parent / 'pairs'}"
        raise PixelsError(f"{pixels} holds {kind}, not pixel pair shards{hint}; expected {EXPECTED}")
    builds = [d for d in _subdirs(pixels) if (d / "pairs").is_dir() and _subdirs(d / "pairs")]
    if builds:
        raise PixelsError(f"{pixels} holds build folders, not pair shards; give one of them (or its pairs/): "
                          + ", ".join(str(b) for b in builds))
    for d in _subdirs(pixels):  # labels/<labeler>/<source>/ or latents/<name>/<task>/: shards two folders down
        below = _stats_below(d)
        kind = _not_pairs(below[1]) if below else None
        if kind:
            raise PixelsError(f"{pixels} holds no pair shards ({d} holds {kind}); expected {EXPECTED}")
    uncommitted = sum(1 for d in _subdirs(pixels) for _ in d.glob("*.tar"))
    if uncommitted:
        raise PixelsError(f"{pixels}: no committed pair shards ({uncommitted} .tar files without their "
                          ".stats.json: a build still running, or stopped before committing any? re-run it)")
    what = "a build folder without pairs/ (has the build rendered any pairs?)" if any(
        (pixels / f).exists() for f in ("spec.json", "manifest.json")) else "no pair shards"
    raise PixelsError(f"{pixels}: {what}; expected {EXPECTED}")


def select_tasks(pixels: Path, tasks: list[str] | None) -> tuple[list[str], list[str]]:
    """(image task folders to encode, video task folders left out) of the pairs folder
    ``pixels``: those named in ``tasks`` (None: all). Raises :class:`PixelsError` for a task
    name without a folder (with the folders there and a close match) or when only video
    tasks are left: encoding clip pairs is not built yet."""
    from lavin_data.registry import TASKS

    found = [d.name for d in _subdirs(pixels)]
    if tasks is not None:
        unknown = [t for t in tasks if t not in found]
        if unknown:
            named = []
            for t in unknown:
                close = difflib.get_close_matches(t, found, n=1)
                named.append(f"{t} (did you mean {close[0]}?)" if close else t)
            raise PixelsError(f"--tasks: no task folder{'s' if len(named) > 1 else ''} {', '.join(named)} in {pixels}; "
                              f"task folders there: {', '.join(found) or 'none'}")
    chosen = found if tasks is None else [t for t in found if t in tasks]
    video = [t for t in chosen if t in TASKS and TASKS[t].frames == "video"]
    image = [t for t in chosen if t not in video]
    if not image and video:
        others = [t for t in found if t not in video and not (t in TASKS and TASKS[t].frames == "video")]
        which = "--tasks names only video tasks" if tasks is not None else f"{pixels} holds only video task folders"
        raise PixelsError(f"{which} ({', '.join(video)}): clip pairs are not encoded yet (image pairs only); "
                          f"image task folders there: {', '.join(others) or 'none'}")
    return image, video


def shard_pairs(pixels: Path, out: Path, tasks: list[str] | None) -> list[dict]:
    """Every committed pair shard (stats present) of the image tasks of ``pixels`` (a pairs
    folder; ``tasks``: those task folders, None: all) with its latent destination and its
    pair count. Video tasks (clip pairs) are left out with a note: encoding clips is not
    built yet. Raises :class:`PixelsError` when nothing is there to encode (see
    :func:`select_tasks`), or when the chosen tasks have no committed shard."""
    image, video = select_tasks(pixels, tasks)
    if video:
        print(f"[encode] skipping video tasks (clip pairs are not encoded yet, image pairs only): {', '.join(video)}")
    rows, uncommitted = [], 0
    for task in image:
        for tar in sorted((pixels / task).glob("*.tar")):
            if shard_done(tar):
                rows.append({"src": str(tar), "dst": str(out / task / tar.name),
                             "pairs": int(read_stats(tar).get("n_ok", 0))})
            else:
                uncommitted += 1
    if not rows:
        why = f" ({uncommitted} .tar files without their .stats.json: a build still running?)" if uncommitted else ""
        raise PixelsError(f"no committed pair shards for {', '.join(image) or 'any task'} in {pixels}{why}; "
                          f"expected {EXPECTED}")
    if uncommitted:
        print(f"[encode] note: {uncommitted} pair shards not committed yet (no .stats.json) are left out")
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
    ap = argparse.ArgumentParser(prog="python -m lavin_data.encode_latents", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--pixels", required=True,
                    help="a build's pairs/ folder (<pixels>/<task>/<shard>.tar), or the build folder holding it")
    ap.add_argument("--out", required=True, help="the latent output folder, e.g. OUT/latents/stvae-256")
    ap.add_argument("--resolution", type=int, default=256,
                    help="square side in pixels that pairs are encoded at, a multiple of 16 "
                    "(the VAE's 8 x J-DiT's patch 2)")
    ap.add_argument("--vae", help="released stvae.pt, a .safetensors file or a diffusers folder")
    ap.add_argument("--vae-config", help="JSON overrides of the architecture (tests: a tiny VAE)")
    ap.add_argument("--tasks", help="comma-separated task folders (default: every image task folder)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per forward (2x images)")
    ap.add_argument("--num-cpus", type=int, help="local Ray CPUs (default: all of them; ignored with RAY_ADDRESS)")
    ap.add_argument("--num-gpus", type=float, default=0, help="GPUs per encoder actor (0: encode on the CPU)")
    ap.add_argument("--num-actors", type=int, default=1, help="encoder actors, one VAE each")
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="bf16", help="on GPU; CPU runs fp32")
    ap.add_argument("--preview", type=int, default=0, help="decode N latents per task to PNG (0: none)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    pixels, out = Path(args.pixels), Path(args.out)
    if args.resolution < 16 or args.resolution % 16:  # latents of R/8 that J-DiT's 2x2 patches tile
        return fail(f"--resolution must be a positive multiple of 16 (the ST-VAE's 8 x J-DiT's patch 2), got "
                    f"{args.resolution}")
    if not pixels.is_dir():
        return fail(f"{pixels}: no such pairs folder")
    try:
        vae_config = json.loads(args.vae_config) if args.vae_config else None
    except ValueError as e:
        return fail(f"--vae-config is not JSON: {e}")
    if args.vae is None and vae_config is None:
        return fail("give --vae (a checkpoint) or --vae-config (random weights, for tests)")
    if args.vae and not Path(args.vae).exists():
        return fail(f"{args.vae}: VAE checkpoint not found")
    if args.num_gpus > 0:
        import torch

        if not torch.cuda.is_available():
            return fail(f"--num-gpus {args.num_gpus} but no CUDA device is visible to torch")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    # The outermost folder this run creates (the lock makes --out and its missing parents).
    fresh = next((d for d in reversed([out, *out.parents]) if not d.exists()), None)
    try:
        # The folder checks run under the lock so that a second run into the same --out is
        # told about the lock first, whatever it gave as --pixels.
        with OutputLock(out, flag="--out"):
            remove_temporaries(out)  # of killed runs; this run is the only writer now
            try:
                pairs, notes = resolve_pixels(pixels)
                for note in notes:
                    print(f"[encode] note: {note}")
                rows = shard_pairs(pairs, out, tasks)
            except PixelsError as e:
                if fresh is not None:  # leave no empty output folder behind a mistyped command
                    _remove_fresh_output(out, fresh)
                return fail(e)
            return _encode(args, pairs, out, rows, vae_config)
    except OutputLockError as e:
        return fail(e)
    except OSError as e:  # a full disk, a read-only or foreign folder
        return fail(os_problem(e, str(out)))


def _remove_fresh_output(out: Path, created: Path) -> None:
    """Remove ``out``, created by this run and holding only its lock file, and its parents up
    to ``created`` (the outermost folder the run made) while they are empty. Called with the
    lock held: a run that opened the lock file before the unlink is refused, one that
    starts after it makes a new lock file, which keeps the folder (rmdir fails: not empty)."""
    try:
        (out / ".lock").unlink()
        for d in [out, *out.parents]:
            d.rmdir()
            if d == created:
                break
    except OSError:
        pass


def _encode(args, pixels: Path, out: Path, rows: list[dict], vae_config: dict | None) -> int:
    todo = [r for r in rows if not shard_done(r["dst"])]
    tasks = sorted({Path(r["src"]).parent.name for r in rows})
    n_pairs, n_todo = sum(r["pairs"] for r in rows), sum(r["pairs"] for r in todo)
    print(f"[encode] {len(tasks)} task{'s' * (len(tasks) > 1)}, {len(rows)} pair shards ({n_pairs} pairs): "
          f"{len(rows) - len(todo)} shards already done, {len(todo)} to encode ({n_todo} pairs) -> {out}", flush=True)
    errors = []
    if todo:
        import ray

        from lavin_data.ray_session import ensure_ray

        device = "cuda" if args.num_gpus > 0 else "cpu"
        if device == "cpu":
            print("[encode] note: encoding on the CPU (--num-gpus 0) is slow: a full demo build takes minutes; "
                  "a line follows each finished shard", flush=True)
        ensure_ray(args.num_cpus)
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
