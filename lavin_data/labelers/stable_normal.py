"""``stable_normal``: StableNormal (turbo) through its torch.hub entry, from a local clone.

Predicts camera-frame normals in our convention (x right, y up, z towards the camera,
following Marigold's), at the input's size. Its hub code imports torchvision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lavin_data.devices import device_and_dtype
from lavin_data.labelers import Labeler, LabelerError, LabelInput, require, unit_vectors
from lavin_data.weights import weight_hash


class StableNormal(Labeler):
    """StableNormal (turbo) through its torch.hub entry, from a local clone of the hub repo
    (``model``: the folder holding ``hubconf.py``; its weights in the same local cache)."""

    output = "normals"
    # The Stable-X/StableNormal README carries an Apache-2.0 licence badge; the weights'
    # Hugging Face card (Stable-X/stable-normal-v0-1 and the turbo variant) governs.
    LICENCE = "Apache-2.0 (per the Stable-X/StableNormal README; confirm on the weights' model card)"

    @classmethod
    def preflight(cls, spec) -> None:
        require(spec, "torch", hint="run `scripts/setup.sh dev,labelers`")
        require(spec, "torchvision",
                 hint="StableNormal's torch.hub code imports it: `pip install torchvision` built for your torch "
                      "(there is no CPU build on every platform; use depth_anything_v2 + normals_from_depth or "
                      "marigold_normals instead)")
        p = Path(spec.model or "")
        if not spec.model or not (p / "hubconf.py").is_file():
            raise LabelerError(f"labeler {spec.name!r}: no StableNormal hub repo at {p} (hubconf.py missing). Clone "
                               f"Stable-X/StableNormal there and put its weights in that folder's weights/ cache")

    def __init__(self, spec):
        super().__init__(spec)
        import torch

        self.device, _dtype = device_and_dtype(spec.num_gpus > 0, spec.dtype)
        self.predictor = torch.hub.load(spec.model, "StableNormal_turbo", source="local", trust_repo=True,
                                             local_cache_dir=str(Path(spec.model) / "weights"), device=self.device)
        self.hash = weight_hash(Path(spec.model) / "weights")

    def info(self) -> dict:
        return dict(super().info(), weight_hash=self.hash, variant="turbo")

    def label(self, inputs: list[LabelInput]) -> list[np.ndarray]:
        import cv2
        from PIL import Image

        out = []
        for x in inputs:
            rgb = np.asarray(self.predictor(Image.fromarray(x.image)).convert("RGB"), np.float32)
            if rgb.shape[:2] != x.image.shape[:2]:
                rgb = cv2.resize(rgb, (x.image.shape[1], x.image.shape[0]), interpolation=cv2.INTER_LINEAR)
            out.append(unit_vectors(rgb / 127.5 - 1.0))
        return out
