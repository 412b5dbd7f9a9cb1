"""Normal estimators: Marigold (diffusers) and StableNormal (torch.hub), from local weights.

Both predict camera-frame normals in our convention (x right, y up, z towards the
camera; Marigold documents it, StableNormal follows Marigold's), at the input's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lavin_data.labelers import Labeler, LabelerError, weight_hash


def _require(spec, *modules: str, hint: str) -> None:
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            raise LabelerError(f"labeler {spec.name!r} ({spec.kind}) needs the `{m}` package: {hint}") from None


def _torch_setup(spec):
    import torch

    device = "cuda" if spec.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec.dtype]
    return torch, device, (dtype if device == "cuda" else torch.float32)


def _unit(n: np.ndarray) -> np.ndarray:
    n = n.astype(np.float32)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


class MarigoldNormals(Labeler):
    """``diffusers.MarigoldNormalsPipeline`` from a local folder (e.g. a download of
    prs-eth/marigold-normals-v1-1). Noise is seeded, so a re-run gives the same sidecar."""

    output = "normals"

    @classmethod
    def preflight(cls, spec) -> None:
        _require(spec, "torch", "diffusers", "transformers",
                 hint="run `scripts/setup.sh dev,labelers` or `pip install -e .[labelers]`")
        p = Path(spec.model or "")
        if not spec.model or not (p / "model_index.json").is_file():
            raise LabelerError(
                f"labeler {spec.name!r}: no Marigold pipeline at {p} (model_index.json missing). Put a copy of "
                f"prs-eth/marigold-normals-v1-1 there, e.g. `huggingface-cli download prs-eth/marigold-normals-v1-1 "
                f"--local-dir {p}` on a machine with access")

    def __init__(self, spec):
        super().__init__(spec)
        from diffusers import MarigoldNormalsPipeline

        self.torch, self.device, dtype = _torch_setup(spec)
        self.pipe = MarigoldNormalsPipeline.from_pretrained(spec.model, local_files_only=True, torch_dtype=dtype)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.hash = weight_hash(spec.model)

    def info(self) -> dict:
        return dict(super().info(), weight_hash=self.hash, denoising_steps=self.spec.denoising_steps,
                    ensemble_size=self.spec.ensemble_size)

    def label(self, images, depths, intrinsics):
        from PIL import Image

        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape[:2], []).append(i)
        for idx in groups.values():
            gen = self.torch.Generator(device=self.device).manual_seed(0)
            res = self.pipe([Image.fromarray(images[i]) for i in idx], num_inference_steps=self.spec.denoising_steps,
                            ensemble_size=self.spec.ensemble_size, batch_size=len(idx), output_type="np",
                            generator=gen)
            for i, n in zip(idx, res.prediction):
                out[i] = _unit(n)
        return out


class StableNormal(Labeler):
    """StableNormal (turbo) through its torch.hub entry, from a local clone of the hub repo
    (``model``: the folder holding ``hubconf.py``; its weights in the same local cache)."""

    output = "normals"

    @classmethod
    def preflight(cls, spec) -> None:
        _require(spec, "torch", hint="run `scripts/setup.sh dev,labelers`")
        _require(spec, "torchvision",
                 hint="StableNormal's torch.hub code imports it: `pip install torchvision` built for your torch "
                      "(there is no CPU build on every platform; use depth_anything_v2 + normals_from_depth or "
                      "marigold_normals instead)")
        p = Path(spec.model or "")
        if not spec.model or not (p / "hubconf.py").is_file():
            raise LabelerError(f"labeler {spec.name!r}: no StableNormal hub repo at {p} (hubconf.py missing). Clone "
                               f"Stable-X/StableNormal there and put its weights in that folder's weights/ cache")

    def __init__(self, spec):
        super().__init__(spec)
        self.torch, self.device, _dtype = _torch_setup(spec)
        self.predictor = self.torch.hub.load(spec.model, "StableNormal_turbo", source="local", trust_repo=True,
                                             local_cache_dir=str(Path(spec.model) / "weights"), device=self.device)
        self.hash = weight_hash(Path(spec.model) / "weights")

    def info(self) -> dict:
        return dict(super().info(), weight_hash=self.hash, variant="turbo")

    def label(self, images, depths, intrinsics):
        import cv2
        from PIL import Image

        out = []
        for im in images:
            rgb = np.asarray(self.predictor(Image.fromarray(im)).convert("RGB"), np.float32)
            if rgb.shape[:2] != im.shape[:2]:
                rgb = cv2.resize(rgb, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_LINEAR)
            out.append(_unit(rgb / 127.5 - 1.0))
        return out
