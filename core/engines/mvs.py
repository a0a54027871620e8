"""Dense multi-view stereo on posed pinhole images: per-view depth, confidence and world points.

This is the dense step of the COLMAP engine (:mod:`core.engines.mvs_colmap` feeds it the
undistorted, registered images and COLMAP's sparse points), written in vectorised torch so it
runs on the CPU or, unchanged, on a GPU. Cameras use OpenCV axes (x right, y down, z forward)
and integer pixel centres, as everywhere in this project (:mod:`core.types`).

Algorithm, per reference view r (N views, working size H x W):

1. **Neighbour selection** (:func:`select_neighbors`): every other view j is scored by the
   sparse points both observe, each weighted by how close its triangulation angle theta (between
   the rays from the two camera centres) is to ``view_angle_deg``: ``exp(-(theta - theta0)^2 /
   (2 sigma^2))`` with sigma = 1 degree below theta0 and 10 degrees above (the view-selection
   score of MVSNet, Yao et al., ECCV 2018). The ``num_neighbors`` best views are r's sources.
2. **Depth range** (:func:`depth_range`): 2nd to 98th percentile of the z-depths of the sparse
   points observed in r, widened by ``depth_margin`` (in inverse depth) on both sides.
3. **Plane sweep** (Collins, CVPR 1996) on the image pyramid level (the working size halved per
   level, area-averaged) whose long side is first at most ``sweep_max_side``: fronto-parallel
   planes uniformly spaced in inverse depth, as many as make the largest disparity step between
   planes ``plane_px`` pixels at that level (clamped to [min_planes, max_planes]). Each source
   image is warped onto each plane (bilinear ``grid_sample``) and compared with the reference by
   NCC of grey values over a ``window`` x ``window`` window (box sums by running sums). A
   hypothesis scores the mean of its ``best_k`` highest source NCCs, so sources that are
   occluded there do not count (Kang, Szeliski & Chai, "Handling occlusions in dense multi-view
   stereo", CVPR 2001). The score volume is streamed in chunks of hypotheses (``chunk_mb``):
   only the running best and its two neighbours are kept, and the depth is the vertex of the
   parabola through those three scores (sub-plane accuracy).
4. **Refinement** at each finer level: the inverse-depth map is upsampled and every pixel tries
   ``2 * refine_radius + 1`` offsets of half the previous step around its own value, again with
   a parabola fit. Each pixel of a window keeps its own depth, so the window follows the surface
   (slanted surfaces match better than on a fronto-parallel plane).
5. **Geometric consistency** (as in COLMAP's filtering and fusion, Schoenberger et al.,
   "Pixelwise view selection for unstructured multi-view stereo", ECCV 2016): a pixel's 3-D
   point is projected into each source view j, j's depth there is read (nearest pixel) and
   lifted back to 3-D and projected into r. View j agrees when that round trip lands within
   ``consistency_px`` pixels and the depths differ by less than ``consistency_depth``
   (relative). A depth is kept where at least ``min_consistent`` sources agree, the reference
   window is textured (grey std >= ``min_texture``) and the aggregated NCC is >= ``min_ncc``.

Confidence (the scene's raw confidence, >= 1, like DUSt3R's): ``1 + n_agree * (1 + ncc)`` for
kept pixels (n_agree agreeing sources, ncc in [min_ncc, 1] the aggregated NCC), exactly 1 for the
others. With ``min_consistent = 2`` and ``min_ncc > 0`` (the defaults) every kept pixel has
confidence > 3, so the default threshold
of :class:`config.PostprocessConfig` (strictly above 3) shows exactly the kept depths, and a higher
threshold asks for more agreeing views. Rejected pixels keep their (unreliable) depth estimate,
so every map is finite, as DUSt3R's are.

Cost: per view about (sweep pixels x planes + working pixels x (2 refine_radius + 1)) x sources
NCC evaluations of ~30 memory passes each; memory: the pyramids of all views plus one chunk.
Measured with ``bench/bench_mvs.py`` (figures in its output): the 8 herzjesu_p8 photos at the
default 640 px take a few seconds of CPU time per view on a 2-core CPU.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.engines.mvs_kernels import (
    LevelImage,
    Warp,
    apply,
    best_k_mean,
    consistent_views,
    level_images,
    make_warp,
    pixel_rays,
    source_ncc,
)
from core.errors import Cancelled

__all__ = [
    "STAGE_DENSE",
    "MvsConfig",
    "MvsView",
    "DenseDepth",
    "select_neighbors",
    "depth_range",
    "dense_depth",
]

logger = logging.getLogger(__name__)

#: Progress stage of the dense step; counts views.
STAGE_DENSE = "dense"
#: Bytes per hypothesis and pixel held at once while scoring a chunk (about 20 float32 maps).
_BYTES_PER_SAMPLE = 80


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class MvsConfig:
    """Settings of the dense step (see the module docstring for what each stage does)."""

    max_size: int = 640
    """Working resolution: long side in pixels of the images the depth maps are computed on."""
    num_neighbors: int = 4
    """Source views per reference view."""
    view_angle_deg: float = 5.0
    """Triangulation angle the neighbour score prefers (degrees)."""
    sweep_max_side: int = 200
    """The sweep runs on the first level of the image pyramid (working size halved per level) whose
    long side is at most this; each finer level refines the depths."""
    window: int = 7
    """NCC window side in pixels at every level (odd)."""
    plane_px: float = 2.0
    """Sweep: largest disparity step between consecutive planes, in pixels of the sweep level."""
    min_planes: int = 32
    """Fewest sweep planes."""
    max_planes: int = 256
    """Most sweep planes."""
    refine_radius: int = 2
    """Refinement: offsets tried on each side of a pixel's depth, in steps of half the previous step."""
    best_k: int = 2
    """A hypothesis costs the mean of its best_k lowest source costs (occlusion-robust)."""
    min_ncc: float = 0.3
    """Kept depths need an aggregated NCC of at least this."""
    min_texture: float = 0.01
    """Kept depths need a reference window whose grey std (intensities in [0, 1]) is at least this."""
    min_consistent: int = 2
    """Kept depths need at least this many geometrically consistent source views."""
    consistency_px: float = 2.0
    """Round-trip reprojection error (pixels of the working size) under which a source agrees."""
    consistency_depth: float = 0.01
    """Relative depth difference under which a source agrees."""
    depth_margin: float = 0.2
    """The sparse points' depth range is widened by this fraction (of its inverse-depth span) on each side."""
    chunk_mb: int = 256
    """Memory for one chunk of the cost volume (hypotheses x sources x pixels)."""

    def levels(self, size: tuple[int, int]) -> int:
        """Pyramid levels for an image of size (W, H): 1 + halvings until the long side <= sweep_max_side."""
        side, n = max(size), 1
        while side > self.sweep_max_side and side // 2 >= 16:
            side, n = side // 2, n + 1
        return n

    def __post_init__(self) -> None:
        _check(self.max_size >= 32, f"max_size must be >= 32, got {self.max_size}")
        _check(self.num_neighbors >= 1, f"num_neighbors must be >= 1, got {self.num_neighbors}")
        _check(0 < self.view_angle_deg < 90, f"view_angle_deg must be in (0, 90), got {self.view_angle_deg}")
        _check(self.sweep_max_side >= 16, f"sweep_max_side must be >= 16, got {self.sweep_max_side}")
        _check(self.window >= 3 and self.window % 2 == 1, f"window must be odd and >= 3, got {self.window}")
        _check(self.plane_px > 0, f"plane_px must be > 0, got {self.plane_px}")
        _check(
            2 <= self.min_planes <= self.max_planes,
            f"need 2 <= min_planes <= max_planes, got {self.min_planes}, {self.max_planes}",
        )
        _check(self.refine_radius >= 1, f"refine_radius must be >= 1, got {self.refine_radius}")
        _check(self.best_k >= 1, f"best_k must be >= 1, got {self.best_k}")
        _check(-1 <= self.min_ncc < 1, f"min_ncc must be in [-1, 1), got {self.min_ncc}")
        _check(self.min_texture >= 0, f"min_texture must be >= 0, got {self.min_texture}")
        _check(self.min_consistent >= 0, f"min_consistent must be >= 0, got {self.min_consistent}")
        _check(self.consistency_px > 0, f"consistency_px must be > 0, got {self.consistency_px}")
        _check(0 < self.consistency_depth < 1, f"consistency_depth must be in (0, 1), got {self.consistency_depth}")
        _check(self.depth_margin >= 0, f"depth_margin must be >= 0, got {self.depth_margin}")
        _check(self.chunk_mb >= 8, f"chunk_mb must be >= 8, got {self.chunk_mb}")


