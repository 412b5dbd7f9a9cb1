"""Synthetic degradations for restoration tasks: pure functions, numpy in, numpy out.

Each takes a clean (H, W, 3) uint8 RGB image and a ``numpy.random.Generator`` and
returns ``(degraded (H, W, 3) uint8, params)`` where ``params`` is a JSON-able dict of
every random draw, so a sample can be reproduced and its severity analysed.
Ranges are keyword arguments (the task's spec options).
"""

from __future__ import annotations

import cv2
import numpy as np


def _u(rng: np.random.Generator, lo_hi) -> float:
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi))


def _line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """Normalised (k, k) float32 kernel of a centred line ``length`` px long at ``angle_deg``."""
    k = length if length % 2 else length + 1
    ker = np.zeros((k, k), np.float32)
    c = k // 2
    dx, dy = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    for s in np.linspace(-(length - 1) / 2, (length - 1) / 2, 2 * length):
        ker[int(round(c + s * dy)), int(round(c + s * dx))] = 1.0
    return ker / ker.sum()


def motion_blur(img: np.ndarray, rng: np.random.Generator, length=(5, 21), angle=(0, 180)) -> tuple[np.ndarray, dict]:
    """Linear camera-shake blur: a line kernel of random length (px) and angle (degrees)."""
    ln, an = int(round(_u(rng, length))), _u(rng, angle)
    out = cv2.filter2D(img, -1, _line_kernel(max(ln, 2), an), borderType=cv2.BORDER_REFLECT)
    return out, {"kind": "motion_blur", "length_px": ln, "angle_deg": an}


def glass_blur(
    img: np.ndarray, rng: np.random.Generator, sigma=(0.6, 1.5), max_delta=(1, 3), iterations=(1, 2)
) -> tuple[np.ndarray, dict]:
    """Frosted-glass blur: Gaussian blur, local random pixel displacement, blur again."""
    s, d, it = _u(rng, sigma), int(round(_u(rng, max_delta))), int(rng.integers(iterations[0], iterations[1] + 1))
    h, w = img.shape[:2]
    out = cv2.GaussianBlur(img, (0, 0), s)
    ys, xs = np.mgrid[0:h, 0:w]
    for _ in range(it):
        dy = rng.integers(-d, d + 1, size=(h, w))
        dx = rng.integers(-d, d + 1, size=(h, w))
        out = out[(ys + dy).clip(0, h - 1), (xs + dx).clip(0, w - 1)]
    out = cv2.GaussianBlur(out, (0, 0), s)
    return out, {"kind": "glass_blur", "sigma": s, "max_delta_px": d, "iterations": it}


def gaussian_noise(img: np.ndarray, rng: np.random.Generator, sigma=(10, 50)) -> tuple[np.ndarray, dict]:
    """Additive white Gaussian noise; ``sigma`` on the 0-255 scale."""
    s = _u(rng, sigma)
    noisy = img.astype(np.float32) + rng.normal(0.0, s, img.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), {"kind": "gaussian_noise", "sigma": s}


def low_light(
    img: np.ndarray, rng: np.random.Generator, gain=(0.08, 0.35), gamma=(1.5, 2.5), noise_sigma=(1, 6)
) -> tuple[np.ndarray, dict]:
    """Under-exposure: ``out = gain * (x/255)^gamma * 255`` plus sensor noise."""
    g, gm, s = _u(rng, gain), _u(rng, gamma), _u(rng, noise_sigma)
    x = (img.astype(np.float32) / 255.0) ** gm * g * 255.0
    x += rng.normal(0.0, s, img.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), {"kind": "low_light", "gain": g, "gamma": gm, "noise_sigma": s}


def rain(
    img: np.ndarray, rng: np.random.Generator, density=(0.002, 0.01), length=(10, 30), angle=(-25, 25),
    intensity=(0.5, 0.9),
) -> tuple[np.ndarray, dict]:
    """Rain streaks: sparse drops smeared along one direction, screened over the image."""
    h, w = img.shape[:2]
    dn, ln, an, it = _u(rng, density), int(round(_u(rng, length))), _u(rng, angle), _u(rng, intensity)
    drops = (rng.random((h, w)) < dn).astype(np.float32)
    streak = cv2.filter2D(drops, -1, _line_kernel(max(ln, 2), 90.0 + an), borderType=cv2.BORDER_CONSTANT)
    streak = np.clip(streak * ln * it, 0.0, 1.0)[..., None]
    x = img.astype(np.float32) / 255.0
    x = 1.0 - (1.0 - x) * (1.0 - streak * 0.9)  # screen blend: streaks only brighten
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8), {
        "kind": "rain", "density": dn, "length_px": ln, "angle_deg": an, "intensity": it,
    }


def inpainting_mask(
    size: tuple[int, int], rng: np.random.Generator, mode: str = "boxes", coverage=(0.1, 0.4),
    patch: int = 16,
) -> tuple[np.ndarray, dict]:
    """(H, W) bool hole mask: random boxes, or random ``patch``-px grid cells (MAE-style).

    The fraction of the image covered is drawn from ``coverage``.
    """
    h, w = size
    cov = _u(rng, coverage)
    mask = np.zeros((h, w), bool)
    if mode == "patches":
        gh, gw = -(-h // patch), -(-w // patch)
        n = int(round(cov * gh * gw))
        cells = rng.choice(gh * gw, size=n, replace=False)
        for c in cells:
            y, x = divmod(int(c), gw)
            mask[y * patch : (y + 1) * patch, x * patch : (x + 1) * patch] = True
        return mask, {"mode": mode, "coverage": cov, "patch_px": patch, "cells": sorted(int(c) for c in cells)}
    if mode != "boxes":
        raise ValueError(f"inpainting mode must be 'boxes' or 'patches', got {mode!r}")
    boxes = []
    while mask.mean() < cov and len(boxes) < 16:
        bw = int(rng.integers(w // 8, w // 2 + 1))
        bh = int(rng.integers(h // 8, h // 2 + 1))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        mask[y0 : y0 + bh, x0 : x0 + bw] = True
        boxes.append([x0, y0, x0 + bw, y0 + bh])
    return mask, {"mode": mode, "coverage": cov, "boxes": boxes}


def apply_holes(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Black out the ``mask`` pixels of (H, W, 3) uint8 ``img``."""
    out = img.copy()
    out[mask] = 0
    return out
