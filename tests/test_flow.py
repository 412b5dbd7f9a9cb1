"""Rectified flow: hand-computed values for the target, the loss, t-sampling and CFG."""

import torch

from lavin_model.flow import (
    flow_loss,
    guided_velocity,
    interpolate,
    null_context,
    rank_generator,
    sample,
    sample_t,
    time_points,
)


def test_interpolation_and_velocity_target_by_hand():
    x0, x1 = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 4.0]])
    t = torch.tensor([0.25])
    assert torch.allclose(interpolate(x0, x1, t), torch.tensor([[1.5, -0.5]]))  # 0.25*x1 + 0.75*x0
    # A model that predicts 0: the velocity error is x1 - x0 = (2, 6); MSE 20, L1 4 -> 20.4
    loss = flow_loss(lambda x, t, c: torch.zeros_like(x), x1, None, t=t, x0=x0)
    assert torch.isclose(loss, torch.tensor(20.0 + 0.1 * 4.0))
    # The exact velocity gives zero loss.
    assert flow_loss(lambda x, t, c: x1 - x0, x1, None, t=t, x0=x0) == 0


def test_t_is_logit_normal_and_ranks_draw_different_noise():
    t = sample_t(20000, torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() < 1 and abs(t.mean() - 0.5) < 0.01
    logit = torch.log(t / (1 - t))
    assert abs(logit.std() - 1) < 0.03
    a, b = torch.randn(4, generator=rank_generator(1, 0)), torch.randn(4, generator=rank_generator(1, 1))
    assert not torch.equal(a, b) and torch.equal(a, torch.randn(4, generator=rank_generator(1, 0)))


def test_cfg_combines_conditional_and_null_context():
    # A model whose velocity is the number of context frames: v(cond) = 3, v(null) = 1.
    model = lambda x, t, c: torch.full_like(x, float(c.shape[2]))  # noqa: E731
    x, cond = torch.zeros(1, 16, 1, 2, 2), torch.ones(1, 16, 3, 2, 2)
    v = guided_velocity(model, x, torch.zeros(1), cond, scale=1.5)
    assert torch.allclose(v, torch.full_like(x, 1 + 1.5 * (3 - 1)))  # 4.0
    n = null_context(cond)
    assert n.shape == (1, 16, 1, 2, 2) and not n.any()


def test_euler_sampler_reaches_the_data_on_a_straight_path():
    x1 = torch.randn(2, 16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    # On the straight path the velocity from (x, t) is (x1 - x) / (1 - t); Euler is exact.
    model = lambda x, t, c: (x1 - x) / (1 - t.view(-1, 1, 1, 1, 1)).clamp_min(1e-6)  # noqa: E731
    out = sample(model, torch.zeros(2, 16, 3, 4, 4), x1.shape, steps=20, cfg_scale=1.0)
    assert torch.allclose(out, x1, atol=1e-4)
    ts = time_points(20)
    assert ts[0] == 0 and ts[-1] == 1 and (ts[1] - ts[0]) < (ts[-1] - ts[-2])  # denser near noise
