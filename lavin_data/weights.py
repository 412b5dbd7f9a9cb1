"""Model weights on disk: reading state dicts from the files people actually have (the
released ``.pt`` files ``{"state_dict": ...}``, DeepSpeed checkpoints ``{"module": ...}`` or
the folder with its ``latest`` tag, ``.safetensors`` files and folders of them), and the
weight hash every labelled or encoded sample records."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


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


def read_state_dict(path: str | os.PathLike) -> dict:
    """{name: tensor} on the CPU from a file or folder (see the module docstring)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        if (path / "latest").is_file():  # a DeepSpeed checkpoint folder
            tag = (path / "latest").read_text().strip()
            return read_state_dict(path / tag / "mp_rank_00_model_states.pt")
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not files:
            raise CheckpointError(f"{path}: no *.safetensors or *.bin weights in this folder")
        sd: dict = {}
        for f in files:
            sd.update(read_state_dict(f))
        return sd
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickles with non-tensor objects: DeepSpeed's)
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any failure here means an unreadable file
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
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
