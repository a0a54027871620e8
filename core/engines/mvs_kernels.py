"""Torch kernels of the dense step (:mod:`core.engines.mvs`): pyramids, warps, window NCC, consistency.

Tensors are float32 on the compute device (CPU or GPU), camera matrices numpy float64. Geometry
is kept planar, (3, H, W), and 3x3 transforms are applied as scalar multiply-adds per component
(:func:`apply`): on the CPU a BLAS matmul on skinny (HW, 3) arrays is several times slower.
Cameras: OpenCV axes, integer pixel centres (:mod:`core.types`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "OUTSIDE_NCC",
    "LevelImage",
    "Warp",
    "apply",
    "box_sum",
    "level_images",
    "pixel_rays",
    "make_warp",
    "source_ncc",
    "best_k_mean",
    "consistent_views",
]

#: NCC given to a hypothesis whose warped pixel falls outside a source image (the worst score).
OUTSIDE_NCC = -1.0
#: Grey values are shifted by this before the box sums (keeps the float32 sums small).
_GREY_CENTRE = 0.5
#: Depths (and projective z) at or below this are "behind the camera".
_MIN_Z = 1e-9


def apply(mat: np.ndarray, vec: torch.Tensor) -> torch.Tensor:
    """``mat @ vec (+ mat[:, 3])`` for planar vectors: mat (3, 3) or (3, 4), vec (3, ...) -> (3, ...)."""
    rows = []
    for i in range(3):
        acc = vec[0] * float(mat[i, 0])
        acc.add_(vec[1], alpha=float(mat[i, 1])).add_(vec[2], alpha=float(mat[i, 2]))
        if mat.shape[1] == 4:
            acc.add_(float(mat[i, 3]))
        rows.append(acc)
    return torch.stack(rows)


def _window_sum_(x: torch.Tensor, w: int, dim: int) -> torch.Tensor:
    """Sums over w consecutive elements centred on each one along ``dim`` (zero padding).

    Overwrites ``x`` with its cumulative sum (scratch) and returns a new tensor.
    """
    r, n = w // 2, x.shape[dim]
    if n <= w:  # tiny input: pad and slice (simple, rare)
        c = F.pad(x.movedim(dim, -1), (r + 1, r)).cumsum(-1)
        return (c[..., w:] - c[..., :-w]).movedim(-1, dim)
    c = x.cumsum_(dim)
    out = torch.empty_like(c)
    # out[j] = c[j + r] - c[j - r - 1], with c[k] = c[n - 1] for k >= n and 0 for k < 0
    torch.sub(c.narrow(dim, w, n - w), c.narrow(dim, 0, n - w), out=out.narrow(dim, r + 1, n - w))
    out.narrow(dim, 0, r + 1).copy_(c.narrow(dim, r, r + 1))
    torch.sub(c.narrow(dim, n - 1, 1), c.narrow(dim, n - w, r), out=out.narrow(dim, n - r, r))
    return out


def box_sum(x: torch.Tensor, w: int) -> torch.Tensor:
    """Sum over the w x w window centred on each pixel (zero padding). x: (..., H, W) -> same.

    Two passes of running sums; ``x`` is used as scratch (pass a tensor you no longer need).
    """
    return _window_sum_(_window_sum_(x, w, x.ndim - 1), w, x.ndim - 2)


@dataclass(frozen=True)
class LevelImage:
    """One view at one pyramid level, on the compute device."""

    grey: torch.Tensor
    """(H, W) float32 grey in [0, 1] minus 0.5."""
    grey_ones: torch.Tensor
    """(2, H, W) float32: ``grey`` and ones (what sources are sampled from)."""
    mean: torch.Tensor
    """(H, W) window mean of ``grey``."""
    var: torch.Tensor
    """(H, W) window variance of ``grey``."""
    K: np.ndarray
    """(3, 3) float64 intrinsics at this level."""
    cam_from_world: np.ndarray
    """(4, 4) float64."""


def level_images(
    image: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray, levels: int, window: int, device: torch.device
) -> list[LevelImage]:
    """A view at every pyramid level, finest first (level l: size / 2^l, area-averaged).

    image: (H, W, 3) uint8 RGB; K: (3, 3) its intrinsics; cam_from_world: (4, 4).
    """
    rgb = torch.from_numpy(np.ascontiguousarray(image)).to(device=device, dtype=torch.float32) / 255.0
    grey = rgb @ torch.tensor([0.299, 0.587, 0.114], device=device) - _GREY_CENTRE  # (H, W)
    K = np.asarray(K, np.float64)
    out = []
    for level in range(levels):
        if level:
            h, w = grey.shape
            grey = F.interpolate(grey[None, None], size=(max(h // 2, 1), max(w // 2, 1)), mode="area")[0, 0]
            sx, sy = grey.shape[1] / w, grey.shape[0] / h
            K = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]]) @ K
        mean = box_sum(grey.clone(), window) / window**2
        var = (box_sum(grey * grey, window) / window**2 - mean * mean).clamp_min(0)
        grey_ones = torch.stack([grey, torch.ones_like(grey)])
        out.append(LevelImage(grey, grey_ones, mean, var, K, np.asarray(cam_from_world, np.float64)))
    return out


def pixel_rays(K: np.ndarray, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(3, H, W) float32 camera-frame rays ``K^-1 (u, v, 1)`` of every pixel (z = 1 for pinhole K)."""
    v, u = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return apply(np.linalg.inv(K), torch.stack([u, v, torch.ones_like(u)]))


