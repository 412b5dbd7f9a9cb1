"""Does a trained J-DiT use its context? Its validation loss per task with the right task's
context pairs, with another task's, and with none.

The validation loss per task (fixed val examples, noise and t-grid:
``lavin_model.data.validation_loss``) with three conditions:

- ``right``: the example's own context pairs (other source items of the same task);
- ``wrong``: the context pairs of another task's validation example (the next task in
  sorted order), the query unchanged;
- ``none``: no context pairs, the condition is the query frame alone.

A model that learned the tasks from their context has ``right`` < ``wrong``: the gap is what
the context tells it. In latent space, so it needs no decoder (the ST-VAE the latents were
encoded with may be a random one). ``python -m lavin_model.evaluate`` measures the same in
pixels with each task's metric.

    python -m benchmarks.context_probe --model out/train-tiny/model --latents out/demo-latents128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lavin_data.cli import HelpFormatter


def probe(model, batches: dict[str, dict], seed: int = 0, batch_size: int = 8) -> dict[str, dict[str, float]]:
    """{task: {"right", "wrong", "none": validation loss}} (see the module docstring)."""
    import torch

    from lavin_model.data import validation_loss

    tasks = sorted(batches)
    wrong, none = {}, {}
    for i, task in enumerate(tasks):
        b = batches[task]
        other = batches[tasks[(i + 1) % len(tasks)]]["cond"]
        idx = torch.arange(len(b["cond"])) % len(other)
        wrong[task] = dict(b, cond=torch.cat([other[idx, :, :-1], b["cond"][:, :, -1:]], 2))
        none[task] = dict(b, cond=b["cond"][:, :, -1:])
    runs = {name: validation_loss(model, bs, seed, batch_size)
            for name, bs in (("right", batches), ("wrong", wrong), ("none", none))}
    return {t: {name: runs[name][t] for name in runs} for t in tasks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.context_probe", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--model", required=True, default=argparse.SUPPRESS,
                    help="a model/ folder written by lavin_model.train (or a checkpoint)")
    ap.add_argument("--latents", required=True, default=argparse.SUPPRESS, help="latent shards with a val split")
    ap.add_argument("--context", type=int, default=2, help="context pairs per example")
    ap.add_argument("--max-per-task", type=int, default=16, help="validation examples per task")
    ap.add_argument("--seed", type=int, default=0, help="seed of the examples' draw and of the noise")
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args(argv)
    import torch

    from lavin_model.data import validation_batches
    from lavin_model.jdit import jdit_from_checkpoint

    torch.set_grad_enabled(False)
    model = jdit_from_checkpoint(args.model).eval()
    batches = validation_batches(args.latents, args.context, args.max_per_task, args.seed)
    if len(batches) < 2:
        raise SystemExit(f"error: {args.latents}: val examples of at least 2 tasks are needed, found {sorted(batches)}")
    table = probe(model, batches, args.seed)
    print("| task | n | right context | wrong-task context | no context | gap (wrong - right) |")
    print("|---|---:|---:|---:|---:|---:|")
    for t, r in table.items():
        print(f"| {t} | {len(batches[t]['target'])} | {r['right']:.4f} | {r['wrong']:.4f} | {r['none']:.4f} | "
              f"{r['wrong'] - r['right']:+.4f} |")
    mean = {k: sum(r[k] for r in table.values()) / len(table) for k in ("right", "wrong", "none")}
    better = sum(r["right"] < r["wrong"] for r in table.values())
    print(f"| mean of {len(table)} tasks | | {mean['right']:.4f} | {mean['wrong']:.4f} | {mean['none']:.4f} | "
          f"{mean['wrong'] - mean['right']:+.4f} |")
    print(f"right-task context better than wrong-task context in {better}/{len(table)} tasks")
    if args.json:
        Path(args.json).write_text(json.dumps({"tasks": table, "mean": mean, "model": args.model,
                                               "latents": args.latents, "context": args.context}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
