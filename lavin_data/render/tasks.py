"""Task renderers: ``(view, rng, options) -> list[Pair]``, one per built task of the registry.

A renderer takes a :class:`~lavin_data.geometry.view.View` (a base sample already brought
to the output resolution) and returns zero or more input/target pairs. Pure: no I/O. The
registry (:mod:`lavin_data.registry`) names each task's renderer here and says what it
consumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lavin_data import degrade
from lavin_data.geometry.view import ClipView, View
from lavin_data.render import (
    canny_edges,
    flicker_score,
    grey,
    render_boxes,
    render_depth,
    render_edges,
    render_filled_box,
    render_foreground,
    render_instances,
    render_normals,
    render_panoptic,
    render_pose,
    render_semantic,
    render_tracks,
)
from lavin_data.render.flow import render_flow
from lavin_data.task_options import COMMON_OPTIONS


class NothingToRender(Exception):
    """A sample with nothing for this task, or one a quality gate refused: recorded as
    skipped with this reason (what happened, with the value and the threshold) and counted
    under ``code`` (the gate's name, e.g. ``"min_valid_fraction"``, or what is missing, e.g.
    ``"no_keypoints"``)."""

    def __init__(self, reason: str, code: str = "nothing_to_render"):
        super().__init__(reason)
        self.code = code


def box_area(bbox) -> float:
    """Area of an xyxy box in pixels^2; 0 for a degenerate (empty or inverted) box."""
    return max(0.0, bbox[2] - bbox[0]) * max(0.0, bbox[3] - bbox[1])


def gate_objects(objs: list, area: Callable, size: tuple[int, int], min_fraction: float, what: str = "object"
                 ) -> list:
    """The objects of at least ``min_fraction`` of the output image by ``area(obj)`` (px^2);
    raises :class:`NothingToRender` saying whether there were none or all were too small."""
    if not objs:
        raise NothingToRender(f"no {what} inside the view (after the resize)", "no_objects")
    min_px = min_fraction * size[0] * size[1]
    keep = [i for i in objs if area(i) >= max(min_px, 1e-9)]
    if not keep:
        largest = max(area(i) for i in objs)
        raise NothingToRender(
            f"{len(objs)} {what}(s) in view, none of at least min_object_area {min_fraction:g} of the image "
            f"({min_px:.0f} px) after the resize; the largest has {largest:.0f} px", "min_object_area")
    return keep


def gate_valid(valid: np.ndarray, min_fraction: float, what: str) -> float:
    """The fraction of ``valid`` pixels; raises :class:`NothingToRender` (gate
    ``min_valid_fraction``) below ``min_fraction`` or when nothing is valid."""
    frac = float(valid.mean()) if valid.size else 0.0
    if frac == 0 or frac < min_fraction:
        raise NothingToRender(f"valid {what} covers {frac:.2%} of the view, below min_valid_fraction "
                              f"{min_fraction:.2%}", "min_valid_fraction")
    return frac


@dataclass
class Pair:
    """One rendered sample. input/target: (R, R, 3) uint8 RGB, or clips (T, R, R, 3).

    ``input_natural``: the input is a photo or a degraded photo (stored as JPEG q>=95);
    otherwise it is a rendering (stored as PNG). ``target_natural``: the target is a clip of
    video frames (stored as JPEG like natural inputs; image targets and renderings are
    always PNG). ``raw``: measurable values kept beside the
    rendering, name -> array (written as ``<key>.<name>.npy``). ``meta`` goes into the json.
    """

    input: np.ndarray
    target: np.ndarray
    input_natural: bool = True
    target_natural: bool = False
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None


def _need(view: View, attr: str, task: str):
    value = getattr(view, attr)
    if value is None:
        raise ValueError(f"task {task} needs {attr}, which source {view.source!r} does not provide for {view.key}")
    return value


def object_detection(view: View, rng, o: dict) -> list[Pair]:
    objs = gate_objects(view.objects("object_detection"), lambda i: box_area(i.bbox), view.size,
                        o["min_object_area"])
    boxes = np.array([i.bbox for i in objs], np.float64).reshape(-1, 4)
    classes = np.array([i.category_id for i in objs], np.int64)
    target, drawn = render_boxes(boxes, classes, view.size, o["thickness"], o["min_side"])
    if not drawn.any():
        raise NothingToRender(f"{len(objs)} object(s) in view, all narrower or lower than min_side "
                              f"{o['min_side']} px", "min_side")
    return [Pair(view.image, target, meta={
        "boxes": boxes[drawn].round(2).tolist(), "classes": classes[drawn].tolist(),
        "thickness": o["thickness"], "colours": "PALETTE[category_id]",
    })]


def instance_segmentation(view: View, rng, o: dict) -> list[Pair]:
    objs = view.objects("instance_segmentation")
    if objs and all(i.mask is None for i in objs):
        raise NothingToRender(f"the source gives no mask for the {len(objs)} object(s) in view", "no_masks")
    objs = gate_objects([i for i in objs if i.mask is not None], lambda i: float(i.mask.sum()), view.size,
                        o["min_object_area"], "object mask")
    target = render_instances([i.mask for i in objs], view.size)
    return [Pair(view.image, target, meta={
        "instances": [{"colour_index": k + 1, "category_id": i.category_id, "id": i.id} for k, i in enumerate(objs)],
        "crowd": "crowd regions are not instances: left black",
    })]


def semantic_segmentation(view: View, rng, o: dict) -> list[Pair]:
    _need(view, "segments", "semantic_segmentation")
    return [Pair(view.image, render_semantic(view.class_map()), meta={"colours": "PALETTE[category_id]"})]


def panoptic_segmentation(view: View, rng, o: dict) -> list[Pair]:
    seg = _need(view, "segments", "panoptic_segmentation")
    target = render_panoptic(seg, view.segments_info)
    things = [s for s in view.things() if not s.get("iscrowd")]
    return [Pair(view.image, target, meta={
        "segments": [{"category_id": s["category_id"], "isthing": s["isthing"], "iscrowd": s.get("iscrowd", 0)}
                     for s in view.segments_info],
        "things": [{"colour_index": 512 + k, "category_id": s["category_id"]} for k, s in enumerate(things)],
        "crowd": "crowd segments in their class colour, like stuff", "unlabeled": "black",
    })]


def foreground_segmentation(view: View, rng, o: dict) -> list[Pair]:
    masks: dict[int, np.ndarray] = {}
    objs = view.things_and_crowds("foreground_segmentation")
    for i in objs:  # crowds are pixels of the class too
        if i.mask is not None:
            masks[i.category_id] = masks.get(i.category_id, np.zeros(view.size, bool)) | i.mask
    if objs and not masks:
        raise NothingToRender(f"the source gives no mask for the {len(objs)} object(s) in view", "no_masks")
    classes = sorted(gate_objects(sorted(masks), lambda c: float(masks[c].sum()), view.size, o["min_object_area"],
                                  "class mask"))
    chosen = rng.choice(classes, size=min(o["classes_per_image"], len(classes)), replace=False)
    return [
        Pair(view.image, render_foreground(masks[c], int(c)), variant=f"c{int(c)}",
             meta={"category_id": int(c), "category": view.categories.get(int(c), {}).get("name"),
                   "crowd": "crowd regions of the class included"})
        for c in sorted(chosen.tolist())
    ]


def single_object_detection(view: View, rng, o: dict) -> list[Pair]:
    objs = gate_objects(view.objects("single_object_detection"), lambda i: box_area(i.bbox), view.size,
                        o["min_object_area"])
    pick = rng.choice(len(objs), size=min(o["objects_per_image"], len(objs)), replace=False)
    out = []
    for k in sorted(pick.tolist()):
        i = objs[k]
        out.append(Pair(view.image, render_filled_box(np.array(i.bbox), view.size), variant=f"o{i.id}",
                        meta={"box": np.round(i.bbox, 2).tolist(), "category_id": i.category_id}))
    return out


def _pose(view: View, task: str, o: dict) -> tuple[np.ndarray, dict]:
    objs = view.objects(task)
    if not view.skeleton:
        raise NothingToRender("the source gives no skeleton (categories[].skeleton) to draw limbs with", "no_skeleton")
    if objs and all(i.keypoints is None for i in objs):
        raise NothingToRender(f"none of the {len(objs)} object(s) in view has keypoints in the source's "
                              "annotations", "no_keypoints")
    h, w = view.size

    def labelled_inside(i) -> int:
        k = i.keypoints
        return int(((k[:, 2] > 0) & (k[:, 0] >= 0) & (k[:, 0] < w) & (k[:, 1] >= 0) & (k[:, 1] < h)).sum())

    people = gate_objects([i for i in objs if i.keypoints is not None], lambda i: box_area(i.bbox), view.size,
                          o["min_object_area"], "person")
    people = [i for i in people if labelled_inside(i) > 0]
    if not people:
        raise NothingToRender("no person in view has a labelled keypoint (v > 0) inside the view",
                              "no_keypoints_in_view")
    img = render_pose([i.keypoints for i in people], view.skeleton, view.size, o["thickness"])
    return img, {"people": len(people), "skeleton": [list(e) for e in view.skeleton], "thickness": o["thickness"],
                 "colours": "limb j in PALETTE[j+1]; limbs drawn only where both keypoints are labelled (v>0)",
                 "keypoints": [np.round(i.keypoints, 2).tolist() for i in people]}


def pose_estimation(view: View, rng, o: dict) -> list[Pair]:
    img, meta = _pose(view, "pose_estimation", o)
    return [Pair(view.image, img, meta=meta)]


def pose_to_image(view: View, rng, o: dict) -> list[Pair]:
    img, meta = _pose(view, "pose_to_image", o)
    return [Pair(img, view.image, input_natural=False, meta=meta)]


def segmentation_to_image(view: View, rng, o: dict) -> list[Pair]:
    seg = _need(view, "segments", "segmentation_to_image")
    return [Pair(render_panoptic(seg, view.segments_info), view.image, input_natural=False,
                 meta={"input": "panoptic rendering (see panoptic_segmentation)"})]


DEPTH_ENCODING = ("grey near=bright; disparity_min..disparity_max (the percentiles of valid disparity) -> 1..255, "
                  "beyond clipped; 0 = invalid")
NORMAL_ENCODING = "RGB=(n+1)/2; x right, y up, z towards the camera; black = invalid"


def _depth_render(view: View | ClipView, task: str, o: dict) -> tuple[np.ndarray, dict]:
    """The robust grey rendering of a view's or a clip's depth (one range per clip), gated."""
    depth = _need(view, "depth", task)
    img, meta = render_depth(depth, kind=view.depth_kind, percentiles=tuple(o["percentiles"]))
    gate_valid(img[..., 0] > 0, o["min_valid_fraction"], "depth")
    if meta["disparity_max"] <= meta["disparity_min"]:  # every valid pixel at one grey: nothing to learn
        raise NothingToRender(f"the depth is flat: its {o['percentiles'][0]:g}-{o['percentiles'][1]:g} percentiles of "
                              f"disparity are equal ({meta['disparity_min']:.6g})", "flat_depth")
    if isinstance(view, ClipView):
        meta = dict(meta, flicker=flicker_score(img, img[..., 0] > 0), **_clip_meta(view))
    return img, dict(meta, encoding=DEPTH_ENCODING, depth_kind=view.depth_kind)


def _normals_render(view: View | ClipView, task: str, o: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    n = _need(view, "normals", task)
    img = render_normals(n) if n.ndim == 3 else np.stack([render_normals(f) for f in n])
    gate_valid(img.max(-1) > 0, o["min_valid_fraction"], "normals")
    meta = dict(_clip_meta(view)) if isinstance(view, ClipView) else {}
    return n, img, dict(meta, encoding=NORMAL_ENCODING)


def depth_estimation(view: View, rng, o: dict) -> list[Pair]:
    target, meta = _depth_render(view, "depth_estimation", o)
    return [Pair(view.image, target, raw={"target_raw": view.depth.astype(np.float32)}, meta=meta)]


def depth_to_image(view: View, rng, o: dict) -> list[Pair]:
    inp, meta = _depth_render(view, "depth_to_image", o)
    return [Pair(inp, view.image, input_natural=False, meta=meta)]


def surface_normal_estimation(view: View, rng, o: dict) -> list[Pair]:
    n, img, meta = _normals_render(view, "surface_normal_estimation", o)
    return [Pair(view.image, img, raw={"target_raw": n.astype(np.float16)}, meta=meta)]


def normal_to_image(view: View, rng, o: dict) -> list[Pair]:
    _n, img, meta = _normals_render(view, "normal_to_image", o)
    return [Pair(img, view.image, input_natural=False, meta=meta)]


def edge_detection(view: View, rng, o: dict) -> list[Pair]:
    edges = render_edges(canny_edges(view.image, o["low"], o["high"]))
    return [Pair(view.image, edges, meta={"edges": "canny", "low": o["low"], "high": o["high"]})]


def edge_to_image(view: View, rng, o: dict) -> list[Pair]:
    edges = render_edges(canny_edges(view.image, o["low"], o["high"]))
    return [Pair(edges, view.image, input_natural=False, meta={"edges": "canny", "low": o["low"], "high": o["high"]})]


def colorization(view: View, rng, o: dict) -> list[Pair]:
    return [Pair(grey(view.image), view.image, meta={"grey": "0.299R+0.587G+0.114B"})]


def inpainting(view: View, rng, o: dict) -> list[Pair]:
    mask, params = degrade.inpainting_mask(view.size, rng, o["mode"], tuple(o["coverage"]), o["patch"])
    return [Pair(degrade.apply_holes(view.image, mask), view.image, meta={"degradation": params})]


def _degradation(fn: Callable) -> Callable:
    def render(view: View, rng, o: dict) -> list[Pair]:
        out, params = fn(view.image, rng, **{k: tuple(v) for k, v in o.items() if k not in COMMON_OPTIONS})
        return [Pair(out, view.image, meta={"degradation": params})]
    render.__name__ = fn.__name__
    return render


derain = _degradation(degrade.rain)
deblur_motion = _degradation(degrade.motion_blur)
deblur_glass = _degradation(degrade.glass_blur)
denoise = _degradation(degrade.gaussian_noise)
low_light = _degradation(degrade.low_light)



# --------------------------------------------------------------------------- video
# Every video renderer takes a ClipView; inputs and targets are clips of 1 or 1+4k frames.

FLOW_LAST_FRAME = "zero flow (white): the clip's last frame has no next frame"


def _clip_meta(view: ClipView) -> dict:
    return {"frame_indices": view.frame_indices, "pts_seconds": view.pts_seconds}


def frame_prediction(view: ClipView, rng, o: dict) -> list[Pair]:
    n_in, n_out = o["input_frames"], o["target_frames"]
    need = n_in + n_out - 1
    if view.n_frames < need:
        raise ValueError(f"frame_prediction with {n_in} -> {n_out} frames needs clips of {need} frames; "
                         f"{view.key} has {view.n_frames}")
    return [Pair(view.frames[:n_in], view.frames[n_in - 1:need], target_natural=True, meta=dict(
        _clip_meta(view), input_frames=list(range(n_in)), target_frames=list(range(n_in - 1, need)),
        split="the target starts at the input's last frame and continues it"))]


def video_depth(view: ClipView, rng, o: dict) -> list[Pair]:
    target, meta = _depth_render(view, "video_depth", o)
    return [Pair(view.frames, target, raw={"target_raw": view.depth.astype(np.float32)}, meta=meta)]


def depth_to_video(view: ClipView, rng, o: dict) -> list[Pair]:
    inp, meta = _depth_render(view, "depth_to_video", o)
    return [Pair(inp, view.frames, input_natural=False, target_natural=True, meta=meta)]


def video_normal(view: ClipView, rng, o: dict) -> list[Pair]:
    n, img, meta = _normals_render(view, "video_normal", o)
    return [Pair(view.frames, img, raw={"target_raw": n.astype(np.float16)}, meta=meta)]


def normal_to_video(view: ClipView, rng, o: dict) -> list[Pair]:
    _n, img, meta = _normals_render(view, "normal_to_video", o)
    return [Pair(img, view.frames, input_natural=False, target_natural=True, meta=meta)]


def optical_flow(view: ClipView, rng, o: dict) -> list[Pair]:
    """Target frame t renders the flow from frame t to t+1 (output pixels), all frames on
    one scale: the clip's largest valid magnitude capped at ``outlier_factor`` x its
    ``magnitude_percentile`` (:func:`~lavin_data.render.flow.flow_max_magnitude`), stored as
    ``max_magnitude`` (larger vectors saturate; ``saturated_fraction`` says how many)."""
    flow = _need(view, "flow", "optical_flow")
    valid = np.isfinite(flow).all(-1)
    gate_valid(valid, o["min_valid_fraction"], "flow")
    img, top = render_flow(flow, valid=valid, percentile=o["magnitude_percentile"], outlier_factor=o["outlier_factor"])
    mag = np.linalg.norm(np.where(valid[..., None], flow, 0), axis=-1)
    saturated = float((mag[valid] > top).mean())
    last = np.full((1,) + img.shape[1:], 255, np.uint8)
    return [Pair(view.frames, np.concatenate([img, last]), raw={"target_raw": flow.astype(np.float32)},
                 meta=dict(_clip_meta(view), max_magnitude=top, magnitude_percentile=o["magnitude_percentile"],
                           outlier_factor=o["outlier_factor"],
                           saturated_fraction=round(saturated, 6), last_frame=FLOW_LAST_FRAME,
                           encoding="Middlebury colour wheel, saturation = min(magnitude / max_magnitude, 1); "
                                    "invalid black", units="output pixels, u right, v down"))]


def video_instance_segmentation(view: ClipView, rng, o: dict) -> list[Pair]:
    tracks = _need(view, "tracks", "video_instance_segmentation")
    if not view.annotated.all():
        missing = [view.frame_indices[t] for t in np.flatnonzero(~view.annotated)]
        raise NothingToRender(f"frames {missing} of the clip have no mask annotation", "unannotated_frames")
    ids = [int(ob["id"]) for ob in view.objects]
    present = sorted({int(i) for i in np.unique(tracks)} - {0})
    if not present:
        raise NothingToRender("no annotated object in the clip", "no_objects")
    return [Pair(view.frames, render_tracks(tracks, ids), meta=dict(
        _clip_meta(view), objects=[dict(ob, colour_index=k + 1) for k, ob in enumerate(view.objects)],
        present=present, colours="object ids[k] in PALETTE[k+1] on every frame of its sequence"))]
