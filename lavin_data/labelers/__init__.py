"""Pseudo-labelers: models (or geometry) that add depth or normals to base samples.

A labeler class is built once per Ray actor (it loads its model in ``__init__``) and
labels batches. ``preflight(spec)`` runs in the driver before any work: a missing
package or missing weights is a :class:`LabelerError` that says what to install or where
to put the weights. Outputs are stored losslessly in sidecar shards (:mod:`lavin_data.sidecar`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np


class LabelerError(RuntimeError):
    """A labeler that cannot start: the message says what to install or where the weights go."""


class Labeler:
    """Base class. ``output`` is "depth" or "normals"; ``needs_depth`` labelers get depth."""

    output: str = "depth"
    depth_kind: str = "depth"  # "depth" (metric) or "disparity" (relative inverse depth)
    needs_depth: bool = False

    def __init__(self, spec):
        self.spec = spec

    @classmethod
    def preflight(cls, spec) -> None:
        """Raise LabelerError if this labeler cannot run (checked before any shard is touched)."""

    def info(self) -> dict[str, Any]:
        """What every labelled sample's json records: labeler name, kind, model, weight hash."""
        return {"labeler": self.spec.name, "kind": self.spec.kind, "model": self.spec.model, "weight_hash": None}

    def label(self, images: list[np.ndarray], depths: list[np.ndarray | None],
              intrinsics: list[list[float] | None]) -> list[np.ndarray]:
        """images: (H, W, 3) uint8 RGB each -> per image (H, W) float32 depth/disparity or
        (H, W, 3) float32 unit normals (0 = invalid), at the image's own size."""
        raise NotImplementedError


def weight_hash(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex) over a weights folder's files (names and bytes), sorted."""
    p = Path(path)
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def labeler_class(kind: str) -> type[Labeler]:
    from lavin_data.labelers.depth_anything import DepthAnythingV2
    from lavin_data.labelers.geometry import NormalsFromDepth
    from lavin_data.labelers.normals import MarigoldNormals, StableNormal

    classes = {"normals_from_depth": NormalsFromDepth, "depth_anything_v2": DepthAnythingV2,
               "marigold_normals": MarigoldNormals, "stable_normal": StableNormal}
    if kind not in classes:
        raise LabelerError(f"labeler kind {kind!r} is part of the spec format but is not built yet "
                           f"(available: {', '.join(sorted(classes))})")
    return classes[kind]
