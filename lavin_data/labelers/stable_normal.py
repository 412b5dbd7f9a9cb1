"""``stable_normal``: StableNormal-turbo from a local clone of its code and a local weights folder.

The released turbo predictor (``StableNormal_turbo`` in StableNormal's ``hubconf.py``) is the
YOSO normals pipeline, ``stablenormal/pipeline_yoso_normal.py: YOSONormalsPipeline`` (a
diffusers ``StableDiffusionControlNetPipeline`` subclass: the image's VAE latents condition a
ControlNet, and one UNet step from zero latents at ``t_start=0`` gives the normals' latents),
over the ``yoso-normal-v0-3`` weights folder (VAE, UNet, ControlNet, CLIP text encoder and
tokenizer, DDIM scheduler; fp16 variant files). We load that class from the clone's file
directly: ``hubconf.py`` imports torchvision and builds segmentation models (Mask2Former,
BiRefNet) for object/outdoor masks that its default (indoor) mode, and we, never use.

Frame. The pipeline predicts unit normals in [-1, 1], (N, H, W, 3) with ``output_type "np"``,
in StableNormal's frame: x left, y up, z towards the viewer, as its authors state
(Stable-X/StableNormal issue #18: "the same way as DSINE", whose output others measured as
+x left, +y up, +z back towards the camera). Ours is x right, y up, z towards the camera, so
:data:`FRAME` negates x. (Its own code does not say: ``hubconf.py`` writes ``(n + 1) / 2``
unflipped and ``app.py`` colours it with Marigold's visualiser, also unflipped.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
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
    require,
    square_box,
    unfit,
    unit_vectors,
)
from lavin_data.weights import weight_hash

PIPELINE_FILE = Path("stablenormal") / "pipeline_yoso_normal.py"
PIPELINE_CLASS = "YOSONormalsPipeline"
# StableNormal's frame (x left, y up, z to the camera) -> ours (x right), per axis.
FRAME = np.array([-1.0, 1.0, 1.0], np.float32)
# The components the turbo pipeline runs, and the file each needs beside its weights.
COMPONENTS = {"vae": "config.json", "unet": "config.json", "controlnet": "config.json",
              "text_encoder": "config.json", "tokenizer": "tokenizer_config.json",
              "scheduler": "scheduler_config.json"}
_WITH_WEIGHTS = ("vae", "unet", "controlnet", "text_encoder")
_LIBRARIES = ("diffusers", "transformers")
SEED = 0  # the noise seed: StableNormal-turbo starts from zero latents, but a later release may draw noise


def _sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def locate(spec) -> tuple[Path, Path]:
    """(clone, weights) folders of a ``stable_normal`` labeler. ``clone`` unset: ``model`` is a
    clone holding its weights in ``weights/yoso-normal-v0-3`` (StableNormal's own cache layout)."""
    if not spec.model:
        raise LabelerError(f"labeler {spec.name!r} (stable_normal): set `model` to the local yoso-normal-v0-3 weights "
                           "folder and `clone` to a local clone of Stable-X/StableNormal (nothing is downloaded)")
    model = Path(spec.model)
    if spec.clone:
        return Path(spec.clone), model
    return model, model / "weights" / "yoso-normal-v0-3"


def remote_code(spec, weights: Path, index: dict) -> dict[str, str]:
    """The component classes the weights folder brings as code ({file relative to the folder:
    sha256[:16]}): a ``model_index.json`` entry ``[module, class]`` whose module is neither
    diffusers nor transformers names ``<component>/<module>.py``, which must be a file inside
    the folder. diffusers runs it only with ``trust_remote_code``, which we pass for these alone."""
    found = {}
    for comp, entry in index.items():
        if comp.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        module = entry[0]
        if module in _LIBRARIES:
            continue
        if not isinstance(module, str) or not module.isidentifier():
            raise LabelerError(f"labeler {spec.name!r}: {weights / 'model_index.json'}: component {comp!r} names "
                               f"module {module!r}, neither diffusers, transformers nor a file of the folder")
        f = weights / comp / f"{module}.py"
        if not comp.isidentifier() or not f.is_file():  # a Hugging Face cache snapshot links its files: allowed
            raise LabelerError(f"labeler {spec.name!r}: {weights / 'model_index.json'}: component {comp!r} is class "
                               f"{entry[1]!r} of module {module!r}, but {f} is missing")
        found[str(f.relative_to(weights))] = _sha16(f)
    return found


def check_weights(spec, weights: Path) -> dict:
    """Read ``model_index.json`` and check every component's folder, config and weight file;
    -> the index. A LabelerError names the folder and the file that is missing."""
    index_file = weights / "model_index.json"
    if not index_file.is_file():
        raise LabelerError(
            f"labeler {spec.name!r} (stable_normal): no weights at {weights} ({index_file.name} missing). Put a copy "
            f"of Stable-X/yoso-normal-v0-3 there, e.g. {download_hint('Stable-X/yoso-normal-v0-3', weights)} "
            "on a machine with access")
    try:
        index = json.loads(index_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise LabelerError(f"labeler {spec.name!r}: {index_file} is not valid JSON ({e})") from None
    if not isinstance(index, dict):
        raise LabelerError(f"labeler {spec.name!r}: {index_file}: expected a JSON object")
    for comp, needed in COMPONENTS.items():
        folder = weights / comp
        if comp not in index:
            raise LabelerError(f"labeler {spec.name!r}: {index_file} lists no {comp!r} component; "
                               "is this the yoso-normal-v0-3 folder?")
        if not (folder / needed).is_file():
            raise LabelerError(f"labeler {spec.name!r}: component {comp!r}: {folder / needed} is missing")
        if comp in _WITH_WEIGHTS and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise LabelerError(f"labeler {spec.name!r}: component {comp!r}: no weight file (*.safetensors) in "
                               f"{folder}")
    return index


def variant_of(weights: Path) -> str | None:
    """``"fp16"`` when the folder's weights are fp16 variant files (``*.fp16.safetensors``), as
    released; then diffusers must be asked for that variant to find them."""
    return "fp16" if any(weights.glob("*/*.fp16.safetensors")) or any(weights.glob("*/*.fp16.bin")) else None


def diffusers_compat() -> list[str]:
    """Module paths StableNormal's code imports that this diffusers moved: the released
    weights' ControlNet (``controlnet/controlnetvae.py``) imports ``diffusers.models.controlnet``,
    which diffusers 0.31 moved to ``diffusers.models.controlnets.controlnet`` and later removed.
    Aliased here when missing; -> the aliases in effect in this process (recorded in the json)."""
    import importlib

    old, new = "diffusers.models.controlnet", "diffusers.models.controlnets.controlnet"
    if old not in _ALIASES:
        try:
            found = importlib.util.find_spec(old) is not None
        except ImportError:
            found = False
        if not found:
            try:
                sys.modules[old] = importlib.import_module(new)
                _ALIASES[old] = f"{old} = {new}"
            except ImportError:
                pass
    return sorted(_ALIASES.values())


_ALIASES: dict[str, str] = {}


def load_pipeline_class(spec, clone: Path):
    """``YOSONormalsPipeline`` from ``<clone>/stablenormal/pipeline_yoso_normal.py``, imported
    as a file (not through ``hubconf.py``, nor the clone's package)."""
    path = clone / PIPELINE_FILE
    name = "lavin_stablenormal_yoso_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    if name in sys.modules:
        return getattr(sys.modules[name], PIPELINE_CLASS)
    spec_ = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec_)
    sys.modules[name] = module  # its dataclasses look their module up while being defined
    try:
        spec_.loader.exec_module(module)
    except ImportError as e:
        del sys.modules[name]
        import diffusers

        raise LabelerError(f"labeler {spec.name!r}: {path} failed to import ({type(e).__name__}: {e}): a package "
                           f"missing, or a name this diffusers {diffusers.__version__} does not have (StableNormal "
                           "was written for diffusers 0.28)") from None
    except Exception as e:  # noqa: BLE001 - the user's clone: say which file failed
        del sys.modules[name]
        raise LabelerError(f"labeler {spec.name!r}: {path} failed to import: {type(e).__name__}: {e}") from None
    if not hasattr(module, PIPELINE_CLASS):
        del sys.modules[name]
        raise LabelerError(f"labeler {spec.name!r}: {path} defines no {PIPELINE_CLASS}; is {clone} a clone of "
                           "Stable-X/StableNormal?")
    return getattr(module, PIPELINE_CLASS)


class StableNormal(Labeler):
    """StableNormal-turbo: ``clone`` a local clone of Stable-X/StableNormal, ``model`` its
    ``yoso-normal-v0-3`` weights folder; ``processing_size`` / ``fit`` for mixed-size batches."""

    output = "normals"
    # The Stable-X/StableNormal README carries an Apache-2.0 licence badge; the weights'
    # Hugging Face card (Stable-X/yoso-normal-v0-3) governs.
    LICENCE = "Apache-2.0 (per the Stable-X/StableNormal README; confirm on the weights' model card)"

    @classmethod
    def preflight(cls, spec) -> None:
        cls._checked(spec)

    @staticmethod
    def _checked(spec) -> tuple[Path, Path, dict[str, str], type]:
        """Everything checked before any weight is read -> (clone, weights folder, its remote
        code as :func:`remote_code` gives it, the clone's pipeline class)."""
        require(spec, "torch", "diffusers", "transformers",
                hint="run `scripts/setup.sh dev,labelers` or `pip install -e .[labelers]`")
        clone, weights = locate(spec)
        if not (clone / PIPELINE_FILE).is_file():
            raise LabelerError(
                f"labeler {spec.name!r}: no StableNormal code at {clone} ({PIPELINE_FILE} missing): "
                f"`git clone https://github.com/Stable-X/StableNormal {clone}`"
                + ("" if spec.clone else "; or set `clone:` to the clone and `model:` to the yoso-normal-v0-3 weights"))
        remote = remote_code(spec, weights, check_weights(spec, weights))
        pipeline_class = load_pipeline_class(spec, clone)  # imports only: a version problem shows at start-up
        if spec.processing_size is not None and spec.processing_size % 8:
            raise LabelerError(f"labeler {spec.name!r}: processing_size {spec.processing_size} must be a multiple of 8 "
                               f"(the VAE's downsampling), e.g. {8 * round(spec.processing_size / 8)}")
        return clone, weights, remote, pipeline_class

    def __init__(self, spec):
        super().__init__(spec)
        import torch

        self.torch = torch
        self.clone, self.weights, self.remote, pipeline_class = self._checked(spec)
        self.variant = variant_of(self.weights)
        self.device, self.dtype = device_and_dtype(spec.num_gpus > 0, spec.dtype)
        self.compat = diffusers_compat()
        try:
            self.pipe = pipeline_class.from_pretrained(
                str(self.weights), local_files_only=True, torch_dtype=self.dtype, variant=self.variant,
                trust_remote_code=bool(self.remote), t_start=0, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)
        except (OSError, ValueError, TypeError, AttributeError, ImportError, RuntimeError) as e:
            raise LabelerError(f"labeler {spec.name!r}: cannot load {self.weights} with {self.clone / PIPELINE_FILE}: "
                               f"{type(e).__name__}: {e}") from None
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        # The released pipeline encodes its empty prompt once, for one image, and caches it;
        # cross-attention does not broadcast it over a batch, so we hand it over at each batch's size.
        with torch.inference_mode():
            self.prompt = self.pipe.encode_prompt(getattr(self.pipe, "prompt", ""), self.device, 1, False)[0]
        self.hash = weight_hash(self.weights)
        self.code_hash = _sha16(self.clone / PIPELINE_FILE)

    def info(self) -> dict:
        return dict(super().info(), weight_hash=self.hash, variant="turbo", clone=str(self.clone),
                    pipeline_file=str(PIPELINE_FILE), pipeline_sha256=self.code_hash, remote_code=self.remote,
                    trust_remote_code=sorted(self.remote), weights_variant=self.variant, dtype=str(self.dtype),
                    seed=SEED, processing=self.processing(),
                    weights=str(self.weights), compat=self.compat,
                    frame="x right, y up, z towards the camera (StableNormal's x left, negated)")

    def processing(self) -> dict:
        if self.spec.processing_size is not None:
            return {"size": self.spec.processing_size, "fit": self.spec.fit, "batching": "fixed"}
        return {"size": self.pipe.default_processing_resolution, "fit": "keep_aspect", "batching": "same_size"}

    def forward(self, images: np.ndarray, resolution: int | None) -> np.ndarray:
        """(N, H, W, 3) uint8 of one size -> (N, H, W, 3) float32 normals in StableNormal's frame,
        the pipeline processing them at ``resolution`` (longer side; None: its default)."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device, torch.float32) / 255
        n = len(images)
        self.pipe.prompt_embeds = self.prompt.expand(n, -1, -1)
        with torch.inference_mode(), torch.random.fork_rng(devices=[] if self.device == "cpu" else [self.device]):
            torch.manual_seed(SEED)
            gen = torch.Generator(device=self.device).manual_seed(SEED)
            res = self.pipe(x.to(self.dtype), processing_resolution=resolution, match_input_resolution=True,
                            batch_size=n, output_type="np", generator=gen)
        pred = np.asarray(res.prediction, np.float32)
        if pred.shape != (n, *images.shape[1:3], 3):
            raise RuntimeError(f"{PIPELINE_CLASS} returned predictions of shape {pred.shape} for {n} images of "
                               f"{images.shape[1]}x{images.shape[2]}")
        return pred

    def label(self, inputs: list[LabelInput]) -> list[np.ndarray]:
        images = [x.image for x in inputs]
        size, fit = self.spec.processing_size, self.spec.fit
        out: list[np.ndarray | None] = [None] * len(images)
        for idx in forward_batches(images, self.spec.batch_size, fixed=size is not None):
            if size is None:
                pred = self.forward(np.stack([images[i] for i in idx]), None)
            else:
                pred = self.forward(np.stack([fit_square(images[i], size, fit)[0] for i in idx]), size)
            self.count_forward(len(idx))
            for i, p in zip(idx, pred):
                if size is not None:
                    p = unfit(p, square_box(*images[i].shape[:2], size, fit), images[i].shape[:2])
                out[i] = unit_vectors(p * FRAME)
        return out