@dataclass(frozen=True)
class Warp:
    """Projective map from reference pixels at inverse depth q to a source image.

    The source pixel of reference pixel p at depth d = 1 / q is ``K_s (R_sr d ray_p + t_sr)``,
    dehomogenised, which is the dehomogenised ``a_p + q b``. Rows 0 and 1 of a and b are
    premultiplied by the pixel -> ``grid_sample`` coordinate map ([0, W-1] -> [-1, 1]), so the
    dehomogenised x and y are the sampling grid directly.
    """

    a: torch.Tensor
    """(H, W, 3) float32."""
    b: torch.Tensor
    """(3,) float32."""
    src: LevelImage
    """The source view at the same level."""


def make_warp(ref: LevelImage, src: LevelImage, rays: torch.Tensor) -> Warp:
    """rays: (3, H, W) reference rays (:func:`pixel_rays`)."""
    hs, ws = src.grey.shape
    to_grid = np.array([[2.0 / max(ws - 1, 1), 0, -1], [0, 2.0 / max(hs - 1, 1), -1], [0, 0, 1]])
    src_from_ref = src.cam_from_world @ np.linalg.inv(ref.cam_from_world)  # (4, 4)
    proj = to_grid @ src.K @ src_from_ref[:3]  # (3, 4)
    a = apply(proj[:, :3], rays).permute(1, 2, 0).contiguous()
    return Warp(a, torch.as_tensor(proj[:, 3], device=rays.device, dtype=torch.float32), src)


