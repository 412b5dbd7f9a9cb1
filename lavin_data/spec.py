"""Build spec: a YAML file validated by pydantic before any work starts.

A bad spec fails with :class:`SpecError`, whose message names the file, the field
(dotted path, e.g. ``tasks[3].options.sigma``) and what is wrong.

``${VAR}`` and ``${VAR:-default}`` in any value are replaced from the environment
when the file is loaded (:func:`load_spec`: wherever YAML takes a plain value, flow
mappings included; the value is inserted after parsing, so it never becomes YAML). Every
unset variable without a default is named in one error, with the field and line of each use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lavin_data.registry import TASKS, task_options_model
from lavin_data.task_options import clip_length

NAME_RE = r"^[a-z][a-z0-9-]*$"  # source names go into sample keys: no dots, no underscores


class SpecError(ValueError):
    """A spec that cannot be built: the message names the file, the field and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- sources


MAX_IMAGE_PIXELS = 64_000_000  # a 64 MP photo (9238x6928); ~8K video frames are 33 MP


class _SourceBase(_Strict):
    name: str = Field(pattern=NAME_RE, description="used in sample keys and output paths")
    limit: int | None = Field(None, ge=1, description="keep the first N planned items")
    licence: str | None = None
    max_image_pixels: int = Field(
        MAX_IMAGE_PIXELS, ge=1,
        description="images (and video frames) larger than this many pixels are recorded as failures before "
                    "they are decoded: one decoded 12000x12000 image takes 2 GB")
    val_fraction: float = Field(
        0.01, ge=0, le=1, description="share of items held out as the val split, by a hash of the item's key "
                                      "(lavin_data/split.py)")
    holdout: Literal["auto", "hash", "val"] = Field(
        "auto", description="auto: the source's own val/test split is val, the rest by val_fraction; hash: by "
                            "val_fraction only; val: every item is val")


# Frames per clip of a video source: 1 or 1 + 4k, the lengths the ST-VAE encodes whole.
ClipFrames = Annotated[int, AfterValidator(clip_length)]


class SyntheticSource(_SourceBase):
    """Procedural ray-cast scenes with exact depth, normals and instances (no download)."""

    kind: Literal["synthetic"]
    num_items: int = Field(64, ge=1)
    image_size: tuple[int, int] = Field((320, 240), description="(width, height) of the rendered scene")
    fov_deg: float = Field(60.0, gt=10, lt=150, description="horizontal field of view")
    max_objects: int = Field(6, ge=1, le=32)
    clip_frames: ClipFrames = Field(1, description="1: still scenes (image tasks); 1+4k: clips with camera and object "
                                            "motion and exact flow (video tasks)")
    camera_speed: float = Field(0.04, ge=0, description="clips: camera translation, up to m/frame")
    object_speed: float = Field(0.03, ge=0, description="clips: object motion on the floor, up to m/frame")
    licence: str | None = "CC0-1.0 (procedurally generated)"


class CocoSource(_SourceBase):
    """Official COCO files; any subset of instances / keypoints / panoptic may be given."""

    kind: Literal["coco"]
    images: str = Field(description="folder of the images named by `file_name`")
    instances: str | None = Field(None, description="instances_*.json")
    keypoints: str | None = Field(None, description="person_keypoints_*.json")
    panoptic: str | None = Field(None, description="panoptic_*.json")
    panoptic_masks: str | None = Field(
        None, description="folder of the panoptic PNGs (default: the json path without .json)")
    categories: list[str | int] | None = Field(None, description="keep only these categories (names or ids)")
    min_area: float = Field(0, ge=0, description="drop objects smaller than this (source pixels^2)")
    max_instances: int | None = Field(None, ge=1, description="skip images with more objects than this")
    pose_min_keypoints: int = Field(1, ge=1, description="people with fewer labelled keypoints are not drawn")
    empty_images: Literal["skip", "keep"] = Field(
        "skip", description="images with no annotation left: skip (recorded) or keep (black targets)")
    licence: str | None = None  # the format is not the dataset: COCO, CrowdPose, Objects365 ... differ

    @model_validator(mode="after")
    def _some_annotations(self) -> CocoSource:
        if not (self.instances or self.keypoints or self.panoptic):
            raise ValueError("give at least one of instances, keypoints, panoptic")
        return self


