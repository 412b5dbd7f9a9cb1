"""Resize policies applied identically to an image and to its annotations.

A :class:`Resize` maps source pixel coordinates to output coordinates by
``x' = x * sx + ox`` (continuous coordinates, pixel edges at integers), so boxes and
points follow the image exactly; annotations are rendered afterwards at the output size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

POLICIES = ("crop", "squash", "pad")


@dataclass(frozen=True)
class Resize:
    src_w: int
    src_h: int
    scaled_w: int  # size after scaling, before the crop/pad
    scaled_h: int
    ox: int  # output offset of the scaled image: negative = cropped, positive = padded
    oy: int
    out_w: int
    out_h: int
    policy: str

    @property
    def sx(self) -> float:
        return self.scaled_w / self.src_w

    @property
    def sy(self) -> float:
        return self.scaled_h / self.src_h

    def as_dict(self) -> dict:
        return asdict(self)

    def image(self, img: np.ndarray, kind: str = "image") -> np.ndarray:
        """Resize then crop/pad ``img`` ((H, W) or (H, W, C), any dtype).

        kind: ``image`` (area when shrinking, linear when enlarging) or ``nearest`` for
        ids, depth and normals, where blending neighbours would invent values.
        """
        if img.shape[0] != self.src_h or img.shape[1] != self.src_w:
            raise ValueError(f"expected a {self.src_w}x{self.src_h} array, got {img.shape[1]}x{img.shape[0]}")
        if kind == "nearest":
            interp = cv2.INTER_NEAREST_EXACT
        elif self.scaled_w < self.src_w:
            interp = cv2.INTER_AREA
        else:
            interp = cv2.INTER_LINEAR
        if (self.scaled_w, self.scaled_h) != (self.src_w, self.src_h):
            src = img
            if img.dtype == np.float16:  # OpenCV has no float16 resize
                src = img.astype(np.float32)
            img = cv2.resize(src, (self.scaled_w, self.scaled_h), interpolation=interp).astype(img.dtype, copy=False)
        out = np.zeros((self.out_h, self.out_w) + img.shape[2:], img.dtype)
        # Overlap of the scaled image [ox, ox+scaled) with the output [0, out).
        x0, y0 = max(self.ox, 0), max(self.oy, 0)
        x1, y1 = min(self.ox + self.scaled_w, self.out_w), min(self.oy + self.scaled_h, self.out_h)
        out[y0:y1, x0:x1] = img[y0 - self.oy : y1 - self.oy, x0 - self.ox : x1 - self.ox]
        return out

    def boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) float xyxy source boxes -> (clipped output boxes, kept index mask (N,) bool).

        A box is kept when some of it lies inside the output; it is clipped to the frame.
        """
        b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = b[:, [0, 2]] * self.sx + self.ox
        b[:, [1, 3]] = b[:, [1, 3]] * self.sy + self.oy
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, self.out_w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, self.out_h)
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        return b, keep

    def points(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) float xy -> (output xy, inside mask (N,) bool)."""
        p = np.asarray(pts, np.float64).reshape(-1, 2).copy()
        p[:, 0] = p[:, 0] * self.sx + self.ox
        p[:, 1] = p[:, 1] * self.sy + self.oy
        inside = (p[:, 0] >= 0) & (p[:, 0] < self.out_w) & (p[:, 1] >= 0) & (p[:, 1] < self.out_h)
        return p, inside


def plan_resize(src_w: int, src_h: int, size: int, policy: str) -> Resize:
    """The transform that brings a ``src_w`` x ``src_h`` image to ``size`` x ``size``.

    crop: short side to ``size``, centre crop. squash: both sides to ``size`` (aspect
    changes). pad: long side to ``size``, centred on black.
    """
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"image size must be positive, got {src_w}x{src_h}")
    if policy == "squash":
        return Resize(src_w, src_h, size, size, 0, 0, size, size, policy)
    if policy == "crop":
        s = size / min(src_w, src_h)
    elif policy == "pad":
        s = size / max(src_w, src_h)
    else:
        raise ValueError(f"unknown resize policy {policy!r}; expected one of {POLICIES}")
    sw, sh = max(1, round(src_w * s)), max(1, round(src_h * s))
    return Resize(src_w, src_h, sw, sh, (size - sw) // 2, (size - sh) // 2, size, size, policy)
