"""The task registry: one declarative row per task of docs/design.md (Task conventions).

Each row says what the task works on (``frames``: single images or clips), which
annotations of a view its renderer reads (``consumes``; the image itself is always there),
what its target shows (``produces``), its spec options and where its renderer lives.
Everything else derives from this table: which labeler output a task can take
(:func:`label_input`), which sources can feed it (the build's preflight compares
``consumes`` with what a source provides), which tasks are built (:func:`is_built`).

Renderers are named as ``"module:function"`` and imported on first use, so that loading
a spec imports pydantic and this table only (no OpenCV, no renderer).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from lavin_data import task_options as o

# What a view can carry besides its image (docs/format.md, base sample members).
ANNOTATIONS = ("depth", "normals", "segments", "instances", "keypoints", "flow", "tracks")
# Annotations that a labeler can supply instead of the source (its ``output``).
LABELLED = ("depth", "normals", "flow")
# What a target shows (``produces``) where it is a sparse drawing on black, so that a mostly black
# target is expected. Not segment or class maps: they cover most pixels, and a black one is a failure.
DRAWN_ON_BLACK = frozenset({"boxes", "box", "masks", "mask", "skeleton", "edges"})


@dataclass(frozen=True)
class TaskDef:
    name: str
    frames: Literal["image", "video"]
    consumes: frozenset[str]
    produces: str
    options: type[BaseModel]
    renderer: str | None = None  # "module:function"; None = in the spec format, not built yet

    def __post_init__(self):
        unknown = self.consumes - set(ANNOTATIONS)
        if unknown:
            raise ValueError(f"task {self.name}: unknown annotations {sorted(unknown)}")

    @property
    def built(self) -> bool:
        return self.renderer is not None

    @property
    def drawn_on_black(self) -> bool:
        """Whether the target is a sparse drawing on black (boxes, masks, edges, ...), so that a
        near-black target is normal rather than a sign of an empty rendering."""
        return self.produces in DRAWN_ON_BLACK

    def render_fn(self) -> Callable:
        """The renderer ``(view, rng, options) -> list[Pair]`` (imported on first call)."""
        if self.renderer is None:
            raise ValueError(f"task {self.name!r} has no renderer yet")
        module, fn = self.renderer.split(":")
        return getattr(importlib.import_module(module), fn)


_R = "lavin_data.render.tasks:"


def _t(name: str, consumes: str = "", produces: str = "image", options: type[BaseModel] | None = None,
       frames: Literal["image", "video"] = "image", built: bool = True) -> TaskDef:
    if options is None:  # unbuilt tasks keep whatever options a spec gives them
        options = o.NoOptions if built else o.OpenOptions
    return TaskDef(name, frames, frozenset(consumes.split()), produces, options, _R + name if built else None)


TASKS: dict[str, TaskDef] = {t.name: t for t in [
    #  name                        consumes                 produces     options
    _t("object_detection",         "instances",             "boxes",     o.BoxOptions),
    _t("instance_segmentation",    "instances",             "masks",     o.InstanceOptions),
    _t("panoptic_segmentation",    "segments",              "segments"),
    _t("semantic_segmentation",    "segments",              "classes"),
    _t("foreground_segmentation",  "instances",             "mask",      o.ForegroundOptions),
    _t("single_object_detection",  "instances",             "box",       o.SingleObjectOptions),
    _t("pose_estimation",          "instances keypoints",   "skeleton",  o.PoseOptions),
    _t("edge_detection",           "",                      "edges",     o.EdgeOptions),
    _t("depth_estimation",         "depth",                 "depth",     o.DepthOptions),
    _t("surface_normal_estimation", "normals",              "normals",   o.NormalOptions),
    _t("colorization",             "",                      "image"),
    _t("inpainting",               "",                      "image",     o.InpaintOptions),
    _t("derain",                   "",                      "image",     o.RainOptions),
    _t("deblur_motion",            "",                      "image",     o.MotionBlurOptions),
    _t("deblur_glass",             "",                      "image",     o.GlassBlurOptions),
    _t("denoise",                  "",                      "image",     o.NoiseOptions),
    _t("low_light",                "",                      "image",     o.LowLightOptions),
    _t("depth_to_image",           "depth",                 "image",     o.DepthOptions),
    _t("normal_to_image",          "normals",               "image",     o.NormalOptions),
    _t("pose_to_image",            "instances keypoints",   "image",     o.PoseOptions),
    _t("edge_to_image",            "",                      "image",     o.EdgeOptions),
    _t("segmentation_to_image",    "segments",              "image"),
    _t("frame_prediction",         "",                      "clip",      o.FramePredictionOptions, frames="video"),
    _t("video_depth",              "depth",                 "depth",     o.DepthOptions, frames="video"),
    _t("video_normal",             "normals",               "normals",   o.NormalOptions, frames="video"),
    _t("optical_flow",             "flow",                  "flow",      o.FlowOptions, frames="video"),
    _t("video_instance_segmentation", "tracks",             "masks",     frames="video"),
    _t("depth_to_video",           "depth",                 "clip",      o.DepthOptions, frames="video"),
    _t("normal_to_video",          "normals",               "clip",      o.NormalOptions, frames="video"),
]}


def task_options_model(task: str) -> type[BaseModel]:
    return TASKS[task].options


def label_input(task: str) -> str | None:
    """The annotation of ``task`` that a labeler may supply ("depth" | "normals" | "flow"), or None."""
    found = [a for a in LABELLED if a in TASKS[task].consumes]
    return found[0] if found else None