NYU_INTRINSICS = (518.8579, 519.46961, 325.58245, 253.73617)  # Kinect colour camera, 640x480


class NyuSource(_SourceBase):
    """NYU-Depth-v2: the labeled ``nyu_depth_v2_labeled.mat`` or the rgb_*/sync_depth_* folder layout."""

    kind: Literal["nyu"]
    root: str = Field(description="the labeled .mat file, or a folder searched recursively for rgb_*.jpg")
    split_file: str | None = Field(
        None, description="folder layout: a list whose lines start with an rgb path relative to root "
                          "(BTS / Eigen split files); .mat: 1-based frame indices, one per line")
    annotations: str | None = Field(
        None, description="Metric3D-style json {files: [{rgb, depth, cam_in, depth_scale}]}")
    intrinsics: tuple[float, float, float, float] = Field(NYU_INTRINSICS, description="fx, fy, cx, cy in pixels")
    depth_scale: float = Field(1000.0, gt=0, description="PNG depth units per metre (sync_depth: millimetres)")
    normals: str | None = Field(None, description="folder of ground-truth normals, RGB = (n+1)/2, "
                                                  "named like the rgb file with rgb -> normal")
    normals_frame: Literal["x_right_y_up_z_camera", "opencv"] = Field(
        "x_right_y_up_z_camera", description="frame of the GT normals (opencv: x right, y down, z forward)")
    licence: str | None = "NYU Depth V2: research use (see the dataset's terms)"


def _name_template(v: str) -> str:
    """A file-stem template of dense_folder: exactly one ``{key}``, no other braces, no path."""
    rest = v.replace("{key}", "", 1)
    if "{key}" not in v or "{" in rest or "}" in rest:
        raise ValueError(f"{v!r} must contain {{key}} exactly once and no other braces (e.g. 'rgb_{{key}}')")
    if "/" in v or "\\" in v or ".." in v:
        raise ValueError(f"{v!r} is a file stem template: no folders, no '..'")
    return v


class DenseFolderSource(_SourceBase):
    """Images with dense ground truth in parallel folders: depth (16/8-bit PNG or float .npy)
    and/or surface normals (PNG, (n+1)/2), matched by relative path and file stem."""

    kind: Literal["dense_folder"]
    images: str = Field(description="folder searched recursively for .jpg/.jpeg/.png images")
    image_name: str = Field("{key}", description="stem of an image file; the part in {key} names its depth and "
                                                 "normals files; images not matching it are left out (NYU: rgb_{key})")
    depth: str | None = Field(None, description="folder of depth files at the image's relative sub-folder, "
                                                "<depth_name>.png or .npy")
    depth_name: str = Field("{key}", description="stem of a depth file (NYU: sync_depth_{key}; DIODE: {key}_depth)")
    depth_scale: float | None = Field(
        None, gt=0, description="file units per metre (per unit of disparity): 1000 for millimetres, 256 for KITTI, "
                                "1 for .npy in metres; required with depth")
    depth_kind: Literal["depth", "disparity"] = Field("depth", description="metric depth, or relative inverse depth")
    depth_range: tuple[float, float] | None = Field(
        None, description="metres (min, max): readings below min are invalid (sensor noise), readings above max "
                          "are saturated at the sensor's far limit: kept valid, clamped to max")
    normals: str | None = Field(None, description="folder of normal maps at the image's relative sub-folder, "
                                                  "<normals_name>.png, 8 or 16 bit, (n+1)/2")
    normals_name: str = Field("{key}", description="stem of a normals file")
    normals_channels: Literal["rgb", "bgr"] = Field(
        "rgb", description="which file channel (in R, G, B order as PIL reads it) holds x: rgb = x in R; "
                           "bgr = x in B (files written by OpenCV from an x,y,z array)")
    normals_frame: Literal["x_right_y_up_z_camera", "opencv"] = Field(
        "x_right_y_up_z_camera", description="frame of the stored normals (opencv: x right, y down, z forward, "
                                             "so y and z are flipped)")
    intrinsics: tuple[float, float, float, float] | None = Field(None, description="fx, fy, cx, cy in pixels")
    licence: str | None = None

    @field_validator("image_name", "depth_name", "normals_name")
    @classmethod
    def _template(cls, v: str) -> str:
        return _name_template(v)

    @model_validator(mode="after")
    def _depth_or_normals(self) -> DenseFolderSource:
        if not (self.depth or self.normals):
            raise ValueError("give at least one of depth, normals")
        if self.depth and self.depth_scale is None:
            raise ValueError("depth needs depth_scale: file units per metre (1000 for millimetres, 256 for KITTI, "
                             "1 for .npy in metres)")
        if self.depth_range is not None:
            if self.depth_kind != "depth":
                raise ValueError("depth_range is in metres: it needs depth_kind depth")
            lo, hi = self.depth_range
            if not 0 <= lo < hi < float("inf"):
                raise ValueError(f"depth_range {list(self.depth_range)}: need 0 <= min < max, both finite")
        return self


