"""Box renderings: class-coloured outlines (object_detection) and one filled box
(single_object_detection), and decoders that read the boxes back."""

from __future__ import annotations

import numpy as np

from lavin_data.render.palette import PALETTE, colour_index

WHITE = np.array([255, 255, 255], np.uint8)


def _pixel_rect(box: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
    """Continuous xyxy box -> inclusive pixel rect (x0, y0, x1, y1) clipped to the frame."""
    x0, y0 = int(round(box[0])), int(round(box[1]))
    x1, y1 = int(round(box[2])) - 1, int(round(box[3])) - 1
    return max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)


def render_boxes(
    boxes: np.ndarray, classes: np.ndarray, size: tuple[int, int], thickness: int = 2, min_side: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Draw box outlines, one palette colour per class, on black.

    boxes: (N, 4) float xyxy in output pixels (x1, y1 exclusive); classes: (N,) int in
    [1, 512); size: (H, W). Outlines are drawn inward from the box edge so the outer
    boundary is the box. Larger boxes are drawn first so small ones stay visible.
    Returns ((H, W, 3) uint8, (N,) bool drawn) - boxes under ``min_side`` px are skipped.
    """
    h, w = size
    out = np.zeros((h, w, 3), np.uint8)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    drawn = np.zeros(len(boxes), bool)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in np.argsort(-area, kind="stable"):
        x0, y0, x1, y1 = _pixel_rect(boxes[i], h, w)
        if x1 - x0 + 1 < min_side or y1 - y0 + 1 < min_side:
            continue
        c = PALETTE[int(classes[i])]
        t = thickness
        out[y0 : y0 + t, x0 : x1 + 1] = c
        out[y1 - t + 1 : y1 + 1, x0 : x1 + 1] = c
        out[y0 : y1 + 1, x0 : x0 + t] = c
        out[y0 : y1 + 1, x1 - t + 1 : x1 + 1] = c
        drawn[i] = True
    return out, drawn


def _runs(m: np.ndarray, axis: int, reverse: bool) -> np.ndarray:
    """Length of the run of True starting at each pixel and going along ``axis``."""
    a = np.moveaxis(m, axis, -1)
    if reverse:
        a = a[..., ::-1]
    n = a.shape[-1]
    # Distance to the next False at or after each position.
    idx = np.where(~a, np.arange(n), n)
    nxt = np.minimum.accumulate(idx[..., ::-1], axis=-1)[..., ::-1]
    run = (nxt - np.arange(n)).astype(np.int32)
    if reverse:
        run = run[..., ::-1]
    return np.moveaxis(run, -1, axis)


def _decode_outline_rects(m: np.ndarray, thickness: int) -> list[tuple[int, int, int, int]]:
    """Rectangles whose whole outline is set in mask ``m`` and whose corners are corners.

    Crossing outlines of two boxes also enclose rectangles (their intersection); those
    have at most two clean corners (where the outline does not run on outward), while a
    drawn box has four, or three when one corner sits on another box's line.
    """
    h, w = m.shape
    right, down = _runs(m, 1, False), _runs(m, 0, False)
    left, up = _runs(m, 1, True), _runs(m, 0, True)
    k = thickness + 1
    tl = np.argwhere(m & (right >= k) & (down >= k))
    br = np.argwhere(m & (left >= k) & (up >= k))
    if len(tl) == 0 or len(br) == 0:
        return []
    y0, x0 = tl[:, 0:1], tl[:, 1:2]
    y1, x1 = br[None, :, 0], br[None, :, 1]
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    ok = (bw > k) & (bh > k)
    ok &= right[y0, x0] >= bw  # top edge
    ok &= down[y0, x0] >= bh  # left edge
    ok &= left[y1, x1] >= bw  # bottom edge
    ok &= up[y1, x1] >= bh  # right edge
    pad = np.pad(m, 1)  # out-of-frame counts as clear
    ii, jj = np.nonzero(ok)
    rects = []
    for i, j in zip(ii, jj):
        a, b = int(tl[i, 0]), int(tl[i, 1])  # y0, x0
        c, d = int(br[j, 0]), int(br[j, 1])  # y1, x1
        p = lambda y, x: pad[y + 1, x + 1]  # noqa: E731
        clean = (not p(a, b - 1) and not p(a - 1, b)) + (not p(a, d + 1) and not p(a - 1, d))
        clean += (not p(c, b - 1) and not p(c + 1, b)) + (not p(c, d + 1) and not p(c + 1, d))
        if clean >= 3:
            rects.append((b, a, d, c))
    return rects


def decode_boxes(img: np.ndarray, thickness: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Read boxes back from a :func:`render_boxes` image.

    Returns ((M, 4) float xyxy with exclusive x1/y1, (M,) int class ids). A box hidden
    under a same-coloured box's outline along a whole side cannot be recovered.
    """
    idx = colour_index(img)
    boxes, classes = [], []
    for cls in np.unique(idx):
        if cls <= 0:
            continue
        for x0, y0, x1, y1 in _decode_outline_rects(idx == cls, thickness):
            boxes.append((x0, y0, x1 + 1, y1 + 1))
            classes.append(int(cls))
    return np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64)


def render_filled_box(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One box (4,) xyxy filled white on black: (H, W, 3) uint8."""
    h, w = size
    out = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = _pixel_rect(np.asarray(box, np.float64), h, w)
    out[y0 : y1 + 1, x0 : x1 + 1] = WHITE
    return out


def decode_filled_box(img: np.ndarray) -> np.ndarray | None:
    """(H, W, 3) uint8 -> (4,) float xyxy of the lit pixels, or None if there are none."""
    ys, xs = np.nonzero(img.max(axis=2) > 127)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between (N, 4) and (M, 4) xyxy boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod((rb - lt).clip(0), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)
