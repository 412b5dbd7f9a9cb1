"""Segmentation renderings: flat palette colours on black, and their decoders.

A segment map is (H, W) int with 0 = unlabeled; ``segments`` lists
``{"id", "category_id", "isthing"}`` dicts as in COCO panoptic.
"""

from __future__ import annotations

import numpy as np

from lavin_data.render.palette import PALETTE, PALETTE_SIZE, THING_OFFSET, colour_index


def _paint(label: np.ndarray) -> np.ndarray:
    if label.max(initial=0) >= PALETTE_SIZE:
        raise ValueError(f"label {int(label.max())} exceeds the palette ({PALETTE_SIZE} colours)")
    return PALETTE[label]


def render_instances(masks: list[np.ndarray], size: tuple[int, int] | None = None) -> np.ndarray:
    """Instance ``masks[k]`` ((H, W) bool) gets ``PALETTE[k + 1]``; the rest is black.

    The list order is the colour order, so a caller that lists instances stably gets
    stable colours. Where masks overlap, smaller instances are painted last (on top), so
    that an object in front of a larger one stays visible. Returns (H, W, 3) uint8.
    """
    if not masks:
        if size is None:
            raise ValueError("render_instances needs a size when there are no masks")
        return np.zeros(size + (3,), np.uint8)
    label = np.zeros(masks[0].shape, np.int32)
    for k in sorted(range(len(masks)), key=lambda k: -int(masks[k].sum())):
        label[masks[k]] = k + 1
    return _paint(label)


def decode_instances(img: np.ndarray) -> dict[int, np.ndarray]:
    """(H, W, 3) uint8 -> {k: (H, W) bool mask} for every instance colour k (0-based order)."""
    idx = colour_index(img)
    return {int(c) - 1: idx == c for c in np.unique(idx) if c > 0}


def render_semantic(classes: np.ndarray) -> np.ndarray:
    """(H, W) int class map (0 = background) -> ``PALETTE[class]`` (H, W, 3) uint8."""
    return _paint(classes.astype(np.int64))


def decode_semantic(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int32 class map; -1 where the colour is not a palette colour."""
    return colour_index(img)


def render_panoptic(seg: np.ndarray, segments: list[dict]) -> np.ndarray:
    """Stuff segments in their class colour, thing segments each in their own colour.

    The k-th non-crowd thing segment of ``segments`` (in list order) gets
    ``PALETTE[THING_OFFSET + k]``; a stuff segment, or a crowd region (``iscrowd``: a
    group of things, not one), gets ``PALETTE[category_id]`` (ids must be < THING_OFFSET).
    Unlabeled pixels (id 0 or ids not listed) are black.
    """
    label = np.zeros(seg.shape, np.int32)
    k = 0
    for s in segments:
        if s["isthing"] and not s.get("iscrowd"):
            label[seg == s["id"]] = THING_OFFSET + k
            k += 1
        else:
            if not 0 < s["category_id"] < THING_OFFSET:
                raise ValueError(f"stuff category id {s['category_id']} outside [1, {THING_OFFSET})")
            label[seg == s["id"]] = s["category_id"]
    return _paint(label)


def decode_panoptic(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int32 panoptic label.

    label = stuff category id (< THING_OFFSET), THING_OFFSET + k for the k-th thing, 0 unlabeled.
    """
    return colour_index(img).clip(0)


def render_foreground(mask: np.ndarray, category_id: int) -> np.ndarray:
    """(H, W) bool mask of one class -> that class's palette colour on black."""
    out = np.zeros(mask.shape + (3,), np.uint8)
    out[mask] = PALETTE[category_id]
    return out


def decode_foreground(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: every non-black pixel."""
    return img.max(axis=2) > 0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return float(inter / union) if union else 1.0


def render_tracks(tracks: np.ndarray, object_ids: list[int]) -> np.ndarray:
    """(T, H, W) int object ids (0 = background) -> (T, H, W, 3) uint8: object ``object_ids[k]``
    in ``PALETTE[k + 1]`` on every frame, so an object keeps its colour across the clip (and
    across clips of one sequence, when ``object_ids`` lists the sequence's objects)."""
    lut = np.zeros(int(max(object_ids, default=0)) + 1, np.int64)
    for k, oid in enumerate(object_ids):
        lut[oid] = k + 1
    ids = tracks.astype(np.int64)
    if ids.max(initial=0) >= len(lut):
        raise ValueError(f"object id {int(ids.max())} is not among the sequence's objects {object_ids}")
    return _paint(lut[ids])


def decode_tracks(img: np.ndarray, object_ids: list[int]) -> np.ndarray:
    """(T, H, W, 3) rendering -> (T, H, W) int32 object ids (0 background, -1 not a palette colour)."""
    idx = colour_index(img)
    lut = np.array([0] + list(object_ids), np.int32)
    return np.where((idx >= 0) & (idx < len(lut)), lut[np.clip(idx, 0, len(lut) - 1)], -1).astype(np.int32)