class ImageFolderSource(_SourceBase):
    """ImageNet-style class folders or a flat folder of images, searched recursively."""

    kind: Literal["image_folder"]
    root: str
    file_list: str | None = Field(None, description="paths relative to root, one per line")
    seed: int = Field(0, description="with limit: which random subset")


class HFDatasetSource(_SourceBase):
    """A local Hugging Face dataset (save_to_disk folder, or parquet/arrow files)."""

    kind: Literal["hf_dataset"]
    path: str
    split: str = Field("train", description="for a DatasetDict saved with save_to_disk")
    image_column: str = "image"
    seed: int = Field(0, description="with limit: which random subset")


class VideoFolderSource(_SourceBase):
    """Video files (any container/codec FFmpeg reads) cut into frame-exact clips."""

    kind: Literal["video_folder"]
    root: str = Field(description="folder searched recursively for videos; paths in file_list are relative to it")
    file_list: str | None = Field(None, description="CSV / JSON / parquet of videos: path[, start, end] "
                                                     "(seconds); instead of walking root")
    extensions: list[str] = Field([".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"], description="when walking root")
    clip_frames: ClipFrames = Field(9, description="frames per clip: 1 or 1+4k (9, 17, 33 decode exactly)")
    frame_stride: int = Field(1, ge=1, description="source frames between clip frames")
    fps: float | None = Field(None, gt=0, description="instead of frame_stride: clip frames 1/fps seconds apart "
                                                      "(the nearest source frames)")
    clips_per_video: int = Field(1, ge=1)
    clip_starts: Literal["even", "random"] = Field("even", description="evenly spaced, or seeded random starts")
    seed: int = Field(0, description="with clip_starts: random")
    min_frames: int = Field(1, ge=1, description="videos with fewer frames are skipped (recorded)")
    licence: str | None = None

    @model_validator(mode="after")
    def _stride_or_fps(self) -> VideoFolderSource:
        if self.fps is not None and self.frame_stride != 1:
            raise ValueError("give frame_stride or fps, not both")
        return self


class DavisSource(_SourceBase):
    """DAVIS 2016/2017 (JPEGImages/<res>/<seq> + Annotations/<res>/<seq>) or images/ + masks/."""

    kind: Literal["davis"]
    root: str
    resolution: str = Field("480p", description="subfolder of JPEGImages / Annotations in the official layout")
    split: str | None = Field(None, description="ImageSets/<year>/<split>.txt lists the sequences (e.g. 2017/train)")
    clip_frames: ClipFrames = Field(9, description="frames per clip: 1 or 1+4k")
    frame_stride: int = Field(1, ge=1)
    clips_per_sequence: int = Field(1, ge=1)
    missing_annotations: Literal["skip_clip", "annotated_only"] = Field(
        "skip_clip", description="skip_clip: clips are consecutive frames, and a clip with a frame lacking its mask is "
                                 "skipped for mask tasks; annotated_only: clips are cut from the annotated frames")
    licence: str | None = "DAVIS: research use (see the dataset's terms)"


class YouTubeVisSource(_SourceBase):
    """YouTube-VIS: JPEG frames and the official json (per-frame RLE or polygons)."""

    kind: Literal["youtube_vis"]
    images: str = Field(description="the JPEGImages folder the json's file_names are relative to")
    annotations: str = Field(description="instances.json")
    clip_frames: ClipFrames = Field(9, description="frames per clip (annotated frames): 1 or 1+4k")
    frame_stride: int = Field(1, ge=1, description="annotated frames between clip frames")
    clips_per_video: int = Field(1, ge=1)
    licence: str | None = "YouTube-VIS: CC BY 4.0 annotations; videos: YouTube terms"


