"""``python -m lavin_model.infer --checkpoint CKPT --vae stvae.pt --examples templates/<task>
--query photo.jpg [photo2.jpg ...] --out pred.png|DIR [--context 4]``

In-context inference with a released or trained J-DiT: the example pairs come in the
released template layout, ``<task>/<id>_input.png`` + ``<id>_target.png`` (.jpg also read),
the first ``--context`` of them by sorted id. Every image is squashed to ``--resolution``
and encoded to its ST-VAE posterior mean; the condition is [in_1, tgt_1, ..., in_N, tgt_N,
query]; Euler sampling over 20 time points with classifier-free guidance 1.5 gives the
prediction, which is decoded and resized back to the query's size.

CKPT: the released checkpoint (3.4B configuration), a ``model/`` folder written by
``lavin_model/train.py``, its DeepSpeed ``checkpoints/`` folder or one of its step folders
(``checkpoints/stepNNNNNNNN``; the EMA weights when the step has them), with ``--size`` when
the weights alone do not say which configuration they are. A run of ``lavin_model/train.py``
records the ST-VAE its latents were encoded with and their resolution in ``training.json``
(in ``model/`` and the run folder): inference then defaults to that resolution, takes the
VAE's architecture from it unless ``--vae-config`` is given, and refuses a ``--vae`` with other
weights. The VAE path it records is only named in messages, never loaded: give ``--vae``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from lavin_data.cli import HelpFormatter, fail
from lavin_data.codecs import decode_image, to_rgb_uint8
from lavin_data.geometry import plan_resize

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def template_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """[(input, target)] of a template folder, sorted by id; an input without its target
    (or the reverse) is an error naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such template folder (expected <id>_input.png + <id>_target.png)")
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    pairs, ids = [], sorted({s.rsplit("_", 1)[0] for s in files if s.endswith(("_input", "_target"))})
    for i in ids:
        a, b = files.get(f"{i}_input"), files.get(f"{i}_target")
        if a is None or b is None:
            raise ValueError(f"{(a or b)}: has no matching {'target' if b is None else 'input'} image in {folder}")
        pairs.append((a, b))
    if not pairs:
        tasks = sorted(d.name for d in folder.iterdir() if d.is_dir() and any(d.glob("*_input.*")))
        hint = (f"; it holds task folders ({', '.join(tasks[:6])}{', ...' if len(tasks) > 6 else ''}): give one, "
                f"e.g. --examples {folder / tasks[0]}") if tasks else ""
        raise ValueError(f"{folder}: no <id>_input.png + <id>_target.png pairs{hint}")
    return pairs


def squash(img: np.ndarray, res: int) -> np.ndarray:
    """(H, W, 3) -> (res, res, 3), squashed: how every image reaches the model."""
    return plan_resize(img.shape[1], img.shape[0], res, "squash").image(img)


