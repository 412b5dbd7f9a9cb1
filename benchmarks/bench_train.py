"""Training throughput of lavin_model.train: samples/s, tokens/s, the share of step time
spent waiting for data and, on a GPU, model FLOPs utilisation.

    python -m benchmarks.bench_train --size 1B --resolution 256 --context 4 --micro-batch 8
    DS_ACCELERATOR=cpu python -m benchmarks.bench_train --size tiny --resolution 128

It runs the real training script in this process (one rank) for ``--warmup-steps +
--steps`` steps, on ``--latents`` or on random latent shards of the right size written to a
temporary folder, and measures the steps after the warm-up from the run's ``log.jsonl``.
MFU counts the model's matmul FLOPs (forward x 3, as is usual; recomputation for gradient
checkpointing is not counted) against the GPU's dense bf16 peak (``--peak-tflops`` to set it).
A ``contended: ...`` line (also ``"contention"`` in the JSON, null when none) says when the
machine was busy (:mod:`benchmarks.contention`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.contention import Meter
from lavin_data.cli import HelpFormatter

# dense bf16 peak, TFLOPS
PEAK_BF16 = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def model_flops(config: dict, cond_frames: int, target_frames: int, h: int, w: int) -> float:
    """Forward matmul FLOPs of one example: per-stream linear layers per token, the patch
    embedding and final layer, and joint attention (QK^T and AV) over all tokens."""
    hid, depth, g, p, c = (config[k] for k in ("hidden_size", "depth", "kv_group", "patch_size", "in_channels"))
    width = int(4 * hid * 2 / 3) // 64 * 64
    per_frame = (h // p) * (w // p)
    lc, lx = cond_frames * per_frame, target_frames * per_frame
    block_linear = 2 * hid * hid + 2 * hid * (hid // g) + 3 * hid * width  # q, out, k, v, SwiGLU
    tokens = lc + lx
    linear = 2 * tokens * (depth * block_linear + p * p * c * hid) + 2 * lx * hid * p * p * c
    attention = depth * 2 * 2 * tokens * tokens * hid
    return float(linear + attention)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--size", default="tiny", help="J-DiT size: tiny | 0.1B | 1B | 3.4B")
    ap.add_argument("--resolution", type=int, default=256, help="pixel side; latents are resolution / 8")
    ap.add_argument("--context", type=int, default=4, help="context pairs (fixed for the benchmark)")
    ap.add_argument("--micro-batch", type=int, default=8, help="examples per micro-step")
    ap.add_argument("--steps", type=int, default=20, help="measured steps")
    ap.add_argument("--warmup-steps", type=int, default=5, help="steps run before measuring")
    ap.add_argument("--num-workers", type=int, default=2, help="data loader processes")
    ap.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=True,
                    help="gradient checkpointing")
    ap.add_argument("--latents", help="latent shards to read; unset, random ones of the right size")
    ap.add_argument("--peak-tflops", type=float, help="peak of this device; unset, known GPUs' dense bf16")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    meter = Meter(own_cpus=1)

    import torch

    from lavin_data.testing import synthetic_latent_shards
    from lavin_model import train
    from lavin_model.jdit import size_config

    with tempfile.TemporaryDirectory() as tmp:
        latents = args.latents
        if latents is None:
            latents = synthetic_latent_shards(Path(tmp) / "latents", tasks=4, shards=8, per_shard=16,
                                              latent=args.resolution // 8)
        out = Path(tmp) / "run"
        # CPU: torch's threads; GPU: the thread feeding it; and the loader processes beside.
        own = (1 if torch.cuda.is_available() else torch.get_num_threads()) + args.num_workers
        with meter.section(own_cpus=own):
            train.main(["--latents", str(latents), "--out", str(out), "--size", args.size,
                        "--steps", str(args.warmup_steps + args.steps), "--micro-batch", str(args.micro_batch),
                        "--context", f"{args.context}-{args.context}", "--context-drop", "0",
                        "--num-workers", str(args.num_workers), "--save-every", "0", "--sample-every", "0",
                        "--log-every", str(max(1, args.steps)), "--warmup", "1",
                        "--grad-ckpt" if args.grad_ckpt else "--no-grad-ckpt"])
        recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][args.warmup_steps:]
    step_s = sum(r["step_s"] for r in recs) / len(recs)
    wait_share = sum(r["data_wait_s"] for r in recs) / sum(r["step_s"] for r in recs)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    lat = args.resolution // 8
    config = size_config(args.size)
    cond_frames = 2 * args.context + 1
    tokens = args.micro_batch * (cond_frames + 1) * (lat // 2) ** 2
    flops = 3 * args.micro_batch * model_flops(config, cond_frames, 1, lat, lat)
    result = {"size": args.size, "resolution": args.resolution, "context": args.context,
              "micro_batch": args.micro_batch, "steps": len(recs), "step_s": step_s,
              "samples_per_s": args.micro_batch / step_s, "tokens_per_s": tokens / step_s,
              "data_wait_share": wait_share, "model_tflops_per_s": flops / step_s / 1e12, "world": world}
    peak = args.peak_tflops
    if peak is None and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        result["device"] = name
    if peak:
        result["mfu"] = flops / step_s / (peak * 1e12)
    result["contention"] = meter.note()
    result["contention_figures"] = meter.figures.as_dict()
    print(f"[bench_train] J-DiT {args.size} at {args.resolution}^2, {args.context} context pairs, micro-batch "
          f"{args.micro_batch}, {len(recs)} steps after {args.warmup_steps} warm-up:")
    print(f"  {result['samples_per_s']:.2f} samples/s | {result['tokens_per_s']:.0f} tokens/s | step "
          f"{1000 * step_s:.1f} ms | data wait {100 * wait_share:.2f}% of step time | model "
          f"{result['model_tflops_per_s']:.3f} TFLOP/s" + (f" | MFU {100 * result['mfu']:.1f}%" if peak else
                                                           " | MFU n/a (no GPU peak; --peak-tflops)"))
    if result["contention"]:
        print("  " + result["contention"])
    print("BENCH_TRAIN " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
