"""``normals_from_depth``: normals by back-projecting depth (no weights)."""

from __future__ import annotations

import numpy as np

from lavin_data.geometry.camera import intrinsics_from_fov, normals_from_depth
from lavin_data.labelers import Labeler, LabelInput


def metric_like_depth(depth: np.ndarray, kind: str) -> np.ndarray:
    """Depth of either kind -> (H, W) float32 depth along the optical axis, 0 = invalid.

    Relative inverse depth (``"disparity"``) is inverted: the result is depth up to an
    unknown scale (and the shift of the disparity), so normals from it are approximate.
    """
    if kind == "depth":
        return depth.astype(np.float32)
    if kind != "disparity":
        raise ValueError(f"depth kind must be 'depth' or 'disparity', got {kind!r}")
    return np.where(depth > 0, 1.0 / np.maximum(depth, 1e-6), 0).astype(np.float32)


class NormalsFromDepth(Labeler):
    """Uses the sample's intrinsics when it has them, else a pinhole camera with the spec's
    ``fov_deg`` (default 60). Depth comes from the base sample or from ``depth_from``."""

    output = "normals"
    needs_depth = True
    LICENCE = "no model: derived from the depth (see the depth source's or depth labeler's licence)"

    def info(self) -> dict:
        return dict(super().info(), model="back-projection + gradient cross product", weight_hash=None,
                    fov_deg=self.spec.fov_deg)

    def label(self, inputs: list[LabelInput]) -> list[np.ndarray]:
        out = []
        for x in inputs:
            if x.depth is None:
                raise ValueError("normals_from_depth needs depth: the sample has none (set depth_from)")
            h, w = x.depth.shape
            intr = x.intrinsics if x.intrinsics is not None else intrinsics_from_fov(w, h, self.spec.fov_deg or 60.0)
            n, _ok = normals_from_depth(metric_like_depth(x.depth, x.depth_kind), tuple(intr))
            out.append(n)
        return out
