"""The DUSt3R network (our own implementation) and checkpoint loading.

Architecture (FORMAT.md sections 1, 2, 5): a ViT encoder with 2-D rotary position embedding
(RoPE, base 100) shared by both views, two transformer decoders with cross-attention that update
both token streams simultaneously, and one prediction head per view (linear + pixel shuffle, or
DPT). Module and parameter names reproduce Naver's state-dict keys exactly, so the official
checkpoints load unchanged and strictly.

Tensors: images are ``(B, 3, H, W)`` float in [-1, 1] with H and W multiples of the patch size
(16); tokens are ``(B, N, C)`` with N = (H/16)*(W/16) in row-major order; token positions are
``(B, N, 2)`` int64 ``(y, x)`` = (row, column) of the patch. Portrait and landscape images are
encoded as they are (the reference's ``landscape_only=False`` behaviour).

Typical use::

    model = load_model("DUSt3R_ViTLarge_BaseDecoder_512_dpt", device="cuda")
    with torch.inference_mode():
        pred1, pred2 = model(img1, img2)   # pts3d (B,H,W,3) in view 1's camera frame, conf (B,H,W)

The inference engine uses the pieces: :meth:`DUSt3R.encode` once per image, then
:meth:`DUSt3R.decode` and :meth:`DUSt3R.head` per batch of pairs.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import logging
import math
import pickle
import re
import sys
import threading
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from config import OFFICIAL_CHECKPOINTS, ModelConfig
from core.errors import CheckpointError

__all__ = [
    "DUSt3R",
    "OFFICIAL_CONFIGS",
    "CheckpointError",
    "CONFIG_KEYS",
    "load_model",
    "get_model",
    "select_autocast_dtype",
    "resolve_device",
    "parse_constructor_string",
    "remap_checkpoint_keys",
]

logger = logging.getLogger(__name__)

_OFFICIAL_COMMON: dict[str, Any] = {
    "pos_embed": "RoPE100",
    "patch_embed_cls": "PatchEmbedDust3R",
    "output_mode": "pts3d",
    "depth_mode": ["exp", -math.inf, math.inf],
    "conf_mode": ["exp", 1, math.inf],
    "enc_embed_dim": 1024,
    "enc_depth": 24,
    "enc_num_heads": 16,
    "dec_embed_dim": 768,
    "dec_depth": 12,
    "dec_num_heads": 12,
    "landscape_only": False,
    "freeze": "none",
}
#: config.json contents of Naver's three official checkpoints (FORMAT.md section 1), by short name.
OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    "DUSt3R_ViTLarge_BaseDecoder_512_dpt": {**_OFFICIAL_COMMON, "img_size": [512, 512], "head_type": "dpt"},
    "DUSt3R_ViTLarge_BaseDecoder_512_linear": {**_OFFICIAL_COMMON, "img_size": [512, 512], "head_type": "linear"},
    "DUSt3R_ViTLarge_BaseDecoder_224_linear": {**_OFFICIAL_COMMON, "img_size": [224, 224], "head_type": "linear"},
}

_INF = float("inf")
_LN_EPS = 1e-6

#: Keyword arguments accepted by :class:`DUSt3R` (the keys of an official ``config.json`` plus the
#: architecture defaults and the three DPT width keys of the tiny test fixtures).
CONFIG_KEYS: frozenset[str] = frozenset(
    {
        "pos_embed",
        "patch_embed_cls",
        "img_size",
        "patch_size",
        "head_type",
        "output_mode",
        "depth_mode",
        "conf_mode",
        "enc_embed_dim",
        "enc_depth",
        "enc_num_heads",
        "dec_embed_dim",
        "dec_depth",
        "dec_num_heads",
        "mlp_ratio",
        "landscape_only",
        "freeze",
        "dpt_feature_dim",
        "dpt_last_dim",
        "dpt_layer_dims",
    }
)

_CONSTRUCTOR_NAME = "AsymmetricCroCo3DStereo"


# --------------------------------------------------------------------------------------------
# Devices and precision
# --------------------------------------------------------------------------------------------


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.

    Raises ValueError for unknown names and for accelerators that are not available.
    """
    if isinstance(name, torch.device):
        text = str(name)
    elif isinstance(name, str):
        text = name.strip().lower()
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(name).__name__}: {name!r}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} requested but MPS is not available; use 'cpu' or 'auto'")
        return torch.device("mps")
    raise ValueError(f"unknown device {name!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic instructions (x86 AVX512-BF16 / AMX-BF16, ARM BF16)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def select_autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for the encoder/decoder, or None for plain float32.

    precision: ``"auto"`` -> on CUDA bf16 if compute capability >= 8 else fp16; on CPU bf16 only
    when the CPU has native bf16 instructions, else None; on other devices None.
    ``"fp32"`` -> None. ``"bf16"`` / ``"fp16"`` -> that dtype (fp16 on CPU raises ValueError: CPU
    fp16 autocast is slow and poorly covered; use bf16 or fp32). Heads always run in float32.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cpu" and not _cpu_has_native_bf16():
            warnings.warn(
                "bf16 requested on a CPU without native bf16 instructions: expect it to be slow", stacklevel=2
            )
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("precision 'fp16' is not supported on CPU; use 'bf16' or 'fp32'")
        return torch.float16
    # auto
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_native_bf16() else None
    return None


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _rope_cos_sin(pos: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
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


def _apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate t (B, heads, N, d) with tables (B, 1, N, d); rotate-half within each of the two halves."""
    quarters = t.unflatten(-1, (2, 2, t.shape[-1] // 4))  # (..., half, [a|b], d/4)
    rotated = torch.stack((-quarters[..., 1, :], quarters[..., 0, :]), dim=-2).flatten(-3)
    return t * cos.to(t.dtype) + rotated * sin.to(t.dtype)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _CrossAttention(nn.Module):
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
        q, k = _apply_rope(q, *rope_x), _apply_rope(k, *rope_y)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Nq, d)
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class _EncoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = _SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class _DecoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = _SelfAttention(dim, num_heads)
        self.cross_attn = _CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=_LN_EPS)

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


class _PatchEmbed(nn.Module):
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


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


def _postprocess(raw: torch.Tensor, depth_mode: tuple, conf_mode: tuple) -> dict[str, torch.Tensor]:
    """raw (B, 4, H, W) -> {"pts3d": (B, H, W, 3), "conf": (B, H, W)} (reference rules)."""
    fmap = raw.permute(0, 2, 3, 1)  # (B, H, W, 4)
    xyz = fmap[..., 0:3]
    mode = depth_mode[0]
    if mode == "linear":
        pts = xyz
    else:
        dist = xyz.norm(dim=-1, keepdim=True)
        unit = xyz / dist.clip(min=1e-8)
        pts = unit * (dist.square() if mode == "square" else torch.expm1(dist))
    c = fmap[..., 3]
    cmode, vmin, vmax = conf_mode
    if cmode == "exp":
        conf = vmin + c.exp().clip(max=vmax - vmin)
    else:  # sigmoid
        conf = (vmax - vmin) * torch.sigmoid(c) + vmin
    return {"pts3d": pts, "conf": conf}


class _LinearHead(nn.Module):
    """Linear projection of the last decoder tokens to 4 values per pixel, pixel-shuffled."""

    def __init__(self, dec_dim: int, patch_size: int, depth_mode: tuple, conf_mode: tuple) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.depth_mode = depth_mode
        self.conf_mode = conf_mode
        self.proj = nn.Linear(dec_dim, 4 * patch_size**2)

    def view_features(self, enc_tokens: torch.Tensor, shape: tuple[int, int]) -> None:
        """No part of this head depends on the encoder tokens alone."""
        return None

    def forward(
        self, tokens: list[torch.Tensor], shape: tuple[int, int], view_features: None = None
    ) -> dict[str, torch.Tensor]:
        h, w = shape
        p = self.patch_size
        feat = self.proj(tokens[-1])  # (B, N, 4*p*p)
        b = feat.shape[0]
        feat = feat.transpose(-1, -2).reshape(b, -1, h // p, w // p)
        raw = F.pixel_shuffle(feat, p)  # (B, 4, H, W)
        return _postprocess(raw, self.depth_mode, self.conf_mode)


class _Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _ResidualConvUnit(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu_(self.conv1(F.relu(x)))) + x


class _FusionBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(ch, ch, 1)
        self.resConfUnit1 = _ResidualConvUnit(ch)
        self.resConfUnit2 = _ResidualConvUnit(ch)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, *, skip_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, F, h, w) -> (B, F, 2h, 2w). The lateral input is either ``skip`` (B, F, h, w) or
        ``skip_features`` = ``resConfUnit1(skip)`` computed earlier (not both)."""
        if skip is not None:
            if skip_features is not None:
                raise ValueError("pass skip or skip_features, not both")
            skip_features = self.resConfUnit1(skip)
        if skip_features is not None:
            x = x + skip_features
        x = self.resConfUnit2(x)
        # The reference upsamples, then applies the 1x1 out_conv. Both are linear and they commute
        # (a per-pixel channel mix vs per-channel interpolation weights that sum to 1, so the bias
        # passes through too): the same map at a quarter of the cost, to float rounding.
        x = self.out_conv(x)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _Scratch(nn.Module):
    """3x3 projections to the feature width (registered under two names, like the reference) and
    the four fusion blocks."""

    def __init__(self, layer_dims: Sequence[int], feature_dim: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(d, feature_dim, 3, padding=1, bias=False) for d in layer_dims]
        for k, conv in enumerate(convs, start=1):
            self.add_module(f"layer{k}_rn", conv)
        self.layer_rn = nn.ModuleList(convs)  # alias names layer_rn.{k-1} -> same modules
        for k in range(1, 5):
            self.add_module(f"refinenet{k}", _FusionBlock(feature_dim))


class _DPT(nn.Module):
    """DPT dense-prediction adapter: hooked token layers -> (B, 4, H, W)."""

    def __init__(
        self, token_dims: Sequence[int], layer_dims: Sequence[int], feature_dim: int, last_dim: int, patch_size: int
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.scratch = _Scratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            _Upsample2x(),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(last_dim, 4, 1),
        )
        d = layer_dims
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(token_dims[0], d[0], 1), nn.ConvTranspose2d(d[0], d[0], 4, stride=4)),
                nn.Sequential(nn.Conv2d(token_dims[1], d[1], 1), nn.ConvTranspose2d(d[1], d[1], 2, stride=2)),
                nn.Sequential(nn.Conv2d(token_dims[2], d[2], 1)),
                nn.Sequential(nn.Conv2d(token_dims[3], d[3], 1), nn.Conv2d(d[3], d[3], 3, stride=2, padding=1)),
            ]
        )

    def _lateral(self, i: int, tok: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Hooked tokens (B, N, C_i) -> lateral map i at the feature width (B, F, H/4..H/32, ...)."""
        gh, gw = shape[0] // self.patch_size, shape[1] // self.patch_size
        fmap = tok.transpose(1, 2).reshape(tok.shape[0], tok.shape[2], gh, gw)  # (B, C_i, H/16, W/16)
        return self.scratch.layer_rn[i](self.act_postprocess[i](fmap))

    def first_features(self, tok: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """The part that depends on the first hooked layer only: tokens (B, N, C_0) ->
        ``refinenet1.resConfUnit1`` of lateral map 0, (B, F, H/4, W/4)."""
        return self.scratch.refinenet1.resConfUnit1(self._lateral(0, tok, shape))

    def forward(
        self, layers: list[torch.Tensor], shape: tuple[int, int], first: torch.Tensor | None = None
    ) -> torch.Tensor:
        """layers: 4 token tensors (B, N, C_i); shape (H, W); first: :meth:`first_features` of
        layers[0] when already computed. Returns (B, 4, H, W)."""
        if first is None:
            first = self.first_features(layers[0], shape)
        maps = [None] + [self._lateral(i, layers[i], shape) for i in (1, 2, 3)]
        s = self.scratch
        path = s.refinenet4(maps[3])[:, :, : maps[2].shape[2], : maps[2].shape[3]]
        path = s.refinenet3(path, maps[2])
        path = s.refinenet2(path, maps[1])
        path = s.refinenet1(path, skip_features=first)
        return self.head(path)


class _DPTHead(nn.Module):
    def __init__(self, hooks: Sequence[int], dpt: _DPT, depth_mode: tuple, conf_mode: tuple) -> None:
        super().__init__()
        self.hooks = list(hooks)
        self.depth_mode = depth_mode
        self.conf_mode = conf_mode
        self.dpt = dpt

    def view_features(self, enc_tokens: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor | None:
        """(B, F, H/4, W/4) from the view's encoder tokens alone, or None when hook 0 is not them."""
        return self.dpt.first_features(enc_tokens, shape) if self.hooks[0] == 0 else None

    def forward(
        self, tokens: list[torch.Tensor], shape: tuple[int, int], view_features: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        raw = self.dpt([tokens[i] for i in self.hooks], shape, view_features)
        return _postprocess(raw, self.depth_mode, self.conf_mode)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ValueError(f"{name} must be a list or tuple, got {value!r}")


class DUSt3R(nn.Module):
    """DUSt3R (``AsymmetricCroCo3DStereo``) for inference, built from official config keys.

    Keyword arguments (defaults = the reference constructor's, except ``pos_embed`` and
    ``landscape_only``): pos_embed ``"RoPE<base>"`` (official ``"RoPE100"``), patch_embed_cls
    (``"PatchEmbedDust3R"``; ``"ManyAR_PatchEmbed"`` is the training-time name and is rejected
    here: the loader replaces it), img_size (int or (H, W), multiples of patch_size; unused at
    inference), patch_size 16, head_type ``"linear"``/``"dpt"``, output_mode ``"pts3d"``,
    depth_mode (``("exp"|"square"|"linear", -inf, inf)``), conf_mode (``("exp"|"sigmoid", vmin,
    vmax)``), enc/dec embed_dim, depth, num_heads, mlp_ratio 4, landscape_only (must be False:
    portrait images are encoded as they are), freeze (training-only; ``none``/``mask``/``encoder``
    accepted and ignored), and the DPT widths dpt_feature_dim 256, dpt_last_dim 128,
    dpt_layer_dims (96, 192, 384, 768).

    Raises ValueError for unsupported values. Use :meth:`from_config` for a config mapping (it
    names unknown keys).
    """

    def __init__(
        self,
        *,
        pos_embed: str = "RoPE100",
        patch_embed_cls: str = "PatchEmbedDust3R",
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        head_type: str = "linear",
        output_mode: str = "pts3d",
        depth_mode: Sequence[Any] = ("exp", -_INF, _INF),
        conf_mode: Sequence[Any] = ("exp", 1, _INF),
        enc_embed_dim: int = 768,
        enc_depth: int = 12,
        enc_num_heads: int = 12,
        dec_embed_dim: int = 512,
        dec_depth: int = 8,
        dec_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        landscape_only: bool = False,
        freeze: str = "none",
        dpt_feature_dim: int = 256,
        dpt_last_dim: int = 128,
        dpt_layer_dims: Sequence[int] = (96, 192, 384, 768),
    ) -> None:
        super().__init__()
        match = re.fullmatch(r"RoPE(\d+(?:\.\d*)?)", str(pos_embed))
        if not match:
            raise ValueError(f"pos_embed {pos_embed!r} is not supported: only 2-D RoPE ('RoPE100') models")
        self.rope_base = float(match.group(1))
        if patch_embed_cls == "ManyAR_PatchEmbed":
            raise ValueError(
                "patch_embed_cls 'ManyAR_PatchEmbed' is the training-time patch embedding "
                "(it transposes portrait images); use 'PatchEmbedDust3R' for inference"
            )
        if patch_embed_cls != "PatchEmbedDust3R":
            raise ValueError(f"patch_embed_cls must be 'PatchEmbedDust3R', got {patch_embed_cls!r}")
        if landscape_only:
            raise ValueError(
                "landscape_only=True is not supported: official checkpoints use False "
                "(portrait images encoded as they are); pass landscape_only=False"
            )
        if freeze not in ("none", "mask", "encoder"):
            raise ValueError(f"freeze must be 'none', 'mask' or 'encoder', got {freeze!r}")
        if output_mode != "pts3d":
            raise ValueError(f"output_mode must be 'pts3d', got {output_mode!r}")
        if head_type not in ("linear", "dpt"):
            raise ValueError(f"head_type must be 'linear' or 'dpt', got {head_type!r}")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        sizes = (img_size, img_size) if isinstance(img_size, int) else _as_tuple(img_size, "img_size")
        if len(sizes) != 2 or any(not isinstance(s, int) or s <= 0 or s % patch_size for s in sizes):
            raise ValueError(
                f"img_size must be an int or (H, W) of positive multiples of {patch_size}, got {img_size!r}"
            )
        depth_mode = _as_tuple(depth_mode, "depth_mode")
        if (
            len(depth_mode) != 3
            or depth_mode[0] not in ("exp", "square", "linear")
            or depth_mode[1] != -_INF
            or depth_mode[2] != _INF
        ):
            raise ValueError(f"depth_mode must be ('exp'|'square'|'linear', -inf, inf), got {depth_mode!r}")
        conf_mode = _as_tuple(conf_mode, "conf_mode")
        if (
            len(conf_mode) != 3
            or conf_mode[0] not in ("exp", "sigmoid")
            or not all(isinstance(v, (int, float)) for v in conf_mode[1:])
        ):
            raise ValueError(f"conf_mode must be ('exp'|'sigmoid', vmin, vmax), got {conf_mode!r}")
        for name, dim, heads in (("enc", enc_embed_dim, enc_num_heads), ("dec", dec_embed_dim, dec_num_heads)):
            if heads < 1 or dim % heads or (dim // heads) % 4:
                raise ValueError(
                    f"{name}_embed_dim / {name}_num_heads must give a head dim divisible by 4 "
                    f"(RoPE 2-D), got {dim} / {heads}"
                )
        if enc_depth < 1 or dec_depth < 1:
            raise ValueError(f"enc_depth and dec_depth must be >= 1, got {enc_depth}, {dec_depth}")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")

        self.config: dict[str, Any] = {
            "pos_embed": pos_embed,
            "patch_embed_cls": patch_embed_cls,
            "img_size": list(sizes),
            "patch_size": patch_size,
            "head_type": head_type,
            "output_mode": output_mode,
            "depth_mode": list(depth_mode),
            "conf_mode": list(conf_mode),
            "enc_embed_dim": enc_embed_dim,
            "enc_depth": enc_depth,
            "enc_num_heads": enc_num_heads,
            "dec_embed_dim": dec_embed_dim,
            "dec_depth": dec_depth,
            "dec_num_heads": dec_num_heads,
            "mlp_ratio": mlp_ratio,
            "landscape_only": False,
            "freeze": freeze,
        }
        self.patch_size = patch_size
        self.enc_embed_dim = enc_embed_dim
        self.dec_embed_dim = dec_embed_dim
        self.enc_head_dim = enc_embed_dim // enc_num_heads
        self.dec_head_dim = dec_embed_dim // dec_num_heads
        self.head_type = head_type

        # registration order reproduces the reference state-dict order
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_embed_dim))  # stored, unused at inference
        self.patch_embed = _PatchEmbed(patch_size, enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            [_EncoderBlock(enc_embed_dim, enc_num_heads, mlp_ratio) for _ in range(enc_depth)]
        )
        self.enc_norm = nn.LayerNorm(enc_embed_dim, eps=_LN_EPS)
        self.decoder_embed = nn.Linear(enc_embed_dim, dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            [_DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio) for _ in range(dec_depth)]
        )
        self.dec_norm = nn.LayerNorm(dec_embed_dim, eps=_LN_EPS)
        self.dec_blocks2 = nn.ModuleList(
            [_DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio) for _ in range(dec_depth)]
        )

        if head_type == "linear":
            heads = [_LinearHead(dec_embed_dim, patch_size, depth_mode, conf_mode) for _ in range(2)]
        else:
            if dec_depth < 10:
                raise ValueError(f"the DPT head needs dec_depth >= 10 (as the reference), got {dec_depth}")
            layer_dims = _as_tuple(dpt_layer_dims, "dpt_layer_dims")
            if len(layer_dims) != 4 or any(not isinstance(d, int) or d < 1 for d in layer_dims):
                raise ValueError(f"dpt_layer_dims must be 4 positive ints, got {dpt_layer_dims!r}")
            if dpt_feature_dim < 2 or dpt_feature_dim % 2 or dpt_last_dim < 1:
                raise ValueError(
                    f"dpt_feature_dim must be even >= 2 and dpt_last_dim >= 1, got {dpt_feature_dim}, {dpt_last_dim}"
                )
            self.config.update(
                dpt_feature_dim=dpt_feature_dim, dpt_last_dim=dpt_last_dim, dpt_layer_dims=list(layer_dims)
            )
            hooks = [0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth]
            token_dims = [enc_embed_dim, dec_embed_dim, dec_embed_dim, dec_embed_dim]
            heads = [
                _DPTHead(
                    hooks,
                    _DPT(token_dims, layer_dims, dpt_feature_dim, dpt_last_dim, patch_size),
                    depth_mode,
                    conf_mode,
                )
                for _ in range(2)
            ]
        self.downstream_head1, self.downstream_head2 = heads

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DUSt3R:
        """Build from a config mapping (e.g. a parsed ``config.json``); unknown keys -> ValueError."""
        if not isinstance(config, Mapping):
            raise ValueError(f"model config must be a mapping, got {type(config).__name__}")
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; accepted keys: {sorted(CONFIG_KEYS)}")
        return cls(**config)

    # ---- public pieces used by the inference engine --------------------------------------

    def _check_images(self, img: torch.Tensor, name: str) -> None:
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"{name} must be a (B, 3, H, W) tensor, got {shape}")
        h, w = img.shape[-2:]
        p = self.patch_size
        if h < p or w < p or h % p or w % p:
            raise ValueError(f"{name} height and width must be positive multiples of {p}, got {h}x{w}")

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode images.

        img: (B, 3, H, W) float in [-1, 1], H and W multiples of 16.
        Returns tokens (B, N, enc_dim) after ``enc_norm`` and positions (B, N, 2) int64 (y, x),
        N = (H/16)*(W/16) row-major.
        """
        self._check_images(img, "img")
        x, pos = self.patch_embed(img)
        rope = _rope_cos_sin(pos, self.enc_head_dim, self.rope_base)
        for blk in self.enc_blocks:
            x = blk(x, rope)
        return self.enc_norm(x), pos

    def decode(
        self, f1: torch.Tensor, pos1: torch.Tensor, f2: torch.Tensor, pos2: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run both decoders on B pairs.

        f1: (B, N1, enc_dim) view-1 encoder tokens (after enc_norm), pos1: (B, N1, 2) int64;
        f2, pos2 the same for view 2. Returns per view the list handed to the heads:
        [encoder tokens (B, N, enc_dim), decoder layer 1, ..., layer L (B, N, dec_dim); the last
        one after ``dec_norm``]. Both streams are updated from the previous layer's outputs.
        """
        if (
            f1.ndim != 3
            or f2.ndim != 3
            or f1.shape[0] != f2.shape[0]
            or f1.shape[-1] != self.enc_embed_dim
            or f2.shape[-1] != self.enc_embed_dim
        ):
            raise ValueError(
                f"decode expects (B, N, {self.enc_embed_dim}) tokens with equal B, "
                f"got {tuple(f1.shape)} and {tuple(f2.shape)}"
            )
        if pos1.shape != (*f1.shape[:2], 2) or pos2.shape != (*f2.shape[:2], 2):
            raise ValueError(
                f"positions must be (B, N, 2) matching the tokens, got {tuple(pos1.shape)} and {tuple(pos2.shape)}"
            )
        rope1 = _rope_cos_sin(pos1, self.dec_head_dim, self.rope_base)
        rope2 = _rope_cos_sin(pos2, self.dec_head_dim, self.rope_base)
        out1, out2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2, strict=True):
            x1, x2 = blk1(x1, x2, rope1, rope2), blk2(x2, x1, rope2, rope1)
            out1.append(x1)
            out2.append(x2)
        out1[-1] = self.dec_norm(out1[-1])
        out2[-1] = self.dec_norm(out2[-1])
        return out1, out2

    def _head_and_shape(
        self, which: int, n_tokens: int, true_shape: tuple[int, int]
    ) -> tuple[nn.Module, tuple[int, int]]:
        if which not in (1, 2):
            raise ValueError(f"which must be 1 or 2, got {which!r}")
        h, w = (int(v) for v in true_shape)
        p = self.patch_size
        if h % p or w % p or (h // p) * (w // p) != n_tokens:
            raise ValueError(f"true_shape {true_shape} does not match {n_tokens} tokens of {p}px patches")
        return (self.downstream_head1 if which == 1 else self.downstream_head2), (h, w)

    def head_view_features(
        self, which: int, enc_tokens: torch.Tensor, true_shape: tuple[int, int]
    ) -> torch.Tensor | None:
        """The part of head ``which`` that depends only on the view's own encoder tokens, or None.

        enc_tokens: (B, N, enc_dim) from :meth:`encode` (cast to float32 here). For the DPT head:
        its first hooked layer is the encoder output, and that branch up to the last fusion block
        (``refinenet1.resConfUnit1``) is the same in every pair the view is in, so it can be
        computed once per view: (B, dpt_feature_dim, H/4, W/4) float32. The linear head: None.
        Pass the result to :meth:`head` as ``view_features``.
        """
        head, shape = self._head_and_shape(which, enc_tokens.shape[1], true_shape)
        with torch.autocast(device_type=enc_tokens.device.type, enabled=False):
            return head.view_features(enc_tokens.float(), shape)

    def head(
        self,
        which: int,
        tokens: list[torch.Tensor],
        true_shape: tuple[int, int],
        view_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Prediction head of view ``which`` (1 or 2), in float32 with autocast disabled.

        tokens: the list from :meth:`decode` for that view (cast to float32 here);
        true_shape: (H, W) of that view's images (same for the whole batch); view_features:
        :meth:`head_view_features` of ``tokens[0]`` when computed earlier (same numbers, less work).
        Returns {"pts3d": (B, H, W, 3) float32 in view 1's camera frame, "conf": (B, H, W) >= 1}.
        """
        head, shape = self._head_and_shape(which, tokens[-1].shape[1], true_shape)
        with torch.autocast(device_type=tokens[-1].device.type, enabled=False):
            return head([t.float() for t in tokens], shape, view_features)

    def use_fast_layout(self) -> DUSt3R:
        """Store the DPT heads' convolution weights channels-last (in place; returns self).

        The same fp32 numbers (within float rounding), ~25% faster DPT heads on CPU and the layout
        tensor cores prefer. Call again after moving the model to another device.
        """
        if self.head_type == "dpt":
            for head in (self.downstream_head1, self.downstream_head2):
                head.to(memory_format=torch.channels_last)
        return self

    def forward(
        self, img1: torch.Tensor, img2: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """B pairs (img1[b], img2[b]) -> (pred1, pred2).

        img1: (B, 3, H1, W1), img2: (B, 3, H2, W2) float in [-1, 1].
        pred1 = {"pts3d": (B, H1, W1, 3), "conf": (B, H1, W1)};
        pred2 = {"pts3d_in_other_view": (B, H2, W2, 3), "conf": (B, H2, W2)}; both point maps are
        in view 1's camera frame.
        """
        self._check_images(img1, "img1")
        self._check_images(img2, "img2")
        if img1.shape[0] != img2.shape[0]:
            raise ValueError(
                f"img1 and img2 must hold the same number of images, got {img1.shape[0]} and {img2.shape[0]}"
            )
        if img1.shape == img2.shape:  # one encoder pass for both, as the reference
            feats, pos = self.encode(torch.cat((img1, img2)))
            f1, f2 = feats.chunk(2)
            p1, p2 = pos.chunk(2)
        else:
            f1, p1 = self.encode(img1)
            f2, p2 = self.encode(img2)
        dec1, dec2 = self.decode(f1, p1, f2, p2)
        pred1 = self.head(1, dec1, tuple(img1.shape[-2:]))
        res2 = self.head(2, dec2, tuple(img2.shape[-2:]))
        pred2 = {"pts3d_in_other_view": res2["pts3d"], "conf": res2["conf"]}
        return pred1, pred2


# --------------------------------------------------------------------------------------------
# Checkpoint parsing
# --------------------------------------------------------------------------------------------


def _literal(node: ast.AST) -> Any:
    """Value of a literal AST node: numbers, strings, bools, None, tuples/lists, inf, -x."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(e) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def parse_constructor_string(text: str) -> dict[str, Any]:
    """Parse ``AsymmetricCroCo3DStereo(key=value, ...)`` (a .pth ``args.model``) without eval.

    Values may be literals, tuples, lists and ``inf``/``-inf``. Returns the keyword arguments with
    ``ManyAR_PatchEmbed`` replaced by ``PatchEmbedDust3R`` and ``landscape_only`` forced to False,
    as the reference loader does. Raises CheckpointError for anything else.
    """
    if not isinstance(text, str):
        raise CheckpointError(f"model constructor must be a string, got {type(text).__name__}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise CheckpointError(f"cannot parse model constructor string {text!r}: {e.msg}") from e
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id != _CONSTRUCTOR_NAME:
        raise CheckpointError(f"model constructor string must be a call {_CONSTRUCTOR_NAME}(...), got {text!r}")
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise CheckpointError(f"model constructor string must use keyword arguments only, got {text!r}")
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        try:
            kwargs[kw.arg] = _literal(kw.value)
        except ValueError as e:
            raise CheckpointError(f"cannot parse argument {kw.arg!r} of the model constructor string: {e}") from e
    if kwargs.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        kwargs["patch_embed_cls"] = "PatchEmbedDust3R"
    kwargs["landscape_only"] = False
    return kwargs


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """State-dict names that refer to the same parameter (e.g. scratch.layer1_rn / layer_rn.0)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def remap_checkpoint_keys(
    state_dict: Mapping[str, torch.Tensor], model: DUSt3R, aliases: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """All checkpoint key fixes in one place; returns a new dict (input untouched).

    1. ``aliases`` {dropped_name: kept_name} (safetensors metadata) restores dropped tensors.
    2. Any other alias name of the same module (``scratch.layer{k}_rn`` <-> ``scratch.layer_rn.{k-1}``)
       missing from the file is filled from the present one.
    3. No ``dec_blocks2.*`` keys (CroCo pre-training checkpoints): ``dec_blocks.*`` duplicated, as the
       reference does.
    """
    out = dict(state_dict)
    for dropped, kept in (aliases or {}).items():
        if dropped not in out and kept in out:
            out[dropped] = out[kept]
    for names in _alias_groups(model):
        present = [n for n in names if n in out]
        if present:
            for n in names:
                out.setdefault(n, out[present[0]])
    if not any(k.startswith("dec_blocks2.") for k in out):
        for k in list(out):
            if k.startswith("dec_blocks."):
                out["dec_blocks2." + k[len("dec_blocks.") :]] = out[k]
    return out


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    names = sorted(names)
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _load_weights(
    model: DUSt3R, state_dict: Mapping[str, torch.Tensor], source: str, aliases: Mapping[str, str] | None = None
) -> None:
    """Strictly assign checkpoint tensors to a (meta-device) model. Raises CheckpointError."""
    sd = remap_checkpoint_keys(state_dict, model, aliases)
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected)}")
        raise CheckpointError(
            f"checkpoint {source} does not match the network built from its config ({'; '.join(parts)})"
        )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor) or not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"checkpoint {source} has non-float entries: {_short_list(bad)}")
    wrong = [
        f"{k} {tuple(sd[k].shape)} (network {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(f"checkpoint {source} has tensors of the wrong shape: {_short_list(wrong, 5)}")
    sd = {k: (v if v.dtype == torch.float32 else v.float()) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)


def _read_config_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"config file not found: {path} (a model.safetensors needs its config.json beside it)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))  # accepts the bare Infinity tokens
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read model config {path}: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"model config {path} must be a JSON object, got {type(config).__name__}")
    return config


def _build(config: Mapping[str, Any], source: str) -> DUSt3R:
    """Build the network on the meta device (no memory, no random init)."""
    try:
        with torch.device("meta"):
            return DUSt3R.from_config(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid model config for {source}: {e}") from e


def _load_safetensors(weights: Path, config_path: Path) -> DUSt3R:
    from safetensors import SafetensorError, safe_open

    model = _build(_read_config_json(config_path), str(config_path))
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            aliases = dict(f.metadata() or {})
            state_dict = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {weights}: corrupt, truncated or not a safetensors file ({e})") from e
    _load_weights(model, state_dict, str(weights), aliases)
    return model


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _load_pth(path: Path) -> DUSt3R:
    try:
        use_mmap = zipfile.is_zipfile(path)
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        found = sorted(set(_GLOBAL_RE.findall(str(e))))
        what = f" ({', '.join(found)})" if found else ""
        raise CheckpointError(
            f"{path} contains pickled objects other than tensors and argparse.Namespace"
            f"{what}; refusing to load it (no arbitrary code from checkpoints)"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read {path}: corrupt, truncated or not a PyTorch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a DUSt3R checkpoint: expected a dict with 'model' and 'args', got {keys}")
    args = ckpt.get("args")
    constructor = getattr(args, "model", None)
    if constructor is None:
        raise CheckpointError(f"{path} has no 'args.model' constructor string; cannot tell the architecture")
    config = parse_constructor_string(constructor)
    model = _build(config, str(path))
    _load_weights(model, ckpt["model"], str(path))
    return model


_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _hub_files(repo_id: str, cache_dir: str | Path | None) -> tuple[Path, Path]:
    """Download (or find in the cache) config.json and model.safetensors of a hub repo."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    paths = []
    for filename in ("config.json", "model.safetensors"):
        try:
            paths.append(Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir)))
        except LocalEntryNotFoundError as e:
            raise CheckpointError(
                f"checkpoint {repo_id!r} is not in the Hugging Face cache ({cache}) and the hub cannot be "
                f"reached (offline, HF_HUB_OFFLINE=1, or no network). Either connect once so it downloads "
                f"(about 2.3 GB for the official models), or download config.json and model.safetensors "
                f"from https://huggingface.co/{repo_id} and pass the folder or file, e.g. "
                f"--checkpoint /path/to/folder or --checkpoint /path/to/model.safetensors "
                f"(an original .pth file also works)"
            ) from e
        except GatedRepoError as e:
            raise CheckpointError(
                f"hub repo {repo_id!r} is gated: accept its terms on huggingface.co and log in "
                f"(hf auth login), or pass a local file with --checkpoint"
            ) from e
        except RepositoryNotFoundError as e:
            raise CheckpointError(
                f"hub repo {repo_id!r} does not exist (or is private); official names: {sorted(OFFICIAL_CHECKPOINTS)}"
            ) from e
        except RevisionNotFoundError as e:
            raise CheckpointError(f"hub repo {repo_id!r} has no such revision: {e}") from e
        except EntryNotFoundError as e:
            raise CheckpointError(
                f"hub repo {repo_id!r} has no {filename}: it is not a DUSt3R checkpoint in the Hugging Face format"
            ) from e
        except HFValidationError as e:
            raise CheckpointError(f"{repo_id!r} is not a valid hub repo id: {e}") from e
        except HfHubHTTPError as e:
            raise CheckpointError(f"downloading {filename} of {repo_id!r} failed: {e}") from e
    return paths[0], paths[1]


def load_model(
    source: str | Path, device: str | torch.device = "cpu", *, cache_dir: str | Path | None = None
) -> DUSt3R:
    """Load a DUSt3R checkpoint, in eval mode, on ``device``.

    source: an official short name (``DUSt3R_ViTLarge_BaseDecoder_512_dpt``, ...), a Hugging Face
    hub repo id (downloaded with huggingface_hub's cache and progress bar; ``cache_dir`` overrides
    the cache folder), a local folder with ``config.json`` + ``model.safetensors``, a
    ``.safetensors`` file with ``config.json`` beside it, or an original ``.pth`` checkpoint.
    Weights are read on the CPU (safetensors memory-mapped, .pth with ``weights_only=True``),
    matched strictly, then moved to the device. Parameters do not require gradients (inference
    only). On the CPU the weights stay memory-mapped (copy-on-write), so loading takes well under
    a second and the pages are read on first use. Raises CheckpointError on any loading failure.
    """
    target = resolve_device(device)
    text = str(source).strip()
    if not text:
        raise CheckpointError("checkpoint source is empty")
    path = Path(text).expanduser()
    if path.is_dir():
        weights = path / "model.safetensors"
        pths = sorted(path.glob("*.pth"))
        if weights.is_file():
            model = _load_safetensors(weights, path / "config.json")
        elif len(pths) == 1:
            model = _load_pth(pths[0])
        else:
            raise CheckpointError(
                f"folder {path} has no model.safetensors (expected config.json + model.safetensors, as on the hub, "
                f"or a single .pth file)"
            )
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            model = _load_safetensors(path, path.with_name("config.json"))
        elif suffix in (".pth", ".pt"):
            model = _load_pth(path)
        else:
            raise CheckpointError(
                f"unsupported checkpoint file {path}: expected a .safetensors (with config.json "
                f"beside it) or an original .pth file, a folder, or a hub repo id"
            )
    elif text in OFFICIAL_CHECKPOINTS or (
        _HUB_ID_RE.fullmatch(text) and not text.endswith((".pth", ".pt", ".safetensors"))
    ):
        repo_id = OFFICIAL_CHECKPOINTS.get(text, text)
        logger.info(
            "loading checkpoint %s from the Hugging Face hub (cache: %s)",
            repo_id,
            cache_dir if cache_dir is not None else "default",
        )
        config_path, weights = _hub_files(repo_id, cache_dir)
        model = _load_safetensors(weights, config_path)
    else:
        raise CheckpointError(
            f"checkpoint not found: {text!r} is neither an existing file or folder, an official "
            f"name ({', '.join(sorted(OFFICIAL_CHECKPOINTS))}) nor a hub repo id 'owner/name'"
        )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("loaded %s (%s head, %.1fM parameters) on %s", text, model.head_type, n_params / 1e6, target)
    return model.requires_grad_(False).to(target).eval().use_fast_layout()


_model_lock = threading.Lock()


@functools.lru_cache(maxsize=2)
def _cached_model(checkpoint: str, device: str, cache_dir: str | None) -> DUSt3R:
    return load_model(checkpoint, device, cache_dir=cache_dir)


def get_model(cfg: ModelConfig) -> DUSt3R:
    """The model for ``cfg``, loaded on first use and cached (keyed by checkpoint, device, cache_dir)."""
    device = str(resolve_device(cfg.device))
    with _model_lock:
        return _cached_model(cfg.checkpoint, device, cfg.cache_dir)
