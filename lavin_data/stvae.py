"""The LaVin-DiT spatio-temporal VAE: ``diffusers.AutoencoderKLCogVideoX`` in the released
configuration (docs/design.md, The released models), with frame batching disabled so that clips are encoded whole,
and LaVin's latent normalisation ``z_norm = (z - SHIFT) * SCALE``.

Shapes: pixels (B, 3, T, H, W) in [-1, 1] with T = 1 (an image) or 1 + 4k (a clip);
posterior moments (B, 32, T', H/8, W/8) with T' = 1 + (T - 1) / 4, mean channels first,
then log-variance, as the encoder emits them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lavin_data.weights import CheckpointError, read_state_dict

SHIFT = 0.032470703125
SCALE = 1.08936170213
LATENT_CHANNELS = 16

RELEASED_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
    block_out_channels=(128, 256, 256, 512), latent_channels=LATENT_CHANNELS, layers_per_block=3,
    norm_num_groups=32,
)


def build_stvae(config: dict | None = None, checkpoint: str | os.PathLike | None = None):
    """The ST-VAE in eval mode, without gradients.

    config: overrides of the released architecture (tests use e.g.
    ``{"block_out_channels": (32, 64, 64, 64), "layers_per_block": 1}``); a diffusers
    folder given as ``checkpoint`` supplies its own ``config.json`` instead.
    checkpoint: the released ``stvae.pt`` (``torch.load(...)["state_dict"]``), a
    ``.safetensors`` file or a diffusers folder; loaded strictly, so a missing or
    unexpected key is a :class:`CheckpointError` naming the file and the keys.
    """
    from diffusers import AutoencoderKLCogVideoX

    cfg = dict(RELEASED_CONFIG, **(config or {}))
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and not ckpt.exists():
        raise CheckpointError(f"{ckpt}: checkpoint not found")
    if ckpt is not None and ckpt.is_dir() and (ckpt / "config.json").exists():
        cfg = dict(AutoencoderKLCogVideoX.load_config(str(ckpt)), **(config or {}))
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    vae = AutoencoderKLCogVideoX(**cfg)
    if ckpt is not None:
        sd = read_state_dict(ckpt)
        own = vae.state_dict()
        wrong = [f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model" for k, v in sd.items()
                 if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:  # load_state_dict would raise a RuntimeError listing every tensor, without the file
            raise CheckpointError(
                f"{ckpt}: its weights do not fit the ST-VAE architecture {'given' if config else 'released'}"
                f"{' (' + json.dumps(config) + ')' if config else ''}: {len(wrong)} tensor(s) of another shape, "
                f"e.g. {wrong[0]}. A VAE of another architecture needs its overrides (--vae-config '{{...}}', as "
                "it was built with), or save it as a diffusers folder, whose config.json says it")
        result = vae.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{ckpt}: does not match the ST-VAE architecture: {len(result.missing_keys)} missing key(s) "
                f"{result.missing_keys[:5]}, {len(result.unexpected_keys)} unexpected key(s) "
                f"{result.unexpected_keys[:5]}")
    # Encode and decode clips whole: the released encoder is reproduced only without the
    # class's frame batching (docs/design.md, The released models).
    vae.num_sample_frames_batch_size = 1 << 30
    vae.num_latent_frames_batch_size = 1 << 30
    vae.disable_tiling()
    vae.disable_slicing()
    vae.eval().requires_grad_(False)
    return vae


def check_frames(t: int) -> None:
    if t != 1 and (t - 1) % 4:
        raise ValueError(f"the ST-VAE takes T = 1 or 1 + 4k frames, got T = {t}")


@torch.inference_mode()
def encode_moments(vae, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> posterior moments (B, 2*16, T', H/8, W/8) (mean, logvar)."""
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"expected pixels (B, 3, T, H, W), got {tuple(x.shape)}")
    check_frames(x.shape[2])
    if x.shape[-1] % 8 or x.shape[-2] % 8:
        raise ValueError(f"H and W must be multiples of 8, got {x.shape[-2]}x{x.shape[-1]}")
    return vae.encode(x).latent_dist.parameters


def uint8_to_pixels(images, device=None, dtype=None) -> torch.Tensor:
    """Images (N, H, W, 3) uint8 (an array or a list of them) -> pixels (N, 3, 1, H, W) in
    [-1, 1] on ``device`` as ``dtype`` (default fp32): the VAE's input, one frame each."""
    import numpy as np

    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2)[:, :, None]
    return x.to(dtype or torch.float32) / 127.5 - 1.0


def encode_uint8(vae, images) -> torch.Tensor:
    """Images (N, H, W, 3) uint8 -> posterior moments (N, 32, 1, H/8, W/8), on the VAE's
    device and in its dtype (the inverse of :func:`decode_to_uint8`, up to the VAE)."""
    p = next(vae.parameters())
    return encode_moments(vae, uint8_to_pixels(images, p.device, p.dtype))


def sample_latent(moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Moments (B, 32, T', h, w) -> a normalised latent z_norm = (mean + std*eps - SHIFT) * SCALE."""
    mean, logvar = moments.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * eps - SHIFT) * SCALE


def mean_latent(moments: torch.Tensor) -> torch.Tensor:
    """The posterior mean, normalised: (mean - SHIFT) * SCALE."""
    return (moments.float().chunk(2, dim=1)[0] - SHIFT) * SCALE


@torch.inference_mode()
def decode_latent(vae, z_norm: torch.Tensor) -> torch.Tensor:
    """Normalised latent (B, 16, T', h, w) -> pixels (B, 3, T, 8h, 8w) in [-1, 1] (clamped)."""
    z = z_norm / SCALE + SHIFT
    return vae.decode(z.to(next(vae.parameters()).dtype)).sample.clamp(-1, 1)


def decode_to_uint8(vae, z_norm: torch.Tensor):
    """Normalised latents (B, 16, 1, h, w) -> images (B, 8h, 8w, 3) uint8 (first frame)."""
    x = decode_latent(vae, z_norm)[:, :, 0].permute(0, 2, 3, 1).float().cpu().numpy()
    import numpy as np

    return np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)
