"""Tiny random models built from configs and saved like hub downloads, so that tests and
benchmarks load them through the same code path as real weights (no hub access needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lavin_data.cli import HelpFormatter


def tiny_depth_anything(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """A random Depth-Anything V2: ``tiny`` (test-sized), ``small`` or ``large`` (the architectures
    of Depth-Anything-V2-Small, 25M parameters, and -Large, 335M; 518 px input), its weights drawn from ``seed``
    (the process's own torch seed differs from run to run, and so would the model)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessorPil

    if size == "tiny":
        bb = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=56,
                  out_features=["stage1", "stage2", "stage3", "stage4"])
        head = dict(reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                    head_hidden_size=8)
        side = 56
    elif size == "small":
        bb = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518,
                  out_features=["stage3", "stage6", "stage9", "stage12"])
        head = dict(reassemble_hidden_size=384, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64,
                    head_hidden_size=32)
        side = 518
    elif size == "large":  # Depth-Anything-V2-Large: ViT-L/14, 335M parameters
        bb = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518,
                  out_features=["stage5", "stage12", "stage18", "stage24"])
        head = dict(reassemble_hidden_size=1024, neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256,
                    head_hidden_size=32)
        side = 518
    else:
        raise ValueError(f"size must be 'tiny', 'small' or 'large', got {size!r}")
    path = Path(path)
    cfg = DepthAnythingConfig(backbone_config=Dinov2Config(patch_size=14, reshape_hidden_states=False, **bb),
                              patch_size=14, **head)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(cfg)
    model.save_pretrained(path)
    DPTImageProcessorPil(size={"height": side, "width": side}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         do_pad=False).save_pretrained(path)
    return path


def tiny_marigold_normals(path: str | Path) -> Path:
    """A random MarigoldNormalsPipeline (UNet, VAE, DDIM, a 2-layer CLIP text encoder and a
    minimal CLIP tokenizer), saved with ``save_pretrained``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldNormalsPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, layers_per_block=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                                num_hidden_layers=2, vocab_size=64, max_position_embeddings=77,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1))
    tokenizer = _tiny_clip_tokenizer(path.parent / f".{path.name}-tokenizer-src")
    pipe = MarigoldNormalsPipeline(unet=unet, vae=vae, scheduler=DDIMScheduler(), text_encoder=text_encoder,
                                   tokenizer=tokenizer, prediction_type="normals", default_denoising_steps=2,
                                   default_processing_resolution=32)
    pipe.save_pretrained(path)
    return path


def _tiny_clip_tokenizer(folder: Path):
    """A CLIP tokenizer of a 54-entry vocabulary (start, end, a-z): enough for empty and
    one-word prompts; written to ``folder`` (its vocab.json and merges.txt)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


# A stand-in for StableNormal's stablenormal/pipeline_yoso_normal.py (we may not copy theirs):
# the released class's name, constructor and call, and its algorithm on whatever diffusers
# components it is loaded with: the image's VAE latents condition the ControlNet, one UNet step
# from zero latents at t_start, VAE decode, unit normals at the input's size. Like the released
# one, it encodes its prompt once, for one image, and caches that.
YOSO_STANDIN = '''"""Stand-in for StableNormal's YOSO normals pipeline, written by lavin_data.testing."""
from dataclasses import dataclass

import torch
from diffusers.pipelines.controlnet import StableDiffusionControlNetPipeline
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from diffusers.utils import BaseOutput


@dataclass
class YosoNormalsOutput(BaseOutput):
    prediction: object
    latent: object
    gaus_noise: object


class YOSONormalsPipeline(StableDiffusionControlNetPipeline):
    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker=True, default_denoising_steps=1,
                 default_processing_resolution=768, prompt="", empty_text_embedding=None, t_start=401):
        super().__init__(vae, text_encoder, tokenizer, unet, controlnet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.image_processor = MarigoldImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.default_denoising_steps = default_denoising_steps
        self.default_processing_resolution = default_processing_resolution
        self.prompt = prompt
        self.prompt_embeds = None
        self.t_start = t_start

    @torch.no_grad()
    def __call__(self, image, processing_resolution=None, match_input_resolution=True,
                 resample_method_input="bilinear", resample_method_output="bilinear", batch_size=1,
                 num_images_per_prompt=1, generator=None, output_type="np", **kwargs):
        device, dtype = self._execution_device, self.dtype
        if processing_resolution is None:
            processing_resolution = self.default_processing_resolution
        if self.prompt_embeds is None:
            self.prompt_embeds, _ = self.encode_prompt(self.prompt, device, num_images_per_prompt, False)
        image, padding, original_resolution = self.image_processor.preprocess(
            image, processing_resolution, resample_method_input, device, dtype)
        latent = torch.cat([self.vae.encode(image[i:i + batch_size]).latent_dist.mode()
                            for i in range(0, image.shape[0], batch_size)]) * self.vae.config.scaling_factor
        pred_latent = torch.zeros_like(latent)
        down, mid = self.controlnet(latent, self.t_start, encoder_hidden_states=self.prompt_embeds,
                                    conditioning_scale=1.0, guess_mode=False, return_dict=False)
        latent_x = self.unet(pred_latent, self.t_start, encoder_hidden_states=self.prompt_embeds,
                             down_block_additional_residuals=down, mid_block_additional_residual=mid,
                             return_dict=False)[0]
        prediction = self.vae.decode(latent_x / self.vae.config.scaling_factor, return_dict=False)[0]
        prediction = self.normalize_normals(prediction)
        prediction = self.image_processor.unpad_image(prediction, padding)
        prediction = self.image_processor.resize_antialias(prediction, original_resolution, resample_method_output,
                                                           is_aa=False)
        prediction = self.normalize_normals(prediction)
        if output_type == "np":
            prediction = self.image_processor.pt_to_numpy(prediction)
        return YosoNormalsOutput(prediction=prediction, latent=latent_x, gaus_noise=pred_latent)

    @staticmethod
    def normalize_normals(normals, eps=1e-6):
        return normals / normals.norm(dim=1, keepdim=True).clamp(min=eps)
'''

