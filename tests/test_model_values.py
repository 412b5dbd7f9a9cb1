"""Value-level checks of the J-DiT and rectified-flow conventions (docs/design.md, The released models).

Every expected value here is computed independently of ``lavin_model``: hand numbers, or a
reference written from torch primitives that only *reads* the model's parameters (its own
RMSNorm, LayerNorm, SwiGLU, softmax attention with an explicit GQA loop, and RoPE built as
explicit 2x2 rotations). ``tests/test_jdit.py`` and ``tests/test_flow.py`` cover shapes and a
few conventions; these tests pin the values a silent convention bug would change.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lavin_model.flow import flow_loss, guided_velocity, sample, sample_t
from lavin_model.jdit import FinalLayer, JDiT, JDiTBlock, JointAttention, apply_rope, rope_3d, timestep_embedding

# ----------------------------------------------------------------------------------------------
# Reference primitives (float64 where the reference is compared against the model).
# ----------------------------------------------------------------------------------------------


def ref_linear(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    y = x @ lin.weight.T
    return y if lin.bias is None else y + lin.bias


def ref_rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Affine-free RMSNorm over the last dim."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def ref_layernorm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ref_silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def ref_swiglu(x: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
    return ref_linear(ref_silu(ref_linear(x, mlp.gate_proj)) * ref_linear(x, mlp.up_proj), mlp.down_proj)


def ref_sinusoid(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """[cos(t f_0..), sin(t f_0..)], f_i = 10000^(-i/half); t used as is (in [0, 1])."""
    half = dim // 2
    freqs = torch.tensor([10000.0 ** (-i / half) for i in range(half)], dtype=torch.float64)
    a = t.double()[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], -1)


def ref_rope_matrices(pos: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """(L, 3) positions -> (L, d, d) block-diagonal rotations. Axis a (frame, row, col) owns
    dims [a*part, (a+1)*part); inside it dim j pairs with j + part/2 (rotate-half) and turns by
    pos[a] * base^(-2i/part) for pair i."""
    part, half = head_dim // 3, head_dim // 6
    rot = torch.zeros(len(pos), head_dim, head_dim, dtype=torch.float64)
    for n, p in enumerate(pos.tolist()):
        for axis in range(3):
            for i in range(half):
                theta = p[axis] * base ** (-2 * i / part)
                j, k = axis * part + i, axis * part + i + half
                rot[n, j, j], rot[n, j, k] = math.cos(theta), -math.sin(theta)
                rot[n, k, j], rot[n, k, k] = math.sin(theta), math.cos(theta)
    return rot


def ref_positions(t_total: int, grid_h: int, grid_w: int) -> torch.Tensor:
    return torch.tensor([[f, r, c] for f in range(t_total) for r in range(grid_h) for c in range(grid_w)])


def _patch_cells(t: int, h: int, w: int, p: int):
    """(token, feature offset, frame, row, col) of every latent cell, written as an explicit
    loop: token f*(H/p)*(W/p) + r*(W/p) + col, feature (ph*p + pw)*C, pixel (r*p + ph, col*p + pw)."""
    gh, gw = h // p, w // p
    for f in range(t):
        for r in range(gh):
            for col in range(gw):
                for ph in range(p):
                    for pw in range(p):
                        yield f * gh * gw + r * gw + col, ph * p + pw, f, r * p + ph, col * p + pw


def ref_patchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, p*p*C) by :func:`_patch_cells`."""
    b, c, t, h, w = z.shape
    out = torch.zeros(b, t * (h // p) * (w // p), p * p * c, dtype=z.dtype)
    for tok, cell, f, y, x in _patch_cells(t, h, w, p):
        out[:, tok, cell * c:cell * c + c] = z[:, :, f, y, x]
    return out


def ref_unpatchify(tokens: torch.Tensor, c: int, t: int, h: int, w: int, p: int) -> torch.Tensor:
    """The inverse of :func:`ref_patchify`, by the same cells."""
    z = torch.zeros(tokens.shape[0], c, t, h, w, dtype=tokens.dtype)
    for tok, cell, f, y, x in _patch_cells(t, h, w, p):
        z[:, :, f, y, x] = tokens[:, tok, cell * c:cell * c + c]
    return z


def ref_attention(att: JointAttention, hc: torch.Tensor, hx: torch.Tensor, rot: torch.Tensor):
    """Joint attention over [condition; target]: per-stream projections + QK-RMSNorm over the
    whole projected vector, RoPE by explicit rotation, and query head h reading KV head h // g."""
    heads, kv_heads, d = att.num_heads, att.kv_heads, att.head_dim
    g = heads // kv_heads

    def project(h, q, k, v, qn, kn):
        return ref_rms(ref_linear(h, q)) * qn.weight, ref_rms(ref_linear(h, k)) * kn.weight, ref_linear(h, v)

    qc, kc, vc = project(hc, att.cond_q, att.cond_k, att.cond_v, att.cond_qnorm, att.cond_knorm)
    qx, kx, vx = project(hx, att.x_q, att.x_k, att.x_v, att.x_qnorm, att.x_knorm)
    b, nc, ntot = hc.shape[0], hc.shape[1], hc.shape[1] + hx.shape[1]
    q = torch.cat([qc, qx], 1).view(b, ntot, heads, d)
    k = torch.cat([kc, kx], 1).view(b, ntot, kv_heads, d)
    v = torch.cat([vc, vx], 1).view(b, ntot, kv_heads, d)
    q = torch.einsum("lij,blhj->blhi", rot, q)
    k = torch.einsum("lij,blhj->blhi", rot, k)
    out = torch.zeros(b, ntot, heads, d, dtype=q.dtype)
    for h in range(heads):
        kvh = h // g  # repeat_interleave layout: consecutive query heads share a KV head
        scores = q[:, :, h] @ k[:, :, kvh].transpose(-1, -2) / math.sqrt(d)
        w = torch.exp(scores - scores.amax(-1, keepdim=True))
        out[:, :, h] = (w / w.sum(-1, keepdim=True)) @ v[:, :, kvh]
    out = out.reshape(b, ntot, heads * d)
    return ref_linear(out[:, :nc], att.cond_proj), ref_linear(out[:, nc:], att.x_proj)


def ref_modulation(mod: nn.Sequential, t: torch.Tensor, hidden: int) -> list[torch.Tensor]:
    """SiLU -> Linear -> 4 chunks in the order (scale_attn, gate_attn, scale_mlp, gate_mlp)."""
    m = ref_linear(ref_silu(t), mod[1])[:, None]
    return [m[..., i * hidden:(i + 1) * hidden] for i in range(4)]


def ref_block(blk: JDiTBlock, c, x, tc, tx, rot):
    """One block: AdaRN (affine-free RMSNorm * (1 + scale)), tanh gates, sandwich RMSNorm on
    each branch output; the condition stream modulated from tc, the target stream from tx."""
    hidden = c.shape[-1]
    sc_a, gc_a, sc_m, gc_m = ref_modulation(blk.cond_modulation, tc, hidden)
    sx_a, gx_a, sx_m, gx_m = ref_modulation(blk.x_modulation, tx, hidden)
    ac, ax = ref_attention(blk.joint_attn, ref_rms(c) * (1 + sc_a), ref_rms(x) * (1 + sx_a), rot)
    c = c + torch.tanh(gc_a) * ref_rms(ac)
    x = x + torch.tanh(gx_a) * ref_rms(ax)
    c = c + torch.tanh(gc_m) * ref_rms(ref_swiglu(ref_rms(c) * (1 + sc_m), blk.cond_mlp))
    x = x + torch.tanh(gx_m) * ref_rms(ref_swiglu(ref_rms(x) * (1 + sx_m), blk.x_mlp))
    return c, x


def randomize(module: nn.Module, std: float, seed: int) -> None:
    """Every parameter ~ N(0, std): no zero-initialised path stays dead."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def grid_rope(t_total: int, gh: int, gw: int, head_dim: int):
    """cos/sin from the code (inputs to a block) and the reference rotations, same grid."""
    pos = ref_positions(t_total, gh, gw)
    return rope_3d(pos, head_dim), ref_rope_matrices(pos, head_dim)


# ----------------------------------------------------------------------------------------------
# 1. JDiTBlock modulation: chunk order, per-stream time, (1 + scale), tanh gates, sandwich norm.
# ----------------------------------------------------------------------------------------------

HID, HEADS, KV = 48, 4, 2  # head_dim 12 -> RoPE parts of 4; SwiGLU width 128


def _block_setup(seed: int = 0):
    torch.manual_seed(seed)
    blk = JDiTBlock(HID, HEADS, KV)
    randomize(blk, 0.1, seed)
    g = torch.Generator().manual_seed(seed + 1)
    c, x = torch.randn(2, 8, HID, generator=g), torch.randn(2, 4, HID, generator=g)
    tc, tx = torch.randn(2, HID, generator=g), torch.randn(2, HID, generator=g)
    (cos, sin), rot = grid_rope(3, 2, 2, HID // HEADS)  # 2 condition frames + 1 target frame of 2x2
    return blk, c, x, tc, tx, cos, sin, rot


# (which chunks are non-zero) -> a distinct value per chunk and per channel, so that a swap of
# two chunks, of scale and gate, or of channels changes the result.
CHUNK_CASES = {
    "scale_attn only (no gate: identity)": (0,),
    "gate_attn only": (1,),
    "scale_mlp only (no gate: identity)": (2,),
    "gate_mlp only": (3,),
    "scale_attn + gate_attn": (0, 1),
    "scale_mlp + gate_mlp": (2, 3),
}


@pytest.mark.parametrize("stream", ["cond", "x"])
@pytest.mark.parametrize("case", list(CHUNK_CASES))
def test_block_modulation_chunk_order_with_hand_set_biases(stream: str, case: str):
    """Modulation weights zero, bias non-zero in the chosen chunks of ONE stream: that stream
    becomes s + tanh(g) * rms(branch(rms(s) * (1 + scale))), the other stream stays exact."""
    blk, c, x, tc, tx, cos, sin, rot = _block_setup()
    chunk_vals = [torch.linspace(-0.9, 0.7, HID), torch.linspace(1.5, -1.2, HID),
                  torch.linspace(0.4, -0.8, HID), torch.linspace(-1.3, 1.1, HID)]
    mod = blk.cond_modulation if stream == "cond" else blk.x_modulation
    with torch.no_grad():
        for m in (blk.cond_modulation, blk.x_modulation):
            m[1].weight.zero_()
            m[1].bias.zero_()
        for i in CHUNK_CASES[case]:
            mod[1].bias[i * HID:(i + 1) * HID] = chunk_vals[i]
        out_c, out_x = blk(c, x, tc, tx, cos, sin)

    vals = [chunk_vals[i] if i in CHUNK_CASES[case] else torch.zeros(HID) for i in range(4)]
    scale_a, gate_a, scale_m, gate_m = (v.double() for v in vals)
    ref = copy.deepcopy(blk).double()
    cd, xd = c.double(), x.double()
    own, other = (cd, xd) if stream == "cond" else (xd, cd)
    own_mlp = ref.cond_mlp if stream == "cond" else ref.x_mlp
    # attention branch: the other stream enters as rms(other) (its scale is 0)
    attn_in = (ref_rms(own) * (1 + scale_a), ref_rms(other))
    ac, ax = ref_attention(ref.joint_attn, *(attn_in if stream == "cond" else attn_in[::-1]), rot)
    a_own = ac if stream == "cond" else ax
    own = own + torch.tanh(gate_a) * ref_rms(a_own)
    own = own + torch.tanh(gate_m) * ref_rms(ref_swiglu(ref_rms(own) * (1 + scale_m), own_mlp))
    exp_c, exp_x = (own, other) if stream == "cond" else (other, own)

    torch.testing.assert_close(out_c.double(), exp_c, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out_x.double(), exp_x, atol=2e-5, rtol=1e-5)
    if not any(i in CHUNK_CASES[case] for i in (1, 3)):  # no gate open: the block is the identity
        assert torch.equal(out_c, c) and torch.equal(out_x, x)


def test_block_modulation_reads_its_own_stream_time():
    """Modulation biases zero and SiLU(0) = 0: a stream whose time vector is zero gets all-zero
    modulation, so its gates are closed and it passes through unchanged; the other one moves.
    Pins cond_modulation <- tc (condition stream) and x_modulation <- tx (target stream)."""
    blk, c, x, tc, tx, cos, sin, _ = _block_setup()
    with torch.no_grad():
        for m in (blk.cond_modulation, blk.x_modulation):
            m[1].bias.zero_()
        oc, ox = blk(c, x, tc, torch.zeros_like(tx), cos, sin)
        assert torch.equal(ox, x) and (oc - c).abs().max() > 1e-2
        oc, ox = blk(c, x, torch.zeros_like(tc), tx, cos, sin)
        assert torch.equal(oc, c) and (ox - x).abs().max() > 1e-2


def test_block_with_random_weights_matches_reference_block():
    """All weights random (modulation too) and tc != tx: the whole block against ref_block."""
    blk, c, x, tc, tx, cos, sin, rot = _block_setup(seed=3)
    with torch.no_grad():
        oc, ox = blk(c, x, tc, tx, cos, sin)
        ec, ex = ref_block(copy.deepcopy(blk).double(), c.double(), x.double(), tc.double(), tx.double(), rot)
    torch.testing.assert_close(oc.double(), ec, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ox.double(), ex, atol=2e-5, rtol=1e-5)


def test_final_layer_is_rmsnorm_times_one_plus_adaln_then_linear():
    torch.manual_seed(0)
    fl = FinalLayer(12, 8)
    randomize(fl, 0.3, 0)
    x, t = torch.randn(2, 5, 12), torch.randn(2, 12)
    with torch.no_grad():
        # hand-set: zero modulation weight, bias b -> linear(rms(x) * (1 + b)) for every t
        fl.adaLN_modulation[1].weight.zero_()
        fl.adaLN_modulation[1].bias.copy_(torch.linspace(-0.5, 0.5, 12))
        exp = ref_linear(ref_rms(x) * (1 + torch.linspace(-0.5, 0.5, 12)), fl.linear)
        torch.testing.assert_close(fl(x, t), exp, atol=1e-5, rtol=1e-5)
        randomize(fl, 0.3, 1)
        exp = ref_linear(ref_rms(x) * (1 + ref_linear(ref_silu(t), fl.adaLN_modulation[1])[:, None]), fl.linear)
        torch.testing.assert_close(fl(x, t), exp, atol=1e-5, rtol=1e-5)


def _tiny_random(seed: int = 0) -> JDiT:
    torch.manual_seed(seed)
    model = JDiT.from_size("tiny")  # hidden 96, depth 2, 4 heads, 2 KV heads, head_dim 24
    randomize(model, 0.05, seed)
    return model.eval()


def test_forward_hands_each_stream_its_time_and_embedding():
    """JDiT.forward: the condition stream gets cond_embedder(patchify(cond)) and
    t_cond = temb + prompt_embed; the target stream x_embedder(patchify(x_t)) and
    t_x = temb + answer_embed; the final layer gets t_x. temb = MLP(sinusoid(t))."""
    model = _tiny_random()
    g = torch.Generator().manual_seed(5)
    x_t, cond, t = torch.randn(2, 16, 1, 4, 6, generator=g), torch.randn(2, 16, 3, 4, 6, generator=g), \
        torch.tensor([0.2, 0.9])
    seen = {}
    h1 = model.blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("block", a))
    h2 = model.final_layer.register_forward_pre_hook(lambda m, a: seen.setdefault("final", a))
    try:
        with torch.no_grad():
            model(x_t, t, cond)
    finally:
        h1.remove()
        h2.remove()
    ref = copy.deepcopy(model).double()
    mlp = ref.t_embedder.mlp
    temb = ref_linear(ref_silu(ref_linear(ref_sinusoid(t), mlp[0])), mlp[2])
    c_in, x_in, tc, tx = (a.double() for a in seen["block"][:4])
    torch.testing.assert_close(tc, temb + ref.prompt_embed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tx, temb + ref.answer_embed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen["final"][1].double(), tx)
    emb = lambda z, e: ref_layernorm(ref_linear(ref_patchify(z.double(), 2), e[0]), e[1])  # noqa: E731
    torch.testing.assert_close(c_in, emb(cond, ref.cond_embedder), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_in, emb(x_t, ref.x_embedder), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# 2. RoPE: one third of the head dim per axis, right angles, rotate-half pairs; positions.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rope_rotates_only_its_axis_third_by_the_right_angles(axis: int):
    """head_dim 24 -> parts of 8, pairs (j, j+4); angle of pair i = p * 10000^(-i/4), i.e.
    p * (1, 0.1, 0.01, 0.001). A position along one axis turns only that axis' third."""
    d, part, half, p = 24, 8, 4, 3
    x = torch.randn(1, 2, 1, d, generator=torch.Generator().manual_seed(axis))
    pos = torch.zeros(1, 3, dtype=torch.long)
    pos[0, axis] = p
    out = apply_rope(x, *rope_3d(pos, d))[0, :, 0]
    x = x[0, :, 0]
    expected = x.clone()
    freqs = [1.0, 0.1, 0.01, 0.001]  # 10000^(-2i/8) by hand
    for i in range(half):
        j, k = axis * part + i, axis * part + i + half
        cs, sn = math.cos(p * freqs[i]), math.sin(p * freqs[i])
        expected[:, j] = x[:, j] * cs - x[:, k] * sn
        expected[:, k] = x[:, k] * cs + x[:, j] * sn
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    others = [a for a in range(3) if a != axis]
    for a in others:  # the other two thirds are untouched, exactly
        assert torch.equal(out[:, a * part:(a + 1) * part], x[:, a * part:(a + 1) * part])


def test_rope_general_positions_match_explicit_rotation_matrices():
    d = 24
    pos = torch.tensor([[2, 5, 7], [0, 1, 3], [6, 0, 0], [1, 4, 2]])
    x = torch.randn(2, 3, len(pos), d, generator=torch.Generator().manual_seed(0))
    out = apply_rope(x, *rope_3d(pos, d))
    exp = torch.einsum("lij,bhlj->bhli", ref_rope_matrices(pos, d), x.double())
    torch.testing.assert_close(out.double(), exp, atol=1e-5, rtol=1e-5)


def test_positions_are_frame_major_and_match_patchify_order():
    """[condition; target] positions: frames 0..Tc-1 then Tc..Tc+Tx-1, row/col from the patch
    grid, frame-major then row then col -- the order patchify emits tokens in."""
    model = JDiT.from_size("tiny")
    tc, tx, h, w = 2, 2, 4, 6  # grid 2 x 3
    pos = model.positions(tc, tx, h, w, "cpu")
    assert pos.tolist() == ref_positions(tc + tx, 2, 3).tolist()
    assert pos[:6].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    assert pos[12:, 0].tolist() == [2] * 6 + [3] * 6  # target frames continue after the condition

    def coded(t: int) -> torch.Tensor:  # channels 0..2 hold (frame, row, col) of each pixel's patch
        z = torch.zeros(1, 16, t, h, w)
        z[0, 0] = torch.arange(t).view(t, 1, 1).float()
        z[0, 1] = (torch.arange(h) // 2).view(1, h, 1).float()
        z[0, 2] = (torch.arange(w) // 2).view(1, 1, w).float()
        return z

    # feature (ph=0, pw=0, c) is channel c of the patch's top-left pixel
    from_patches = torch.cat([model.patchify(coded(tc))[0, :, :3],
                              model.patchify(coded(tx))[0, :, :3] + torch.tensor([tc, 0, 0])])
    assert from_patches.long().tolist() == pos.tolist()


# ----------------------------------------------------------------------------------------------
# 3. GQA grouping.
# ----------------------------------------------------------------------------------------------


def test_gqa_query_head_h_reads_kv_head_h_div_g_by_hand():
    """q = k = 0 -> uniform attention, so query head h outputs the mean value of its KV head.
    Values are set so that KV head j is the constant j + 1 everywhere and the out projections
    are the identity: heads (0, 1, 2, 3) must read (1, 1, 2, 2) (a tiled layout gives 1, 2, 1, 2)."""
    att = JointAttention(HID, HEADS, KV)
    d = HID // HEADS
    with torch.no_grad():
        for lin in (att.cond_q, att.cond_k, att.x_q, att.x_k):
            lin.weight.zero_()
        for lin in (att.cond_v, att.x_v):
            for j in range(KV):
                lin.weight[j * d:(j + 1) * d] = (j + 1) / HID  # ones(HID) -> j + 1
        for lin in (att.cond_proj, att.x_proj):
            lin.weight.copy_(torch.eye(HID))
        (cos, sin), _ = grid_rope(3, 2, 2, d)
        oc, ox = att(torch.ones(1, 8, HID), torch.ones(1, 4, HID), cos, sin)
    expected = torch.tensor([1.0, 1.0, 2.0, 2.0]).repeat_interleave(d)
    torch.testing.assert_close(oc, expected.expand_as(oc))
    torch.testing.assert_close(ox, expected.expand_as(ox))


def test_joint_attention_matches_explicit_per_head_loop():
    torch.manual_seed(0)
    att = JointAttention(HID, HEADS, KV)
    randomize(att, 0.2, 0)
    g = torch.Generator().manual_seed(1)
    hc, hx = torch.randn(2, 8, HID, generator=g), torch.randn(2, 4, HID, generator=g)
    (cos, sin), rot = grid_rope(3, 2, 2, HID // HEADS)
    with torch.no_grad():
        oc, ox = att(hc, hx, cos, sin)
        ec, ex = ref_attention(copy.deepcopy(att).double(), hc.double(), hx.double(), rot)
    torch.testing.assert_close(oc.double(), ec, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ox.double(), ex, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# 4. Patch layout.
# ----------------------------------------------------------------------------------------------


def test_patchify_layout_and_unpatchify_inverse_on_coded_values():
    """Value = 1000c + 100t + 10y + x: token t*(H/p)*(W/p) + row*(W/p) + col,
    feature (ph*p + pw)*C + c holds pixel (c, t, row*p + ph, col*p + pw)."""
    model = JDiT.from_size("tiny")
    c, t, h, w, p = 16, 2, 4, 6, 2
    cc, tt, yy, xx = torch.meshgrid(*(torch.arange(n) for n in (c, t, h, w)), indexing="ij")
    z = (1000 * cc + 100 * tt + 10 * yy + xx).float()[None]
    tok = model.patchify(z)
    assert tok.shape == (1, t * 2 * 3, p * p * c)
    # hand spot checks: token 4 = frame 0, row 1, col 1; feature (ph=1, pw=0, c=5) = 2*16 + 5
    assert tok[0, 4, 37] == 1000 * 5 + 0 + 10 * 3 + 2
    # token 9 = frame 1, row 1, col 0; feature (ph=0, pw=1, c=15) = 16 + 15
    assert tok[0, 9, 31] == 1000 * 15 + 100 + 10 * 2 + 1
    assert torch.equal(tok, ref_patchify(z, p))
    assert torch.equal(model.unpatchify(ref_patchify(z, p), t, h, w), z)
    r = torch.randn(2, t * 6, p * p * c)
    assert torch.equal(model.unpatchify(r, t, h, w), ref_unpatchify(r, c, t, h, w, p))


# ----------------------------------------------------------------------------------------------
# 5. Timestep embedding.
# ----------------------------------------------------------------------------------------------


def test_timestep_embedding_hand_values():
    """dim 8 -> half 4, frequencies exp(-ln(10000) * i / 4) = (1, 0.1, 0.01, 0.001);
    [cos(t f), sin(t f)] with t itself (not 1000 t)."""
    t = torch.tensor([0.0, 0.25, 1.0])
    e = timestep_embedding(t, 8)
    freqs = [1.0, 0.1, 0.01, 0.001]
    exp = torch.tensor([[math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs] for ti in t.tolist()])
    torch.testing.assert_close(e, exp, atol=1e-6, rtol=1e-6)
    assert e[2, 0].item() == pytest.approx(0.5403023)  # cos(1)
    assert e[2, 4].item() == pytest.approx(0.8414710)  # sin(1)
    assert e[1, 5].item() == pytest.approx(math.sin(0.025))
    e256 = timestep_embedding(torch.tensor([0.5]), 256)
    torch.testing.assert_close(e256, ref_sinusoid(torch.tensor([0.5])).float(), atol=1e-6, rtol=1e-6)
    assert e256[0, 64].item() == pytest.approx(math.cos(0.5 * 0.01))  # 10000^(-64/128) = 0.01


# ----------------------------------------------------------------------------------------------
# 6. Rectified flow.
# ----------------------------------------------------------------------------------------------


class Recorder:
    """A fake velocity model that records (x, t, context) of every call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t, ctx):
        self.calls.append((x.clone(), t.clone(), None if ctx is None else ctx.clone()))
        return self.fn(x, t, ctx)


def test_flow_loss_time_convention_and_velocity_sign():
    """t = 1 hands the model the data, t = 0 the noise, the model sees t itself (not 1 - t),
    and the target is v = x1 - x0: zero loss for it, MSE + 0.1 L1 of 2v for its negation."""
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0], [1.0, -2.0]])
    x1 = torch.tensor([[3.0, 4.0], [-1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([1.0, 0.0, 0.25])
    rec = Recorder(lambda x, t, c: x1 - x0)
    assert flow_loss(rec, x1, None, t=t, x0=x0) == 0
    (x_in, t_in, _), = rec.calls
    assert torch.equal(t_in, t)
    assert torch.equal(x_in[0], x1[0])  # t = 1: data
    assert torch.equal(x_in[1], x0[1])  # t = 0: noise
    assert torch.allclose(x_in[2], torch.tensor([1.5, -0.5]))  # 0.25 * (3, 4) + 0.75 * (1, -2)
    # negated velocity on the first row only: err = -2 (2, 6) = (-4, -12): MSE 80, L1 8 -> 80.8
    neg = flow_loss(lambda x, t, c: x0[:1] - x1[:1], x1[:1], None, t=t[:1], x0=x0[:1])
    assert neg.item() == pytest.approx(80.8)


def test_flow_loss_draws_logit_normal_t_and_sampler_distribution():
    """Without t, flow_loss hands the model t = sample_t(B, generator) (drawn first); sample_t
    is sigmoid(N(0, 1)): KS distance of logit(t) to the standard normal below the 1% bound."""
    n = 4000
    rec = Recorder(lambda x, t, c: torch.zeros_like(x))
    flow_loss(rec, torch.zeros(n, 1), None, generator=torch.Generator().manual_seed(0))
    t = rec.calls[0][1]
    assert torch.equal(t, sample_t(n, torch.Generator().manual_seed(0)))
    assert t.min() > 0 and t.max() < 1
    z, _ = torch.sort(torch.log(t.double() / (1 - t.double())))
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert ks < 1.63 / math.sqrt(n), ks
    q = torch.quantile(z, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    torch.testing.assert_close(q, torch.tensor([-1.2816, 0.0, 1.2816], dtype=torch.float64), atol=0.08, rtol=0)


@pytest.mark.parametrize("steps", [5, 20])
def test_euler_sampler_time_grid_and_step_sizes(steps: int):
    """The model is called at t_i = (i / (n - 1))^2, i = 0..n-2 (Euler: velocity at the start
    of each step) and x moves by (t_{i+1} - t_i) * v; n = 5: t = 0, 1/16, 4/16, 9/16."""
    rec = Recorder(lambda x, t, c: torch.ones_like(x))
    cond = torch.zeros(1, 16, 2, 2, 2)
    out = sample(rec, cond, (1, 16, 1, 2, 2), steps=steps, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    grid = [(i / (steps - 1)) ** 2 for i in range(steps)]
    if steps == 5:
        assert grid == [0, 1 / 16, 4 / 16, 9 / 16, 1]
    assert len(rec.calls) == steps - 1
    for (_, t, _), ti in zip(rec.calls, grid[:-1]):
        assert t.shape == (1,) and t.item() == pytest.approx(ti, abs=1e-7)
    xs = [x for x, _, _ in rec.calls] + [out]
    for i in range(steps - 1):  # v = 1 everywhere: each move is exactly the step size
        torch.testing.assert_close(xs[i + 1] - xs[i], torch.full_like(out, grid[i + 1] - grid[i]), atol=1e-6, rtol=0)
    torch.testing.assert_close(xs[0], torch.randn(1, 16, 1, 2, 2, generator=torch.Generator().manual_seed(0)))


def test_cfg_combination_and_null_context():
    """v = v_u + s (v_c - v_u) with v_u from exactly one all-zero context frame, same x and t;
    with s = 1 only the conditional call is made."""
    def fn(x, t, ctx):  # v_c = 2 with the real context, v_u = 5 with the null one
        return torch.full_like(x, 5.0 if ctx.shape[2] == 1 and not ctx.any() else 2.0)

    x, t = torch.randn(2, 16, 1, 2, 4), torch.tensor([0.3, 0.6])
    cond = torch.randn(2, 16, 3, 2, 4)
    rec = Recorder(fn)
    v = guided_velocity(rec, x, t, cond, scale=1.5)
    assert torch.equal(v, torch.full_like(x, 0.5))  # 5 + 1.5 * (2 - 5)
    assert len(rec.calls) == 2
    ctxs = sorted((c for _, _, c in rec.calls), key=lambda c: c.shape[2])
    assert ctxs[0].shape == (2, 16, 1, 2, 4) and not ctxs[0].any() and ctxs[0].dtype == cond.dtype
    assert torch.equal(ctxs[1], cond)
    assert all(torch.equal(xi, x) and torch.equal(ti, t) for xi, ti, _ in rec.calls)
    rec = Recorder(fn)
    assert torch.equal(guided_velocity(rec, x, t, cond, scale=1.0), torch.full_like(x, 2.0))
    assert len(rec.calls) == 1 and torch.equal(rec.calls[0][2], cond)
    # the sampler uses the same guidance: 2 calls per step at the default scale
    rec = Recorder(fn)
    sample(rec, cond, x.shape, steps=3, generator=torch.Generator().manual_seed(0))
    assert len(rec.calls) == 4 and sum(c.shape[2] == 1 for _, _, c in rec.calls) == 2


# ----------------------------------------------------------------------------------------------
# 7. The whole model against a reference forward pass built from primitives.
# ----------------------------------------------------------------------------------------------


def reference_jdit(m: JDiT, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """J-DiT forward from primitives, reading m's parameters (m should be a float64 copy)."""
    p, ch = m.patch_size, m.in_channels
    _, _, tx, h, w = x_t.shape
    tc = cond.shape[2]
    c = ref_layernorm(ref_linear(ref_patchify(cond, p), m.cond_embedder[0]), m.cond_embedder[1])
    x = ref_layernorm(ref_linear(ref_patchify(x_t, p), m.x_embedder[0]), m.x_embedder[1])
    mlp = m.t_embedder.mlp
    temb = ref_linear(ref_silu(ref_linear(ref_sinusoid(t), mlp[0])), mlp[2])
    t_cond, t_x = temb + m.prompt_embed, temb + m.answer_embed
    rot = ref_rope_matrices(ref_positions(tc + tx, h // p, w // p), m.head_dim)
    for blk in m.blocks:
        c, x = ref_block(blk, c, x, t_cond, t_x, rot)
    fl = m.final_layer
    out = ref_linear(ref_rms(x) * (1 + ref_linear(ref_silu(t_x), fl.adaLN_modulation[1])[:, None]), fl.linear)
    return ref_unpatchify(out, ch, tx, h, w, p)


def test_tiny_jdit_matches_reference_forward():
    model = _tiny_random(seed=0)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 16, 2, 4, 6, generator=g)  # 2 target frames: frame numbering continues
    cond = torch.randn(2, 16, 2, 4, 6, generator=g)
    t = torch.tensor([0.3, 0.85])
    with torch.no_grad():
        out = model(x_t, t, cond)
        exp = reference_jdit(copy.deepcopy(model).double(), x_t.double(), t.double(), cond.double())
    assert exp.abs().max() > 0.1  # a live output, not a near-zero one that any bug would match
    torch.testing.assert_close(out.double(), exp, atol=1e-5, rtol=1e-5)
