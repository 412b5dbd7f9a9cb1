"""``marigold_normals``: Marigold normals (``diffusers.MarigoldNormalsPipeline``) from local weights.

Predicts camera-frame normals in our convention (x right, y up, z towards the camera;
Marigold documents it) at the input's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lavin_data.devices import device_and_dtype
from lavin_data.labelers import (
    Labeler,
    LabelerError,
    LabelInput,
    download_hint,
    group_by_size,
    require,
    unit_vectors,
)
from lavin_data.weights import weight_hash


class MarigoldNormals(Labeler):
    """``diffusers.MarigoldNormalsPipeline`` from a local folder (e.g. a download of
    prs-eth/marigold-normals-v1-1). Noise is seeded, so a re-run gives the same sidecar."""

    output = "normals"
    # prs-eth/Marigold README, "License": code Apache-2.0, "the models are licensed under
    # RAIL++-M License" (LICENSE-MODEL.txt: OpenRAIL++-M, use-based restrictions).
    LICENCE = "OpenRAIL++-M (Marigold v1.1 models; use-based restrictions; see the model card)"

    @classmethod
    def preflight(cls, spec) -> None:
        require(spec, "torch", "diffusers", "transformers",
                 hint="run `scripts/setup.sh dev,labelers` or `pip install -e .[labelers]`")
        p = Path(spec.model or "")
        if not spec.model or not (p / "model_index.json").is_file():
            raise LabelerError(
                f"labeler {spec.name!r}: no Marigold pipeline at {p} (model_index.json missing). Put a copy of "
                f"prs-eth/marigold-normals-v1-1 there, e.g. {download_hint('prs-eth/marigold-normals-v1-1', p)} "
                "on a machine with access")

    def __init__(self, spec):
        super().__init__(spec)
        import torch
        from diffusers import MarigoldNormalsPipeline

        self.torch = torch
        self.device, dtype = device_and_dtype(spec.num_gpus > 0, spec.dtype)
        self.pipe = MarigoldNormalsPipeline.from_pretrained(spec.model, local_files_only=True, torch_dtype=dtype)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.hash = weight_hash(spec.model)

    def info(self) -> dict:
        return dict(super().info(), weight_hash=self.hash, denoising_steps=self.spec.denoising_steps,
                    ensemble_size=self.spec.ensemble_size)

    def label(self, inputs: list[LabelInput]) -> list[np.ndarray]:
        from PIL import Image

        out: list[np.ndarray | None] = [None] * len(inputs)
        for idx in group_by_size([x.image for x in inputs]).values():
            gen = self.torch.Generator(device=self.device).manual_seed(0)
            res = self.pipe([Image.fromarray(inputs[i].image) for i in idx],
                            num_inference_steps=self.spec.denoising_steps, ensemble_size=self.spec.ensemble_size,
                            batch_size=len(idx), output_type="np", generator=gen)
            self.count_forward(len(idx))
            for i, n in zip(idx, res.prediction):
                out[i] = unit_vectors(n)
        return out
