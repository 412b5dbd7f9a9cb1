"""Task registry: every task of DESIGN.md §4, its spec options and (where built) its renderer.

A renderer is a pure function ``(view, rng, options) -> list[Pair]``: it takes a
:class:`View` (a base sample already brought to the output resolution, annotations
transformed with the image) and returns zero or more input/target pairs. No I/O.
Tasks listed without a renderer validate in a spec (so the full UVD recipe can be
written down) but are refused at build time with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lavin_data import degrade
from lavin_data.geometry import Resize, plan_resize
from lavin_data.render import (
    canny_edges,
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
)


@dataclass
class Instance:
    """One annotated object at the output resolution.

    bbox: output xyxy (float, clipped to the frame). mask: (R, R) bool or None (masks of
    different instances may overlap). keypoints: (K, 3) float (x, y, v) in output pixels,
    v as in COCO (0 unlabeled, 1 labelled occluded, 2 visible), or None. A crowd region
    (``iscrowd``) is not an object: detection and instance targets leave it out.
    """

    id: int
    category_id: int
    bbox: list[float]
    mask: np.ndarray | None = None
    iscrowd: bool = False
    keypoints: np.ndarray | None = None


@dataclass
class View:
    """A base sample at the output resolution. Arrays are (R, R, ...) after the resize policy.

    image: (R, R, 3) uint8 RGB. depth: (R, R) float32, 0 = invalid (metric or relative,
    see ``depth_kind``). normals: (R, R, 3) float32 unit vectors, camera frame (x right,
    y up, z towards the camera), 0 = invalid. segments: (R, R) int32 segment ids, 0 =
    unlabeled (a panoptic partition). ``segments_info``: [{id, category_id, isthing,
    iscrowd?, bbox (output xyxy)}] for segments still visible after the resize.
    ``instances``: the annotated objects (see :class:`Instance`), in annotation order.
    """

    key: str
    source: str
    item_id: str
    image: np.ndarray
    resize: Resize
    licence: str | None = None
    depth: np.ndarray | None = None
    depth_kind: str = "depth"  # "depth" or "disparity"
    normals: np.ndarray | None = None
    segments: np.ndarray | None = None
    segments_info: list[dict] = field(default_factory=list)
    instances: list[Instance] | None = None
    categories: dict[int, dict] = field(default_factory=dict)
    skeleton: list[tuple[int, int]] | None = None  # 0-based keypoint index pairs

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def things(self) -> list[dict]:
        return [s for s in self.segments_info if s["isthing"]]

    def is_thing(self, category_id: int) -> bool:
        return bool(self.categories.get(category_id, {}).get("isthing", 1))

    def things_and_crowds(self, task: str) -> list[Instance]:
        """Instances of thing categories (stuff annotations, as in COCO panoptic's detection
        format, are not objects); a task that needs instances fails clearly without them."""
        if self.instances is None:
            raise ValueError(f"task {task} needs object annotations, which {self.key} does not have")
        return [i for i in self.instances if self.is_thing(i.category_id)]

    def objects(self, task: str) -> list[Instance]:
        """Thing instances that are single objects (crowd regions left out)."""
        return [i for i in self.things_and_crowds(task) if not i.iscrowd]

    def class_map(self) -> np.ndarray:
        """(R, R) int32 category id per pixel, 0 = unlabeled."""
        lut = np.zeros(int(self.segments.max(initial=0)) + 1, np.int32)
        for s in self.segments_info:
            lut[s["id"]] = s["category_id"]
        return lut[self.segments]


def make_view(
    key: str, source: str, item_id: str, image: np.ndarray, resolution: int, policy: str,
    depth: np.ndarray | None = None, normals: np.ndarray | None = None, segments: np.ndarray | None = None,
    segments_info: list[dict] | None = None, categories: list[dict] | None = None,
    licence: str | None = None, depth_kind: str = "depth", instances: list[dict] | None = None,
    skeleton: list[tuple[int, int]] | None = None,
) -> View:
    """Apply the resize policy to an image and every annotation given with it.

    Boxes (``segments_info[i]["bbox"]``, source xyxy) follow the continuous transform and
    are clipped; segments that leave the frame entirely are dropped. ``instances`` are
    source-level dicts {id, category_id, bbox (xyxy), mask ((H, W) bool or None), iscrowd,
    keypoints ((K, 3) or None)}; without them, the thing segments become the instances.
    """
    h, w = image.shape[:2]
    rz = plan_resize(w, h, resolution, policy)
    v = View(key=key, source=source, item_id=item_id, image=rz.image(image), resize=rz, licence=licence,
             depth_kind=depth_kind, categories={c["id"]: c for c in (categories or [])})
    if depth is not None:
        v.depth = rz.image(depth.astype(np.float32), "nearest")
    if normals is not None:
        v.normals = rz.image(normals.astype(np.float32), "nearest")
    if segments is not None:
        v.segments = rz.image(segments.astype(np.int32), "nearest")
        present = set(np.unique(v.segments).tolist())
        infos = [s for s in (segments_info or []) if s["id"] in present]
        if infos:
            boxes, _keep = rz.boxes(np.array([s["bbox"] for s in infos], np.float64))
            v.segments_info = [dict(s, bbox=b.tolist()) for s, b in zip(infos, boxes)]
        if instances is None:
            v.instances = [Instance(s["id"], s["category_id"], s["bbox"], v.segments == s["id"],
                                    bool(s.get("iscrowd", 0))) for s in v.things()]
    if instances is not None:
        v.instances = []
        for inst in instances:
            box, keep = rz.boxes(np.array(inst["bbox"], np.float64))
            if not keep[0]:
                continue  # outside the crop
            mask = inst.get("mask")
            if mask is not None:
                mask = rz.image(mask.astype(np.uint8), "nearest").astype(bool)
            kps = inst.get("keypoints")
            if kps is not None:
                kps = np.asarray(kps, np.float64).reshape(-1, 3).copy()
                kps[:, :2], _inside = rz.points(kps[:, :2])
            v.instances.append(Instance(int(inst["id"]), int(inst["category_id"]), box[0].tolist(), mask,
                                        bool(inst.get("iscrowd", 0)), kps))
    v.skeleton = skeleton
    return v


@dataclass
class Pair:
    """One rendered sample. input/target: (R, R, 3) uint8 RGB.

    ``input_natural``: the input is a photo or a degraded photo (stored as JPEG q>=95);
    otherwise it is a rendering (stored as PNG). ``raw``: measurable values kept beside the
    rendering, name -> array (written as ``<key>.<name>.npy``). ``meta`` goes into the json.
    """

    input: np.ndarray
    target: np.ndarray
    input_natural: bool = True
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None


# --------------------------------------------------------------------------- options


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoOptions(_Opts):
    pass


class OpenOptions(BaseModel):
    """Options of tasks whose renderer is not built yet: kept as given."""

    model_config = ConfigDict(extra="allow")


class BoxOptions(_Opts):
    thickness: int = Field(2, ge=1, le=2)
    min_side: int = Field(4, ge=1, description="boxes smaller than this (output px) are not drawn")


class SingleObjectOptions(_Opts):
    objects_per_image: int = Field(1, ge=1, description="one sample (key variant) per chosen object")
    min_area_frac: float = Field(0.002, ge=0, lt=1)


class ForegroundOptions(_Opts):
    classes_per_image: int = Field(1, ge=1, description="one sample (key variant) per chosen class present")


class PoseOptions(_Opts):
    thickness: int = Field(2, ge=1, le=4)


class EdgeOptions(_Opts):
    low: float = Field(80, gt=0)
    high: float = Field(160, gt=0)


class InpaintOptions(_Opts):
    mode: str = Field("boxes", pattern="^(boxes|patches)$")
    coverage: tuple[float, float] = (0.1, 0.4)
    patch: int = Field(16, ge=2)


class RainOptions(_Opts):
    density: tuple[float, float] = (0.002, 0.01)
    length: tuple[float, float] = (10, 30)
    angle: tuple[float, float] = (-25, 25)
    intensity: tuple[float, float] = (0.5, 0.9)


class MotionBlurOptions(_Opts):
    length: tuple[float, float] = (5, 21)
    angle: tuple[float, float] = (0, 180)


class GlassBlurOptions(_Opts):
    sigma: tuple[float, float] = (0.6, 1.5)
    max_delta: tuple[float, float] = (1, 3)
    iterations: tuple[int, int] = (1, 2)


class NoiseOptions(_Opts):
    sigma: tuple[float, float] = (10, 50)


class LowLightOptions(_Opts):
    gain: tuple[float, float] = (0.08, 0.35)
    gamma: tuple[float, float] = (1.5, 2.5)
    noise_sigma: tuple[float, float] = (1, 6)


# --------------------------------------------------------------------------- renderers


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


@dataclass(frozen=True)
class TaskDef:
    name: str
    frames: str  # "image" or "video"
    options: type[BaseModel]
    render: Callable[[View, np.random.Generator, dict], list[Pair]] | None = None


def _t(name, render=None, options=None, frames="image") -> TaskDef:
    if options is None:  # unbuilt tasks keep whatever options a spec gives them
        options = NoOptions if render is not None else OpenOptions
    return TaskDef(name, frames, options, render)


TASKS: dict[str, TaskDef] = {t.name: t for t in [
    _t("object_detection", object_detection, BoxOptions),
    _t("instance_segmentation", instance_segmentation),
    _t("panoptic_segmentation", panoptic_segmentation),
    _t("semantic_segmentation", semantic_segmentation),
    _t("foreground_segmentation", foreground_segmentation, ForegroundOptions),
    _t("single_object_detection", single_object_detection, SingleObjectOptions),
    _t("pose_estimation", pose_estimation, PoseOptions),
    _t("edge_detection", edge_detection, EdgeOptions),
    _t("depth_estimation", depth_estimation),
    _t("surface_normal_estimation", surface_normal_estimation),
    _t("colorization", colorization),
    _t("inpainting", inpainting, InpaintOptions),
    _t("derain", _degradation(degrade.rain), RainOptions),
    _t("deblur_motion", _degradation(degrade.motion_blur), MotionBlurOptions),
    _t("deblur_glass", _degradation(degrade.glass_blur), GlassBlurOptions),
    _t("denoise", _degradation(degrade.gaussian_noise), NoiseOptions),
    _t("low_light", _degradation(degrade.low_light), LowLightOptions),
    _t("depth_to_image", depth_to_image),
    _t("normal_to_image", normal_to_image),
    _t("pose_to_image", pose_to_image, PoseOptions),
    _t("edge_to_image", edge_to_image, EdgeOptions),
    _t("segmentation_to_image", segmentation_to_image),
    _t("frame_prediction", frames="video"),
    _t("video_depth", frames="video"),
    _t("video_normal", frames="video"),
    _t("optical_flow", frames="video"),
    _t("video_instance_segmentation", frames="video"),
    _t("depth_to_video", frames="video"),
    _t("normal_to_video", frames="video"),
]}


def task_options_model(task: str) -> type[BaseModel]:
    return TASKS[task].options
