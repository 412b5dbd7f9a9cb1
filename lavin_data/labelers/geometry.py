"""``normals_from_depth``: normals by back-projecting depth (no weights)."""

from __future__ import annotations


from lavin_data.labelers import Labeler
from lavin_data.normals import intrinsics_from_fov, normals_from_depth


class NormalsFromDepth(Labeler):
    """Uses the sample's intrinsics when it has them, else a pinhole camera with the spec's
    ``fov_deg`` (default 60). Depth comes from the base sample or from ``depth_from``."""

    output = "normals"
    needs_depth = True

    def info(self) -> dict:
        return dict(super().info(), model="back-projection + gradient cross product", weight_hash=None,
                    fov_deg=self.spec.fov_deg)

    def label(self, images, depths, intrinsics):
        out = []
        for _img, depth, intr in zip(images, depths, intrinsics):
            if depth is None:
                raise ValueError("normals_from_depth needs depth: the sample has none (set depth_from)")
            h, w = depth.shape
            if intr is None:
                intr = intrinsics_from_fov(w, h, self.spec.fov_deg or 60.0)
            n, _ok = normals_from_depth(depth, tuple(intr))
            out.append(n)
        return out
