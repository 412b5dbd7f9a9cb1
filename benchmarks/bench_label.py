"""``python -m benchmarks.bench_label [--size tiny|small] [--images N] [--batch B]``

Labeler throughput: the label stage over one base shard of N photos against the raw
Depth-Anything V2 forward on the same prepared batches (the ceiling).

The label stage is :func:`pipelines.stages.label_shard` (decode in a background thread,
preprocess, forward, post-process, 16-bit PNG encode, tar + index); the ceiling runs the raw
model forward on the same prepared batches in a tight loop. The model is a Depth-Anything V2 with random
weights, built from a config and loaded through the same path as real weights:
``tiny`` (test-sized) or ``small`` (the architecture of Depth-Anything-V2-Small, 25M
parameters, 518 px input). Runs on the GPU when one is visible (then in ``--dtype``).
Prints a ``contended: ...`` line when the machine was busy (:mod:`benchmarks.contention`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.contention import Meter
from lavin_data.cli import HelpFormatter
from lavin_data.spec import parse_spec
from lavin_data.testing import tiny_depth_anything


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_label", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--size", choices=["tiny", "small"], default="tiny",
                    help="tiny: test-sized; small: the Depth-Anything-V2-Small architecture")
    ap.add_argument("--images", type=int, default=16, help="photos in the shard (the fixture photos, repeated)")
    ap.add_argument("--batch", type=int, default=4, help="images per forward")
    ap.add_argument("--photos", default="../shared/fixtures/photos", help="folder of .jpg photos")
    ap.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"], help="model dtype on a GPU")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    meter = Meter(own_cpus=1)
    import torch

    from lavin_data.labelers import LabelInput, group_by_size, labeler_class
    from pipelines.build import shard_jobs
    from pipelines.stages import ingest_shard, label_shard

    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = sorted(Path(args.photos).glob("*.jpg"))
        (tmp / "imgs").mkdir()
        for i in range(args.images):  # the fixture photos, repeated to N files
            shutil.copy(photos[i % len(photos)], tmp / "imgs" / f"{i:04d}.jpg")
        model = tiny_depth_anything(tmp / "model", args.size)
        spec = parse_spec({
            "name": "b", "output": str(tmp / "out"), "shard_size": args.images,
            "sources": [{"name": "p", "kind": "image_folder", "root": str(tmp / "imgs")}],
            "labelers": [{"name": "da2", "kind": "depth_anything_v2", "source": "p", "model": str(model),
                          "batch_size": args.batch, "num_gpus": 1 if gpu else 0, "dtype": args.dtype}],
            "tasks": [{"task": "depth_estimation", "source": "p", "labeler": "da2"}],
        })
        (job,), _ = shard_jobs(spec)
        import json

        ingest_shard(spec, "p", 0, json.loads(job["items"]), {})
        lab = labeler_class("depth_anything_v2")(spec.labelers[0])
        # Warm-up (first-call allocations, cuDNN autotuning) outside both timings.
        from lavin_data.codecs import decode_image
        from lavin_data.shards import iter_tar_samples
        from pipelines.layout import base_tar

        images = [decode_image(m["image.jpg"]) for _, m in iter_tar_samples(base_tar(spec.output, "p", 0))]
        lab.label([LabelInput(images[0])])
        # Same-sized images only share a batch (the processor keeps aspect ratios), as in label().
        prepared = []
        for i in range(0, len(images), args.batch):
            batch = images[i:i + args.batch]
            prepared += [lab.prepare([batch[j] for j in idx]) for idx in group_by_size(batch).values()]
        sync = torch.cuda.synchronize if gpu else (lambda: None)
        sync()
        # CPU: torch's threads; GPU: the thread feeding it (+ the stage's decode thread).
        own = 1 if gpu else torch.get_num_threads()
        with meter.section(own_cpus=own):
            t0 = time.perf_counter()
            for pv in prepared:
                lab.forward(pv)
            sync()
            ceiling = len(images) / (time.perf_counter() - t0)
        with meter.section(own_cpus=own + 1):
            t0 = time.perf_counter()
            st = label_shard(spec, "da2", "p", 0, lab)
            sync()
            stage = st["n_ok"] / (time.perf_counter() - t0)
    dev = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"Depth-Anything V2 {args.size} (random weights), {len(images)} photos, batch {args.batch}, {dev}")
    print(f"raw forward (ceiling): {ceiling:8.2f} images/s")
    print(f"label stage:           {stage:8.2f} images/s  -> {stage / ceiling:.2f} of the ceiling")
    note = meter.note()
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