@dataclass(frozen=True)
class MvsView:
    """One registered, undistorted (pinhole) view at the working size."""

    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    K: np.ndarray
    """(3, 3) float64 intrinsics in pixels of ``image`` (integer pixel centres)."""
    cam_from_world: np.ndarray
    """(4, 4) float64 world-to-camera, OpenCV axes."""


@dataclass(frozen=True)
class DenseDepth:
    """What :func:`dense_depth` returns; one entry per view, numpy on the CPU."""

    depths: tuple[np.ndarray, ...]
    """N (H, W) float32 z-depth in the camera frame (finite everywhere; trust it where conf > 1)."""
    conf: tuple[np.ndarray, ...]
    """N (H, W) float32 raw confidence >= 1 (1 = not kept; see the module docstring)."""
    pts3d: tuple[np.ndarray, ...]
    """N (H, W, 3) float32 world points of the depths."""
    kept: tuple[np.ndarray, ...]
    """N (H, W) bool: depths that passed every filter (conf > 1)."""
    neighbors: tuple[tuple[int, ...], ...]
    """N source-view indices per view, best first."""
    depth_ranges: np.ndarray
    """(N, 2) float64 (near, far) searched per view."""
    n_planes: tuple[int, ...]
    """N sweep planes per view."""
    seconds: tuple[float, ...]
    """N seconds spent on each view (depth estimation and its filtering)."""


