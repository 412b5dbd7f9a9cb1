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
    grey,
    render_boxes,
    render_depth,
    render_depth_clip,
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


class NothingToRender(Exception):
    """A sample with nothing for this task (recorded as skipped, with this reason)."""


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
    objs = view.objects("object_detection")
    boxes = np.array([i.bbox for i in objs], np.float64).reshape(-1, 4)
    classes = np.array([i.category_id for i in objs], np.int64)
    target, drawn = render_boxes(boxes, classes, view.size, o["thickness"], o["min_side"])
    return [Pair(view.image, target, meta={
        "boxes": boxes[drawn].round(2).tolist(), "classes": classes[drawn].tolist(),
        "thickness": o["thickness"], "colours": "PALETTE[category_id]",
    })]


def instance_segmentation(view: View, rng, o: dict) -> list[Pair]:
    objs = [i for i in view.objects("instance_segmentation") if i.mask is not None and i.mask.any()]
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
    for i in view.things_and_crowds("foreground_segmentation"):  # crowds are pixels of the class too
        if i.mask is not None:
            masks[i.category_id] = masks.get(i.category_id, np.zeros(view.size, bool)) | i.mask
    classes = sorted(c for c, m in masks.items() if m.any())
    if not classes:
        return []
    chosen = rng.choice(classes, size=min(o["classes_per_image"], len(classes)), replace=False)
    return [
        Pair(view.image, render_foreground(masks[c], int(c)), variant=f"c{int(c)}",
             meta={"category_id": int(c), "category": view.categories.get(int(c), {}).get("name"),
                   "crowd": "crowd regions of the class included"})
        for c in sorted(chosen.tolist())
    ]


def single_object_detection(view: View, rng, o: dict) -> list[Pair]:
    r = view.size[0] * view.size[1]
    objs = [i for i in view.objects("single_object_detection")
            if (i.bbox[2] - i.bbox[0]) * (i.bbox[3] - i.bbox[1]) >= o["min_area_frac"] * r]
    if not objs:
        return []
    pick = rng.choice(len(objs), size=min(o["objects_per_image"], len(objs)), replace=False)
    out = []
    for k in sorted(pick.tolist()):
        i = objs[k]
        out.append(Pair(view.image, render_filled_box(np.array(i.bbox), view.size), variant=f"o{i.id}",
                        meta={"box": np.round(i.bbox, 2).tolist(), "category_id": i.category_id}))
    return out


def _pose(view: View, task: str, o: dict) -> tuple[np.ndarray, dict] | None:
    people = [i for i in view.objects(task) if i.keypoints is not None and (i.keypoints[:, 2] > 0).any()]
    if not people or not view.skeleton:
        return None
    img = render_pose([i.keypoints for i in people], view.skeleton, view.size, o["thickness"])
    return img, {"people": len(people), "skeleton": [list(e) for e in view.skeleton], "thickness": o["thickness"],
                 "colours": "limb j in PALETTE[j+1]; limbs drawn only where both keypoints are labelled (v>0)",
                 "keypoints": [np.round(i.keypoints, 2).tolist() for i in people]}


def pose_estimation(view: View, rng, o: dict) -> list[Pair]:
    r = _pose(view, "pose_estimation", o)
    return [] if r is None else [Pair(view.image, r[0], meta=r[1])]


def pose_to_image(view: View, rng, o: dict) -> list[Pair]:
    r = _pose(view, "pose_to_image", o)
    return [] if r is None else [Pair(r[0], view.image, input_natural=False, meta=r[1])]


def segmentation_to_image(view: View, rng, o: dict) -> list[Pair]:
    seg = _need(view, "segments", "segmentation_to_image")
    return [Pair(render_panoptic(seg, view.segments_info), view.image, input_natural=False,
                 meta={"input": "panoptic rendering (see panoptic_segmentation)"})]


def _depth_render(view: View, task: str) -> tuple[np.ndarray, dict]:
    depth = _need(view, "depth", task)
    img, rng_ = render_depth(depth, kind=view.depth_kind)
    return img, dict(rng_, encoding="grey near=bright, per-image min-max of disparity", depth_kind=view.depth_kind)


def depth_estimation(view: View, rng, o: dict) -> list[Pair]:
    target, meta = _depth_render(view, "depth_estimation")
    return [Pair(view.image, target, raw={"target_raw": view.depth.astype(np.float32)}, meta=meta)]


