"""``depth_anything_v2``: Depth-Anything V2 through transformers (relative inverse depth).

Weights load from a local directory only (``model`` in the spec, e.g. a download of
``depth-anything/Depth-Anything-V2-Small-hf``, Apache-2.0; Base/Large are CC-BY-NC-4.0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lavin_data.devices import device_and_dtype
from lavin_data.labelers import Labeler, LabelerError, LabelInput, group_by_size
from lavin_data.weights import weight_hash

LICENCES = {"small": "Apache-2.0", "base": "CC-BY-NC-4.0", "large": "CC-BY-NC-4.0"}


class DepthAnythingV2(Labeler):
    output = "depth"
    depth_kind = "disparity"  # relative inverse depth, larger = nearer
    LICENCE = "Small: Apache-2.0; Base and Large: CC-BY-NC-4.0 (non-commercial)"

    @classmethod
    def model_licence(cls, spec) -> str:
        """By the size in the weights folder's name (``...-Small-hf``); else the model card."""
        name = Path(spec.model or "").name.lower()
        return next((v for k, v in LICENCES.items() if k in name), f"see the model card ({cls.LICENCE})")

    @classmethod
    def preflight(cls, spec) -> None:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            raise LabelerError(f"labeler {spec.name!r} ({spec.kind}) needs torch and transformers ({e}): run "
                               "`scripts/setup.sh dev,labelers` or `pip install -e .[labelers]`") from None
        if not spec.model:
            raise LabelerError(f"labeler {spec.name!r}: set `model` to a local folder with the weights "
                               "(nothing is downloaded at run time)")
        p = Path(spec.model)
        if not (p / "config.json").is_file():
            raise LabelerError(
                f"labeler {spec.name!r}: no weights at {p} (config.json missing). Put a copy of "
                f"depth-anything/Depth-Anything-V2-Small-hf (or -Base/-Large) there, e.g. on a machine with "
                f"access: `huggingface-cli download depth-anything/Depth-Anything-V2-Small-hf --local-dir {p}`")
        if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
            raise LabelerError(f"labeler {spec.name!r}: {p} has a config but no weight file (*.safetensors)")

    def __init__(self, spec):
        super().__init__(spec)
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.torch = torch
        self.device, self.dtype = device_and_dtype(spec.num_gpus > 0, spec.dtype)
        self.model = AutoModelForDepthEstimation.from_pretrained(spec.model, local_files_only=True, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(spec.model, local_files_only=True)
        self.hash = weight_hash(spec.model)

    def info(self) -> dict:
        return dict(super().info(), weight_hash=self.hash, output="relative inverse depth",
                    model_licence=self.model_licence(self.spec))

    def forward(self, pixel_values):
        """The raw model forward on a prepared batch (what the benchmark compares against)."""
        with self.torch.inference_mode():
            return self.model(pixel_values=pixel_values.to(self.device, self.dtype)).predicted_depth

    def prepare(self, images: list[np.ndarray]):
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def label(self, inputs: list[LabelInput]) -> list[np.ndarray]:
        images = [x.image for x in inputs]
        out: list[np.ndarray | None] = [None] * len(images)
        for (h, w), idx in group_by_size(images).items():
            pred = self.forward(self.prepare([images[i] for i in idx])).float()
            pred = self.torch.nn.functional.interpolate(pred[:, None], size=(h, w), mode="bicubic",
                                                        align_corners=False)[:, 0]
            for i, d in zip(idx, pred.clamp_min(0).cpu().numpy()):
                out[i] = d.astype(np.float32)
        return out
