"""``python -m benchmarks.bench_label [--model M] [--size S] [--images N] [--batch B] [--processing-size P]``

Labeler throughput: the label stage over one base shard of N photos against the raw model
forward on the same prepared batches (the ceiling), and how full the forwards' batches were.

The label stage is :func:`pipelines.stages.label_shard` (decode in a background thread,
fitting, forward, mapping back, 16-bit PNG encode, tar + index); the ceiling runs the labeler's
raw forward (Depth-Anything: the model on pixel values; StableNormal: the YOSO pipeline call)
on the same batches, prepared beforehand, in a tight loop. The photos are the fixture
photos repeated (four sizes), so without ``--processing-size`` each forward holds one size
and batches are mostly empty; with it every image is fitted into one square and batches are
full. Models have random weights, built from configs and loaded through the same path as
real ones: Depth-Anything V2 ``tiny`` (test-sized), ``small`` or ``large`` (the real
architectures, 25M / 335M parameters); StableNormal-turbo ``tiny`` or ``real`` (the released
architecture: SD-2 UNet, its ControlNet, SD VAE, OpenCLIP-H text encoder; the pipeline module
is :data:`lavin_data.testing.YOSO_STANDIN`, or your clone's with ``--clone``). Runs on the GPU
when one is visible (then in ``--dtype``). Prints a ``contended: ...`` line when the machine
was busy (:mod:`benchmarks.contention`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.contention import Meter
from lavin_data.cli import HelpFormatter
from lavin_data.spec import parse_spec

SIZES = {"depth_anything_v2": ("tiny", "small", "large"), "stable_normal": ("tiny", "real")}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_label", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--model", choices=sorted(SIZES), default="depth_anything_v2", help="the labeler to measure")
    ap.add_argument("--size", default="tiny",
                    help="depth_anything_v2: tiny | small | large; stable_normal: tiny | real (the architectures "
                         "of the released models, random weights)")
    ap.add_argument("--images", type=int, default=16, help="photos in the shard (the fixture photos, repeated)")
    ap.add_argument("--batch", type=int, default=4, help="images per forward")
    ap.add_argument("--processing-size", type=int, default=None,
                    help="fit every image into this square so mixed sizes share a batch (the labeler's "
                         "processing_size); unset: same-sized images only")
    ap.add_argument("--fit", choices=["pad", "resize"], default="pad", help="with --processing-size")
    ap.add_argument("--photos", default="tests/fixtures/photos", help="folder of .jpg photos")
    ap.add_argument("--clone", default=None, help="stable_normal: a StableNormal clone to take the pipeline from")
    ap.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"], help="model dtype on a GPU")
    return ap


def build_model(kind: str, size: str, folder: Path, clone: str | None) -> dict:
    """Random weights of ``size`` written under ``folder`` -> the labeler's spec fields."""
    from lavin_data.testing import tiny_depth_anything, tiny_stable_normal

    if kind == "depth_anything_v2":
        return {"model": str(tiny_depth_anything(folder / "model", size))}
    weights, standin = tiny_stable_normal(folder / "yoso-normal-v0-3", folder / "StableNormal", size)
    return {"model": str(weights), "clone": clone or str(standin)}


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.size not in SIZES[args.model]:
        ap.error(f"--size for {args.model} is one of {', '.join(SIZES[args.model])}, not {args.size!r}")
    meter = Meter(own_cpus=1)
    import numpy as np
    import torch

    from lavin_data.codecs import decode_image
    from lavin_data.labelers import fit_square, forward_batches, labeler_class
    from lavin_data.shards import iter_tar_samples
    from pipelines.build import shard_jobs
    from pipelines.layout import base_tar
    from pipelines.stages import ingest_shard, label_shard

    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = sorted(Path(args.photos).glob("*.jpg"))
        if not photos:
            ap.error(f"no .jpg photos in {args.photos}")
        (tmp / "imgs").mkdir()
        for i in range(args.images):  # the fixture photos, repeated to N files
            shutil.copy(photos[i % len(photos)], tmp / "imgs" / f"{i:04d}.jpg")
        t_build = time.perf_counter()
        fields = build_model(args.model, args.size, tmp, args.clone)
        t_build = time.perf_counter() - t_build
        task = "depth_estimation" if args.model == "depth_anything_v2" else "surface_normal_estimation"
        spec = parse_spec({
            "name": "b", "output": str(tmp / "out"), "shard_size": args.images,
            "sources": [{"name": "p", "kind": "image_folder", "root": str(tmp / "imgs")}],
            "labelers": [{"name": "lab", "kind": args.model, "source": "p", "batch_size": args.batch,
                          "processing_size": args.processing_size, "fit": args.fit,
                          "num_gpus": 1 if gpu else 0, "dtype": args.dtype, **fields}],
            "tasks": [{"task": task, "source": "p", "labeler": "lab"}],
        })
        (job,), _ = shard_jobs(spec)
        ingest_shard(spec, "p", 0, json.loads(job["items"]), {})
        t_load = time.perf_counter()
        lab = labeler_class(args.model)(spec.labelers[0])
        t_load = time.perf_counter() - t_load
        images = [decode_image(m["image.jpg"]) for _, m in iter_tar_samples(base_tar(spec.output, "p", 0))]
        fixed, size = args.processing_size is not None, args.processing_size

        # The batches label() forms: chunks of --batch (as the stage hands them over), then
        # within a chunk one forward per size, or all of it at a fixed size.
        def prepare(batch: list[np.ndarray]):
            if args.model == "depth_anything_v2":
                return lab.prepare(batch)
            return np.stack([fit_square(im, size, args.fit)[0] for im in batch] if fixed else batch)

        def forward(prepared) -> None:
            if args.model == "depth_anything_v2":
                lab.forward(prepared)
            else:
                lab.forward(prepared, size)

        prepared = []
        for i in range(0, len(images), args.batch):
            chunk = images[i:i + args.batch]
            prepared += [prepare([chunk[j] for j in idx]) for idx in forward_batches(chunk, args.batch, fixed)]
        sync = torch.cuda.synchronize if gpu else (lambda: None)
        for pv in {tuple(getattr(pv, "shape", ())): pv for pv in prepared}.values():
            forward(pv)  # warm-up of every batch shape (allocations, oneDNN/cuDNN set-up) outside both timings
        sync()
        # CPU: torch's threads; GPU: the thread feeding it (+ the stage's decode thread).
        own = 1 if gpu else torch.get_num_threads()
        with meter.section(own_cpus=own):
            t0 = time.perf_counter()
            for pv in prepared:
                forward(pv)
            sync()
            ceiling = len(images) / (time.perf_counter() - t0)
        with meter.section(own_cpus=own + 1):
            t0 = time.perf_counter()
            st = label_shard(spec, "lab", "p", 0, lab)
            sync()
            stage = st["n_ok"] / (time.perf_counter() - t0)
    dev = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    sizes = len({im.shape[:2] for im in images})
    how = f"fixed {size}x{size} ({args.fit})" if fixed else "same-size groups"
    params = sum(p.numel() for m in _modules(lab) for p in m.parameters()) / 1e6
    print(f"{args.model} {args.size} (random weights, {params:.0f}M parameters), {len(images)} photos of {sizes} "
          f"sizes, batch {args.batch}, {how}, {dev}, dtype {str(lab.dtype if hasattr(lab, 'dtype') else '')}")
    print(f"model built in {t_build:.1f} s, loaded in {t_load:.1f} s; {len(prepared)} forwards, batch fill "
          f"{st.get('batch_fill', float('nan')):.2f} (images / (forwards x batch))")
    print(f"raw forward (ceiling): {ceiling:8.3f} images/s")
    print(f"label stage:           {stage:8.3f} images/s  -> {stage / ceiling:.2f} of the ceiling")
    note = meter.note()
    if note:
        print(note)
    return 0


def _modules(lab) -> list:
    """The torch modules a labeler runs (for the parameter count)."""
    if hasattr(lab, "model"):
        return [lab.model]
    pipe = lab.pipe
    return [getattr(pipe, n) for n in ("unet", "controlnet", "vae", "text_encoder") if getattr(pipe, n, None)]


if __name__ == "__main__":
    raise SystemExit(main())