# --------------------------------------------------------------------------------------------
# View selection and depth range (numpy, from the sparse points)
# --------------------------------------------------------------------------------------------


def select_neighbors(
    centres: np.ndarray, xyz: np.ndarray, visible: Sequence[np.ndarray], cfg: MvsConfig
) -> tuple[tuple[int, ...], ...]:
    """Source views of every view, best first.

    centres: (N, 3) camera centres, world frame; xyz: (M, 3) sparse points, world frame;
    visible: N int arrays of the indices (into xyz) of the points each view observes. Views are
    ranked by the MVSNet score (module docstring), ties and views without shared points by the
    number of shared points, then by camera distance. Returns N tuples of min(num_neighbors, N - 1)
    indices.
    """
    centres, xyz = np.asarray(centres, np.float64), np.asarray(xyz, np.float64)
    n = centres.shape[0]
    if centres.shape != (n, 3) or xyz.ndim != 2 or xyz.shape[1] != 3 or len(visible) != n:
        raise ValueError(
            f"expected centres (N, 3), xyz (M, 3), N visibility lists; got {centres.shape}, {xyz.shape}, {len(visible)}"
        )
    theta0 = cfg.view_angle_deg
    sets = [np.unique(np.asarray(v, np.int64)) for v in visible]
    out = []
    for r in range(n):
        keys = []
        for j in range(n):
            if j == r:
                continue
            shared = np.intersect1d(sets[r], sets[j], assume_unique=True)
            ray_r, ray_j = xyz[shared] - centres[r], xyz[shared] - centres[j]  # (S, 3)
            cos = np.sum(ray_r * ray_j, 1) / (np.linalg.norm(ray_r, axis=1) * np.linalg.norm(ray_j, axis=1) + 1e-12)
            theta = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
            sigma = np.where(theta <= theta0, 1.0, 10.0)
            score = float(np.exp(-((theta - theta0) ** 2) / (2 * sigma**2)).sum())
            keys.append((-score, -len(shared), float(np.linalg.norm(centres[j] - centres[r])), j))
        keys.sort()
        out.append(tuple(k[3] for k in keys[: cfg.num_neighbors]))
    return tuple(out)


