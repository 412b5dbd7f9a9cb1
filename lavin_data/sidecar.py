"""Label sidecars: per-sample depth or normals written by a labeler, stored losslessly.

Members of ``labels/<labeler>/<source>/<shard>.tar`` (same keys as the base shard):

- ``depth.png``: 16-bit, value / 65535 * ``json["scale"]`` = the labeler's output
  (``json["depth_kind"]``: ``disparity`` for relative inverse depth, ``depth`` for metric);
  0 is reserved for invalid pixels, so valid values are at least 1.
- ``normals.png``: 16-bit RGB, (n + 1) / 2 * 65535, x right, y up, z towards the camera;
  all-zero = invalid.
- ``json``: the labeler's info (name, kind, model, weight hash) and the decoding scale.
"""

from __future__ import annotations

import json

import numpy as np

from lavin_data.codecs import decode_image, decode_npy, encode_npy, encode_png
from lavin_data.render.dense import decode_normals, render_normals


def _frames(name: str, planes: np.ndarray, clip: bool, png_level: int) -> dict[str, bytes]:
    if not clip:
        return {f"{name}.png": encode_png(planes, png_level)}
    return {f"{name}_{t:03d}.png": encode_png(p, png_level) for t, p in enumerate(planes)}


def encode_depth(value: np.ndarray, kind: str, info: dict, png_level: int = 1) -> dict[str, bytes]:
    """(H, W) or a clip's (T, H, W) depth/disparity -> 16-bit PNG member(s), one scale per sample."""
    valid = np.isfinite(value) & (value > 0)
    scale = float(value[valid].max()) if valid.any() else 1.0
    q = np.where(valid, np.clip(np.rint(value / scale * 65535), 1, 65535), 0).astype(np.uint16)
    meta = dict(info, output="depth", depth_kind=kind, scale=scale, encoding="uint16 / 65535 * scale; 0 invalid")
    return {**_frames("depth", q, value.ndim == 3, png_level), "json": json.dumps(meta, sort_keys=True).encode()}


def encode_normals(n: np.ndarray, info: dict, png_level: int = 1) -> dict[str, bytes]:
    """(H, W, 3) or a clip's (T, H, W, 3) unit normals -> 16-bit RGB PNG member(s)."""
    meta = dict(info, output="normals", encoding="uint16 RGB (n+1)/2*65535; x right, y up, z to camera; 0 invalid")
    q = render_normals(n, dtype=np.uint16) if n.ndim == 3 else np.stack([render_normals(f, dtype=np.uint16)
                                                                        for f in n])
    return {**_frames("normals", q, n.ndim == 4, png_level), "json": json.dumps(meta, sort_keys=True).encode()}


def encode_flow(flow: np.ndarray, info: dict) -> dict[str, bytes]:
    """A clip's (T-1, H, W, 2) forward flow (pixels, NaN unknown) -> ``flow.npy`` float32 (lossless)."""
    meta = dict(info, output="flow", encoding="float32 (T-1, H, W, 2): frame t -> t+1, u right, v down, pixels")
    return {"flow.npy": encode_npy(flow.astype(np.float32)), "json": json.dumps(meta, sort_keys=True).encode()}


def _planes(members: dict[str, bytes], name: str, key: str) -> tuple[np.ndarray, bool]:
    if f"{name}.png" in members:
        return decode_image(members[f"{name}.png"], f"{key}.{name}.png"), False
    names = sorted(m for m in members if m.startswith(f"{name}_") and m.endswith(".png"))
    return np.stack([decode_image(members[m], f"{key}.{m}") for m in names]), True


def decode_sidecar(members: dict[str, bytes], key: str) -> tuple[str, np.ndarray, dict]:
    """-> ("depth" | "normals" | "flow", array, meta): depth (H, W) or (T, H, W) float32 (0
    invalid) in the labeler's unit; normals (..., H, W, 3) float32 unit vectors (0 invalid);
    flow (T-1, H, W, 2) float32."""
    meta = json.loads(members["json"])
    if "flow.npy" in members:
        return "flow", decode_npy(members["flow.npy"]), meta
    if any(m.startswith("depth") for m in members):
        q, _clip = _planes(members, "depth", key)
        return "depth", q.astype(np.float32) / 65535.0 * meta["scale"], meta
    q, clip = _planes(members, "normals", key)
    if not clip:
        return "normals", decode_normals(q)[0], meta
    return "normals", np.stack([decode_normals(f)[0] for f in q]), meta
