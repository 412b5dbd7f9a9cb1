"""ST-VAE latents by value: the moments encode_latents stores, the latent normalisation and
its inverse, and the statistics recorded in the latent json.

Expected values are computed here, independently of the code under test: the VAE's own
``encode(x).latent_dist.parameters`` on the decoded pair images, and the normalisation
``z_norm = (z - SHIFT) * SCALE`` written out with the released constants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lavin_data import stvae
from lavin_data.codecs import decode_npy, encode_png
from lavin_data.shards import ShardWriter, iter_tar_samples
from lavin_data.stvae import decode_latent, decode_to_uint8, mean_latent, sample_latent

TINY = {"block_out_channels": (32, 64, 64, 64), "layers_per_block": 1}
RES = 64
# The released latent statistics (LaVin-DiT's ST-VAE), written out rather than imported.
RELEASED_SHIFT = 0.032470703125
RELEASED_SCALE = 1.08936170213


def _image(seed: int) -> np.ndarray:
    """A smooth, seed-specific RGB picture (a VAE sees structure, not only noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
    big = np.kron(small, np.ones((RES // 8, RES // 8, 1), np.float32))
    return np.clip(big + rng.normal(0, 10, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Three pairs (distinct input and target images) encoded by Encoder.encode_shard in
    batches of two, so the second batch holds one pair."""
    from lavin_data.encode_latents import Encoder

    tmp = tmp_path_factory.mktemp("stvae_values")
    src, dst = tmp / "pairs" / "t" / "s-000000.tar", tmp / "lat" / "t" / "s-000000.tar"
    pairs = {}
    w = ShardWriter(src, stage="render")
    for k in range(3):
        key = f"t_{k:03d}"
        a, b = _image(10 + k), _image(100 + k)
        pairs[key] = (a, b)
        w.add(key, {"input.png": encode_png(a), "target.png": encode_png(b),
                    "json": json.dumps({"task": "t", "base_key": key}).encode()})
    w.commit({})
    torch.manual_seed(0)
    enc = Encoder(None, TINY, "cpu", "fp32")
    enc.encode_shard(src, dst, RES, batch_size=2)
    return enc.vae, pairs, dict(iter_tar_samples(dst))


def _reference_moments(vae, img: np.ndarray) -> np.ndarray:
    """The VAE's posterior parameters for one uint8 image, computed here: [-1, 1] = u8 / 127.5 - 1."""
    x = torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None, :, None]
    with torch.no_grad():
        return vae.encode(x).latent_dist.parameters[0].float().numpy()


def test_encode_shard_stores_each_images_own_moments(encoded):
    vae, pairs, got = encoded
    assert sorted(got) == sorted(pairs)
    for key, (a, b) in pairs.items():
        # The pair images go through PNG losslessly: what the encoder decoded is a and b.
        ref_in, ref_tgt = _reference_moments(vae, a), _reference_moments(vae, b)
        assert ref_in.shape == (32, 1, RES // 8, RES // 8)
        # The two images differ, so their moments do too: a swap would be visible.
        assert np.abs(ref_in - ref_tgt).max() > 0.05
        stored_in = decode_npy(got[key]["input_moments.npy"])
        stored_tgt = decode_npy(got[key]["target_moments.npy"])
        assert stored_in.dtype == stored_tgt.dtype == np.float16
        tol = dict(rtol=2e-3, atol=2e-3)  # fp16 storage
        assert np.allclose(stored_in.astype(np.float32), ref_in, **tol), key
        assert np.allclose(stored_tgt.astype(np.float32), ref_tgt, **tol), key
        # Mean channels first, then log-variance, as the encoder emits them.
        assert np.allclose(stored_tgt[16:].astype(np.float32), ref_tgt[16:], **tol)


def test_latent_json_records_the_statistics_that_sample_latent_uses(encoded):
    _vae, pairs, got = encoded
    for key in pairs:
        meta = json.loads(got[key]["json"])
        assert (meta["shift"], meta["scale"]) == (stvae.SHIFT, stvae.SCALE) == (RELEASED_SHIFT, RELEASED_SCALE)
        assert meta["resolution"] == RES and meta["frames"] == 1 and meta["pair"]["base_key"] == key
        mom = decode_npy(got[key]["target_moments.npy"]).astype(np.float32)
        mean, logvar = mom[:16], mom[16:]
        # The latent a trainer builds from the json's statistics ...
        eps = torch.randn((1, 16) + mean.shape[1:], generator=torch.Generator().manual_seed(3)).numpy()[0]
        by_json = (mean + np.exp(0.5 * np.clip(logvar, -30, 20)) * eps - meta["shift"]) * meta["scale"]
        # ... is the one sample_latent gives (same noise), and its mean the one mean_latent gives.
        z = sample_latent(torch.from_numpy(mom)[None], torch.Generator().manual_seed(3))[0].numpy()
        assert np.allclose(z, by_json, rtol=1e-5, atol=1e-5)
        assert np.allclose(mean_latent(torch.from_numpy(mom)[None])[0].numpy(),
                           (mean - meta["shift"]) * meta["scale"], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- normalisation


def _moments(mean: list[float], logvar: float) -> torch.Tensor:
    """(1, 32, 1, 1, len(mean)) moments: the 16 mean channels hold ``mean`` (channel c adds c),
    every log-variance is ``logvar``."""
    m = torch.tensor(mean, dtype=torch.float32)[None, :] + torch.arange(16, dtype=torch.float32)[:, None]
    return torch.cat([m, torch.full_like(m, logvar)])[None, :, None, None, :]


def test_sample_and_mean_latent_normalise_by_hand():
    mom = _moments([1.0, -0.5, 0.032470703125], logvar=-200.0)  # std = exp(-15): the sample is the mean
    expected = np.array([[(1.0 + c - 0.032470703125) * 1.08936170213, (-0.5 + c - 0.032470703125) * 1.08936170213,
                          c * 1.08936170213] for c in range(16)])
    for z in (sample_latent(mom, torch.Generator().manual_seed(0)), mean_latent(mom)):
        assert z.shape == (1, 16, 1, 1, 3)
        assert np.allclose(z[0, :, 0, 0].numpy(), expected, rtol=1e-6, atol=1e-6)
    # Channel 0 by hand: (1 - 0.032470703125) * 1.08936170213 = 1.0539893...
    assert abs(float(mean_latent(mom)[0, 0, 0, 0, 0]) - 1.0539893617) < 1e-6


def test_sample_latent_noise_has_the_posterior_std():
    """std = exp(logvar / 2): logvar log 4 gives std 2, so the sample is mean + 2 eps."""
    mom = _moments([0.0] * 4, logvar=float(np.log(4.0)))
    z = sample_latent(mom, torch.Generator().manual_seed(5))
    eps = torch.randn((1, 16, 1, 1, 4), generator=torch.Generator().manual_seed(5))
    mean = mom[:, :16]
    assert torch.allclose(z, (mean + 2.0 * eps - 0.032470703125) * 1.08936170213, atol=1e-5)


class RecordingVAE:
    """A stand-in VAE whose decode records its input and returns it as the 'pixels'."""

    def __init__(self):
        self.seen = None
        self._p = torch.zeros(1, dtype=torch.float32)

    def parameters(self):
        return iter([self._p])

    def decode(self, z):
        self.seen = z.clone()

        class Out:
            sample = z * 0.1  # inside [-1, 1] for the values used here

        return Out()


def test_decode_latent_divides_by_scale_then_adds_shift():
    z_norm = torch.tensor([1.0, -2.0, 0.5, 0.0]).reshape(1, 1, 1, 1, 4).repeat(1, 16, 1, 1, 1)
    vae = RecordingVAE()
    out = decode_latent(vae, z_norm)
    expected = np.array([1.0, -2.0, 0.5, 0.0]) / 1.08936170213 + 0.032470703125
    assert vae.seen.dtype == torch.float32
    assert np.allclose(vae.seen[0, 3, 0, 0].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert np.allclose(out[0, 3, 0, 0].numpy(), 0.1 * expected, rtol=1e-6, atol=1e-7)
    # A latent made from moments decodes from the moments' mean: normalise then denormalise.
    mom = _moments([0.25, -1.5, 3.0], logvar=-200.0)
    decode_latent(vae, mean_latent(mom))
    assert torch.allclose(vae.seen, mom[:, :16], atol=1e-5)


def test_decode_latent_feeds_the_real_vae_the_denormalised_latent():
    torch.manual_seed(0)
    vae = stvae.build_stvae(TINY)
    torch.manual_seed(1)
    z_norm = torch.randn(1, 16, 1, 4, 4)
    with torch.no_grad():
        by_hand = vae.decode(z_norm / 1.08936170213 + 0.032470703125).sample.clamp(-1, 1)
        without_shift = vae.decode(z_norm / 1.08936170213).sample.clamp(-1, 1)
    got = decode_latent(vae, z_norm)
    assert got.shape == (1, 3, 1, 32, 32)
    assert torch.allclose(got, by_hand, atol=1e-5)
    assert (got - without_shift).abs().max() > 1e-4  # the shift is visible in the pixels


def test_decode_to_uint8_maps_minus_one_to_zero_and_one_to_255():
    class Fixed(RecordingVAE):
        def decode(self, z):
            class Out:
                sample = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 1, 4).expand(1, 3, 1, 2, 4).clone()
                sample[:, 1] *= -1  # channel G reversed: the layout must stay channel-last, RGB

            return Out()

    img = decode_to_uint8(Fixed(), torch.zeros(1, 16, 1, 2, 4))
    assert img.shape == (1, 2, 4, 3) and img.dtype == np.uint8
    assert img[0, 0, :, 0].tolist() == [0, 128, 255, 255] and img[0, 1, :, 2].tolist() == [0, 128, 255, 255]
    assert img[0, 0, :, 1].tolist() == [255, 128, 0, 0]
