"""Prediction heads of the DUSt3R network: decoder tokens -> per-pixel 3-D points and confidence.

FORMAT.md section 5. Each head receives, per view, the list the decoder hands over:
``[encoder output (B, N, enc_dim), decoder layer 1, ..., layer L (B, N, dec_dim)]`` (the last one
after ``dec_norm``), with N = (H/p)*(W/p) tokens in row-major order (p = patch size), in float32.

- :class:`LinearHead`: a linear projection of the last decoder layer, pixel-shuffled by p.
- :class:`DPTHead`: the DPT adapter on four hooked layers (encoder output and three decoder
  layers), fused coarse to fine.
- :class:`MASt3RHead` (MASt3R's ``catmlp+dpt``): the DPT head, plus a local-feature MLP on the
  concatenation [encoder output, last decoder layer] that gives per-pixel descriptors.

All return ``{"pts3d": (B, H, W, 3) float32, "conf": (B, H, W) float32}`` after the reference
post-processing (:func:`postprocess`); the MASt3R head adds ``desc`` and ``desc_conf`` when asked.
Module and parameter names reproduce Naver's state-dict keys (``proj``, ``dpt.act_postprocess``,
``dpt.scratch``, ``dpt.head``, ``head_local_features.fc1``/``fc2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.transformer import Mlp

__all__ = ["postprocess", "LinearHead", "DPTHead", "MASt3RHead", "dpt_hooks"]


def postprocess(raw: torch.Tensor, depth_mode: tuple, conf_mode: tuple) -> dict[str, torch.Tensor]:
    """Reference rules: raw (B, 4, H, W) -> {"pts3d": (B, H, W, 3), "conf": (B, H, W)}.

    depth_mode ``("exp"|"square"|"linear", -inf, inf)``: the xyz channels' norm d becomes
    ``expm1(d)`` / ``d**2`` / ``d`` along the same direction. conf_mode ``("exp", vmin, vmax)``:
    ``vmin + exp(c)`` clipped at vmax; ``("sigmoid", vmin, vmax)``: ``vmin + (vmax - vmin) sigmoid(c)``.
    """
    fmap = raw.permute(0, 2, 3, 1)  # (B, H, W, C)
    return {"pts3d": _points(fmap[..., 0:3], depth_mode), "conf": _confidence(fmap[..., 3], conf_mode)}


def _points(xyz: torch.Tensor, depth_mode: tuple) -> torch.Tensor:
    """(..., 3) raw channels -> points (..., 3) by ``depth_mode`` (see :func:`postprocess`)."""
    mode = depth_mode[0]
    if mode == "linear":
        return xyz
    dist = xyz.norm(dim=-1, keepdim=True)
    unit = xyz / dist.clip(min=1e-8)
    return unit * (dist.square() if mode == "square" else torch.expm1(dist))


def _confidence(c: torch.Tensor, conf_mode: tuple) -> torch.Tensor:
    """(...) raw channel -> confidence (...) by ``conf_mode`` (see :func:`postprocess`)."""
    cmode, vmin, vmax = conf_mode
    if cmode == "exp":
        return vmin + c.exp().clip(max=vmax - vmin)
    return (vmax - vmin) * torch.sigmoid(c) + vmin  # sigmoid


def dpt_hooks(dec_depth: int) -> list[int]:
    """Indices into the head's token list that the DPT adapter reads: [0, L*2//4, L*3//4, L]."""
    return [0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth]


