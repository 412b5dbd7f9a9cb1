"""``python -m benchmarks.bench_encode [--resolution 256] [--pairs 8] [--batch-size 4] [--tiny]``

ST-VAE encoding throughput: the encode stage over one pair shard against the raw VAE forward
on the same inputs (the ceiling), and the bytes per pair of the latent shard.

The encode stage is :meth:`lavin_data.encode_latents.Encoder.encode_shard` (decode in a
background thread, encode input and target, fp16 moments, tar + index); the ceiling runs the
raw forward over the same decoded inputs in a tight loop. The VAE has the full released
architecture with random weights (``--tiny`` for a quick check); CPU runs fp32, a GPU runs
``--dtype``. Also prints bytes per pair of the latent shard against the pixel shard it came
from, at the requested resolution, and a ``contended: ...`` line when the machine was busy
(:mod:`benchmarks.contention`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.contention import Meter
from lavin_data.cli import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_encode", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--resolution", type=int, default=256, help="pixel side of the pairs (a multiple of 8)")
    ap.add_argument("--pairs", type=int, default=8, help="pairs in the shard that is encoded")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per VAE forward")
    ap.add_argument("--tiny", action="store_true", help="a small VAE for a quick check, not the released architecture")
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"], help="VAE dtype on a GPU (CPU: fp32)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    meter = Meter(own_cpus=1)
    import torch

    from lavin_data.encode_latents import Encoder
    from lavin_data.spec import load_spec
    from lavin_data.stvae import encode_moments, uint8_to_pixels
    from pipelines.build import build

    gpu = torch.cuda.is_available()
    cfg = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1} if args.tiny else None
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec("manifests/demo.yaml", output=str(Path(tmp) / "pix"))
        spec.resolution = args.resolution
        spec.shard_size = args.pairs
        spec.sources[0].num_items = args.pairs
        spec.tasks = [t for t in spec.tasks if t.task == "colorization"]
        with meter.section(own_cpus=os.cpu_count() or 1):  # a local Ray build on every CPU
            build(spec, echo=lambda *_: None)
        src = Path(spec.output) / "pairs" / "colorization" / "synthetic-000000.tar"
        torch.manual_seed(0)
        ckpt = Path(tmp) / "stvae.pt"
        from lavin_data.stvae import build_stvae

        torch.save({"state_dict": build_stvae(cfg).state_dict()}, ckpt)
        enc = Encoder(str(ckpt), cfg, "cuda" if gpu else "cpu", args.dtype)
        # Ceiling: the raw forward on the same images (decoded beforehand), same batches.
        from lavin_data.encode_latents import _decode_pair
        from lavin_data.shards import iter_tar_samples

        pairs = [_decode_pair(k, m, args.resolution) for k, m in iter_tar_samples(src)]
        batches = [pairs[i:i + args.batch_size] for i in range(0, len(pairs), args.batch_size)]
        xs = []
        for b in batches:
            xs.append(uint8_to_pixels([p[0] for p in b] + [p[1] for p in b], enc.device, enc.dtype))
        encode_moments(enc.vae, xs[0][:1])  # warm-up outside both timings
        sync = torch.cuda.synchronize if gpu else (lambda: None)
        sync()
        # CPU: torch's threads; GPU: the thread feeding it (+ the stage's decode thread).
        own = 1 if gpu else torch.get_num_threads()
        with meter.section(own_cpus=own):
            t0 = time.perf_counter()
            for x in xs:
                encode_moments(enc.vae, x)
            sync()
            ceiling = len(pairs) / (time.perf_counter() - t0)
        dst = Path(tmp) / "lat" / "synthetic-000000.tar"
        with meter.section(own_cpus=own + 1):
            t0 = time.perf_counter()
            st = enc.encode_shard(src, dst, args.resolution, args.batch_size)
            sync()
            stage = st["n_ok"] / (time.perf_counter() - t0)
        pix_bytes, lat_bytes = src.stat().st_size / len(pairs), dst.stat().st_size / st["n_ok"]
    dev = torch.cuda.get_device_name() if gpu else f"CPU fp32 ({torch.get_num_threads()} threads)"
    arch = "tiny" if args.tiny else "released architecture"
    print(f"ST-VAE {arch} (random weights), {len(pairs)} pairs at {args.resolution}², batch {args.batch_size} pairs, "
          f"{dev}")
    print(f"raw VAE forward (ceiling): {ceiling:8.3f} pairs/s")
    print(f"encode stage:              {stage:8.3f} pairs/s  -> {stage / ceiling:.2f} of the ceiling")
    print(f"bytes per pair: pixel shard {pix_bytes / 1024:.1f} KiB (colorization: JPEG q95 input + PNG target), "
          f"latent shard {lat_bytes / 1024:.1f} KiB")
    note = meter.note()
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
