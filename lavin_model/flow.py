"""Rectified flow for J-DiT (docs/design.md, The released models).

x_t = t·x1 + (1−t)·x0 with x1 the data latent and x0 Gaussian noise; the model predicts the
velocity v = x1 − x0; t = sigmoid(N(0, 1)); loss = MSE + 0.1·L1. Sampling integrates from
noise (t = 0) to data (t = 1) with Euler steps over time points denser near noise, with
classifier-free guidance whose negative replaces the whole context by one all-zero latent
frame (so training drops the context to that frame at some rate).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rank_generator(seed: int, rank: int, device="cpu") -> torch.Generator:
    """Noise generator of one data-parallel rank: ranks draw different noise."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank)


def sample_t(batch: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """(B,) times t = sigmoid(n), n ~ N(0, 1): logit-normal, centred on 0.5."""
    return torch.sigmoid(torch.randn(batch, generator=generator, device=device))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t·x1 + (1 − t)·x0, t (B,) broadcast over the other dimensions."""
    tt = t.view(-1, *([1] * (x1.ndim - 1))).to(x1.dtype)
    return tt * x1 + (1 - tt) * x0


def null_context(cond: torch.Tensor) -> torch.Tensor:
    """The CFG negative: one all-zero latent frame, (B, C, 1, H, W). Training drops a batch's
    context to it at a set rate (``lavin_model.data``)."""
    return torch.zeros_like(cond[:, :, :1])


def flow_loss(model: Velocity, x1: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None,
              t: torch.Tensor | None = None, x0: torch.Tensor | None = None) -> torch.Tensor:
    """MSE + 0.1·L1 between the predicted and the true velocity at a random t."""
    if t is None:
        t = sample_t(x1.shape[0], generator, x1.device)
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    v = x1 - x0
    pred = model(interpolate(x0, x1, t), t, cond)
    err = (pred.float() - v.float())
    return err.pow(2).mean() + 0.1 * err.abs().mean()


def time_points(n: int = 20) -> torch.Tensor:
    """n points from 0 (noise) to 1 (data), denser near noise: t_i = (i / (n − 1))²."""
    return torch.linspace(0, 1, n) ** 2


def guided_velocity(model: Velocity, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                    scale: float = 1.5) -> torch.Tensor:
    """v = v(∅) + scale · (v(cond) − v(∅)), ∅ = one all-zero context frame."""
    v_c = model(x, t, cond)
    if scale == 1.0:
        return v_c
    v_u = model(x, t, null_context(cond))
    return v_u + scale * (v_c - v_u)


@torch.no_grad()
def sample(model: Velocity, cond: torch.Tensor, shape: tuple[int, ...], steps: int = 20, cfg_scale: float = 1.5,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler from noise to data over ``steps`` time points; returns the predicted latent."""
    x = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
    ts = time_points(steps).to(cond.device)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        t = torch.full((shape[0],), float(t0), device=cond.device)
        x = x + (t1 - t0) * guided_velocity(model, x, t, cond, cfg_scale)
    return x
