"""Geometry: resize policies (:mod:`.resize`), views at the output resolution (:mod:`.view`)
and the pinhole camera (:mod:`.camera`).

Two coordinate conventions, each used for what it describes:

- **Boxes, points and resizes** use continuous image coordinates with pixel *edges* at
  integers (COCO's convention): pixel (u, v) covers [u, u+1) x [v, v+1).
- **Camera intrinsics** use OpenCV's convention, pixel *centres* at integers: pixel (u, v)
  is the ray through (u, v), and a centred camera has cx = (W - 1) / 2, cy = (H - 1) / 2.
  This is how NYU, COLMAP and most calibrated datasets state intrinsics; the synthetic
  camera and :func:`~.camera.intrinsics_from_fov` follow it too.
"""

from lavin_data.geometry.camera import backproject, intrinsics_from_fov, normals_from_depth
from lavin_data.geometry.resize import POLICIES, Resize, plan_resize
from lavin_data.geometry.view import Instance, View, make_view

__all__ = ["POLICIES", "Resize", "plan_resize", "View", "Instance", "make_view", "backproject",
           "intrinsics_from_fov", "normals_from_depth"]