def source_ncc(ref: LevelImage, warp: Warp, inv: torch.Tensor, window: int) -> torch.Tensor:
    """NCC between the reference and one source for P inverse-depth hypotheses.

    inv: (P, H, W) or (P, 1, 1) inverse depth per reference pixel. Returns (P, H, W) float32 in
    [-1, 1]; pixels whose centre lands outside the source (or behind it) get OUTSIDE_NCC.
    With window sums s = sum(S), ss = sum(S^2), si = sum(S I) over n = window^2 pixels,
    NCC = (si - mean_I s) / sqrt(var_I (n ss - s^2)).
    """
    p = inv.shape[0]
    h, w = ref.grey.shape
    x = torch.addcmul(warp.a, inv[..., None], warp.b)  # (P, H, W, 3)
    z = x[..., 2:]
    grid = x[..., :2].div_(z)
    behind = z <= _MIN_Z
    if bool(behind.any()):
        grid.masked_fill_(behind, 2.0)  # outside the sampling grid
    # grey and an all-ones channel: the second samples to 1 exactly where the centre is inside
    sampled = F.grid_sample(
        warp.src.grey_ones[None], grid.view(1, p * h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=True
    ).view(2, p, h, w)
    outside = sampled[1] < 0.999
    stats = torch.empty((3, p, h, w), device=x.device)
    stats[0] = sampled[0]
    torch.mul(sampled[0], sampled[0], out=stats[1])
    torch.mul(sampled[0], ref.grey, out=stats[2])
    s, ss, si = box_sum(stats, window)  # (P, H, W) each
    den = torch.addcmul(ss.mul_(window * window), s, s, value=-1).clamp_min_(0).mul_(ref.var).add_(1e-10).rsqrt_()
    ncc = torch.addcmul(si, ref.mean, s, value=-1).mul_(den).clamp_(-1, 1)
    return ncc.masked_fill_(outside, OUTSIDE_NCC)


def best_k_mean(scores: Iterable[torch.Tensor], best_k: int) -> torch.Tensor:
    """Mean of the best_k highest of the given scores, each (P, H, W) -> (P, H, W).

    Keeps the best_k highest so far sorted per element (an insertion network of max/min), so
    memory does not grow with the number of sources.
    """
    highs: list[torch.Tensor] = []
    for c in scores:
        for i, high in enumerate(highs):
            highs[i], c = torch.maximum(high, c), torch.minimum(high, c)
        if len(highs) < best_k:
            highs.append(c)
    if not highs:
        raise ValueError("best_k_mean needs at least one score")
    total = highs[0]
    for high in highs[1:]:
        total = total + high
    return total / len(highs)


def _gather(image: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-pixel lookup: image (H, W) at float pixels u, v (...) -> (values, inside) (...)."""
    hs, ws = image.shape
    ui, vi = u.round().long(), v.round().long()
    inside = (ui >= 0) & (ui < ws) & (vi >= 0) & (vi < hs)
    flat = vi.clamp(0, hs - 1) * ws + ui.clamp(0, ws - 1)
    return image.reshape(-1)[flat], inside


def consistent_views(
    r: int,
    images: Sequence[LevelImage],
    depths: Sequence[torch.Tensor],
    usable: Sequence[torch.Tensor],
    neighbors: Sequence[int],
    max_px: float,
    max_rel_depth: float,
) -> torch.Tensor:
    """Number of source views whose depth maps agree with view r's, per pixel: (H, W) int64.

    images: every view at the working size; depths: every view's (H_j, W_j) depth; usable: every
    view's (H_j, W_j) bool mask of the depths it may vouch with. Pixel p of r, lifted with its
    depth, lands at pixel q of view j with depth z; j's depth d_j at q (nearest pixel) lifts q
    back to 3-D, which projects to p' in r. j agrees when ``|p' - p| < max_px`` and
    ``|z - d_j| / d_j < max_rel_depth`` and d_j is usable.
    """
    ref = images[r]
    h, w = depths[r].shape
    device = depths[r].device
    rays = pixel_rays(ref.K, h, w, device)
    pts_r = rays * depths[r]  # (3, H, W) in camera r
    pix_r = apply(ref.K, rays)  # (3, H, W): (u, v, 1)
    agree = torch.zeros((h, w), dtype=torch.int64, device=device)
    for j in neighbors:
        src = images[j]
        j_from_r = src.cam_from_world @ np.linalg.inv(ref.cam_from_world)  # (4, 4)
        r_from_j = np.linalg.inv(j_from_r)
        proj = apply(src.K @ j_from_r[:3], pts_r)  # (3, H, W); proj[2] is the depth in j
        z_j = proj[2]
        front = z_j > _MIN_Z
        z_safe = torch.where(front, z_j, torch.ones_like(z_j))
        u, v = proj[0] / z_safe, proj[1] / z_safe
        d_j, inside = _gather(depths[j], u, v)
        ok_j, _ = _gather(usable[j], u, v)
        # j's point at (u, v) lifted with j's depth, projected back into r (homogeneous pixels)
        back = apply(ref.K @ r_from_j[:3, :3] @ np.linalg.inv(src.K), torch.stack([u, v, torch.ones_like(u)]))
        hom = apply(np.c_[np.eye(3), ref.K @ r_from_j[:3, 3]], back * d_j)
        z_r = hom[2]
        z_r_safe = torch.where(z_r > _MIN_Z, z_r, torch.ones_like(z_r))
        err = torch.hypot(hom[0] / z_r_safe - pix_r[0], hom[1] / z_r_safe - pix_r[1])
        rel = (z_j - d_j).abs() / d_j.clamp_min(_MIN_Z)
        agree += front & inside & ok_j & (z_r > _MIN_Z) & (err < max_px) & (rel < max_rel_depth)
    return agree
