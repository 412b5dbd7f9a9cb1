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
    render_semantic,
)


@dataclass
class View:
    """A base sample at the output resolution. Arrays are (R, R, ...) after the resize policy.

    image: (R, R, 3) uint8 RGB. depth: (R, R) float32, 0 = invalid (metric or relative,
    see ``depth_kind``). normals: (R, R, 3) float32 unit vectors, camera frame (x right,
    y up, z towards the camera), 0 = invalid. segments: (R, R) int32 segment ids, 0 =
    unlabeled. ``segments_info``: [{id, category_id, isthing, bbox (output xyxy)}] for
    segments still visible after the resize.
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
    categories: dict[int, dict] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def things(self) -> list[dict]:
        return [s for s in self.segments_info if s["isthing"]]

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
    licence: str | None = None, depth_kind: str = "depth",
) -> View:
    """Apply the resize policy to an image and every annotation given with it.

    Boxes (``segments_info[i]["bbox"]``, source xyxy) follow the continuous transform and
    are clipped; segments that leave the frame entirely are dropped.
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


def _boxes(view: View) -> tuple[np.ndarray, np.ndarray]:
    things = view.things()
    boxes = np.array([s["bbox"] for s in things], np.float64).reshape(-1, 4)
    classes = np.array([s["category_id"] for s in things], np.int64)
    return boxes, classes


def object_detection(view: View, rng, o: dict) -> list[Pair]:
    _need(view, "segments", "object_detection")
    boxes, classes = _boxes(view)
    target, drawn = render_boxes(boxes, classes, view.size, o["thickness"], o["min_side"])
    return [Pair(view.image, target, meta={
        "boxes": boxes[drawn].round(2).tolist(), "classes": classes[drawn].tolist(),
        "thickness": o["thickness"], "colours": "PALETTE[category_id]",
    })]


def instance_segmentation(view: View, rng, o: dict) -> list[Pair]:
    seg = _need(view, "segments", "instance_segmentation")
    things = view.things()
    target = render_instances(seg, [s["id"] for s in things])
    return [Pair(view.image, target, meta={
        "instances": [{"colour_index": k + 1, "category_id": s["category_id"]} for k, s in enumerate(things)],
    })]


def semantic_segmentation(view: View, rng, o: dict) -> list[Pair]:
    _need(view, "segments", "semantic_segmentation")
    return [Pair(view.image, render_semantic(view.class_map()), meta={"colours": "PALETTE[category_id]"})]


def panoptic_segmentation(view: View, rng, o: dict) -> list[Pair]:
    seg = _need(view, "segments", "panoptic_segmentation")
    target = render_panoptic(seg, view.segments_info)
    things = view.things()
    return [Pair(view.image, target, meta={
        "segments": [{"category_id": s["category_id"], "isthing": s["isthing"]} for s in view.segments_info],
        "things": [{"colour_index": 512 + k, "category_id": s["category_id"]} for k, s in enumerate(things)],
    })]


def foreground_segmentation(view: View, rng, o: dict) -> list[Pair]:
    _need(view, "segments", "foreground_segmentation")
    classes = sorted({s["category_id"] for s in view.things()})
    if not classes:
        return []
    chosen = rng.choice(classes, size=min(o["classes_per_image"], len(classes)), replace=False)
    cmap = view.class_map()
    return [
        Pair(view.image, render_foreground(cmap == c, int(c)), variant=f"c{int(c)}",
             meta={"category_id": int(c), "category": view.categories.get(int(c), {}).get("name")})
        for c in sorted(chosen.tolist())
    ]


def single_object_detection(view: View, rng, o: dict) -> list[Pair]:
    _need(view, "segments", "single_object_detection")
    r = view.size[0] * view.size[1]
    things = [s for s in view.things()
              if (s["bbox"][2] - s["bbox"][0]) * (s["bbox"][3] - s["bbox"][1]) >= o["min_area_frac"] * r]
    if not things:
        return []
    pick = rng.choice(len(things), size=min(o["objects_per_image"], len(things)), replace=False)
    out = []
    for i in sorted(pick.tolist()):
        s = things[i]
        out.append(Pair(view.image, render_filled_box(np.array(s["bbox"]), view.size), variant=f"o{s['id']}",
                        meta={"box": np.round(s["bbox"], 2).tolist(), "category_id": s["category_id"]}))
    return out


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
    _t("pose_estimation"),
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
    _t("pose_to_image"),
    _t("edge_to_image", edge_to_image, EdgeOptions),
    _t("segmentation_to_image"),
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
