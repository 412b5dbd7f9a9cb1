"""``depth_anything_v2``: Depth-Anything V2 through transformers (relative inverse depth).

Weights load from a local directory only (``model`` in the spec, e.g. a download of
``depth-anything/Depth-Anything-V2-Small-hf``, Apache-2.0; Base/Large are CC-BY-NC-4.0).
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
    fit_square,
    forward_batches,
    square_box,
    unfit,
)
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
                f"access: {download_hint('depth-anything/Depth-Anything-V2-Small-hf', p)}")
        if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
            raise LabelerError(f"labeler {spec.name!r}: {p} has a config but no weight file (*.safetensors)")
        if spec.processing_size is not None and spec.processing_size % 14:
            raise LabelerError(f"labeler {spec.name!r}: processing_size {spec.processing_size} must be a multiple of "
                               f"14 (the ViT patch), e.g. {14 * round(spec.processing_size / 14)}")

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
                    model_licence=self.model_licence(self.spec), processing=self.processing())

    def processing(self) -> dict:
        """How images reach the model, for the json: a fixed square (``size``, ``fit``), or each
        size by itself at the processor's own size (shorter side ``size``, aspect ratio kept)."""
        if self.spec.processing_size is not None:
            return {"size": self.spec.processing_size, "fit": self.spec.fit, "batching": "fixed"}
        size = getattr(self.processor, "size", None) or {}
        return {"size": size.get("height") or size.get("shortest_edge"), "fit": "keep_aspect",
                "batching": "same_size"}

    def forward(self, pixel_values):
        """The raw model forward on a prepared batch (what the benchmark compares against)."""
        with self.torch.inference_mode():
            return self.model(pixel_values=pixel_values.to(self.device, self.dtype)).predicted_depth

    def prepare(self, images: list[np.ndarray]):
        """Same-sized (H, W, 3) uint8 images -> (N, 3, h, w) float pixel values, or, with a
        ``processing_size`` S, any sizes -> (N, 3, S, S) (fitted by :func:`fit_square`; the
        processor then only rescales and normalises)."""
        if self.spec.processing_size is None:
            return self.processor(images=images, return_tensors="pt")["pixel_values"]
        canvases = [fit_square(im, self.spec.processing_size, self.spec.fit)[0] for im in images]
        return self.processor(images=canvases, do_resize=False, do_pad=False, return_tensors="pt")["pixel_values"]

    def label(self, inputs: list[LabelInput]) -> list[np.ndarray]:
        images = [x.image for x in inputs]
        size = self.spec.processing_size
        out: list[np.ndarray | None] = [None] * len(images)
        for idx in forward_batches(images, self.spec.batch_size, fixed=size is not None):
            pred = self.forward(self.prepare([images[i] for i in idx])).float()
            self.count_forward(len(idx))
            if size is None:
                h, w = images[idx[0]].shape[:2]
                pred = self.torch.nn.functional.interpolate(pred[:, None], size=(h, w), mode="bicubic",
                                                            align_corners=False)[:, 0]
                for i, d in zip(idx, pred.clamp_min(0).cpu().numpy()):
                    out[i] = d.astype(np.float32)
                continue
            if tuple(pred.shape[-2:]) != (size, size):  # the head's output grid, if not the input's
                pred = self.torch.nn.functional.interpolate(pred[:, None], size=(size, size), mode="bicubic",
                                                            align_corners=False)[:, 0]
            for i, d in zip(idx, pred.clamp_min(0).cpu().numpy()):
                box = square_box(*images[i].shape[:2], size, self.spec.fit)
                out[i] = np.maximum(unfit(d, box, images[i].shape[:2]), 0)
        return out
