"""Pose renderings: the skeleton's limbs as thin lines, one palette colour per limb, on black.

Limb ``j`` (the j-th pair of the skeleton) is drawn in ``PALETTE[j + 1]`` between its two
keypoints when both are labelled (v > 0), without anti-aliasing so colours stay exact.
COCO's skeleton has 19 limbs over 17 keypoints; its pairs are 1-based in the annotation
files and 0-based here.
"""

from __future__ import annotations

import cv2
import numpy as np

from lavin_data.render.palette import PALETTE, colour_index

COCO_SKELETON = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]


def render_pose(people: list[np.ndarray], skeleton: list[tuple[int, int]], size: tuple[int, int],
                thickness: int = 2) -> np.ndarray:
    """people: list of (K, 3) float (x, y, v) in output pixels; size (H, W) -> (H, W, 3) uint8."""
    h, w = size
    out = np.zeros((h, w, 3), np.uint8)
    # Integer pixel coordinates with a few bits of sub-pixel precision for cv2.line.
    shift = 4
    for kps in people:
        for j, (a, b) in enumerate(skeleton):
            if kps[a, 2] <= 0 or kps[b, 2] <= 0:
                continue
            pa = tuple(int(round((c - 0.5) * (1 << shift))) for c in kps[a, :2])
            pb = tuple(int(round((c - 0.5) * (1 << shift))) for c in kps[b, :2])
            cv2.line(out, pa, pb, tuple(int(c) for c in PALETTE[j + 1]), thickness, cv2.LINE_8, shift)
    return out


def decode_limbs(img: np.ndarray, n_limbs: int) -> dict[int, list[tuple[float, float, float, float]]]:
    """Recover limb segments: {limb j: [(x0, y0, x1, y1), ...]} in pixel-centre coordinates.

    Each connected blob of limb j's colour is one limb; its endpoints are the extreme
    pixels along the blob's principal axis. Where two people's same limbs touch, they
    merge into one blob; keypoints then follow only approximately.
    """
    idx = colour_index(img)
    out: dict[int, list[tuple[float, float, float, float]]] = {}
    for j in range(n_limbs):
        m = (idx == j + 1).astype(np.uint8)
        if not m.any():
            continue
        n, lab = cv2.connectedComponents(m, connectivity=8)
        for c in range(1, n):
            ys, xs = np.nonzero(lab == c)
            pts = np.stack([xs, ys], 1).astype(np.float64) + 0.5
            centre = pts.mean(0)
            if len(pts) > 1:
                axis = np.linalg.svd(pts - centre, full_matrices=False)[2][0]
            else:
                axis = np.array([1.0, 0.0])
            proj = (pts - centre) @ axis
            p0, p1 = pts[proj.argmin()], pts[proj.argmax()]
            out.setdefault(j, []).append((p0[0], p0[1], p1[0], p1[1]))
    return out


def point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points (N, 2) to the segment a-b."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0, 1)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def decode_keypoints(img: np.ndarray, skeleton: list[tuple[int, int]], n_keypoints: int) -> np.ndarray:
    """Keypoints of a single-person rendering: (K, 3) float (x, y, found 0/1).

    A keypoint shared by several drawn limbs is the endpoint those limbs agree on; a
    keypoint at the end of one drawn limb is that limb's far end from its resolved
    neighbour. Keypoints without a drawn limb (unlabelled) are not found. With several
    people in one rendering, use :func:`decode_limbs` instead.
    """
    limbs = {j: segs[0] for j, segs in decode_limbs(img, len(skeleton)).items()}
    ends = {j: (np.array(s[:2]), np.array(s[2:])) for j, s in limbs.items()}
    out = np.zeros((n_keypoints, 3))
    incident: dict[int, list[int]] = {}
    for j, (a, b) in enumerate(skeleton):
        if j in ends:
            incident.setdefault(a, []).append(j)
            incident.setdefault(b, []).append(j)
    for k, js in incident.items():
        if len(js) < 2:
            continue
        cands = [p for j in js for p in ends[j]]
        score = [sum(min(np.linalg.norm(c - q) for q in ends[j]) for j in js) for c in cands]
        out[k] = (*cands[int(np.argmin(score))], 1)
    for _ in range(2):  # leaves next to a leaf resolve on the second pass
        for k, js in incident.items():
            if len(js) != 1 or out[k, 2]:
                continue
            j = js[0]
            other = skeleton[j][1] if skeleton[j][0] == k else skeleton[j][0]
            if out[other, 2]:
                p0, p1 = ends[j]
                o = out[other, :2]
                out[k] = (*(p0 if np.linalg.norm(p0 - o) > np.linalg.norm(p1 - o) else p1), 1)
    return out