class SavSource(_SourceBase):
    """SA-V manual masklets: sav_*.mp4 beside sav_*_manual.json."""

    kind: Literal["sav"]
    root: str
    annotation_fps: float = Field(6.0, gt=0, description="rate of the annotated frames (SA-V: 6, videos 24)")
    clip_frames: ClipFrames = Field(9, description="frames per clip (annotated frames): 1 or 1+4k")
    clips_per_video: int = Field(1, ge=1)
    licence: str | None = "SA-V: CC BY 4.0"


class FlowSource(_SourceBase):
    """Optical-flow ground truth: FlyingChairs, Sintel, or plain image pairs with .flo files."""

    kind: Literal["flow"]
    root: str
    format: Literal["flyingchairs", "sintel", "flo_pairs"] = "flyingchairs"
    pass_: Literal["clean", "final"] = Field("clean", alias="pass", description="sintel: the rendering pass")
    clip_frames: ClipFrames = Field(5, description="pairs are clips of 1+4k frames, the second frame held")
    licence: str | None = "see the dataset's terms (FlyingChairs, Sintel: research use)"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

Source = Annotated[
    SyntheticSource | CocoSource | NyuSource | DenseFolderSource | ImageFolderSource | HFDatasetSource
    | VideoFolderSource | DavisSource | YouTubeVisSource | SavSource | FlowSource,
    Field(discriminator="kind"),
]


# The `kind` tags of the Source union (pydantic puts them into error paths).
SOURCE_KINDS = frozenset(get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(Source)[0]))


# --------------------------------------------------------------------------- labelers


class Labeler(_Strict):
    name: str = Field(pattern=NAME_RE)
    kind: Literal["depth_anything_v2", "stable_normal", "marigold_normals", "normals_from_depth", "dis_flow"]
    source: str
    model: str | None = Field(None, description="local directory or model id; never downloaded at run time")
    batch_size: int = Field(8, ge=1)
    num_gpus: float = Field(0, ge=0)
    num_actors: int = Field(1, ge=1)
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    fov_deg: float | None = Field(None, description="normals_from_depth: field of view when a sample has no intrinsics")
    depth_from: str | None = Field(None, description="normals_from_depth: take depth from this (earlier) labeler")
    denoising_steps: int | None = Field(None, ge=1, description="marigold_normals: steps (default: the model's)")
    ensemble_size: int = Field(1, ge=1, description="marigold_normals: predictions averaged per image")
    preset: Literal["ultrafast", "fast", "medium"] = Field("medium", description="dis_flow: OpenCV DIS preset")
    processing_size: int | None = Field(
        None, ge=14, le=4096,
        description="depth_anything_v2, stable_normal: fit every image into one square of this side (see `fit`) so "
                    "that images of any size share a batch, and map predictions back to each image's size; "
                    "depth_anything_v2 needs a multiple of 14, stable_normal of 8. None: only same-sized images "
                    "share a batch, at the model's own processing size")
    fit: Literal["pad", "resize"] = Field(
        "pad", description="with processing_size: pad (keep the aspect ratio, replicate the border) or resize "
                           "(stretch to the square)")
    clone: str | None = Field(None, description="stable_normal: a local clone of Stable-X/StableNormal (its "
                                                "stablenormal/pipeline_yoso_normal.py is loaded; hubconf.py is not)")

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> Labeler:
        # A field the kind ignores would be a silent no-op: say so instead.
        if self.processing_size is not None and self.kind not in ("depth_anything_v2", "stable_normal"):
            raise ValueError(f"processing_size is for depth_anything_v2 and stable_normal, not {self.kind}")
        if self.clone is not None and self.kind != "stable_normal":
            raise ValueError(f"clone is for stable_normal, not {self.kind}")
        if self.fit != "pad" and self.processing_size is None:
            raise ValueError("fit takes effect only with a processing_size")
        if self.fit == "resize" and self.kind == "stable_normal":
            # stretching an image tilts its surfaces: normals predicted on it are not the image's
            raise ValueError("fit: resize would tilt the predicted normals (the image is stretched); use fit: pad")
        return self


# Labeler fields added after builds were made; left out of the spec hash at their defaults.
_LABELER_FIELDS_ADDED = {"processing_size": None, "fit": "pad", "clone": None}


