"""Pure renderers (annotation -> RGB uint8 image) and their decoders (image -> annotation).

Every renderer here has a decoder, and tests prove the round trip on exact ground truth.
"""

from lavin_data.render.boxes import box_iou, decode_boxes, decode_filled_box, render_boxes, render_filled_box
from lavin_data.render.dense import (
    angular_error_deg,
    canny_edges,
    decode_depth,
    decode_edges,
    decode_normals,
    flicker_score,
    grey,
    render_depth,
    render_depth_clip,
    render_edges,
    render_normals,
)
from lavin_data.render.flow import decode_flow, end_point_error, render_flow
from lavin_data.render.masks import (
    decode_foreground,
    decode_instances,
    decode_panoptic,
    decode_semantic,
    decode_tracks,
    mask_iou,
    render_foreground,
    render_instances,
    render_panoptic,
    render_semantic,
    render_tracks,
)
from lavin_data.render.palette import PALETTE, THING_OFFSET, colour_index
from lavin_data.render.pose import (
    COCO_SKELETON,
    decode_keypoints,
    decode_limbs,
    point_segment_distance,
    render_pose,
)

__all__ = [
    "PALETTE", "THING_OFFSET", "colour_index",
    "render_boxes", "decode_boxes", "render_filled_box", "decode_filled_box",
    "render_instances", "decode_instances", "render_semantic", "decode_semantic",
    "render_panoptic", "decode_panoptic", "render_foreground", "decode_foreground",
    "render_depth", "decode_depth", "render_normals", "decode_normals",
    "render_edges", "decode_edges", "canny_edges", "grey", "angular_error_deg", "box_iou", "mask_iou",
    "render_tracks", "decode_tracks", "render_flow", "decode_flow", "end_point_error", "render_depth_clip",
    "flicker_score",
    "render_pose", "decode_limbs", "decode_keypoints", "point_segment_distance", "COCO_SKELETON",
]
