"""The ST-VAE wrapper: released architecture, strict checkpoint loading, shapes."""

from __future__ import annotations

import json

import pytest
import torch

from lavin_data.stvae import (
    RELEASED_CONFIG,
    CheckpointError,
    build_stvae,
    decode_latent,
    encode_moments,
    mean_latent,
    sample_latent,
)
from tests.conftest import ROOT

TINY = {"block_out_channels": (32, 64, 64, 64), "layers_per_block": 1}


def test_released_architecture_has_exactly_the_released_names_and_shapes():
    from diffusers import AutoencoderKLCogVideoX

    ref = json.loads((ROOT / "lavin_model" / "reference" / "stvae_state_dict.json").read_text())
    with torch.device("meta"):  # shapes only: no memory, no time
        vae = AutoencoderKLCogVideoX(**RELEASED_CONFIG)
    ours = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert ours == ref


def test_released_format_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(0)
    a = build_stvae(TINY)
    torch.save({"state_dict": a.state_dict()}, tmp_path / "stvae.pt")
    b = build_stvae(TINY, tmp_path / "stvae.pt")
    x = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    assert torch.equal(encode_moments(a, x), encode_moments(b, x))
    from safetensors.torch import save_file

    save_file(a.state_dict(), str(tmp_path / "stvae.safetensors"))
    c = build_stvae(TINY, tmp_path / "stvae.safetensors")
    assert torch.equal(encode_moments(a, x), encode_moments(c, x))
    a.save_pretrained(tmp_path / "folder")
    d = build_stvae(checkpoint=tmp_path / "folder")  # the folder brings its own config
    assert torch.equal(encode_moments(a, x), encode_moments(d, x))


def test_checkpoint_with_a_missing_or_extra_key_is_a_clear_error(tmp_path):
    sd = build_stvae(TINY).state_dict()
    gone = next(iter(sd))
    torch.save({"state_dict": {k: v for k, v in sd.items() if k != gone}}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=rf"missing.pt: .*1 missing key\(s\) \['{gone}'\]"):
        build_stvae(TINY, tmp_path / "missing.pt")
    torch.save({"state_dict": dict(sd, extra=torch.zeros(1))}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"extra.pt: .*1 unexpected key\(s\) \['extra'\]"):
        build_stvae(TINY, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        build_stvae(TINY, tmp_path / "nope.pt")


@pytest.mark.parametrize("frames, latent_frames", [(1, 1), (9, 3), (17, 5)])
def test_encode_decode_shapes_for_images_and_clips(frames, latent_frames):
    torch.manual_seed(0)
    vae = build_stvae(TINY)
    x = torch.rand(2, 3, frames, 32, 48) * 2 - 1
    m = encode_moments(vae, x)
    assert m.shape == (2, 32, latent_frames, 4, 6) and m.dtype == torch.float32
    z = sample_latent(m, torch.Generator().manual_seed(0))
    assert z.shape == (2, 16, latent_frames, 4, 6)
    assert not torch.equal(z, mean_latent(m))  # a sample, not the mean
    y = decode_latent(vae, z)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1


def test_bad_frame_counts_and_sizes_are_refused():
    vae = build_stvae(TINY)
    with pytest.raises(ValueError, match="T = 1 or 1 \\+ 4k frames, got T = 4"):
        encode_moments(vae, torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        encode_moments(vae, torch.zeros(1, 3, 1, 30, 32))
