"""Pseudo-labelers: models (or geometry) that add depth or normals to base samples.

A labeler class is built once per Ray actor (it loads its model in ``__init__``) and
labels batches. ``preflight(spec)`` runs in the driver before any work: a missing
package or missing weights is a :class:`LabelerError` that says what to install or where
to put the weights. Outputs are stored losslessly in sidecar shards (:mod:`lavin_data.sidecar`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class LabelerError(RuntimeError):
    """A labeler that cannot start: the message says what to install or where the weights go."""


@dataclass
class LabelInput:
    """What a labeler gets per base sample (decoded by the label stage).

    image: (H, W, 3) uint8 RGB. depth: (H, W) float32, 0 = invalid, or None; its
    ``depth_kind`` is ``"depth"`` (metric, along the optical axis) or ``"disparity"``
    (relative inverse depth, e.g. Depth-Anything's). intrinsics: (fx, fy, cx, cy) in
    pixels (OpenCV pixel centres) or None. ``frames``: a clip, for labelers that need all of
    it at once (optical flow).
    """

    image: np.ndarray
    depth: np.ndarray | None = None
    depth_kind: str = "depth"
    intrinsics: list[float] | None = None
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8: the whole clip, for per_clip labelers


class Labeler:
    """Base class. ``output`` is "depth", "normals" or "flow"; ``needs_depth`` labelers get
    depth; a ``per_clip`` labeler gets one input per clip (``frames``), the others one per
    image or frame, batched across frames and clips."""

    output: str = "depth"
    per_clip: bool = False
    depth_kind: str = "depth"  # of the output: "depth" (metric) or "disparity" (relative inverse depth)
    needs_depth: bool = False
    # The licence of the model's weights (or "no model"), for the dataset card: pseudo-labels
    # are outputs of these weights, and some licences restrict their use (non-commercial).
    LICENCE: str = "see the model card"

    def __init__(self, spec):
        self.spec = spec
        # Model forwards run and images they held, for the batch fill the label stage records
        # (images / (forwards * batch_size)): mixed sizes batched by size fill few slots.
        self.forwards = {"forwards": 0, "images": 0}

    def count_forward(self, images: int) -> None:
        self.forwards["forwards"] += 1
        self.forwards["images"] += images

    @classmethod
    def model_licence(cls, spec) -> str:
        """The licence of the weights that ``spec`` (a labeler entry of the spec) names."""
        return cls.LICENCE

    @classmethod
    def preflight(cls, spec) -> None:
        """Raise LabelerError if this labeler cannot run (checked before any shard is touched)."""

    def info(self) -> dict[str, Any]:
        """What every labelled sample's json records: labeler name, kind, model, weight hash."""
        return {"labeler": self.spec.name, "kind": self.spec.kind, "model": self.spec.model, "weight_hash": None}

    def label(self, inputs: list[LabelInput]) -> list[np.ndarray]:
        """-> per input (H, W) float32 depth/disparity or (H, W, 3) float32 unit normals
        (0 = invalid), at the image's own size; a flow labeler: (T-1, H, W, 2) float32."""
        raise NotImplementedError


# huggingface_hub's command line (`hf`; it replaced `huggingface-cli`, which recent releases no longer install)
HF_DOWNLOAD = "hf download"


def download_hint(repo: str, dest) -> str:
    """How to put the Hub repository ``repo`` into ``dest`` on a machine with access."""
    return f"`{HF_DOWNLOAD} {repo} --local-dir {dest}`"


def require(spec, *modules: str, hint: str) -> None:
    """LabelerError naming the first of ``modules`` that cannot be imported, with ``hint``."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            raise LabelerError(f"labeler {spec.name!r} ({spec.kind}) needs the `{m}` package: {hint}") from None


def unit_vectors(n: np.ndarray) -> np.ndarray:
    """(..., 3) -> float32 unit vectors (zero vectors stay zero)."""
    n = n.astype(np.float32)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def group_by_size(images: list[np.ndarray]) -> dict[tuple[int, int], list[int]]:
    """Indices of same-sized images, by (H, W) in first-seen order: models whose processors
    keep the aspect ratio batch only images of one size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape[:2]), []).append(i)
    return groups


def forward_batches(images: list[np.ndarray], batch_size: int, fixed: bool) -> list[list[int]]:
    """Indices of the images that share each forward, at most ``batch_size`` each. ``fixed``
    (a ``processing_size`` is set, every image is fitted into one square): consecutive images,
    whatever their sizes; otherwise only same-sized images, by :func:`group_by_size`."""
    groups = [list(range(len(images)))] if fixed else list(group_by_size(images).values())
    return [g[i:i + batch_size] for g in groups for i in range(0, len(g), batch_size)]


def fit_square(image: np.ndarray, side: int, fit: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(H, W, 3) uint8 -> ((side, side, 3) uint8, content box (top, left, height, width)).

    ``fit="pad"`` keeps the aspect ratio: the longer side becomes ``side`` and the rest is
    filled by replicating the border (a black band would read as an edge to a depth or normal
    model); ``fit="resize"`` stretches the image to the square. Area interpolation when
    shrinking, cubic when enlarging, as the models' own processors do for photos."""
    import cv2

    h, w = image.shape[:2]
    top, left, nh, nw = square_box(h, w, side, fit)
    interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_CUBIC
    content = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh), interpolation=interp)
    canvas = cv2.copyMakeBorder(content, top, side - nh - top, left, side - nw - left, cv2.BORDER_REPLICATE)
    return canvas, (top, left, nh, nw)


def square_box(h: int, w: int, side: int, fit: str) -> tuple[int, int, int, int]:
    """Where :func:`fit_square` puts an (h, w) image in its (side, side) square: (top, left,
    height, width) of the content, centred."""
    if fit == "resize":
        return 0, 0, side, side
    if fit != "pad":
        raise ValueError(f"fit must be 'pad' or 'resize', got {fit!r}")
    s = side / max(h, w)
    nh, nw = max(1, min(side, round(h * s))), max(1, min(side, round(w * s)))
    return (side - nh) // 2, (side - nw) // 2, nh, nw


def unfit(prediction: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """A prediction on the square canvas ((S, S) or (S, S, C) float32) -> the image's own
    ``size`` (H, W): the content ``box`` of :func:`fit_square` cut out and resized linearly."""
    import cv2

    top, left, nh, nw = box
    crop = np.ascontiguousarray(prediction[top:top + nh, left:left + nw], dtype=np.float32)
    h, w = size
    return crop if (nh, nw) == (h, w) else cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


def labeler_class(kind: str) -> type[Labeler]:
    from lavin_data.labelers.depth_anything import DepthAnythingV2
    from lavin_data.labelers.dis_flow import DisFlow
    from lavin_data.labelers.marigold import MarigoldNormals
    from lavin_data.labelers.normals_from_depth import NormalsFromDepth
    from lavin_data.labelers.stable_normal import StableNormal

    classes = {"normals_from_depth": NormalsFromDepth, "depth_anything_v2": DepthAnythingV2,
               "marigold_normals": MarigoldNormals, "stable_normal": StableNormal, "dis_flow": DisFlow}
    if kind not in classes:
        raise LabelerError(f"labeler kind {kind!r} is part of the spec format but is not built yet "
                           f"(available: {', '.join(sorted(classes))})")
    return classes[kind]
