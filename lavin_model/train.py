"""Train J-DiT on latent shards with DeepSpeed (ZeRO-2), in-context, with rectified flow.

    deepspeed --num_gpus 8 lavin_model/train.py --latents OUT/latents/stvae-256 --out runs/1b --size 1B
    DS_ACCELERATOR=cpu deepspeed --num_gpus 1 lavin_model/train.py --latents ... --size tiny   # CPU
    python -m lavin_model.train ...                                                            # one process

The DeepSpeed JSON (``--deepspeed-config``, default ``lavin_model/ds_zero2.json``) holds the
engine settings: ZeRO-2, torch AdamW (lr 1e-4, betas (0.9, 0.95), wd 0.01), linear warm-up,
gradient clipping, micro-batch; ``"bf16": {"enabled": "auto"}`` means bf16 on a GPU and fp32
on the CPU. Flags given on the command line override the JSON.

Writes to ``--out``: ``log.jsonl`` (one line per step), ``checkpoints/`` (DeepSpeed
checkpoints: model, optimizer, scheduler, step, every rank's loader and noise state; the
run resumes from the latest one by itself), ``model/`` (config.json + model.safetensors,
for ``python -m lavin_model.infer``) and ``samples/step*.png`` (context pair | query |
prediction | target, decoded through the ST-VAE given as ``--vae``). SIGINT/SIGTERM save a
checkpoint and exit.

Nothing read from a file is unpickled: checkpoints (``--init`` and the run's own, on resume)
load with ``torch.load(weights_only=True)``, and the ST-VAE is only ever the ``--vae`` file.
The latents' json names the VAE they were encoded with; that record is only compared with
``--vae`` (by weight hash), never loaded, since shards may come from anyone.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script by the deepspeed launcher
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavin_data.cli import HelpFormatter, fail
from lavin_data.weights import EMA_FILE  # noqa: E402 - after the path set-up above

DEFAULT_CONFIG = Path(__file__).with_name("ds_zero2.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m lavin_model.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter,
                                 usage="%(prog)s --latents LAT --out RUN [options]   (several processes: "
                                       "deepspeed [--num_gpus N] lavin_model/train.py --latents LAT --out RUN ...)")
    ap.add_argument("--latents", required=True, help="latent shards: the --out of lavin_data.encode_latents")
    ap.add_argument("--out", required=True, help="run folder (log, checkpoints, model, samples)")
    ap.add_argument("--size", default="tiny", help="tiny | 0.1B | 1B | 3.4B (the released configuration)")
    ap.add_argument("--init", help="initialise from a checkpoint (the released LaVin-DiT .pt, a model/ folder)")
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps to train to")
    ap.add_argument("--deepspeed-config", "--deepspeed_config", default=str(DEFAULT_CONFIG),
                    help="DeepSpeed JSON (ZeRO stage, optimizer, schedule); the flags below override it")
    ap.add_argument("--micro-batch", type=int, help="examples per GPU per micro-step (overrides the JSON)")
    ap.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step (overrides the JSON)")
    ap.add_argument("--lr", type=float, help="peak learning rate (overrides the JSON)")
    ap.add_argument("--warmup", type=int, help="linear warm-up steps (overrides the JSON)")
    ap.add_argument("--clip", type=float, help="gradient clipping norm (overrides the JSON)")
    ap.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=True,
                    help="gradient checkpointing of every block")
    ap.add_argument("--context", default="1-8", help="context pairs per example, a range drawn per batch")
    ap.add_argument("--context-drop", type=float, default=0.1, help="rate of batches whose context is dropped (CFG)")
    ap.add_argument("--task-weights", help="task=weight,... (default: every task in --latents, equal weights)")
    ap.add_argument("--num-workers", type=int, default=2, help="loader processes per rank")
    ap.add_argument("--shuffle-buffer", type=int, default=256, help="samples per task mixed by each loader worker")
    ap.add_argument("--shards-per-round", type=int, default=4,
                    help="shards each reader draws (with replacement) per round")
    ap.add_argument("--seed", type=int, default=0, help="initial weights, data order and noise")
    ap.add_argument("--log-every", type=int, default=10, help="a progress line every N steps")
    ap.add_argument("--save-every", type=int, default=1000, help="0: never (benchmarks), not even at the end")
    ap.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    ap.add_argument("--sample-every", type=int, default=1000, help="0: never")
    ap.add_argument("--sample-count", type=int, default=4, help="examples in each samples/step*.png")
    ap.add_argument("--sample-steps", type=int, default=20, help="Euler steps of the sampler")
    ap.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance scale of the sampler")
    ap.add_argument("--ema-decay", type=float, default=0.9999,
                    help="EMA of the weights (fp32); the decay at step s is min(this, (1+s)/(10+s))")
    ap.add_argument("--export", choices=["ema", "raw"], default="ema",
                    help="weights written to model/ and used for samples and the validation loss")
    ap.add_argument("--val-every", type=int, default=500, help="validation loss every N steps (0: never)")
    ap.add_argument("--val-max", type=int, default=16, help="val examples per task for the validation loss")
    ap.add_argument("--val-context", type=int, default=2, help="context pairs of each validation example")
    ap.add_argument("--vae", help="ST-VAE checkpoint to decode samples with; must have the weight hash recorded "
                    "in the latents. Without --vae (or --vae-config) samples are not decoded or written")
    ap.add_argument("--vae-config", help="JSON architecture overrides; alone: a random-weight VAE (tests)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", "0")),
                    help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return ap.parse_args(argv)


def single_process_env() -> None:
    """Without a launcher: a world of one, on a free port."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def deepspeed_config(args: argparse.Namespace, on_gpu: bool) -> dict:
    cfg = json.loads(Path(args.deepspeed_config).read_text())
    if args.micro_batch is not None:
        cfg["train_micro_batch_size_per_gpu"] = args.micro_batch
    if args.grad_accum is not None:
        cfg["gradient_accumulation_steps"] = args.grad_accum
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro-batch x accumulation x world
    if args.clip is not None:
        cfg["gradient_clipping"] = args.clip
    if args.lr is not None:
        cfg["optimizer"]["params"]["lr"] = args.lr
        cfg.get("scheduler", {}).get("params", {})["warmup_max_lr"] = args.lr
    if args.warmup is not None:
        cfg.setdefault("scheduler", {}).setdefault("params", {})["warmup_num_steps"] = max(1, args.warmup)
    for key in ("bf16", "fp16"):
        if cfg.get(key, {}).get("enabled") == "auto":
            cfg[key]["enabled"] = on_gpu and key == "bf16"
    return cfg


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; norms, biases and the two embeddings are not decayed."""
    decay = [p for p in model.parameters() if p.ndim >= 2 and p.shape[0] > 1]
    keep = [p for p in model.parameters() if not (p.ndim >= 2 and p.shape[0] > 1)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def parse_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def parse_weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    return {k: float(v) for k, v in (item.split("=") for item in text.split(","))}


def recorded_vae(latents: Path) -> list[dict]:
    """What the first sample of each task's first committed latent shard records, checking on
    the way that the folder holds latent shards at all (a :class:`LatentDataError` naming the
    file otherwise, e.g. for a build's pixel ``pairs/``, before any worker starts):
    ``[{"task", "file", "key", "vae", "weight_hash", "vae_config", "resolution"}]`` (``vae`` None
    for a random-init VAE). A path from shard metadata is never opened (the shards may come
    from anyone): it is only compared with ``--vae`` and recorded in the run's ``training.json``."""
    from lavin_data.shards import iter_tar_samples
    from lavin_model.data import MEMBERS, LatentDataError, dotted_key_problem, find_task_shards

    found = []
    for task, urls in find_task_shards(latents).items():
        for key, m in iter_tar_samples(urls[0]):
            where = f"{urls[0]}: sample {key}"
            missing = [n for n in (*MEMBERS, "json") if n not in m]
            if missing:
                problem = dotted_key_problem(sorted(m), (*MEMBERS, "json"))
                raise LatentDataError(f"{where}: {problem}" if problem else
                                      f"{where} has no {', '.join(missing)} (members: {sorted(m)}): not a latent "
                                      "sample of python -m lavin_data.encode_latents")
            try:
                info = json.loads(m["json"])
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                raise LatentDataError(f"{where}: json is not valid JSON ({e})") from None
            if not isinstance(info, dict):
                raise LatentDataError(f"{where}: json is not an object, got {type(info).__name__}")
            vae, wh = info.get("vae"), info.get("weight_hash")
            found.append({"task": task, "file": urls[0], "key": key,
                          "vae": None if vae in (None, "random-init") else str(vae),
                          "weight_hash": None if wh is None else str(wh),
                          "vae_config": info.get("vae_config") if isinstance(info.get("vae_config"), dict) else {},
                          "resolution": info.get("resolution")})
            break
    return found


def run_record(args: argparse.Namespace, records: list[dict]) -> dict:
    """``training.json`` of the run folder (and of ``model/``): what inference needs besides the
    weights, i.e. the ST-VAE the latents were encoded with (path as recorded, weight hash,
    architecture overrides) and the resolution trained at. ``lavin_model.infer`` reads it."""
    first = records[0] if records else {}
    return {"latents": str(Path(args.latents).resolve()), "tasks": sorted(r["task"] for r in records),
            "resolution": first.get("resolution"), "size": args.size,
            "vae": {"path": first.get("vae"), "weight_hash": first.get("weight_hash"),
                    "vae_config": first.get("vae_config") or {}}}


def check_vae(vae: str, records: list[dict]) -> str | None:
    """Exit 2 (naming both) when ``--vae`` is not the ST-VAE the latents record by weight hash
    (``records``: :func:`recorded_vae`): its samples would decode to wrong images. Returns a
    note for the log when the latents record no hash to check against."""
    from lavin_data.weights import weight_hash

    if not Path(vae).exists():
        print(f"error: --vae {vae}: ST-VAE checkpoint not found", file=sys.stderr)
        raise SystemExit(2)
    mine = weight_hash(vae)
    for r in records:
        if r["weight_hash"] is not None and r["weight_hash"] != mine:
            print(f"error: --vae {vae} has weight hash {mine}, but {r['file']} (sample {r['key']}) was encoded "
                  f"with the ST-VAE {r['vae']} of weight hash {r['weight_hash']}: samples would decode to wrong "
                  "images; give --vae the ST-VAE the latents were encoded with", file=sys.stderr)
            raise SystemExit(2)
    if any(r["weight_hash"] is None for r in records):
        return (f"[train] samples: the latents record no ST-VAE weight hash (random-init encoder?); --vae {vae} "
                "is not checked against them")
    return None


def weights_only_load(path: str, map_location=None):
    """DeepSpeed's checkpoint reader (``engine.checkpoint_engine.load``) with
    ``torch.load(weights_only=True)``: DeepSpeed's own unpickles everything. Its checkpoints
    hold, besides tensors and plain containers, three of its classes, allowed by name."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from lavin_data.weights import CheckpointError

    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever it is, the file is not read
        reason = str(e).strip().splitlines()
        detail = next((line for line in reason if "Unsupported" in line), reason[-1] if reason else "")
        raise CheckpointError(f"{path}: not a checkpoint that loads with torch.load(weights_only=True) "
                              f"({type(e).__name__}: {detail.split(' Please use')[0]}); it is not unpickled, "
                              "since that would run code from the file") from None




def ema_decay(decay: float, updates: int) -> float:
    """The EMA decay for the update after ``updates`` earlier ones: min(decay, (1 + u) / (10 + u)),
    the warm-up of diffusers' EMAModel, so that a short run's EMA is not its initial weights
    (0.1 for the first update, 0.5 at the 8th, 0.99 at the 890th; DiT's 0.9999 from ~90k on)."""
    return min(decay, (1 + updates) / (10 + updates))


def update_ema(ema, model, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, parameter by parameter, in fp32 (DiT's update_ema)."""
    import torch

    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, e in ema.named_parameters():
            e.mul_(decay).add_(params[name].detach().float(), alpha=1 - decay)


def memory_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS (KiB on Linux)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not 0 <= args.ema_decay < 1:
        raise SystemExit(f"error: --ema-decay must be in [0, 1), got {args.ema_decay}")
    single_process_env()
    records = recorded_vae(Path(args.latents))  # every rank, before any work: a wrong folder fails here
    vae_note = check_vae(args.vae, records) if args.vae else None
    record = run_record(args, records)
    import deepspeed
    import numpy as np
    import torch
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    from lavin_data.weights import read_state_dict
    from lavin_model.data import InContextBatches, InContextLoader, validation_batches, validation_loss
    from lavin_model.flow import flow_loss, rank_generator, sample
    from lavin_model.infer import TRAINING_RECORD  # what infer and evaluate read beside a checkpoint
    from lavin_model.jdit import SIZES, JDiT, load_lavin_checkpoint

    accel = get_accelerator()
    on_gpu = accel.device_name() != "cpu"
    if not on_gpu and os.environ.get("WORLD_SIZE", "1") == "1":
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op (~50 s) that only
        # helps several processes on one host; a single process has nothing to reduce.
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if on_gpu:
        accel.set_device(args.local_rank)
    device = torch.device(accel.device_name(args.local_rank) if on_gpu else "cpu")
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"

    def log(msg: str) -> None:
        if rank == 0:
            print(msg, flush=True)

    # ---- model -------------------------------------------------------------------------
    if args.size not in SIZES:
        raise SystemExit(f"error: --size must be one of {sorted(SIZES)}, got {args.size!r}")
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = JDiT.from_size(args.size)
    model.gradient_checkpointing = args.grad_ckpt
    resuming = (ckpt_dir / "latest").is_file()
    if args.init and not resuming:
        load_lavin_checkpoint(model, read_state_dict(args.init))
        log(f"[train] initialised from {args.init}")
    # The EMA of the weights, in fp32 on every rank (ZeRO-2 keeps whole weights on each), as DiT
    # keeps it; samples, the validation loss and model/ use it unless --export raw.
    ema = copy.deepcopy(model).float().to(device).eval().requires_grad_(False)
    ema.gradient_checkpointing = False
    config = deepspeed_config(args, on_gpu)
    wd = config["optimizer"]["params"].get("weight_decay", 0.0)
    engine, _opt, _, scheduler = deepspeed.initialize(model=model, model_parameters=param_groups(model, wd),
                                                      config=config)
    engine.checkpoint_engine.load = weights_only_load  # resuming reads our checkpoints without unpickling
    micro, accum = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[train] J-DiT {args.size}: {n_params / 1e6:.2f} M parameters | {world} rank(s) on {device} | "
        f"{'bf16' if config.get('bf16', {}).get('enabled') else 'fp32'} | ZeRO-"
        f"{config.get('zero_optimization', {}).get('stage', 0)} | batch {micro} x {accum} x {world}")

    # ---- data --------------------------------------------------------------------------
    data = InContextBatches(args.latents, micro, parse_range(args.context), parse_weights(args.task_weights),
                            args.context_drop, args.seed, rank, world, args.shards_per_round, args.shuffle_buffer)
    loader = InContextLoader(data, device, args.num_workers)
    noise = rank_generator(args.seed, rank, device)
    n_shards = sum(len(v) for v in data.shards.values())
    log(f"[train] {len(data.tasks)} task(s), {n_shards} latent shards from {args.latents}; task weights "
        + (", ".join(f"{t} {w:.2f}" for t, w in zip(data.tasks, data.weights)) if args.task_weights else "equal"))

    step = 0
    step_state = {"loader": loader.state_dict(), "noise": noise.get_state().cpu()}  # as of the last step
    if resuming:
        _path, client = engine.load_checkpoint(str(ckpt_dir))
        step = client["step"]
        ema_file = ckpt_dir / (ckpt_dir / "latest").read_text().strip() / EMA_FILE
        if ema_file.is_file():
            from safetensors.torch import load_file

            ema.load_state_dict(load_file(str(ema_file), device=str(device)), strict=True)
        else:
            log(f"[train] {ema_file} not found (a checkpoint without an EMA): the EMA restarts from the weights")
            update_ema(ema, engine.module, 0.0)
        mine = client["ranks"][rank] if rank < len(client["ranks"]) else None
        if mine is not None and len(client["ranks"]) == world:
            loader.load_state_dict(mine["loader"])
            noise.set_state(mine["noise"].to(noise.get_state().device))
            step_state = mine
        else:
            log(f"[train] the checkpoint was written by {len(client['ranks'])} ranks, now {world}: fresh data streams")
        log(f"[train] resumed from {ckpt_dir / (ckpt_dir / 'latest').read_text().strip()} at step {step}")

    def save() -> None:
        states = [None] * world
        dist.all_gather_object(states, step_state)
        tag = f"step{step:08d}"
        from safetensors.torch import save_file

        if rank == 0:  # before DeepSpeed writes `latest`: a checkpoint it names always has its EMA
            (ckpt_dir / tag).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()},
                      str(ckpt_dir / tag / EMA_FILE))
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, "ranks": states})
        if rank == 0:
            (out / "model").mkdir(parents=True, exist_ok=True)
            sd = {k: v.detach().float().cpu().contiguous() for k, v in shown().state_dict().items()}
            save_file(sd, str(out / "model" / "model.safetensors"))
            (out / "model" / "config.json").write_text(json.dumps(engine.module.config, indent=1) + "\n")
            (out / "model" / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
            for old in sorted(ckpt_dir.glob("step*"))[: -args.keep]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        log(f"[train] saved {ckpt_dir / tag}")

    def shown():
        """The weights samples, validation and model/ use: the EMA, or with --export raw the trained ones."""
        return ema if args.export == "ema" else engine.module

    # ---- validation loss (rank 0): fixed val examples, noise and t-grid --------------------
    val_sets = {}
    if args.val_every and rank == 0:
        val_sets = validation_batches(args.latents, args.val_context, args.val_max, args.seed)
        if val_sets:
            log(f"[train] validation: {sum(len(v['target']) for v in val_sets.values())} val examples of "
                f"{len(val_sets)} task(s), {args.val_context} context pairs each, every {args.val_every} steps")
        else:
            log("[train] validation: no val samples in --latents (build with val_fraction > 0 or a val source): "
                "no validation loss")
    last_val: dict[str, float] = {}

    def validate() -> None:
        nonlocal last_val
        last_val = validation_loss(shown(), val_sets, args.seed, batch_size=micro)
        mean = sum(last_val.values()) / len(last_val)
        with open(out / "val.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "weights": args.export, "val_loss_mean": mean,
                                "val_loss": last_val}) + "\n")
        log(f"[train] step {step} | val loss {mean:.4f} ({args.export}) | "
            + " ".join(f"{t} {v:.4f}" for t, v in sorted(last_val.items())))

    # ---- periodic samples (rank 0) -------------------------------------------------------
    preview, vae = None, None
    data_weights = dict(zip(data.tasks, data.weights))
    vae_cfg = json.loads(args.vae_config) if args.vae_config else None
    decode_samples = args.vae is not None or vae_cfg is not None
    if vae_note:
        log(vae_note)
    if args.sample_every and not decode_samples:
        log("[train] samples: no --vae given, so sample previews are not decoded or written (a VAE named in "
            "the latents' metadata is never loaded); give --vae to see samples")

    def write_samples() -> None:
        nonlocal preview, vae
        from lavin_data.codecs import encode_png
        from lavin_data.stvae import build_stvae, decode_to_uint8

        if preview is None:
            n_ctx = min(2, data.context[1])
            pdata = InContextBatches(args.latents, args.sample_count, (n_ctx, n_ctx), data_weights, 0.0,
                                     args.seed + 1, 0, 1, 1, 16)
            preview = next(iter(InContextLoader(pdata, device, num_workers=0)))
            if args.vae is None:
                log("[train] samples: --vae-config without --vae: decoding with a random-weight ST-VAE "
                    "(give --vae for meaningful images)")
            vae = build_stvae(vae_cfg, args.vae).to(device)
        engine.module.eval()
        gen = torch.Generator(device=device).manual_seed(args.seed + step)
        pred = sample(shown(), preview["cond"].to(next(shown().parameters()).dtype),
                      tuple(preview["target"].shape), args.sample_steps, args.cfg_scale, gen)
        engine.module.train()
        frames = [preview["cond"][:, :, i:i + 1] for i in (0, 1)] + [preview["cond"][:, :, -1:], pred,
                                                                    preview["target"]]
        tiles = [decode_to_uint8(vae, f.float()) for f in frames]  # each (B, H, W, 3)
        grid = np.concatenate([np.concatenate(list(row), 1) for row in zip(*tiles)], 0)
        (out / "samples").mkdir(parents=True, exist_ok=True)
        (out / "samples" / f"step{step:08d}.png").write_bytes(encode_png(grid))
        log(f"[train] samples/step{step:08d}.png: context input | context target | query | prediction | target")

    # ---- stop cleanly on SIGINT/SIGTERM ----------------------------------------------------
    stop = {"now": False}

    def on_signal(signum, _frame):
        if stop["now"]:  # a second signal: the step may never end (a stuck reader); stop now
            log(f"[train] signal {signum} again: stopping now, without a checkpoint")
            raise KeyboardInterrupt
        stop["now"] = True
        log(f"[train] signal {signum}: saving a checkpoint after this step (send it again to stop at once)")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    # ---- the loop ----------------------------------------------------------------------
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    logf = open(out / "log.jsonl", "a") if rank == 0 else None  # noqa: SIM115 - open for the whole run
    batches = iter(loader)
    try:
        window = {"t": time.perf_counter(), "wait": 0.0, "samples": 0, "tokens": 0, "loss": 0.0, "n": 0}
        totals = {"wait": 0.0, "time": 0.0, "samples": 0, "tokens": 0, "steps": 0}
        last_loss = float("nan")
        while step < args.steps and not stop["now"]:
            t_step = time.perf_counter()
            loss_sum, wait = 0.0, 0.0
            for _ in range(accum):
                t0 = time.perf_counter()
                batch = next(batches)
                wait += time.perf_counter() - t0
                loss = flow_loss(engine, batch["target"], batch["cond"], generator=noise)
                engine.backward(loss)
                engine.step()
                loss_sum += loss.item()
                b, _, tc, h, w = batch["cond"].shape
                tokens = b * (tc + batch["target"].shape[2]) * (h // model.patch_size) * (w // model.patch_size)
                for acc in (window, totals):
                    acc["samples"] += b * world
                    acc["tokens"] += tokens * world
            update_ema(ema, engine.module, ema_decay(args.ema_decay, step))
            step += 1
            step_state = {"loader": loader.state_dict(), "noise": noise.get_state().cpu()}
            # the mean loss over ranks and micro-steps of this step
            lt = torch.tensor([loss_sum / accum], device=device)
            dist.all_reduce(lt)
            last_loss = lt.item() / world
            dt = time.perf_counter() - t_step
            window["wait"] += wait
            window["loss"] += last_loss
            window["n"] += 1
            totals["wait"] += wait
            totals["time"] += dt
            totals["steps"] += 1
            if logf is not None:
                rec = {"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0] if scheduler else None,
                       "grad_norm": float(engine.get_global_grad_norm() or 0.0), "n_context": batch["n_context"],
                       "dropped": batch["dropped"], "step_s": round(dt, 4), "data_wait_s": round(wait, 4)}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            if step % args.log_every == 0 or step == args.steps:
                el = time.perf_counter() - window["t"]
                log(f"[train] step {step}/{args.steps} | loss {window['loss'] / window['n']:.4f} | lr "
                    f"{scheduler.get_last_lr()[0]:.2e} | {window['samples'] / el:.1f} samples/s | "
                    f"{window['tokens'] / el:.0f} tokens/s | data wait {100 * window['wait'] / el:.1f}% | "
                    f"mem {memory_mib(device):.0f} MiB")
                window = {"t": time.perf_counter(), "wait": 0.0, "samples": 0, "tokens": 0, "loss": 0.0, "n": 0}
            if args.sample_every and step % args.sample_every == 0 and rank == 0 and decode_samples:
                write_samples()
            if val_sets and (step % args.val_every == 0 or step == args.steps):
                validate()
            if args.save_every and (step % args.save_every == 0 or stop["now"]):
                save()
            if window["n"] == 0:  # throughput windows exclude sampling and saving
                window["t"] = time.perf_counter()
        if args.save_every and step == args.steps and not (ckpt_dir / f"step{step:08d}").exists():
            save()
    finally:
        # Whatever ended the loop, the loader's workers end with it and signals act normally
        # again: an error must end the run, not leave it waiting on workers that ignore SIGTERM.
        batches.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if logf is not None:
            logf.close()
    return {"step": step, "loss": last_loss, "val_loss": last_val,
            "data_wait_share": totals["wait"] / max(totals["time"], 1e-9),
            "step_s": totals["time"] / max(totals["steps"], 1), "params": n_params, **{
                k: totals[k] for k in ("samples", "tokens")}}


def error_message(e: BaseException) -> str:
    """The one-line message of a bad-data error, also when a DataLoader worker raised it (the
    DataLoader re-raises it with the worker's whole traceback in the message)."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(f"{type(e).__name__}: ", 1)[-1]
    return text


def cli() -> int:
    """Console entry point (``lavin-train``, and the script the deepspeed launcher runs): exit 0
    when the run ends (its steps done, or stopped by a signal with a checkpoint); 2 with a
    one-line message for bad input (a folder that is not latents, a bad shard or checkpoint);
    other errors end the run with their traceback and status 1, never a hang."""
    from lavin_data.weights import CheckpointError
    from lavin_model.data import LatentDataError

    try:
        main()
    except (LatentDataError, CheckpointError) as e:
        return fail(error_message(e))
    except KeyboardInterrupt:  # a second SIGINT/SIGTERM (the first saves a checkpoint and ends cleanly)
        print("[train] stopped without a checkpoint", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
