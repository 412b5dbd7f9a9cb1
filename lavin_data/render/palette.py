"""One deterministic table of distinct, saturated colours shared by every renderer.

``PALETTE[0]`` is black (background / unlabeled). Index ``i >= 1`` steps the hue by the
golden ratio so that neighbouring indices (class 1, 2, 3 ...) get far-apart hues, and
cycles saturation and value so that 1024 entries stay distinct as uint8 triplets.
Class-coloured renderings use ``PALETTE[class_id]``; thing instances of a panoptic
rendering use ``PALETTE[THING_OFFSET + k]`` so they never collide with a class colour.
"""

from __future__ import annotations

import colorsys

import numpy as np

PALETTE_SIZE = 1024
THING_OFFSET = 512  # panoptic: classes use [1, 512), thing instances [512, 1024)


def _build() -> np.ndarray:
    out = [(0, 0, 0)]
    seen = {(0, 0, 0), (255, 255, 255)}  # white is reserved for edges and filled boxes
    sat = (1.0, 0.6, 0.8, 0.45)
    val = (1.0, 0.75, 0.9, 0.6)
    i = 0
    while len(out) < PALETTE_SIZE:
        i += 1
        h = (i * 0.6180339887498949) % 1.0
        s, v = sat[(i // 7) % 4], val[(i // 29) % 4]
        c = tuple(int(round(x * 255)) for x in colorsys.hsv_to_rgb(h, s, v))
        if c not in seen:
            seen.add(c)
            out.append(c)
    return np.array(out, np.uint8)


PALETTE: np.ndarray = _build()  # (1024, 3) uint8
PALETTE.setflags(write=False)

_KEYS = PALETTE.astype(np.int64) @ np.array([65536, 256, 1], np.int64)
_ORDER = np.argsort(_KEYS)
_SORTED = _KEYS[_ORDER]


def colour_index(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int32 palette index; -1 where the colour is not in the palette."""
    keys = img.astype(np.int64) @ np.array([65536, 256, 1], np.int64)
    pos = np.searchsorted(_SORTED, keys).clip(0, len(_SORTED) - 1)
    idx = _ORDER[pos].astype(np.int32)
    idx[_SORTED[pos] != keys] = -1
    return idx
