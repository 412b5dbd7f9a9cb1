"""J-DiT: the Joint Diffusion Transformer of LaVin-DiT (docs/design.md, The released models), in one file.

Two token streams share every attention layer: the *condition* stream (the clean context
pairs and the query input) and the *target* stream (the noisy latent to denoise). Each
stream has its own patch embedding, q/k/v/out projections, QK-RMSNorm, SwiGLU MLP and
modulation; attention is joint and bidirectional over [condition; target], with grouped
KV heads and 3D rotary positions over the (frame, row, col) grid of the joint sequence.

Parameter names and shapes follow the released checkpoint
(``lavin_model/reference/lavin_dit_3b_state_dict.json``); :func:`load_lavin_checkpoint` loads it
strictly. Latents are laid out (B, 16, T, H, W); one image is one latent frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# name: (hidden_size, depth, num_heads, kv_group) with kv_group = query heads per KV head
# Head dims must split into three even RoPE parts (multiples of 6): 24, 48, 96, 72.
SIZES = {
    "tiny": (96, 2, 4, 2),
    "0.1B": (768, 6, 16, 4),  # 0.10 B parameters
    "1B": (1536, 14, 16, 4),  # 0.96 B
    "3.4B": (2304, 22, 32, 4),  # the released LaVin-DiT: 32 heads, 8 KV heads, 3.40 B
}


def size_config(name: str) -> dict:
    """The constructor arguments of a named size (patch 2, 16 latent channels)."""
    if name not in SIZES:
        raise ValueError(f"unknown J-DiT size {name!r}; named sizes: {sorted(SIZES)}")
    hidden, depth, heads, kv_group = SIZES[name]
    return dict(hidden_size=hidden, depth=depth, num_heads=heads, kv_group=kv_group, patch_size=2, in_channels=16)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Affine-free RMSNorm over the last dimension (computed in fp32)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable weight (QK-norm over the whole projected vector)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.eps) * self.weight


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """t (B,) in [0, 1] -> (B, dim) sinusoidal features [cos, sin] (t is not scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def rope_3d(pos: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """pos (L, 3) integer (frame, row, col) -> cos, sin (L, head_dim): the head dim split in
    three equal parts (t, h, w), each rotated by its own coordinate (rotate-half layout)."""
    part = head_dim // 3
    inv = 1.0 / (base ** (torch.arange(0, part, 2, dtype=torch.float32, device=pos.device) / part))
    angles = [pos[:, i, None].float() * inv[None] for i in range(3)]  # 3 x (L, part/2)
    cos = torch.cat([torch.cat([a.cos(), a.cos()], -1) for a in angles], -1)
    sin = torch.cat([torch.cat([a.sin(), a.sin()], -1) for a in angles], -1)
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, L, head_dim); rotate-half within each of the three parts."""
    part = x.shape[-1] // 3
    chunks = x.float().split(part, dim=-1)
    rotated = []
    for c in chunks:
        c1, c2 = c.chunk(2, dim=-1)
        rotated.append(torch.cat([-c2, c1], dim=-1))
    rot = torch.cat(rotated, dim=-1)
    return (x.float() * cos + rot * sin).to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        width = int(4 * hidden * 2 / 3) // 64 * 64
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class JointAttention(nn.Module):
    """Per-stream q/k/v/out and QK-RMSNorm (``cond_*`` for the condition stream, ``x_*`` for
    the target stream, the released names); one attention over [condition; target]."""

    def __init__(self, hidden: int, num_heads: int, kv_heads: int):
        super().__init__()
        self.num_heads, self.kv_heads, self.head_dim = num_heads, kv_heads, hidden // num_heads
        kv = kv_heads * self.head_dim
        # Registration order = parameter order (DeepSpeed's flat optimizer state follows it).
        self.cond_q = nn.Linear(hidden, hidden, bias=False)
        self.cond_k = nn.Linear(hidden, kv, bias=False)
        self.cond_v = nn.Linear(hidden, kv, bias=False)
        self.cond_qnorm = RMSNorm(hidden)
        self.cond_knorm = RMSNorm(kv)
        self.cond_proj = nn.Linear(hidden, hidden, bias=False)
        self.x_q = nn.Linear(hidden, hidden, bias=False)
        self.x_k = nn.Linear(hidden, kv, bias=False)
        self.x_v = nn.Linear(hidden, kv, bias=False)
        self.x_qnorm = RMSNorm(hidden)
        self.x_knorm = RMSNorm(kv)
        self.x_proj = nn.Linear(hidden, hidden, bias=False)

    def _heads(self, h: torch.Tensor, q: nn.Linear, k: nn.Linear, v: nn.Linear, qnorm: RMSNorm, knorm: RMSNorm):
        """(B, N, hidden) -> q (B, heads, N, d), k and v (B, kv_heads, N, d)."""
        b, n, _ = h.shape
        qh = qnorm(q(h)).view(b, n, self.num_heads, self.head_dim)
        kh = knorm(k(h)).view(b, n, self.kv_heads, self.head_dim)
        vh = v(h).view(b, n, self.kv_heads, self.head_dim)
        return qh.transpose(1, 2), kh.transpose(1, 2), vh.transpose(1, 2)

    def forward(self, hc: torch.Tensor, hx: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        qc, kc, vc = self._heads(hc, self.cond_q, self.cond_k, self.cond_v, self.cond_qnorm, self.cond_knorm)
        qx, kx, vx = self._heads(hx, self.x_q, self.x_k, self.x_v, self.x_qnorm, self.x_knorm)
        q = apply_rope(torch.cat([qc, qx], 2), cos, sin)
        k = apply_rope(torch.cat([kc, kx], 2), cos, sin)
        v = torch.cat([vc, vx], 2)
        # Grouped-query attention: KV head j serves query heads j*g .. j*g+g-1 (g = heads / kv_heads),
        # the layout of repeat_interleave over the head dimension.
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.kv_heads != self.num_heads)
        out = out.transpose(1, 2).flatten(2)
        nc = hc.shape[1]
        return self.cond_proj(out[:, :nc]), self.x_proj(out[:, nc:])


class JDiTBlock(nn.Module):
    """AdaRN (affine-free RMSNorm, then 1 + scale; no shift), tanh-gated residuals with a
    sandwich norm on each branch output, per stream; joint attention across streams."""

    def __init__(self, hidden: int, num_heads: int, kv_heads: int):
        super().__init__()
        self.joint_attn = JointAttention(hidden, num_heads, kv_heads)
        self.cond_mlp, self.x_mlp = SwiGLU(hidden), SwiGLU(hidden)
        self.cond_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 4 * hidden))
        self.x_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 4 * hidden))

    def forward(self, c: torch.Tensor, x: torch.Tensor, tc: torch.Tensor, tx: torch.Tensor, cos, sin):
        sc_a, gc_a, sc_m, gc_m = self.cond_modulation(tc)[:, None].chunk(4, dim=-1)
        sx_a, gx_a, sx_m, gx_m = self.x_modulation(tx)[:, None].chunk(4, dim=-1)
        ac, ax = self.joint_attn(rms_norm(c) * (1 + sc_a), rms_norm(x) * (1 + sx_a), cos, sin)
        c = c + torch.tanh(gc_a) * rms_norm(ac)
        x = x + torch.tanh(gx_a) * rms_norm(ax)
        c = c + torch.tanh(gc_m) * rms_norm(self.cond_mlp(rms_norm(c) * (1 + sc_m)))
        x = x + torch.tanh(gx_m) * rms_norm(self.x_mlp(rms_norm(x) * (1 + sx_m)))
        return c, x


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden))
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.linear(rms_norm(x) * (1 + self.adaLN_modulation(t)[:, None]))


class JDiT(nn.Module):
    """J-DiT. ``forward(x_t, t, cond)``: x_t (B, C, T, H, W) noisy target latent, t (B,) in
    [0, 1], cond (B, C, Tc, H, W) the clean frames [in_1, tgt_1, ..., in_N, tgt_N, query];
    returns the predicted velocity shaped like x_t. H and W must be multiples of the patch."""

    def __init__(self, hidden_size: int = 2304, depth: int = 22, num_heads: int = 32, kv_group: int = 4,
                 patch_size: int = 2, in_channels: int = 16):
        super().__init__()
        if hidden_size % num_heads or (hidden_size // num_heads) % 6 or num_heads % kv_group:
            raise ValueError("hidden_size/num_heads must be a multiple of 6 (three RoPE parts of even size) "
                             "and num_heads a multiple of kv_group")
        self.config = dict(hidden_size=hidden_size, depth=depth, num_heads=num_heads, kv_group=kv_group,
                           patch_size=patch_size, in_channels=in_channels)
        self.patch_size, self.in_channels = patch_size, in_channels
        self.head_dim = hidden_size // num_heads
        patch_dim = patch_size * patch_size * in_channels
        self.cond_embedder = nn.Sequential(nn.Linear(patch_dim, hidden_size), nn.LayerNorm(hidden_size))
        self.x_embedder = nn.Sequential(nn.Linear(patch_dim, hidden_size), nn.LayerNorm(hidden_size))
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.prompt_embed = nn.Parameter(torch.zeros(1, hidden_size))  # added to t for the condition stream
        self.answer_embed = nn.Parameter(torch.zeros(1, hidden_size))  # ... and for the target stream
        self.blocks = nn.ModuleList(JDiTBlock(hidden_size, num_heads, num_heads // kv_group) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_dim)
        self.gradient_checkpointing = False
        self.initialize_weights()

    @classmethod
    def from_size(cls, name: str, **kw) -> JDiT:
        return cls(**dict(size_config(name), **kw))

    def initialize_weights(self) -> None:
        def init(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(init)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.prompt_embed, std=0.02)
        nn.init.normal_(self.answer_embed, std=0.02)
        # Modulation and the final layer start at zero: every block is the identity and the
        # model predicts zero velocity until it learns otherwise.
        for b in self.blocks:
            for mod in (b.cond_modulation[1], b.x_modulation[1]):
                nn.init.zeros_(mod.weight)
                nn.init.zeros_(mod.bias)
        for lin in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T*(H/p)*(W/p), p*p*C), frame-major then row, col."""
        b, c, t, h, w = z.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"latent {h}x{w} is not divisible by the patch size {p}")
        z = z.reshape(b, c, t, h // p, p, w // p, p).permute(0, 2, 3, 5, 4, 6, 1)
        return z.reshape(b, t * (h // p) * (w // p), p * p * c)

    def unpatchify(self, tokens: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        b = tokens.shape[0]
        p, c = self.patch_size, self.in_channels
        z = tokens.reshape(b, t, h // p, w // p, p, p, c).permute(0, 6, 1, 2, 4, 3, 5)
        return z.reshape(b, c, t, h, w)

    def positions(self, t_cond: int, t_x: int, h: int, w: int, device) -> torch.Tensor:
        """(frame, row, col) of every token of [condition; target]; frames 0.. across both."""
        p = self.patch_size
        f, r, c = torch.meshgrid(torch.arange(t_cond + t_x, device=device), torch.arange(h // p, device=device),
                                 torch.arange(w // p, device=device), indexing="ij")
        return torch.stack([f, r, c], -1).reshape(-1, 3)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, _, tx, h, w = x_t.shape
        tc = cond.shape[2]
        c = self.cond_embedder(self.patchify(cond.to(self.x_embedder[0].weight.dtype)))
        x = self.x_embedder(self.patchify(x_t.to(self.x_embedder[0].weight.dtype)))
        temb = self.t_embedder(t)
        t_cond, t_x = temb + self.prompt_embed, temb + self.answer_embed
        cos, sin = rope_3d(self.positions(tc, tx, h, w, x.device), self.head_dim)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                c, x = checkpoint(block, c, x, t_cond, t_x, cos, sin, use_reentrant=False)
            else:
                c, x = block(c, x, t_cond, t_x, cos, sin)
        return self.unpatchify(self.final_layer(x, t_x), tx, h, w).to(x_t.dtype)


def load_lavin_checkpoint(model: JDiT, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a state dict with the released names and shapes, strictly (errors list keys)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint does not match J-DiT: {len(missing)} missing {missing[:5]}, "
                         f"{len(unexpected)} unexpected {unexpected[:5]}, {len(wrong)} with other shapes {wrong[:5]}")
    model.load_state_dict(state_dict, strict=True)


def jdit_from_checkpoint(path, size: str | None = None) -> JDiT:
    """A J-DiT loaded strictly from ``path``: a folder written by ``lavin_model/train.py``
    (``config.json`` + ``model.safetensors``), a DeepSpeed checkpoint folder, the released
    checkpoint or any file :func:`lavin_data.weights.read_state_dict` reads. Its
    configuration comes from ``config.json``, else ``size``, else the named size whose
    hidden size and depth match the weights."""
    import json
    from pathlib import Path

    from lavin_data.weights import CheckpointError, read_state_dict

    path = Path(path)
    sd = read_state_dict(path)
    cfg_file = path / "config.json" if path.is_dir() else None
    if cfg_file is not None and cfg_file.exists():
        model = JDiT(**json.loads(cfg_file.read_text()))
    elif size is not None:
        model = JDiT.from_size(size)
    else:
        if "x_embedder.0.weight" not in sd:
            raise CheckpointError(f"{path}: no x_embedder.0.weight: not a J-DiT checkpoint")
        hidden = sd["x_embedder.0.weight"].shape[0]
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        names = [n for n, (h, d, _, _) in SIZES.items() if (h, d) == (hidden, depth)]
        if not names:
            raise CheckpointError(f"{path}: hidden size {hidden} and depth {depth} match no named size "
                                  f"{sorted(SIZES)}; give the size or a config.json")
        model = JDiT.from_size(names[0])
    try:
        load_lavin_checkpoint(model, sd)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model