class LinearHead(nn.Module):
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
        """tokens: the decoder's list (only the last is used); shape (H, W). See the module docs."""
        h, w = shape
        p = self.patch_size
        feat = self.proj(tokens[-1])  # (B, N, 4*p*p)
        b = feat.shape[0]
        feat = feat.transpose(-1, -2).reshape(b, -1, h // p, w // p)
        raw = F.pixel_shuffle(feat, p)  # (B, 4, H, W)
        return postprocess(raw, self.depth_mode, self.conf_mode)


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


class DPTHead(nn.Module):
    """DPT head: hooks ``[0, L*2//4, L*3//4, L]`` of the token list -> points and confidence.

    token_dims: widths of the four hooked layers ([enc_dim, dec_dim, dec_dim, dec_dim]);
    layer_dims / feature_dim / last_dim: the DPT widths (official (96, 192, 384, 768) / 256 / 128).
    """

    def __init__(
        self,
        hooks: Sequence[int],
        token_dims: Sequence[int],
        *,
        layer_dims: Sequence[int],
        feature_dim: int,
        last_dim: int,
        patch_size: int,
        depth_mode: tuple,
        conf_mode: tuple,
    ) -> None:
        super().__init__()
        self.hooks = list(hooks)
        self.depth_mode = depth_mode
        self.conf_mode = conf_mode
        self.dpt = _DPT(token_dims, layer_dims, feature_dim, last_dim, patch_size)

    def view_features(self, enc_tokens: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor | None:
        """(B, F, H/4, W/4) from the view's encoder tokens alone, or None when hook 0 is not them."""
        return self.dpt.first_features(enc_tokens, shape) if self.hooks[0] == 0 else None

    def forward(
        self, tokens: list[torch.Tensor], shape: tuple[int, int], view_features: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """tokens: the decoder's list; shape (H, W); view_features: :meth:`view_features` of
        tokens[0] when computed earlier. See the module docs for the output."""
        raw = self.dpt([tokens[i] for i in self.hooks], shape, view_features)
        return postprocess(raw, self.depth_mode, self.conf_mode)


class MASt3RHead(DPTHead):
    """MASt3R head: the DPT head for points and confidence, and a local-feature MLP for descriptors.

    The MLP (``head_local_features``: fc1 -> GELU -> fc2, hidden width 4 x input) maps each
    token's concatenation [encoder output (enc_dim), last decoder layer (dec_dim)] to
    ``(desc_dim + two_confs) * p**2`` values, pixel-shuffled by p to (B, desc_dim + two_confs, H, W):
    ``desc`` = the first desc_dim channels, L2-normalised; ``desc_conf`` = the next channel through
    ``desc_conf_mode`` (``two_confs``) or a copy of ``conf``. The DPT part gives ``pts3d`` and
    ``conf`` exactly as :class:`DPTHead`; the MLP (the costlier part: ~90 GFLOP per view and pair
    at 512x384 for the official model) runs only when descriptors are asked for.
    """

    def __init__(
        self,
        hooks: Sequence[int],
        token_dims: Sequence[int],
        *,
        desc_dim: int,
        two_confs: bool,
        desc_conf_mode: tuple,
        **dpt_kwargs: Any,
    ) -> None:
        super().__init__(hooks, token_dims, **dpt_kwargs)
        self.patch_size = dpt_kwargs["patch_size"]
        self.desc_dim = desc_dim
        self.two_confs = two_confs
        self.desc_conf_mode = desc_conf_mode
        in_dim = token_dims[0] + token_dims[-1]
        self.head_local_features = Mlp(in_dim, 4 * in_dim, (desc_dim + int(two_confs)) * self.patch_size**2)

    def forward(
        self,
        tokens: list[torch.Tensor],
        shape: tuple[int, int],
        view_features: torch.Tensor | None = None,
        *,
        descriptors: bool = False,
    ) -> dict[str, torch.Tensor]:
        """As :meth:`DPTHead.forward`; with ``descriptors`` also ``desc`` (B, H, W, desc_dim) unit
        vectors and ``desc_conf`` (B, H, W)."""
        out = super().forward(tokens, shape, view_features)
        if descriptors:
            out.update(self.local_features(tokens[0], tokens[-1], shape, out["conf"]))
        return out

    def local_features(
        self, enc: torch.Tensor, dec: torch.Tensor, shape: tuple[int, int], conf: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """enc (B, N, enc_dim), dec (B, N, dec_dim) -> {"desc": (B, H, W, D), "desc_conf": (B, H, W)}.

        conf (B, H, W): the points' confidence, copied as ``desc_conf`` when not ``two_confs``.
        """
        h, w = shape
        p = self.patch_size
        feat = self.head_local_features(torch.cat((enc, dec), dim=-1))  # (B, N, C*p*p)
        feat = feat.transpose(-1, -2).reshape(feat.shape[0], -1, h // p, w // p)
        fmap = F.pixel_shuffle(feat, p).permute(0, 2, 3, 1)  # (B, H, W, C)
        desc = F.normalize(fmap[..., : self.desc_dim], dim=-1)
        if self.two_confs:
            desc_conf = _confidence(fmap[..., self.desc_dim], self.desc_conf_mode)
        else:
            desc_conf = conf.clone()
        return {"desc": desc, "desc_conf": desc_conf}
