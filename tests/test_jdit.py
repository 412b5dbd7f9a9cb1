"""J-DiT: released naming, zero init, joint bidirectional attention, shapes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lavin_model.jdit import (
    SIZES,
    JDiT,
    JointAttention,
    apply_rope,
    load_lavin_checkpoint,
    rope_3d,
    timestep_embedding,
)
from tests.conftest import ROOT


def test_released_size_has_exactly_the_released_names_and_shapes():
    ref = json.loads((ROOT / "lavin_model" / "reference" / "lavin_dit_3b_state_dict.json").read_text())
    with torch.device("meta"):
        model = JDiT.from_size("3.4B")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref
    assert abs(sum(math.prod(v) for v in ref.values()) / 1e9 - 3.40) < 0.01


def test_named_sizes_and_strict_loading_of_the_released_naming():
    expect = {"tiny": None, "0.1B": 0.1, "1B": 1.0, "3.4B": 3.4}
    for name in SIZES:
        with torch.device("meta"):
            n = sum(p.numel() for p in JDiT.from_size(name).parameters()) / 1e9
        assert expect[name] is None or abs(n - expect[name]) / expect[name] < 0.1, (name, n)
    torch.manual_seed(0)
    a, b = JDiT.from_size("tiny"), JDiT.from_size("tiny")
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.02)
    load_lavin_checkpoint(b, a.state_dict())
    x, t, c = torch.randn(2, 16, 1, 8, 8), torch.rand(2), torch.randn(2, 16, 3, 8, 8)
    assert torch.equal(a(x, t, c), b(x, t, c))
    sd = dict(a.state_dict())
    sd.pop("blocks.0.joint_attn.x_knorm.weight")
    with pytest.raises(ValueError, match=r"1 missing \['blocks.0.joint_attn.x_knorm.weight'\]"):
        load_lavin_checkpoint(b, sd)


def test_zero_initialised_model_outputs_zeros():
    model = JDiT.from_size("tiny")
    out = model(torch.randn(2, 16, 1, 8, 8), torch.rand(2), torch.randn(2, 16, 5, 8, 8))
    assert out.shape == (2, 16, 1, 8, 8) and torch.count_nonzero(out) == 0


def test_attention_is_bidirectional_across_streams():
    torch.manual_seed(0)
    model = JDiT.from_size("tiny")
    for p in model.parameters():  # leave zero init so that every path is live
        torch.nn.init.normal_(p, std=0.05)
    model.eval()
    x, t, c = torch.randn(1, 16, 1, 8, 8), torch.rand(1), torch.randn(1, 16, 3, 8, 8)
    base = model(x, t, c)
    c2 = c.clone()
    c2[0, :, 0, 0, 0] += 1.0  # one condition token
    assert not torch.allclose(model(x, t, c2), base)  # condition -> target
    # target -> condition: the condition stream's hidden state after a block depends on x
    blk = model.blocks[0]
    hc = model.cond_embedder(model.patchify(c))
    tt = model.t_embedder(t)
    cos, sin = rope_3d(model.positions(3, 1, 8, 8, "cpu"), model.head_dim)
    hx1 = model.x_embedder(model.patchify(x))
    hx2 = model.x_embedder(model.patchify(x + 1.0))
    c_out1, _ = blk(hc, hx1, tt + model.prompt_embed, tt + model.answer_embed, cos, sin)
    c_out2, _ = blk(hc, hx2, tt + model.prompt_embed, tt + model.answer_embed, cos, sin)
    assert not torch.allclose(c_out1, c_out2)


def test_timestep_embedding_and_rope_conventions():
    e = timestep_embedding(torch.tensor([0.0, 1.0]), 256)
    assert torch.allclose(e[0, :128], torch.ones(128)) and torch.allclose(e[0, 128:], torch.zeros(128))
    one = torch.tensor(1.0)
    assert torch.isclose(e[1, 0], torch.cos(one)) and torch.isclose(e[1, 128], torch.sin(one))
    # RoPE: relative positions only: <R(p) q, R(p) k> is the same for every shift p.
    hd = 12
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)
    dots = []
    for shift in (0, 3, 7):
        pos = torch.tensor([[shift, 2 * shift, shift + 1]])
        cos, sin = rope_3d(pos, hd)
        dots.append(float((apply_rope(q, cos, sin) * apply_rope(k, cos, sin)).sum()))
    assert max(dots) - min(dots) < 1e-4
    cos, sin = rope_3d(torch.zeros(1, 3, dtype=torch.long), hd)
    assert torch.allclose(apply_rope(q, cos, sin), q)  # position 0 is the identity


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = JDiT.from_size("tiny")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, c = torch.randn(2, 16, 1, 8, 8), torch.rand(2), torch.randn(2, 16, 3, 8, 8)
    model.train()
    model(x, t, c).square().mean().backward()
    # (the last block's condition-stream MLP never reaches the output: its gradient is None)
    g1 = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    assert sum(g is not None for g in g1) > 0.9 * len(g1)
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing = True
    model(x, t, c).square().mean().backward()
    for a, p in zip(g1, model.parameters()):
        assert (a is None) == (p.grad is None)
        assert a is None or torch.allclose(a, p.grad, atol=1e-6)


def test_grouped_query_attention_equals_attention_over_repeated_kv_heads():
    """SDPA's enable_gqa path equals the explicit computation: each KV head repeated for its
    group of query heads (repeat_interleave: KV head j serves query heads 2j, 2j+1 here),
    softmax(q k^T / sqrt(d)) v over the joint [condition; target] sequence."""
    torch.manual_seed(0)
    att = JointAttention(96, num_heads=4, kv_heads=2)
    with torch.no_grad():
        for p in att.parameters():
            p.normal_(0, 0.2)  # distinct KV heads and non-trivial norm weights
    hc, hx = torch.randn(2, 10, 96), torch.randn(2, 6, 96)
    pos = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(2), torch.arange(2), indexing="ij"), -1)
    cos, sin = rope_3d(pos.reshape(-1, 3), 24)
    out_c, out_x = att(hc, hx, cos, sin)

    def heads(h, q, k, v, qn, kn):
        b, n, _ = h.shape
        return (qn(q(h)).view(b, n, 4, 24).transpose(1, 2), kn(k(h)).view(b, n, 2, 24).transpose(1, 2),
                v(h).view(b, n, 2, 24).transpose(1, 2))

    qc, kc, vc = heads(hc, att.cond_q, att.cond_k, att.cond_v, att.cond_qnorm, att.cond_knorm)
    qx, kx, vx = heads(hx, att.x_q, att.x_k, att.x_v, att.x_qnorm, att.x_knorm)
    q = apply_rope(torch.cat([qc, qx], 2), cos, sin)
    k = apply_rope(torch.cat([kc, kx], 2), cos, sin).repeat_interleave(2, dim=1)
    v = torch.cat([vc, vx], 2).repeat_interleave(2, dim=1)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(24), dim=-1)
    ref = (w @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(out_c, att.cond_proj(ref[:, :10]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_x, att.x_proj(ref[:, 10:]), atol=1e-5, rtol=1e-4)
