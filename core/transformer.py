"""Transformer building blocks of the DUSt3R encoder and decoders, with 2-D rotary positions.

FORMAT.md section 5. Tokens are ``(B, N, C)`` in row-major patch order; positions ``(B, N, 2)``
int64 ``(y, x)``. Every LayerNorm has eps 1e-6; attention is pre-norm, with RoPE on queries and
keys only; the MLP is fc1 -> GELU (exact) -> fc2. Module and parameter names reproduce Naver's
state-dict keys (``qkv``, ``proj``, ``projq``/``projk``/``projv``, ``norm1``..``norm3``, ``norm_y``,
``mlp.fc1``/``fc2``, ``patch_embed.proj``).

RoPE (2-D): the head dimension is split in two halves, the first rotated by the row y, the second
by the column x; within a half of size D the angles are ``pos * base**(-2k/D)`` for k < D/2,
repeated twice (not interleaved), and the rotation is ``t*cos + rotate_half(t)*sin``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LN_EPS",
    "rope_cos_sin",
    "apply_rope",
    "Mlp",
    "SelfAttention",
    "CrossAttention",
    "EncoderBlock",
    "DecoderBlock",
    "PatchEmbed",
]

#: LayerNorm epsilon of every norm in the network.
LN_EPS = 1e-6


def rope_cos_sin(pos: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of 2-D RoPE for integer positions.

    pos: (B, N, 2) int64 (y, x). Returns cos, sin: (B, 1, N, head_dim) float32. The first half of
    the head dimension is rotated by y, the second by x; within one half of size D the angles are
    pos * base^(-2k/D) for k < D/2, repeated twice (not interleaved).
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=pos.device).float() / half))  # (D/2,)
    angles = pos.float()[..., None] * inv_freq  # (B, N, 2, D/2)
    angles = torch.cat((angles, angles), dim=-1).flatten(-2)  # (B, N, head_dim): [y-half | x-half]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate t (B, heads, N, d) with tables (B, 1, N, d); rotate-half within each of the two halves."""
    quarters = t.unflatten(-1, (2, 2, t.shape[-1] // 4))  # (..., half, [a|b], d/4)
    rotated = torch.stack((-quarters[..., 1, :], quarters[..., 0, :]), dim=-2).flatten(-3)
    return t * cos.to(t.dtype) + rotated * sin.to(t.dtype)


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2: (..., dim) -> (..., out_dim), out_dim defaulting to dim."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim if out_dim is None else out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Multi-head cross-attention (separate q/k/v projections), RoPE on q (own positions) and k."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rope_x: tuple[torch.Tensor, torch.Tensor],
        rope_y: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        b, nq, c = x.shape
        nk = y.shape[1]
        h, d = self.num_heads, c // self.num_heads
        q = self.projq(x).view(b, nq, h, d).transpose(1, 2)
        k = self.projk(y).view(b, nk, h, d).transpose(1, 2)
        v = self.projv(y).view(b, nk, h, d).transpose(1, 2)
        q, k = apply_rope(q, *rope_x), apply_rope(k, *rope_y)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Nq, d)
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: x += attn(norm1 x); x += mlp(norm2 x). Tokens (B, N, dim)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Decoder block of one view: self-attention, cross-attention to the other view's tokens
    (normalised by ``norm_y``), MLP; each pre-norm with a residual. x (B, Nx, dim), y (B, Ny, dim)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rope_x: tuple[torch.Tensor, torch.Tensor],
        rope_y: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope_x)
        y_normed = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y_normed, rope_x, rope_y)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """Conv patchify: (B, 3, H, W) -> tokens (B, N, C) row-major and positions (B, N, 2) (y, x)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = img.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        tokens = self.proj(img).flatten(2).transpose(1, 2)  # (B, N, C)
        ys = torch.arange(gh, device=img.device)
        xs = torch.arange(gw, device=img.device)
        pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(1, gh * gw, 2)
        return tokens, pos.expand(b, -1, -1)
