"""Dense renderings: depth (grey, near = bright), normals ((n+1)/2), edges (Canny)."""

from __future__ import annotations

import cv2
import numpy as np


def grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) uint8 luma 0.299R + 0.587G + 0.114B, replicated."""
    y = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    y = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, axis=2)


def to_disparity(value: np.ndarray, kind: str, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Depth (``kind="depth"``: > 0 valid, inverted) or disparity (as is) -> (float64
    disparity, 0 where invalid; bool valid)."""
    value = value.astype(np.float64)
    if valid is None:
        valid = np.isfinite(value) & (value > 0) if kind == "depth" else np.isfinite(value)
    disp = np.zeros_like(value)
    if kind == "depth":
        disp[valid] = 1.0 / value[valid]
    elif kind == "disparity":
        disp[valid] = value[valid]
    else:
        raise ValueError(f"kind must be 'depth' or 'disparity', got {kind!r}")
    return disp, valid


def render_depth(value: np.ndarray, valid: np.ndarray | None = None, kind: str = "depth") -> tuple[np.ndarray, dict]:
    """Depth or disparity -> grey image, near = bright, per-image min-max of disparity.

    value: (H, W) float; ``kind="depth"`` (metres or any positive unit, 0 = invalid) is
    inverted to disparity first, ``kind="disparity"`` (relative inverse depth, e.g.
    Depth-Anything output) is used as is. Invalid pixels are black.
    Returns ((H, W, 3) uint8, {"disparity_min", "disparity_max"}) so the rendering can be
    mapped back to disparity.
    """
    disp, valid = to_disparity(value, kind, valid)
    if not valid.any():
        return np.zeros(value.shape + (3,), np.uint8), {"disparity_min": 0.0, "disparity_max": 0.0}
    lo, hi = float(disp[valid].min()), float(disp[valid].max())
    norm = (disp - lo) / max(hi - lo, 1e-12)
    g = np.where(valid, np.rint(norm * 255), 0).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2), {"disparity_min": lo, "disparity_max": hi}


def render_depth_clip(value: np.ndarray, kind: str = "depth", percentiles: tuple[float, float] = (1.0, 99.0)
                      ) -> tuple[np.ndarray, dict]:
    """(T, H, W) depth or disparity -> (T, H, W, 3) uint8 grey, near = bright, with ONE
    disparity range for the whole clip, so a static scene does not flicker.

    The range is the clip's robust ``percentiles`` of valid disparity (sensor outliers and
    a few far or near pixels do not stretch it); values outside it are clipped. Invalid
    (depth <= 0 or non-finite) pixels are black; a valid pixel is at least grey 1, so it
    never reads as invalid. Returns the rendering and {"disparity_min", "disparity_max",
    "percentiles", "flicker"}: ``flicker`` is :func:`flicker_score` of the rendering.
    """
    disp, valid = to_disparity(value, kind)
    if not valid.any():
        return np.zeros(value.shape + (3,), np.uint8), {"disparity_min": 0.0, "disparity_max": 0.0,
                                                   "percentiles": list(percentiles), "flicker": 0.0}
    lo, hi = (float(x) for x in np.percentile(disp[valid], percentiles))
    norm = np.clip((disp - lo) / max(hi - lo, 1e-12), 0, 1)
    g = np.where(valid, np.maximum(np.rint(norm * 255), 1), 0).astype(np.uint8)
    img = np.repeat(g[..., None], 3, axis=-1)
    return img, {"disparity_min": lo, "disparity_max": hi, "percentiles": list(percentiles),
                 "flicker": flicker_score(img, valid)}


def flicker_score(rendering: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean absolute change of a (T, H, W, 3) uint8 rendering between consecutive frames, in
    grey levels of 255, over pixels valid in both frames. On a static scene seen by a static
    camera it is pure flicker (0 for a clip-level normalisation); with motion it also counts
    the motion. 0 for a single frame."""
    if len(rendering) < 2:
        return 0.0
    g = rendering[..., 0].astype(np.float64)
    both = np.ones(g[1:].shape, bool) if valid is None else (valid[1:] & valid[:-1])
    d = np.abs(g[1:] - g[:-1])[both]
    return round(float(d.mean()), 4) if d.size else 0.0


def decode_depth(img: np.ndarray, disparity_min: float = 0.0, disparity_max: float = 1.0) -> np.ndarray:
    """Grey rendering -> (H, W) float64 disparity (in [0, 1] unless the range is given).

    The rendering fixes disparity only up to scale and shift; pass the json's range to
    undo the per-image normalisation.
    """
    g = img[..., 0].astype(np.float64) / 255.0
    return disparity_min + g * (disparity_max - disparity_min)


def render_normals(normals: np.ndarray, valid: np.ndarray | None = None, dtype=np.uint8) -> np.ndarray:
    """(H, W, 3) float unit normals (x right, y up, z towards the camera) -> RGB (n+1)/2.

    The one encoding of normals as an image: 8-bit for renderings, ``dtype=np.uint16`` for
    the lossless label sidecars (same formula at 65535). Invalid pixels (``valid`` False,
    or normals shorter than 0.5) are black; a unit vector never encodes to black.
    """
    top = float(np.iinfo(dtype).max)
    n = normals.astype(np.float32)
    if valid is None:
        valid = np.linalg.norm(n, axis=2) > 0.5
    rgb = np.rint((n.clip(-1, 1) + 1.0) * (top / 2)).astype(dtype)
    rgb[~valid] = 0
    return rgb


def decode_normals(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB (n+1)/2, uint8 or uint16 -> ((H, W, 3) float32 unit normals, 0 where invalid;
    (H, W) bool valid = not black and not near mid-grey). Inverse of :func:`render_normals`; ground-truth normal
    maps in this encoding (NYU) are read with it too."""
    if img.dtype not in (np.uint8, np.uint16) or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normals image must be (H, W, 3) uint8 or uint16, got {img.shape} {img.dtype}")
    top = float(np.iinfo(img.dtype).max)
    n = img.astype(np.float32) / (top / 2) - 1.0
    length = np.linalg.norm(n, axis=2, keepdims=True)
    # Black, or a vector too short to be an encoded unit normal (mid-grey): invalid, as in
    # render_normals.
    valid = (img.max(axis=2) > 0) & (length[..., 0] > 0.5)
    n /= np.maximum(length, 1e-6)
    n[~valid] = 0
    return n, valid


def canny_edges(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) bool Canny edges of its luma."""
    return cv2.Canny(grey(img)[..., 0], low, high, L2gradient=True) > 0


def render_edges(edges: np.ndarray) -> np.ndarray:
    """(H, W) bool -> white edges on black, (H, W, 3) uint8."""
    return np.repeat((edges.astype(np.uint8) * 255)[..., None], 3, axis=2)


def decode_edges(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool edge mask."""
    return img.max(axis=2) > 127


def angular_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel angle in degrees between two (..., 3) unit-vector fields."""
    cos = np.clip((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12), -1, 1)
    return np.degrees(np.arccos(cos))
