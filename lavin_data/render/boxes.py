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


def _decode_outline_rects(m: np.ndarray, cover: np.ndarray, thickness: int) -> list[tuple[int, int, int, int]]:
    """Rectangles drawn in mask ``m`` (one colour) whose outline is complete in ``cover``.

    ``cover`` is every drawn pixel: where another class's outline crosses this one it
    overwrites a few pixels, so edges are checked against any colour, while corners and
    most of the outline must be in this colour. Crossing outlines of two same-coloured
    boxes also enclose a rectangle (their intersection); two of its corners are
    crossings, where the outline runs on outward both ways, which a drawn box's corners
    are not (unless one sits exactly on another box's crossing).
    """
    right, down = _runs(cover, 1, False), _runs(cover, 0, False)
    left, up = _runs(cover, 1, True), _runs(cover, 0, True)
    k = thickness + 1

    def validated(y0, x0, y1, x1):
        """Candidate rects (broadcast arrays of corners) whose four edges are complete."""
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        ok = (bw > k) & (bh > k)
        y0c, x0c, y1c, x1c = (np.broadcast_to(a, ok.shape).clip(0, n - 1)
                              for a, n in ((y0, m.shape[0]), (x0, m.shape[1]), (y1, m.shape[0]), (x1, m.shape[1])))
        ok &= right[y0c, x0c] >= bw  # top edge
        ok &= down[y0c, x0c] >= bh  # left edge
        ok &= left[y1c, x1c] >= bw  # bottom edge
        ok &= up[y1c, x1c] >= bh  # right edge
        return {(int(a), int(b), int(c), int(d)) for a, b, c, d in
                zip(y0c[ok], x0c[ok], y1c[ok], x1c[ok])}

    # Rectangles are seeded from a pair of opposite corners in this colour: top-left with
    # bottom-right, and top-right with bottom-left, so that one corner may lie under
    # another box's line.
    cands: set[tuple[int, int, int, int]] = set()
    tl = np.argwhere(m & (right >= k) & (down >= k))
    br = np.argwhere(m & (left >= k) & (up >= k))
    if len(tl) and len(br):
        cands |= validated(tl[:, 0:1], tl[:, 1:2], br[None, :, 0], br[None, :, 1])
    tr = np.argwhere(m & (left >= k) & (down >= k))
    bl = np.argwhere(m & (right >= k) & (up >= k))
    if len(tr) and len(bl):
        cands |= validated(tr[:, 0:1], bl[None, :, 1], bl[None, :, 0], tr[:, 1:2])
    if not cands:
        return []
    # Outward runs in this colour, for the crossing test at corners.
    m_right, m_down = _runs(m, 1, False), _runs(m, 0, False)
    m_left, m_up = _runs(m, 1, True), _runs(m, 0, True)
    h, w = m.shape

    def run(arr, y, x):
        return int(arr[y, x]) if 0 <= y < h and 0 <= x < w else 0

    def crossing(y, x, dx, dy):
        """The outline goes on past the corner both sideways and vertically: a crossing."""
        horiz = run(m_left if dx < 0 else m_right, y, x + dx)
        vert = run(m_up if dy < 0 else m_down, y + dy, x)
        return horiz > thickness and vert > thickness

    # Own-colour pixels per row/column prefix, to measure how much of an outline is ours.
    row_cs = np.pad(np.cumsum(m, 1), ((0, 0), (1, 0)))
    col_cs = np.pad(np.cumsum(m, 0), ((1, 0), (0, 0)))
    integral = np.pad(np.cumsum(np.cumsum(m, 0), 1), ((1, 0), (1, 0)))
    found = []
    for a, b, c, d in sorted(cands):  # y0, x0, y1, x1
        n_cross = crossing(a, b, -1, -1) + crossing(a, d, 1, -1) + crossing(c, b, -1, 1) + crossing(c, d, 1, 1)
        if n_cross >= 2:
            continue
        # Corners (thickness x thickness blocks) in this colour: all four, or three when
        # another box's line covers one.
        t = thickness
        own_corners = sum(int(blk.any()) for blk in (m[a:a + t, b:b + t], m[a:a + t, d - t + 1:d + 1],
                                                     m[c - t + 1:c + 1, b:b + t], m[c - t + 1:c + 1, d - t + 1:d + 1]))
        if own_corners < 3:
            continue
        # An outline is hollow: where parallel lines touch, the solid band between them
        # would otherwise yield rectangles everywhere.
        ia, ib, ic, id_ = a + thickness, b + thickness, c - thickness, d - thickness
        if ic < ia or id_ < ib:
            continue
        inner = integral[ic + 1, id_ + 1] - integral[ia, id_ + 1] - integral[ic + 1, ib] + integral[ia, ib]
        if inner > 0.5 * (ic - ia + 1) * (id_ - ib + 1):
            continue
        # At most one side may lie under other lines; the others are mostly this colour.
        bw, bh = d - b + 1, c - a + 1
        sides = ((row_cs[a, d + 1] - row_cs[a, b]) / bw, (row_cs[c, d + 1] - row_cs[c, b]) / bw,
                 (col_cs[c + 1, b] - col_cs[a, b]) / bh, (col_cs[c + 1, d] - col_cs[a, d]) / bh)
        if sum(f >= 0.5 for f in sides) >= 3:
            found.append((b, a, d, c))
    # A thick outline also holds rectangles inset by less than its thickness: keep the outer.
    found.sort(key=lambda r: -(r[2] - r[0] + 1) * (r[3] - r[1] + 1))
    rects: list[tuple[int, int, int, int]] = []
    for r in found:
        if not any(0 <= r[0] - o[0] < thickness and 0 <= r[1] - o[1] < thickness
                   and 0 <= o[2] - r[2] < thickness and 0 <= o[3] - r[3] < thickness for o in rects):
            rects.append(r)
    return rects


def decode_boxes(img: np.ndarray, thickness: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Read boxes back from a :func:`render_boxes` image.

    Returns ((M, 4) float xyxy with exclusive x1/y1, (M,) int class ids). A box hidden
    under a same-coloured box's outline along a whole side cannot be recovered.
    """
    idx = colour_index(img)
    cover = img.max(axis=2) > 0
    boxes, classes = [], []
    for cls in np.unique(idx):
        if cls <= 0:
            continue
        for x0, y0, x1, y1 in _decode_outline_rects(idx == cls, cover, thickness):
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
