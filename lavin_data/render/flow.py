"""Optical flow rendered with the Middlebury colour wheel (Baker et al., IJCV 2011), and back.

Flow is (..., H, W, 2) float, (u, v) = (dx, dy) in pixels, x right and y down (image
axes), from a frame to the next. The rendering normalises by one maximum magnitude (per
clip, stored in the sample's json) so that a clip's frames share one scale: direction is
the hue of the standard 55-colour wheel, magnitude / max the saturation (zero flow is
white). Unlike the reference code, channels are rounded rather than floored, and
magnitudes never exceed the maximum, so :func:`decode_flow` inverts the rendering to
within the 8-bit quantisation.
"""

from __future__ import annotations

import numpy as np


def _colour_wheel() -> np.ndarray:
    """(55, 3) float64 in [0, 255]: the Middlebury wheel (RY 15, YG 6, GC 4, CB 11, BM 13, MR 6)."""
    ry, yg, gc, cb, bm, mr = 15, 6, 4, 11, 13, 6
    wheel = np.zeros((ry + yg + gc + cb + bm + mr, 3))
    col = 0
    for n, (const, ramp, up) in zip((ry, yg, gc, cb, bm, mr),
                                    ((0, 1, True), (1, 0, False), (1, 2, True), (2, 1, False), (2, 0, True),
                                     (0, 2, False))):
        ramp_values = np.floor(255 * np.arange(n) / n)
        wheel[col:col + n, const] = 255
        wheel[col:col + n, ramp] = ramp_values if up else 255 - ramp_values
        col += n
    return wheel


WHEEL = _colour_wheel()
_N = len(WHEEL)


def _hue(c: np.ndarray) -> np.ndarray:
    """HSV hue in [0, 6) of (..., 3) colours; along the wheel it grows monotonically."""
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    mx, mn = c.max(-1), c.min(-1)
    d = np.maximum(mx - mn, 1e-12)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h


# Wheel position fk in [0, N-1] against the hue of the wheel colour there (monotonic).
_FK_GRID = np.linspace(0, _N - 1, (_N - 1) * 64 + 1)
_k0 = np.floor(_FK_GRID).astype(int).clip(0, _N - 2)
_W_GRID = ((1 - (_FK_GRID - _k0))[:, None] * WHEEL[_k0] + (_FK_GRID - _k0)[:, None] * WHEEL[_k0 + 1]) / 255
_HUE_GRID = _hue(_W_GRID)


def flow_max_magnitude(flow: np.ndarray, valid: np.ndarray | None = None, percentile: float = 100.0,
                       outlier_factor: float = 2.0) -> float:
    """The rendering's scale: the largest finite flow magnitude over ``valid`` pixels, but at
    most ``outlier_factor`` times their ``percentile`` (100: no cap). A smooth field keeps its
    exact maximum (nothing saturates); a few wild vectors (a bad match, an occlusion edge)
    far beyond the rest saturate instead of washing out every other colour of the clip."""
    mag = np.linalg.norm(np.nan_to_num(flow.astype(np.float64)), axis=-1)
    if valid is not None:
        mag = mag[valid]
    if not mag.size:
        return 0.0
    top = float(mag.max())
    cap = outlier_factor * float(np.percentile(mag, percentile)) if percentile < 100 else top
    return min(top, cap) if cap > 0 else top  # a mostly static clip: its movers set the scale


def render_flow(flow: np.ndarray, max_magnitude: float | None = None, valid: np.ndarray | None = None,
                percentile: float = 100.0, outlier_factor: float = 2.0) -> tuple[np.ndarray, float]:
    """(..., H, W, 2) float flow -> ((..., H, W, 3) uint8 RGB, the max magnitude used).

    ``max_magnitude`` (default: :func:`flow_max_magnitude` with ``percentile`` and
    ``outlier_factor``) maps to full saturation, larger magnitudes saturate; give one value
    (or one call) for a whole clip. Invalid pixels (``valid`` False, or non-finite) are black.
    """
    f = flow.astype(np.float64)
    finite = np.isfinite(f).all(-1)
    valid = finite if valid is None else (valid & finite)
    f = np.where(valid[..., None], f, 0.0)
    top = flow_max_magnitude(f, valid, percentile, outlier_factor) if max_magnitude is None else float(max_magnitude)
    u, v = f[..., 0] / max(top, 1e-12), f[..., 1] / max(top, 1e-12)
    rad = np.minimum(np.sqrt(u * u + v * v), 1.0)
    a = np.arctan2(-v, -u) / np.pi
    fk = (a + 1) / 2 * (_N - 1)
    k0 = np.floor(fk).astype(int).clip(0, _N - 1)
    k1 = (k0 + 1) % _N
    frac = (fk - k0)[..., None]
    w = ((1 - frac) * WHEEL[k0] + frac * WHEEL[k1]) / 255
    col = 1 - rad[..., None] * (1 - w)
    img = np.rint(255 * col).clip(0, 255).astype(np.uint8)
    img[~valid] = 0
    return img, top


def decode_flow(img: np.ndarray, max_magnitude: float) -> tuple[np.ndarray, np.ndarray]:
    """Rendering -> ((..., H, W, 2) float32 flow in pixels, (..., H, W) bool valid = not black).

    The wheel colour at every position has one channel at 255 and one at 0, so the
    smallest channel gives the magnitude (1 - min = magnitude / max) and the hue of the
    de-saturated colour gives the direction.
    """
    c = img.astype(np.float64) / 255
    valid = img.max(-1) > 0
    rad = 1 - c.min(-1)
    w = 1 - (1 - c) / np.maximum(rad, 1e-12)[..., None]
    fk = np.interp(_hue(w), _HUE_GRID, _FK_GRID)
    a = fk / (_N - 1) * 2 - 1
    mag = rad * max_magnitude
    # a = atan2(-v, -u) / pi, i.e. the direction of (-u, -v) is a * pi.
    flow = np.stack([-mag * np.cos(a * np.pi), -mag * np.sin(a * np.pi)], -1)
    flow[~valid] = 0
    return flow.astype(np.float32), valid


def end_point_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel Euclidean distance between two (..., 2) flow fields (pixels)."""
    return np.linalg.norm(a.astype(np.float64) - b.astype(np.float64), axis=-1)
