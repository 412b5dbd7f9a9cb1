"""Dense renderings: depth (grey, near = bright, robust range), normals ((n+1)/2), edges (Canny)."""

from __future__ import annotations

import cv2
import numpy as np


def grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) uint8 luma 0.299R + 0.587G + 0.114B, replicated."""
    y = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    y = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, axis=2)


def to_disparity(value: np.ndarray, kind: str, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Depth (``kind="depth"``: inverted) or disparity (as is) -> (float64 disparity, 0 where
    invalid; bool valid). Valid: finite and > 0 for both kinds (0 = no reading, as in base
    samples; also the black border of ``resize: pad``)."""
    value = value.astype(np.float64)
    if valid is None:
        valid = np.isfinite(value) & (value > 0)
    disp = np.zeros_like(value)
    if kind == "depth":
        disp[valid] = 1.0 / value[valid]
    elif kind == "disparity":
        disp[valid] = value[valid]
    else:
        raise ValueError(f"kind must be 'depth' or 'disparity', got {kind!r}")
    return disp, valid


DEPTH_PERCENTILES = (2.0, 98.0)


def render_depth(value: np.ndarray, valid: np.ndarray | None = None, kind: str = "depth",
                 percentiles: tuple[float, float] = DEPTH_PERCENTILES) -> tuple[np.ndarray, dict]:
    """Depth or disparity -> grey image(s), near = bright, normalised by robust percentiles
    of the valid disparity.

    value: (H, W) or (T, H, W) float; ``kind="depth"`` (metres or any positive unit, 0 =
    invalid) is inverted to disparity first, ``kind="disparity"`` (relative inverse depth,
    e.g. Depth-Anything output) is used as is. One range serves the whole array, so a clip
    (T, H, W) gets one range and does not flicker. The range is the ``percentiles`` of the
    valid disparity (default 2-98 %): a few near-sensor outliers (4-10 cm Kinect readings)
    or far pixels cannot stretch it and darken the frame; values beyond it are clipped.

    Grey levels: 0 = invalid; the range maps linearly to 1..255, so depth saturated at a
    sensor's far limit (valid, the farthest) stays distinct from invalid pixels. Inside the
    range :func:`decode_depth` with the returned range undoes the rendering to within half
    a grey level. Returns (value.shape + (3,) uint8, {"disparity_min", "disparity_max",
    "percentiles", "valid_fraction", "clipped_fraction"}).
    """
    disp, valid = to_disparity(value, kind, valid)
    meta = {"percentiles": [float(p) for p in percentiles], "valid_fraction": round(float(valid.mean()), 6)}
    if not valid.any():
        return np.zeros(value.shape + (3,), np.uint8), dict(meta, disparity_min=0.0, disparity_max=0.0,
                                                            clipped_fraction=0.0)
    lo, hi = (float(x) for x in np.percentile(disp[valid], percentiles))
    norm = (disp - lo) / max(hi - lo, 1e-12)
    clipped = valid & ((norm < 0) | (norm > 1))
    g = np.where(valid, 1 + np.rint(np.clip(norm, 0, 1) * 254), 0).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1), dict(
        meta, disparity_min=lo, disparity_max=hi, clipped_fraction=round(float(clipped.sum() / valid.sum()), 6))


def render_depth_clip(value: np.ndarray, kind: str = "depth", percentiles: tuple[float, float] = DEPTH_PERCENTILES
                      ) -> tuple[np.ndarray, dict]:
    """(T, H, W) depth or disparity -> (T, H, W, 3) uint8 with ONE range for the clip
    (:func:`render_depth`), plus ``flicker`` (:func:`flicker_score` of the rendering)."""
    img, meta = render_depth(value, kind=kind, percentiles=percentiles)
    return img, dict(meta, flicker=flicker_score(img, img[..., 0] > 0))


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
    """Grey rendering (..., H, W, 3) uint8 -> (..., H, W) float64 disparity, NaN where invalid
    (grey 0); grey 1..255 map linearly to ``disparity_min..disparity_max`` ([0, 1] unless
    the range is given).

    The rendering fixes disparity only up to scale and shift; pass the json's range
    (``disparity_min``, ``disparity_max``) to undo the normalisation. Pixels that were
    clipped (outside the json's percentiles) decode to the range's ends.
    """
    g = img[..., 0].astype(np.float64)
    out = disparity_min + (g - 1) / 254.0 * (disparity_max - disparity_min)
    out[g == 0] = np.nan
    return out


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
