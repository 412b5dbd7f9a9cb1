"""The pinhole camera: intrinsics, back-projection, and surface normals from depth (the
cross product of the back-projected point cloud's image-space gradients).

Intrinsics (fx, fy, cx, cy) follow OpenCV: pixel centres at integer coordinates, so a
centred camera has cx = (W - 1) / 2 (see :mod:`lavin_data.geometry`).
Output frame (everywhere in this project): x right, y up, z towards the camera.
"""

from __future__ import annotations

import cv2
import numpy as np


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a centred pinhole camera with horizontal field of view ``fov_deg``
    (the angle between the outer edges of the first and last pixel columns)."""
    fx = width / (2 * np.tan(np.radians(fov_deg) / 2))
    return fx, fx, (width - 1) / 2, (height - 1) / 2


def backproject(depth: np.ndarray, intrinsics: tuple[float, float, float, float]) -> np.ndarray:
    """(H, W) depth along the optical axis -> (H, W, 3) float32 points, camera frame x right,
    y up, z towards the camera (so visible points have z < 0). Pixel (u, v) is the ray through
    the integer coordinates (u, v) (OpenCV's convention, like the intrinsics of NYU or COLMAP)."""
    fx, fy, cx, cy = intrinsics
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    d = depth.astype(np.float32)
    return np.stack([(u - cx) / fx * d, -(v - cy) / fy * d, -d], -1)


def normals_from_depth(
    depth: np.ndarray, intrinsics: tuple[float, float, float, float], window: int = 5, max_rel_jump: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) depth (> 0 valid, metres or any unit) -> ((H, W, 3) float32 unit normals, (H, W) bool valid).

    The point cloud is averaged over a ``window`` x ``window`` box (invalid pixels left
    out), so that quantised depth (NYU: millimetres) does not turn into noisy normals;
    pixels next to an invalid pixel or a depth jump larger than ``max_rel_jump`` (relative)
    are invalid. Normals face the camera.
    """
    valid = np.isfinite(depth) & (depth > 0)
    pts = backproject(np.where(valid, depth, 0), intrinsics)
    wgt = valid.astype(np.float32)
    k = (window, window)
    norm = cv2.boxFilter(wgt, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    smooth = cv2.boxFilter(pts * wgt[..., None], -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    smooth = smooth / np.maximum(norm, 1e-6)[..., None]
    du = np.zeros_like(smooth)
    dv = np.zeros_like(smooth)
    du[:, 1:-1] = smooth[:, 2:] - smooth[:, :-2]
    dv[1:-1] = smooth[2:] - smooth[:-2]
    n = np.cross(dv, du)  # image v grows downwards: dv x du points towards the camera
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    n = n / np.maximum(length, 1e-12)
    # Face the camera: the vector from the point to the camera is -p.
    flip = (n * -pts).sum(-1) < 0
    n[flip] *= -1
    # Valid where the whole stencil is valid and flat enough.
    ok = valid & (norm >= window * window - 0.5)
    d = np.where(valid, depth, np.nan).astype(np.float32)
    with np.errstate(invalid="ignore"):
        dmax = cv2.dilate(np.nan_to_num(d, nan=0), np.ones((3, 3), np.uint8))
        dmin = -cv2.dilate(-np.nan_to_num(d, nan=np.inf), np.ones((3, 3), np.uint8))
        ok &= (dmax - dmin) <= max_rel_jump * np.maximum(dmin, 1e-6)
    ok[:1] = ok[-1:] = False
    ok[:, :1] = ok[:, -1:] = False
    ok &= length[..., 0] > 0
    n[~ok] = 0
    return n.astype(np.float32), ok
