"""Model weights on disk: reading state dicts from the files people actually have (the
released ``.pt`` files ``{"state_dict": ...}``, DeepSpeed checkpoints ``{"module": ...}`` or
the folder with its ``latest`` tag or one of its step folders, ``.safetensors`` files and
folders of them), and the weight hash every labelled or encoded sample records. From a
DeepSpeed checkpoint of ``lavin_model/train.py`` the EMA weights are read when the step
folder has them (``ema.safetensors``: what its ``model/`` export holds by default), else the
trained weights (``mp_rank_00_model_states.pt``).

Torch files are read with ``torch.load(weights_only=True)`` and nothing else: a file that
needs a full unpickle is refused with a :class:`CheckpointError` saying how to convert it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

EMA_FILE = "ema.safetensors"  # in each step folder of lavin_model/train.py, beside DeepSpeed's files
DEEPSPEED_MODEL_FILE = "mp_rank_00_model_states.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not match the architecture: names
    the file and the keys."""


def weight_hash(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex) over a weights file, or a folder's files (names and bytes), sorted."""
    p = Path(path)
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _unsafe_checkpoint_message(path: Path, error: Exception) -> str:
    """Why ``path`` was not loaded with ``weights_only=True``, and how to convert it."""
    reason = str(error).strip().splitlines()
    # torch's message is long; one line of it names the object it refused
    detail = next((line.strip() for line in reason if "Unsupported" in line or "GLOBAL" in line),
                  reason[-1].strip() if reason else type(error).__name__)
    detail = detail.split(" Please use")[0]  # not torch's advice to allowlist whatever the file names
    how = ("re-save only the weights, e.g. torch.save(model.state_dict(), 'weights.pt') or as .safetensors")
    if path.name.startswith("mp_rank_") or "model_states" in path.name:
        how = ("this looks like a DeepSpeed checkpoint: convert it with the zero_to_fp32.py script DeepSpeed "
               "writes into the checkpoint folder (python zero_to_fp32.py <folder> weights/), or load it once "
               "where you trust it and torch.save(model.state_dict(), 'weights.pt')")
    return (f"{path}: not a checkpoint that loads with torch.load(weights_only=True) ({type(error).__name__}: "
            f"{detail}); files holding other Python objects are never unpickled, since that would run code "
            f"from the file. To use it, {how}")


def read_state_dict(path: str | os.PathLike) -> dict:
    """{name: tensor} on the CPU from a file or folder (see the module docstring)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        if (path / "latest").is_file():  # a DeepSpeed checkpoint folder
            tag = (path / "latest").read_text().strip()
            if not (path / tag).is_dir():
                raise CheckpointError(f"{path / 'latest'} names {tag!r}, which is not a folder in {path}")
            return read_state_dict(path / tag)
        if (path / DEEPSPEED_MODEL_FILE).is_file():  # one of its step folders
            return read_state_dict(path / EMA_FILE if (path / EMA_FILE).is_file() else path / DEEPSPEED_MODEL_FILE)
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not files:
            # A training run's folder holds its weights one level down (lavin_model/train.py).
            inside = [d for d in (path / "model", path / "checkpoints")
                      if (d / "latest").is_file() or any(d.glob("*.safetensors"))]
            ema = ": model/ holds the exported EMA weights" if path / "model" in inside else ""
            hint = f" (a training run's folder? give {' or '.join(map(str, inside))}{ema})" if inside else ""
            raise CheckpointError(f"{path}: no *.safetensors or *.bin weights in this folder{hint}")
        sd: dict = {}
        for f in files:
            sd.update(read_state_dict(f))
        return sd
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        # Only weights_only=True: a full unpickle runs whatever code the file names, and a
        # checkpoint is often downloaded. There is deliberately no fallback.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means a file we will not read
        raise CheckpointError(_unsafe_checkpoint_message(path, e)) from None
    for key in ("state_dict", "module", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if isinstance(obj, dict) and obj and all(k.startswith("module.") for k in obj):  # saved from DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (or {{'state_dict'|'module'|'model': ...}}), "
                              f"got {type(obj).__name__}")
    return obj