def depth_range(cam_from_world: np.ndarray, xyz: np.ndarray, margin: float) -> tuple[float, float]:
    """(near, far) z-depth range of one view from the sparse points it observes.

    cam_from_world: (4, 4); xyz: (M, 3) world points (those the view observes; at least one
    must lie in front of the camera). The 2nd-98th percentile of their depths, widened by
    ``margin`` times the inverse-depth span on each side (near stays > 0).
    """
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    z = xyz @ np.asarray(cam_from_world, np.float64)[2, :3] + cam_from_world[2, 3]
    z = z[np.isfinite(z) & (z > 0)]
    if z.size == 0:
        raise ValueError("no sparse point lies in front of the camera: cannot bound the depth search")
    near, far = np.percentile(z, [2, 98]) if z.size >= 10 else (z.min(), z.max())
    inv_near, inv_far = 1 / near, 1 / far
    span = max(inv_near - inv_far, 0.05 * inv_near)
    inv_near, inv_far = inv_near + margin * span, max(inv_far - margin * span, 0.1 * inv_far)
    return float(1 / inv_near), float(1 / inv_far)


# --------------------------------------------------------------------------------------------
# Depth search (torch)
# --------------------------------------------------------------------------------------------


def _search(
    ref: LevelImage, warps: list[Warp], hypotheses: Callable[[int, int], torch.Tensor], n_hyp: int, cfg: MvsConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best of ``n_hyp`` inverse-depth hypotheses per pixel, streamed in chunks.

    hypotheses(i0, i1): (i1 - i0, H, W) or (i1 - i0, 1, 1) inverse depths of hypotheses i0..i1-1,
    which must be equally spaced in i. Returns (index, score), both (H, W) float32: the
    fractional index of the parabola vertex through the best score and its two neighbours
    (within +-0.5 of the best hypothesis) and the aggregated NCC of the best hypothesis.
    """
    h, w = ref.grey.shape
    device = ref.grey.device
    chunk = max(1, cfg.chunk_mb * 2**20 // (_BYTES_PER_SAMPLE * h * w))
    low = torch.full((h, w), -math.inf, device=device)
    best, left, right, prev = low, low, low, low
    best_i = torch.zeros((h, w), dtype=torch.int64, device=device)
    for i0 in range(0, n_hyp, chunk):
        i1 = min(n_hyp, i0 + chunk)
        inv = hypotheses(i0, i1)
        score = best_k_mean((source_ncc(ref, wp, inv, cfg.window) for wp in warps), cfg.best_k)
        for k in range(i1 - i0):
            c, i = score[k], i0 + k
            better = c > best
            right = torch.where((best_i == i - 1) & ~better, c, right)
            left = torch.where(better, prev, left)
            right = torch.where(better, low, right)  # pending until the next hypothesis
            best = torch.where(better, c, best)
            best_i.masked_fill_(better, i)
            prev = c
    curvature = 2 * best - left - right  # > 0 at a strict maximum
    ok = torch.isfinite(curvature) & (curvature > 1e-9)
    sub = torch.where(ok, (right - left) / (2 * torch.where(ok, curvature, torch.ones_like(curvature))), 0.0)
    return best_i.float() + sub.clamp(-0.5, 0.5), best


def _plane_count(warps: list[Warp], inv_near: float, inv_far: float, cfg: MvsConfig) -> int:
    """Sweep planes so that no sampled pixel's disparity step exceeds ``cfg.plane_px``."""
    longest = 0.0
    for wp in warps:
        h, w, _ = wp.a.shape
        hs, ws = wp.src.grey.shape
        ys = torch.linspace(0, h - 1, 7, device=wp.a.device).round().long()
        xs = torch.linspace(0, w - 1, 7, device=wp.a.device).round().long()
        a = wp.a[ys][:, xs].reshape(-1, 3).T  # (3, 49)
        near, far = a + inv_near * wp.b[:, None], a + inv_far * wp.b[:, None]
        ok = (near[2] > 1e-9) & (far[2] > 1e-9)
        if ok.any():
            shift = near[:2, ok] / near[2, ok] - far[:2, ok] / far[2, ok]  # grid units
            shift = shift * torch.tensor([(ws - 1) / 2, (hs - 1) / 2], device=shift.device)[:, None]  # pixels
            longest = max(longest, float(torch.linalg.norm(shift, dim=0).max()))
    return int(min(max(math.ceil(longest / cfg.plane_px) + 1, cfg.min_planes), cfg.max_planes))


def _view_depth(
    r: int, pyramids: list[list[LevelImage]], neighbors: Sequence[int], near_far: tuple[float, float], cfg: MvsConfig
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Inverse depth and aggregated NCC of view r at the working size: sweep, then refine.

    Returns inv (H, W), ncc (H, W) float32 and the number of sweep planes.
    """
    level = len(pyramids[r]) - 1
    ref = pyramids[r][level]
    rays = pixel_rays(ref.K, *ref.grey.shape, device=ref.grey.device)
    warps = [make_warp(ref, pyramids[j][level], rays) for j in neighbors]
    inv_near, inv_far = 1.0 / near_far[0], 1.0 / near_far[1]
    n_planes = _plane_count(warps, inv_near, inv_far, cfg)
    step = (inv_near - inv_far) / (n_planes - 1)
    device = ref.grey.device

    def planes(i0: int, i1: int) -> torch.Tensor:
        return (inv_far + step * torch.arange(i0, i1, device=device, dtype=torch.float32)).view(-1, 1, 1)

    idx, ncc = _search(ref, warps, planes, n_planes, cfg)
    inv = inv_far + step * idx
    radius = cfg.refine_radius
    for level in range(len(pyramids[r]) - 2, -1, -1):
        ref = pyramids[r][level]
        inv = F.interpolate(inv[None, None], size=ref.grey.shape, mode="bilinear", align_corners=False)[0, 0]
        step /= 2
        rays = pixel_rays(ref.K, *ref.grey.shape, device=device)
        warps = [make_warp(ref, pyramids[j][level], rays) for j in neighbors]
        base = inv

        def offsets(i0: int, i1: int, base: torch.Tensor = base, step: float = step) -> torch.Tensor:
            return base[None] + step * (torch.arange(i0, i1, device=device, dtype=torch.float32) - radius).view(
                -1, 1, 1
            )

        idx, ncc = _search(ref, warps, offsets, 2 * radius + 1, cfg)
        inv = base + step * (idx - radius)
    return inv, ncc, n_planes


def _validate(views: Sequence[MvsView], xyz: np.ndarray, visible: Sequence[np.ndarray]) -> None:
    if len(views) < 2:
        raise ValueError(f"dense stereo needs at least 2 views, got {len(views)}")
    if len(visible) != len(views):
        raise ValueError(f"expected one visibility list per view ({len(views)}), got {len(visible)}")
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (M, 3), got {xyz.shape}")
    for k, v in enumerate(views):
        if v.image.ndim != 3 or v.image.shape[2] != 3 or v.image.dtype != np.uint8:
            raise ValueError(f"view {k}: image must be (H, W, 3) uint8, got {v.image.shape} {v.image.dtype}")
        if np.shape(v.K) != (3, 3) or np.shape(v.cam_from_world) != (4, 4):
            raise ValueError(
                f"view {k}: K must be (3, 3) and cam_from_world (4, 4), "
                f"got {np.shape(v.K)}, {np.shape(v.cam_from_world)}"
            )


def _ranges(views: Sequence[MvsView], xyz: np.ndarray, visible: Sequence[np.ndarray], margin: float) -> np.ndarray:
    """(N, 2) depth range per view: from its own points, or from every point when it sees too few."""
    out = []
    for v, idx in zip(views, visible, strict=True):
        own = xyz[np.asarray(idx, np.int64)]
        z = own @ v.cam_from_world[2, :3] + v.cam_from_world[2, 3]
        out.append(depth_range(v.cam_from_world, own if np.sum(z > 0) >= 3 else xyz, margin))
    return np.array(out, np.float64).reshape(-1, 2)


def dense_depth(
    views: Sequence[MvsView],
    xyz: np.ndarray,
    visible: Sequence[np.ndarray],
    cfg: MvsConfig,
    *,
    device: torch.device | str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> DenseDepth:
    """Depth, confidence and world points of every view (algorithm: module docstring).

    views: N >= 2 undistorted pinhole views at the working size (any sizes); xyz: (M, 3) sparse
    points, world frame; visible: N int arrays of the indices of the points each view observes.
    progress: ``progress("dense", done, N)`` after each view's depth map; cancel: polled before
    each view, True raises :class:`core.errors.Cancelled`. Memory: the pyramids of all views plus
    one chunk of the cost volume (``cfg.chunk_mb``).
    """
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3) if np.ndim(xyz) != 2 else np.asarray(xyz, np.float64)
    _validate(views, xyz, visible)
    device = torch.device(device)
    n = len(views)
    centres = np.stack([-v.cam_from_world[:3, :3].T @ v.cam_from_world[:3, 3] for v in views])  # (N, 3)
    neighbors = select_neighbors(centres, xyz, visible, cfg)
    ranges = _ranges(views, xyz, visible, cfg.depth_margin)
    report = progress if progress is not None else (lambda *_: None)
    seconds, planes, depths, usable, nccs = [], [], [], [], []
    with torch.inference_mode():
        levels = cfg.levels(max((v.image.shape[1], v.image.shape[0]) for v in views))
        pyramids = [level_images(v.image, v.K, v.cam_from_world, levels, cfg.window, device) for v in views]
        report(STAGE_DENSE, 0, n)
        for r in range(n):
            if cancel is not None and cancel():
                raise Cancelled(f"dense reconstruction cancelled after {r} of {n} views")
            t0 = time.perf_counter()
            inv, ncc, n_planes = _view_depth(r, pyramids, neighbors[r], tuple(ranges[r]), cfg)
            textured = pyramids[r][0].var >= cfg.min_texture**2
            depths.append(torch.where(inv > 0, 1 / inv.clamp_min(1e-12), torch.full_like(inv, ranges[r, 1])))
            usable.append(textured & (inv > 0) & (ncc >= cfg.min_ncc))
            nccs.append(ncc)
            planes.append(n_planes)
            seconds.append(time.perf_counter() - t0)
            logger.info("dense: view %d/%d, %d planes, %.2f s", r + 1, n, n_planes, seconds[-1])
            report(STAGE_DENSE, r + 1, n)
        finest = [p[0] for p in pyramids]
        out_d, out_c, out_p, out_k = [], [], [], []
        for r in range(n):
            t0 = time.perf_counter()
            agree = consistent_views(r, finest, depths, usable, neighbors[r], cfg.consistency_px, cfg.consistency_depth)
            kept = usable[r] & (agree >= cfg.min_consistent)
            conf = torch.where(kept, 1 + agree * (1 + nccs[r].clamp(-1, 1)), torch.ones_like(nccs[r]))
            rays = pixel_rays(finest[r].K, *depths[r].shape, device=device)  # (3, H, W)
            pts = apply(np.linalg.inv(views[r].cam_from_world)[:3], rays * depths[r]).permute(1, 2, 0).contiguous()
            out_d.append(depths[r].float().cpu().numpy())
            out_c.append(conf.float().cpu().numpy())
            out_p.append(pts.float().cpu().numpy())
            out_k.append(kept.cpu().numpy())
            seconds[r] += time.perf_counter() - t0
    return DenseDepth(
        depths=tuple(out_d),
        conf=tuple(out_c),
        pts3d=tuple(out_p),
        kept=tuple(out_k),
        neighbors=neighbors,
        depth_ranges=ranges,
        n_planes=tuple(planes),
        seconds=tuple(seconds),
    )
