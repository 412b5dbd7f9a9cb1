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

from lavin_data.codecs import decode_image, encode_png
from lavin_data.render.dense import decode_normals, render_normals


def encode_depth(value: np.ndarray, kind: str, info: dict, png_level: int = 1) -> dict[str, bytes]:
    valid = np.isfinite(value) & (value > 0)
    scale = float(value[valid].max()) if valid.any() else 1.0
    q = np.where(valid, np.clip(np.rint(value / scale * 65535), 1, 65535), 0).astype(np.uint16)
    meta = dict(info, output="depth", depth_kind=kind, scale=scale, encoding="uint16 / 65535 * scale; 0 invalid")
    return {"depth.png": encode_png(q, png_level), "json": json.dumps(meta, sort_keys=True).encode()}


def encode_normals(n: np.ndarray, info: dict, png_level: int = 1) -> dict[str, bytes]:
    meta = dict(info, output="normals", encoding="uint16 RGB (n+1)/2*65535; x right, y up, z to camera; 0 invalid")
    return {"normals.png": encode_png(render_normals(n, dtype=np.uint16), png_level),
            "json": json.dumps(meta, sort_keys=True).encode()}


def decode_sidecar(members: dict[str, bytes], key: str) -> tuple[str, np.ndarray, dict]:
    """-> ("depth" | "normals", array, meta): depth (H, W) float32 (0 invalid) in the
    labeler's unit, or normals (H, W, 3) float32 unit vectors (0 invalid)."""
    meta = json.loads(members["json"])
    if "depth.png" in members:
        q = decode_image(members["depth.png"], f"{key}.depth.png").astype(np.float32)
        return "depth", q / 65535.0 * meta["scale"], meta
    n, _valid = decode_normals(decode_image(members["normals.png"], f"{key}.normals.png"))
    return "normals", n, meta
