"""Tiny random models built from configs and saved like hub downloads, so that tests and
benchmarks load them through the same code path as real weights (no hub access needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lavin_data.cli import HelpFormatter


def tiny_depth_anything(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """A random Depth-Anything V2: ``tiny`` (test-sized) or ``small`` (the architecture of
    Depth-Anything-V2-Small, 25M parameters, 518 px input), its weights drawn from ``seed``
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
    else:
        raise ValueError(f"size must be 'tiny' or 'small', got {size!r}")
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
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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
    tok_dir = path.parent / f".{path.name}-tokenizer-src"
    tok_dir.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    pipe = MarigoldNormalsPipeline(unet=unet, vae=vae, scheduler=DDIMScheduler(), text_encoder=text_encoder,
                                   tokenizer=tokenizer, prediction_type="normals", default_denoising_steps=2,
                                   default_processing_resolution=32)
    pipe.save_pretrained(path)
    return path


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