# --------------------------------------------------------------------------- tasks


class TaskSpec(_Strict):
    task: str
    source: str
    labeler: str | None = Field(None, description="take depth/normals from this labeler's sidecars")
    options: dict[str, Any] = Field(default_factory=dict, validate_default=True)  # fill the task's defaults

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}; known tasks: {', '.join(sorted(TASKS))}")
        return v

    @field_validator("options")
    @classmethod
    def _check_options(cls, v: dict, info) -> dict:
        task = info.data.get("task")
        if task is None:
            return v  # the task name itself is wrong; that error is reported
        try:
            return task_options_model(task).model_validate(v).model_dump()
        except ValidationError as e:
            raise ValueError("; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None


class Output(_Strict):
    input_jpeg_quality: int = Field(95, ge=95, le=100, description="natural inputs are JPEG at this quality")
    png_compression: int = Field(1, ge=0, le=9, description="zlib level of PNG targets (1: fast, 6: PIL default)")


class Spec(_Strict):
    name: str = Field(pattern=NAME_RE)
    output: str
    seed: int = 0
    resolution: int = Field(256, ge=32, le=4096,
                            description="square side of every pair image: a multiple of 16 (the ST-VAE "
                                        "downsamples by 8, J-DiT patches latents by 2)")
    resize: Literal["crop", "squash", "pad"] = "crop"
    shard_size: int = Field(1000, ge=1)
    formats: Output = Field(default_factory=Output)
    sources: list[Source] = Field(min_length=1)
    labelers: list[Labeler] = Field(default_factory=list)
    tasks: list[TaskSpec] = Field(min_length=1)
    max_failure_fraction: float = Field(
        0.05, ge=0, le=1, description="the build exits non-zero (3) when more than this fraction of a task's samples "
                                      "on a source failed (errors, not skips); a task that wrote no pair at all "
                                      "always does")

    @field_validator("resolution")
    @classmethod
    def _latent_grid(cls, v: int) -> int:
        if v % 16:
            lo, hi = v // 16 * 16, (v // 16 + 1) * 16
            raise ValueError(f"resolution {v} is not a multiple of 16: the ST-VAE encodes 8x8 pixels per latent and "
                             f"J-DiT patches 2x2 latents, so a side must divide by 16 (use {max(lo, 32)} or {hi})")
        return v

    @model_validator(mode="after")
    def _cross_refs(self) -> Spec:
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {sorted(dup)}")
        labelers = {lab.name: lab for lab in self.labelers}
        if len(labelers) != len(self.labelers):
            raise ValueError("labeler names must be unique")
        earlier: set[str] = set()
        for lab in self.labelers:
            if lab.source not in names:
                raise ValueError(f"labeler {lab.name!r} names source {lab.source!r}, which is not in sources {names}")
            if lab.depth_from is not None and (lab.depth_from not in earlier
                                               or labelers[lab.depth_from].source != lab.source):
                raise ValueError(f"labeler {lab.name!r}: depth_from {lab.depth_from!r} must name an earlier "
                                 f"labeler of the same source")
            earlier.add(lab.name)
        seen = set()
        for i, t in enumerate(self.tasks):
            if t.source not in names:
                raise ValueError(f"tasks[{i}] ({t.task}) names source {t.source!r}, which is not in sources {names}")
            if t.labeler is not None and t.labeler not in labelers:
                raise ValueError(f"tasks[{i}] ({t.task}) names labeler {t.labeler!r}, which is not in labelers")
            if t.labeler is not None and labelers[t.labeler].source != t.source:
                raise ValueError(f"tasks[{i}] ({t.task}): labeler {t.labeler!r} labels source "
                                 f"{labelers[t.labeler].source!r}, not {t.source!r}")
            if (t.task, t.source) in seen:
                raise ValueError(f"tasks[{i}]: task {t.task!r} on source {t.source!r} appears twice")
            seen.add((t.task, t.source))
        return self

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)

    def labeler(self, name: str) -> Labeler:
        return next(lab for lab in self.labelers if lab.name == name)

    def canonical_json(self) -> str:
        """The spec's content in one form: through JSON and back first, so that a value typed
        alike in every spec (80 -> 80.0 for a float option) hashes alike; the output folder
        is where the build is, not what it is, and is left out."""
        again = type(self).model_validate_json(self.model_dump_json())
        data = again.model_dump(mode="json", exclude={"output"})
        for lab in data["labelers"]:  # a build made before these fields existed resumes unchanged
            for field, default in _LABELER_FIELDS_ADDED.items():
                if lab.get(field) == default:
                    del lab[field]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def spec_hash(self) -> str:
        """sha256 of :meth:`canonical_json`: equal for a build moved elsewhere, and in every worker."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


# --------------------------------------------------------------------------- loading

# ${NAME} or ${NAME:-default}; the default is everything up to the first "}" (so it holds no "}")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# The same in a spec's text, within one line: a stray "${" must not swallow the YAML lines after it.
_ENV_TEXT_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}\n]*))?\}")


@dataclass(frozen=True)
class _Ref:
    """One ``${VAR}`` / ``${VAR:-default}`` as written; ``line`` (1-based) where it came from a file."""

    var: str
    default: str | None
    text: str
    line: int | None = None


class _EnvFill:
    """Replaces the variable references in the strings of a loaded spec, noting every unset one.

    ``pattern`` finds a reference in a string and ``ref_of`` says which: a ``${...}`` itself
    (a spec given as data), or a placeholder that stood in for one while the text was parsed
    (a spec file, :class:`_Masked`). Values are inserted after parsing, so whatever an
    environment variable holds (``: ``, ``#``, ``{``, quotes, newlines, another ``${X}``) stays
    the one string it was put into. Mapping keys are names, not values: they keep the text as written.
    """

    def __init__(self, pattern: re.Pattern, ref_of: Callable[[re.Match], _Ref]) -> None:
        self.pattern, self.ref_of = pattern, ref_of
        self.unset: dict[str, list[tuple[str, int | None]]] = {}  # variable -> (field, line) of each use

    def _value(self, m: re.Match, where: str) -> str:
        ref = self.ref_of(m)
        if ref.var in os.environ:  # set, even to "": only an unset variable takes the default
            return os.environ[ref.var]
        if ref.default is not None:
            return ref.default
        self.unset.setdefault(ref.var, []).append((where, ref.line))
        return ref.text

    def walk(self, node: Any, where: str, file: str) -> Any:
        if isinstance(node, dict):
            out: dict = {}
            for k, v in node.items():
                if isinstance(k, str):
                    k = self.pattern.sub(lambda m: self.ref_of(m).text, k)
                    if k in out:  # two placeholders of one ${...} text: keys that read alike
                        raise SpecError(f"{file}: not valid YAML: duplicate key {k!r} in {where or 'the spec'}")
                out[k] = self.walk(v, f"{where}.{k}" if where else str(k), file)
            return out
        if isinstance(node, list):
            return [self.walk(v, f"{where}[{i}]", file) for i, v in enumerate(node)]
        if isinstance(node, str):
            return self.pattern.sub(lambda m: self._value(m, where or "<root>"), node)
        return node

    def check(self, file: str) -> None:
        """Raise one :class:`SpecError` naming every unset variable and where each is used."""
        if not self.unset:
            return
        how = (f"Set {'it' if len(self.unset) == 1 else 'them'} before the build:\n"
               f"  export {' '.join(f'{v}=...' for v in self.unset)}\n"
               "or give the spec a default where it is used: ${NAME:-value}.")
        if any(where == "output" for uses in self.unset.values() for where, _ in uses):
            how += "\nThe output: field is not needed with --output DIR, which replaces it."
        if len(self.unset) == 1:
            (var, uses), = self.unset.items()
            fields = ", ".join(where for where, _ in uses)
            lines = sorted({line for _, line in uses if line})
            at = f" (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))})" if lines else ""
            raise SpecError(f"{file}: field{'s' if len(uses) > 1 else ''} {fields}: "
                            f"environment variable ${{{var}}} is not set{at}\n{how}")
        width = max(len(v) for v in self.unset) + 4
        rows = [f"{file}: {len(self.unset)} environment variables are not set (and have no ${{VAR:-default}}):"]
        for var, uses in self.unset.items():
            used = ", ".join(where + (f" (line {line})" if line else "") for where, line in uses)
            rows.append(f"  {'${' + var + '}':<{width}}{used}")
        raise SpecError("\n".join(rows + [how]))


class _Masked:
    """A spec's text with each ``${...}`` replaced by a placeholder that YAML reads as plain text
    wherever a value may stand (a flow mapping too, where ``{`` would start a mapping), so the
    file parses alike whatever the environment holds.

    ``refs[i]`` is the reference that placeholder ``i`` stands for; ``placeholder`` finds placeholders
    (group 1: ``i``). Placeholders hold no newline, so lines stay where they were; :meth:`error`
    moves YAML's columns back and writes the references back into its message.
    """

    def __init__(self, text: str) -> None:
        prefix = "lavinenv" + secrets.token_hex(6)  # random: neither written in a spec nor made by its escapes
        while prefix in text:
            prefix = "lavinenv" + secrets.token_hex(6)
        self.placeholder = re.compile(re.escape(prefix) + r"(\d+)x")
        # what the strings YAML made of it may hold: placeholders, and ${...} that only YAML put
        # together (a default folded over two lines, an escaped "$"), expanded as in a spec given as data
        self.pattern = re.compile(f"{self.placeholder.pattern}|{_ENV_RE.pattern}")
        self.refs: list[_Ref] = []
        # 0-based line -> (start, end) column of each placeholder on it, then of its reference as written
        self._shifts: dict[int, list[tuple[int, int, int, int]]] = {}
        out, start, line, line_start, shift = [], 0, 0, 0, 0
        for m in _ENV_TEXT_RE.finditer(text):
            newlines = text.count("\n", start, m.start())
            if newlines:
                line, line_start, shift = line + newlines, text.rfind("\n", 0, m.start()) + 1, 0
            ph = f"{prefix}{len(self.refs)}x"
            col = m.start() - line_start
            self._shifts.setdefault(line, []).append((col + shift, col + shift + len(ph), col, col + len(m.group(0))))
            shift += len(ph) - len(m.group(0))
            out += [text[start:m.start()], ph]
            self.refs.append(_Ref(m.group(1), m.group(2), m.group(0), line + 1))
            start = m.end()
        out.append(text[start:])
        self.text = "".join(out)

    def ref(self, m: re.Match) -> _Ref:
        """The reference of a match of :attr:`pattern`."""
        return self.refs[int(m.group(1))] if m.group(1) is not None else _Ref(m.group(2), m.group(3), m.group(0))

    def _column(self, line: int, col: int) -> int:
        """The column in the text as written of column ``col`` (0-based) of masked line ``line``."""
        orig = col
        for m_start, m_end, o_start, o_end in self._shifts.get(line, []):
            if col < m_start:
                break
            orig = o_start if col < m_end else o_end + col - m_end  # inside a placeholder: its reference
        return orig

    def error(self, e: yaml.YAMLError) -> str:
        """``e``'s message as if the file had been parsed as written."""
        if isinstance(e, yaml.MarkedYAMLError):
            for attr in ("context_mark", "problem_mark"):
                mark = getattr(e, attr)
                if mark is not None:
                    setattr(e, attr, yaml.Mark(mark.name, mark.index, mark.line,
                                               self._column(mark.line, mark.column), None, None))
        return self.placeholder.sub(lambda m: self.ref(m).text, str(e))


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in SOURCE_KINDS:
            continue  # discriminator tag that pydantic puts into the path
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _validate(data: Any, file: str) -> Spec:
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        lines = [f"{file}: invalid spec ({e.error_count()} problem{'s' if e.error_count() > 1 else ''}):"]
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  field {_loc(err['loc'])}: {msg}")
        raise SpecError("\n".join(lines)) from None


def _mapping(data: Any, file: str) -> dict:
    if not isinstance(data, dict):
        raise SpecError(f"{file}: a spec is a YAML mapping, got {type(data).__name__}")
    return data


def parse_spec(data: Any, file: str = "<spec>") -> Spec:
    """Validate an already-loaded mapping, with ``${VAR}`` / ``${VAR:-default}`` in its strings
    replaced from the environment; ``file`` is only used in error messages."""
    fill = _EnvFill(_ENV_RE, lambda m: _Ref(m.group(1), m.group(2), m.group(0)))
    data = fill.walk(_mapping(data, file), "", file)
    fill.check(file)
    return _validate(data, file)


def _names(items: Any) -> list[str]:
    return [str(x.get("name")) for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def select_subset(data: dict, where: str, only_sources: list[str] | None = None,
                  only_tasks: list[str] | None = None) -> dict:
    """``data`` (a parsed spec, variables not yet filled) cut to the named sources and tasks:
    the tasks of kept sources whose task name is kept, the sources some kept task uses, and
    the labelers those tasks need (with the labelers they take depth from). What is cut is
    never read, so its ``${VAR}``s need not be set. An unknown name is a :class:`SpecError`
    listing the spec's names."""
    if only_sources is None and only_tasks is None:
        return data
    for flag, wanted in (("--only-sources", only_sources), ("--only-tasks", only_tasks)):
        if wanted is not None and not wanted:
            raise SpecError(f"{where}: {flag} names nothing")
    sources, tasks = data.get("sources"), data.get("tasks")
    tasks = tasks if isinstance(tasks, list) else []
    named = [t for t in tasks if isinstance(t, dict)]
    for flag, wanted, have in (("--only-sources", only_sources, _names(sources)),
                               ("--only-tasks", only_tasks, [str(t.get("task")) for t in named])):
        unknown = [w for w in wanted or [] if w not in have]
        if unknown:
            raise SpecError(f"{where}: {flag} names {', '.join(unknown)}, not in the spec "
                            f"(it has: {', '.join(dict.fromkeys(have))})")
    # a malformed task entry is kept, so that validation names it as it would without a subset
    kept = [t for t in tasks if not isinstance(t, dict) or (
        (not only_sources or str(t.get("source")) in only_sources)
        and (not only_tasks or str(t.get("task")) in only_tasks))]
    found = {(str(t.get("source")), str(t.get("task"))) for t in kept if isinstance(t, dict)}
    idle = [f"source {s} has none of the tasks" for s in only_sources or [] if s not in {a for a, _ in found}] + \
           [f"task {t} is on none of the sources" for t in only_tasks or [] if t not in {b for _, b in found}]
    if idle:
        raise SpecError(f"{where}: nothing to build for part of the subset: {'; '.join(idle)}")
    used = {a for a, _ in found}
    labelers = [lab for lab in data.get("labelers") or [] if isinstance(lab, dict)]
    by_name = {str(lab.get("name")): lab for lab in labelers}
    need = {str(t["labeler"]) for t in kept if isinstance(t, dict) and t.get("labeler")}
    frontier = list(need)
    while frontier:  # a labeler's depth_from is needed too
        dep = by_name.get(frontier.pop(), {}).get("depth_from")
        if dep and str(dep) not in need:
            need.add(str(dep))
            frontier.append(str(dep))
    kept_sources = [s for s in sources or [] if isinstance(s, dict) and str(s.get("name")) in used]
    out = dict(data, tasks=kept, sources=kept_sources)
    if "labelers" in data:
        out["labelers"] = [lab for lab in labelers if str(lab.get("name")) in need]
    return out


def load_spec(path: str | os.PathLike, output: str | None = None, only_sources: list[str] | None = None,
              only_tasks: list[str] | None = None) -> Spec:
    """Read, expand and validate a YAML spec.

    ``${VAR}`` / ``${VAR:-default}`` may stand wherever YAML takes a plain value, flow mappings
    included (``{kind: coco, images: ${COCO}/images}``); the value is inserted after the YAML is
    parsed, so it is always the string it was written into, never more YAML. References in
    comments are not read. Every unset variable without a default is named in one
    :class:`SpecError`, with the field and line of each use.

    ``output`` (the CLI's ``--output``) replaces the spec's ``output:`` field before it is
    expanded, so variables used only there need not be set. It is taken as given: the shell
    has already expanded it. ``only_sources`` / ``only_tasks`` (``--only-sources``,
    ``--only-tasks``) build a subset (:func:`select_subset`), also before expansion.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec: {e.strerror}") from None
    masked = _Masked(text)
    try:
        from lavin_data.safe_yaml import safe_load  # safe_load that also refuses duplicate keys, alias bombs

        data = safe_load(masked.text)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {masked.error(e)}") from None
    data = _mapping(data, str(path))
    if output is not None:
        data = {k: v for k, v in data.items() if k != "output"}
    data = select_subset(data, str(path), only_sources, only_tasks)
    fill = _EnvFill(masked.pattern, masked.ref)
    data = fill.walk(data, "", str(path))
    fill.check(str(path))
    if output is not None:
        data["output"] = output
    return _validate(data, str(path))