def read_square(path: Path, res: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(res, res, 3) uint8 RGB squashed from the file, and the original (H, W)."""
    img = to_rgb_uint8(decode_image(path.read_bytes(), str(path)))
    return squash(img, res), img.shape[:2]


TRAINING_RECORD = "training.json"  # written by lavin_model/train.py into the run folder and model/


def training_record(checkpoint: str | Path) -> tuple[dict | None, Path | None]:
    """The ``training.json`` of the run a checkpoint comes from, and its path: beside a
    ``model/`` folder's weights, or in the run folder above ``checkpoints/`` or a step folder
    in it. (None, None) for other checkpoints (the released one)."""
    p = Path(checkpoint)
    for d in [p, *list(p.parents)[:3]] if p.is_dir() else list(p.parents)[:3]:
        f = d / TRAINING_RECORD
        if f.is_file():
            try:
                rec = json.loads(f.read_text())
            except ValueError as e:
                raise ValueError(f"{f}: not valid JSON ({e})") from None
            return (rec, f) if isinstance(rec, dict) else (None, None)
        if d.name not in ("checkpoints", "model") and not d.name.startswith("step") and d != p:
            break  # only the folders a run writes: a record further up belongs to something else
    return None, None


def predict(model, vae, examples: list[tuple[np.ndarray, np.ndarray]], queries: list[np.ndarray], steps: int = 20,
            cfg_scale: float = 1.5, seed: int = 0, device="cpu") -> np.ndarray:
    """examples [(input, target)] and queries: (R, R, 3) uint8 -> predictions (Q, R, R, 3) uint8.
    Images are encoded on the VAE's device and in its dtype."""
    import torch

    from lavin_data.stvae import decode_to_uint8, encode_uint8, mean_latent
    from lavin_model.flow import sample

    images = [im for pair in examples for im in pair] + list(queries)
    z = mean_latent(encode_uint8(vae, images))  # (2N + Q, 16, 1, h, w)
    n = 2 * len(examples)
    ctx = z[:n, :, 0].transpose(0, 1)[None]  # (1, 16, 2N, h, w): in_1, tgt_1, ..., in_N, tgt_N
    cond = torch.cat([ctx.expand(len(queries), -1, -1, -1, -1), z[n:]], dim=2)  # (Q, 16, 2N + 1, h, w)
    gen = torch.Generator(device=device).manual_seed(seed)
    pred = sample(model, cond, (len(queries), z.shape[1], 1, *z.shape[-2:]), steps, cfg_scale, gen)
    return decode_to_uint8(vae, pred)


DEFAULT_RESOLUTION = 256


def resolve_vae(args: argparse.Namespace, record: dict | None, record_file: Path | None) -> dict | None:
    """The ST-VAE architecture overrides to build ``--vae`` with: ``--vae-config``, else the
    run's record, else none (the released architecture, or a diffusers folder's own config).
    Refuses (ValueError naming what to give) a missing ``--vae``, and a ``--vae`` whose weights
    are not those the run's latents were encoded with: the prediction would be decoded wrongly."""
    from lavin_data.weights import weight_hash

    vae_rec = (record or {}).get("vae") or {}
    if args.vae is None:
        if args.vae_config is not None:  # a random-weight VAE: tests only
            return _config_json(args.vae_config)
        named = (f"; {record_file} says this model was trained on latents of the ST-VAE {vae_rec.get('path')} "
                 f"(weight hash {vae_rec.get('weight_hash')})" if vae_rec.get("path") else "")
        raise ValueError(f"give --vae: the ST-VAE checkpoint (the released stvae.pt, or the one the training latents "
                         f"were encoded with){named}")
    if not Path(args.vae).exists():
        raise FileNotFoundError(f"--vae {args.vae}: ST-VAE checkpoint not found")
    recorded = vae_rec.get("weight_hash")
    if recorded and (mine := weight_hash(args.vae)) != recorded:
        raise ValueError(f"--vae {args.vae} has weight hash {mine}, but {record_file} says the model "
                         f"was trained on latents of the ST-VAE {vae_rec.get('path')} (weight hash {recorded}): give "
                         "that one")
    if args.vae_config is not None:
        return _config_json(args.vae_config)
    if vae_rec.get("vae_config"):
        print(f"[infer] ST-VAE architecture from {record_file}: {json.dumps(vae_rec['vae_config'])}")
        return dict(vae_rec["vae_config"])
    return None


def _config_json(text: str) -> dict:
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--vae-config is not valid JSON ({e}): {text!r}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--vae-config must be a JSON object of architecture overrides, got {text!r}")
    return cfg


def resolve_resolution(given: int | None, record: dict | None, record_file: Path | None) -> int:
    """``--resolution``, else the run's training resolution, else 256; a warning on stderr when
    it differs from the training one (the model has seen no latents of that size)."""
    trained = (record or {}).get("resolution")
    res = given or trained or DEFAULT_RESOLUTION
    if res % 16:
        raise ValueError(f"--resolution must be a multiple of 16 (VAE 8 x patch 2), got {res}")
    if trained and res != trained:
        print(f"warning: --resolution {res}, but the model was trained at {trained}x{trained} ({record_file}); "
              "predictions at another resolution are usually poor", file=sys.stderr)
    return int(res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lavin_model.infer", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--checkpoint", required=True,
                    help="released .pt, a run's model/ folder, its checkpoints/ folder or a step folder in it")
    ap.add_argument("--size", help="tiny | 0.1B | 1B | 3.4B, when the checkpoint has no config.json")
    ap.add_argument("--vae", help="the ST-VAE checkpoint (released stvae.pt, a .safetensors file or a diffusers "
                    "folder): the one the training latents were encoded with")
    ap.add_argument("--vae-config", help="JSON architecture overrides of the ST-VAE (default: the run's "
                    "training.json, else the released architecture)")
    ap.add_argument("--examples", required=True, help="template folder: <id>_input.png + <id>_target.png")
    ap.add_argument("--query", nargs="+", required=True, help="query image(s)")
    ap.add_argument("--out", required=True, help="output PNG (one query) or folder")
    ap.add_argument("--context", type=int, default=4, help="example pairs used (the first by id)")
    ap.add_argument("--resolution", type=int, help="square side every image is squashed to "
                    f"(default: the run's training resolution, else {DEFAULT_RESOLUTION})")
    ap.add_argument("--steps", type=int, default=20, help="Euler steps")
    ap.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance scale")
    ap.add_argument("--seed", type=int, default=0, help="sampling noise")
    ap.add_argument("--device", help="default: cuda when available")
    args = ap.parse_args(argv)

    import torch

    from lavin_data.stvae import build_stvae
    from lavin_data.weights import CheckpointError
    from lavin_model.jdit import jdit_from_checkpoint

    try:
        pairs = template_pairs(args.examples)[: args.context]
        queries = [Path(q) for q in args.query]
        for q in queries:
            if not q.is_file():
                raise FileNotFoundError(f"{q}: no such query image")
        if not Path(args.checkpoint).exists():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file or folder")
        record, record_file = training_record(args.checkpoint)
        vae_config = resolve_vae(args, record, record_file)
        args.resolution = resolve_resolution(args.resolution, record, record_file)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = jdit_from_checkpoint(args.checkpoint, args.size).to(device, dtype).eval()
        vae = build_stvae(vae_config, args.vae).to(device)
        if dtype != torch.float32:
            vae = vae.to(dtype)
        examples = [(read_square(a, args.resolution)[0], read_square(b, args.resolution)[0]) for a, b in pairs]
        squares, sizes = zip(*(read_square(q, args.resolution) for q in queries))
    except (OSError, ValueError, CheckpointError) as e:
        return fail(e)
    preds = predict(model, vae, examples, list(squares), args.steps, args.cfg_scale, args.seed, device)
    out = Path(args.out)
    many = len(queries) > 1 or out.suffix.lower() != ".png"
    if many:
        out.mkdir(parents=True, exist_ok=True)
    for q, pred, (h, w) in zip(queries, preds, sizes):
        dst = out / f"{q.stem}_pred.png" if many else out
        dst.parent.mkdir(parents=True, exist_ok=True)
        img = cv2.resize(pred, (w, h), interpolation=cv2.INTER_CUBIC) if (h, w) != pred.shape[:2] else pred
        cv2.imwrite(str(dst), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        print(dst)
    print(f"[infer] {len(queries)} prediction(s) from {len(examples)} example pair(s) of {args.examples}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