# The weights folder's own ControlNet class (diffusers loads it as remote code): conditioned on
# the image latents it is given as its sample, as the YOSO pipeline calls it.
YOSO_CONTROLNET = '''from diffusers.models.controlnet import ControlNetModel  # the path the released file imports


class LatentControlNet(ControlNetModel):
    def forward(self, sample, timestep, encoder_hidden_states, conditioning_scale=1.0, guess_mode=False,
                return_dict=True, **kwargs):
        return super().forward(sample, timestep, encoder_hidden_states, controlnet_cond=sample,
                               conditioning_scale=conditioning_scale, guess_mode=guess_mode, return_dict=return_dict)
'''


def _module_from_file(path: Path, text: str):
    """Write ``text`` (one of our own constants) to ``path`` and import it as a module, as
    diffusers will when it loads the component's class from that file."""
    import importlib.util

    from lavin_data.labelers.stable_normal import diffusers_compat

    diffusers_compat()  # the file imports diffusers.models.controlnet, as the released one does
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"lavin_testing_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_stable_normal(weights: str | Path, clone: str | Path, size: str = "tiny", seed: int = 0) -> tuple[Path, Path]:
    """A random StableNormal-turbo: ``weights`` laid out as Stable-X/yoso-normal-v0-3 is
    (``model_index.json``; vae, unet, controlnet, text_encoder, tokenizer, scheduler; fp16
    variant weight files; the ControlNet's class as remote code in ``controlnet/``) and
    ``clone`` holding :data:`YOSO_STANDIN` as ``stablenormal/pipeline_yoso_normal.py`` beside a
    ``hubconf.py`` that imports torchvision, as the released one does. ``tiny``: test-sized;
    ``real``: the released architecture (SD-2 UNet 865M parameters, its ControlNet encoder,
    the SD VAE, the OpenCLIP-H text encoder), 2.6 GB of fp16 files. -> (weights, clone)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    weights, clone = Path(weights), Path(clone)
    (clone / "stablenormal").mkdir(parents=True, exist_ok=True)
    (clone / "stablenormal" / "pipeline_yoso_normal.py").write_text(YOSO_STANDIN)
    (clone / "hubconf.py").write_text("import torchvision  # as the released hubconf.py: never imported by us\n")
    if size == "tiny":
        blocks = dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      layers_per_block=1, cross_attention_dim=16, norm_num_groups=8, attention_head_dim=4)
        up = ("UpBlock2D", "CrossAttnUpBlock2D")
        vae_cfg = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8)
        text = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2)
    elif size == "real":
        blocks = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024,
                      down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), norm_num_groups=32,
                      attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
        vae_cfg = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
        text = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                    hidden_act="gelu", projection_dim=512)
    else:
        raise ValueError(f"size must be 'tiny' or 'real', got {size!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, up_block_types=up, **blocks)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * len(vae_cfg["block_out_channels"]),
                            up_block_types=("UpDecoderBlock2D",) * len(vae_cfg["block_out_channels"]), **vae_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408 if size == "real" else 64,
                                                    max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                                    pad_token_id=1, **text))
        controlnet = _module_from_file(weights / "controlnet" / "yoso_controlnet.py", YOSO_CONTROLNET).LatentControlNet(
            in_channels=4, conditioning_channels=4, conditioning_embedding_out_channels=(16,), **blocks)
    for name, model in (("unet", unet), ("vae", vae), ("controlnet", controlnet), ("text_encoder", text_encoder)):
        model.half().save_pretrained(weights / name, variant="fp16")
    _tiny_clip_tokenizer(weights.parent / f".{weights.name}-tokenizer-src").save_pretrained(weights / "tokenizer")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="v_prediction").save_pretrained(weights / "scheduler")
    index = {"_class_name": "YOSONormalsPipeline", "_diffusers_version": "0.30.0",
             "controlnet": ["yoso_controlnet", "LatentControlNet"], "feature_extractor": [None, None],
             "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "default_processing_resolution": 32 if size == "tiny" else 768}
    (weights / "model_index.json").write_text(json.dumps(index, indent=1))
    return weights, clone


def synthetic_latent_shards(root: str | Path, tasks: int = 3, shards: int = 4, per_shard: int = 8,
                            latent: int = 8, frames: int = 1, seed: int = 0, logvar: float = -6.0,
                            variants: int = 1, val_every: int = 0) -> Path:
    """Latent shards laid out like ``lavin_data.encode_latents`` output, without a VAE:
    ``<root>/task<i>/s-00000<j>.tar`` with fp16 moments (32, frames, latent, latent). Each
    task's target mean is a fixed channel mix of its input mean (log-variance ``logvar``), so a
    model can learn the tasks from context. For loader tests and training benchmarks.

    ``variants``: consecutive samples per source item (json ``item``, like the variants of
    one image); ``val_every``: every k-th item is in the ``val`` split (0: none), recorded in
    the json and the index as encode_latents records it."""
    import numpy as np

    from lavin_data.codecs import encode_npy
    from lavin_data.shards import ShardWriter

    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(tasks):
        mix = rng.normal(size=(16, 16)).astype(np.float32) / 4.0
        for j in range(shards):
            w = ShardWriter(root / f"task{i}" / f"s-{j:06d}.tar", stage="encode_latents")
            for k in range(per_shard):
                mean = rng.normal(size=(16, frames, latent, latent)).astype(np.float32)
                tgt = np.einsum("oc,cthw->othw", mix, mean)
                lv = np.full_like(mean, logvar)
                n_item = (j * per_shard + k) // variants
                item = f"item{n_item:05d}"
                split = "val" if val_every and n_item % val_every == val_every - 1 else "train"
                w.add(f"t{i}_{j:03d}_{k:04d}", {
                    "input_moments.npy": encode_npy(np.concatenate([mean, lv]).astype(np.float16)),
                    "target_moments.npy": encode_npy(np.concatenate([tgt, lv]).astype(np.float16)),
                    "json": json.dumps({"task": f"task{i}", "synthetic": True, "split": split,
                                        "item": item}).encode()}, split=split)
            w.commit({"stage": "encode_latents", "synthetic": True})
    return root


def restamp_stats(tar) -> None:
    """Record a shard tar's current size and hash in its stats, after a test changed the tar
    on purpose: what reads its members then sees the change, instead of refusing the shard
    as changed after its commit (:func:`lavin_data.shards.shard_done`)."""
    from lavin_data.shards import file_sha256, stats_path

    p = stats_path(tar)
    stats = json.loads(p.read_text())
    stats.update(bytes=os.path.getsize(tar), tar_sha256=file_sha256(tar))
    p.write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")


TINY_STVAE = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}


def tiny_stvae(path: str | Path, seed: int = 0, logvar: float | None = -10.0) -> Path:
    """A random-weight ST-VAE of the test architecture (:data:`TINY_STVAE`) saved at ``path``:
    in the released format (``{"state_dict": ...}``) when it ends in ``.pt``, else as a
    diffusers folder (``config.json`` + weights), which every command reads without
    ``--vae-config`` since its config says the architecture. With ``logvar``, its encoder's log-variance
    output is that constant: a random encoder's posterior is as wide as its prior (logvar
    about 0, std 1.09 in normalised units, against a spread of the means of 0.2-0.4), so
    posterior samples would be mostly noise and nothing learnable; a trained VAE's
    posterior is sharp, which ``-10`` (std 0.007) stands in for. None keeps the random one."""
    import torch

    from lavin_data.stvae import build_stvae

    torch.manual_seed(seed)
    vae = build_stvae(TINY_STVAE)
    if logvar is not None:
        conv = vae.encoder.conv_out.conv  # 32 output channels: 16 means, then 16 log-variances
        with torch.no_grad():
            conv.weight[16:] = 0.0
            conv.bias[16:] = logvar
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        torch.save({"state_dict": vae.state_dict()}, path)
    else:
        vae.save_pretrained(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m lavin_data.testing tiny-stvae DIR``: the tiny random ST-VAE of the README's
    walk-through and the tests (no released weights needed; its decodings are noise)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lavin_data.testing", description=main.__doc__.split(": ", 1)[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("what", choices=["tiny-stvae"], help="the model to write")
    ap.add_argument("path", help="a folder (diffusers layout) or a .pt file (released layout)")
    ap.add_argument("--seed", type=int, default=0, help="random weights from this seed")
    args = ap.parse_args(argv)
    print(tiny_stvae(args.path, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