def depth_to_image(view: View, rng, o: dict) -> list[Pair]:
    inp, meta = _depth_render(view, "depth_to_image")
    return [Pair(inp, view.image, input_natural=False, meta=meta)]


def surface_normal_estimation(view: View, rng, o: dict) -> list[Pair]:
    n = _need(view, "normals", "surface_normal_estimation")
    return [Pair(view.image, render_normals(n), raw={"target_raw": n.astype(np.float16)},
                 meta={"encoding": "RGB=(n+1)/2; x right, y up, z towards the camera"})]


def normal_to_image(view: View, rng, o: dict) -> list[Pair]:
    n = _need(view, "normals", "normal_to_image")
    return [Pair(render_normals(n), view.image, input_natural=False,
                 meta={"encoding": "RGB=(n+1)/2; x right, y up, z towards the camera"})]


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
        out, params = fn(view.image, rng, **{k: tuple(v) for k, v in o.items()})
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


def _clip_depth(view: ClipView, task: str) -> tuple[np.ndarray, dict]:
    depth = _need(view, "depth", task)
    img, meta = render_depth_clip(depth, kind=view.depth_kind)
    if not img.any():
        raise NothingToRender("no valid depth in the clip")
    return img, dict(meta, encoding="grey near=bright, one robust disparity range (percentiles) per clip",
                     depth_kind=view.depth_kind)


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
    target, meta = _clip_depth(view, "video_depth")
    return [Pair(view.frames, target, raw={"target_raw": view.depth.astype(np.float32)},
                 meta=dict(meta, **_clip_meta(view)))]


def depth_to_video(view: ClipView, rng, o: dict) -> list[Pair]:
    inp, meta = _clip_depth(view, "depth_to_video")
    return [Pair(inp, view.frames, input_natural=False, target_natural=True, meta=dict(meta, **_clip_meta(view)))]


def _clip_normals(view: ClipView, task: str) -> tuple[np.ndarray, np.ndarray, dict]:
    n = _need(view, "normals", task)
    img = np.stack([render_normals(f) for f in n])
    if not img.any():
        raise NothingToRender("no valid normals in the clip")
    return n, img, dict(_clip_meta(view), encoding="RGB=(n+1)/2; x right, y up, z towards the camera")


def video_normal(view: ClipView, rng, o: dict) -> list[Pair]:
    n, img, meta = _clip_normals(view, "video_normal")
    return [Pair(view.frames, img, raw={"target_raw": n.astype(np.float16)}, meta=meta)]


def normal_to_video(view: ClipView, rng, o: dict) -> list[Pair]:
    _n, img, meta = _clip_normals(view, "normal_to_video")
    return [Pair(img, view.frames, input_natural=False, target_natural=True, meta=meta)]


def optical_flow(view: ClipView, rng, o: dict) -> list[Pair]:
    """Target frame t renders the flow from frame t to t+1 (output pixels), all frames on
    one scale: the clip's largest magnitude, stored as ``max_magnitude``."""
    flow = _need(view, "flow", "optical_flow")
    valid = np.isfinite(flow).all(-1)
    if not valid.any():
        raise NothingToRender("no valid flow in the clip")
    img, top = render_flow(flow, valid=valid)
    last = np.full((1,) + img.shape[1:], 255, np.uint8)
    return [Pair(view.frames, np.concatenate([img, last]), raw={"target_raw": flow.astype(np.float32)},
                 meta=dict(_clip_meta(view), max_magnitude=top, last_frame=FLOW_LAST_FRAME,
                           encoding="Middlebury colour wheel, saturation = magnitude / max_magnitude; "
                                    "invalid black", units="output pixels, u right, v down"))]


def video_instance_segmentation(view: ClipView, rng, o: dict) -> list[Pair]:
    tracks = _need(view, "tracks", "video_instance_segmentation")
    if not view.annotated.all():
        missing = [view.frame_indices[t] for t in np.flatnonzero(~view.annotated)]
        raise NothingToRender(f"frames {missing} of the clip have no mask annotation")
    ids = [int(ob["id"]) for ob in view.objects]
    present = sorted({int(i) for i in np.unique(tracks)} - {0})
    if not present:
        raise NothingToRender("no annotated object in the clip")
    return [Pair(view.frames, render_tracks(tracks, ids), meta=dict(
        _clip_meta(view), objects=[dict(ob, colour_index=k + 1) for k, ob in enumerate(view.objects)],
        present=present, colours="object ids[k] in PALETTE[k+1] on every frame of its sequence"))]
