"""TSDF fusion: every view's depth map fused into a truncated signed distance volume, in torch.

Reads a dense :class:`core.types.Scene` (per-view z-depth, raw confidence, intrinsics and pose) and
the per-view keep masks of :func:`core.outputs.postprocessing.point_masks` (the current display
settings), never re-running the network or the alignment. :mod:`core.outputs.surface` extracts a
mesh from the volume, :mod:`core.outputs.voxels` an occupancy grid.

Grid (:class:`VoxelGrid`): voxel (i, j, k) has its centre at ``origin + voxel_size * (i, j, k)``,
world frame; by default it spans the kept points' bounding box with ``resolution`` voxels along its
longest side, padded by the truncation + 2 voxels.

Fusion (:func:`fuse_tsdf`), on the given torch device, one block of about ``chunk_voxels`` voxels at
a time. Each voxel's value depends only on its own centre, so the blocks change nothing in the
result (no seams). Every voxel centre ``x`` is projected into every view k with its pinhole camera
(OpenCV axes: x right, y down, z forward; pixel centres at integer coordinates) to its nearest pixel,
and ``sdf = depth(pixel) - z_cam(x)`` (positive in front of the observed surface). Then:

- a **kept** pixel observes the voxel when ``sdf > -trunc``: value ``clamp(sdf / trunc, -1, 1)``,
  weight its raw confidence times the cosine between its ray and the surface normal of the depth
  map (clipped to 0.1..1, so grazing and silhouette pixels count less); free space in front of the
  surface is +1, the band up to ``trunc`` behind it negative; farther behind, the voxel is
  **hidden** by that view;
- a pixel **not kept** (low confidence, filtered out, background, sky, no depth) only carves free
  space: value +1, weight ``carve_weight``, for voxels more than ``trunc`` in front of the smallest
  depth in a ``carve_window`` square around it (no depth: the whole ray), so that an isolated stray
  pixel cannot drill a tunnel.

A voxel's value is the weighted mean of its observations. When their weight is below
``occlusion_ratio`` times the weight of the views that have it hidden, they are ignored (stray
observations inside a solid); a voxel without observations has weight 0. Two modes (``watertight``):

- **watertight** (:func:`closed_field`): an unobserved voxel that at least ``min_hidden_views`` views
  have hidden is solid (-1: nothing ever saw through it), other unobserved voxels (no view saw
  anything there) and the grid's outer layer are empty (+1), and solid specks and cavities under
  ``min_component_voxels`` are removed, so the zero level set is closed. This is space carving by
  visibility: what no view saw through is filled in, as 3D printing and volume measurement need.
- **observed only**: the surface is extracted only where all 8 corners of a cube were observed, so
  nothing is invented where nothing was seen (the surface stays open).

Memory (:func:`fusion_memory_bytes`): the output takes 9 bytes per voxel (float32 tsdf and weight,
bool hidden; 151 MB at 256^3), each view a (H + 2) * (W + 2) float64 lookup table, and one block
about 120 bytes per voxel of temporaries (31 MB for the default 2^18 voxels), all on the fusion device.
The returned :class:`TSDFVolume` is on the CPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from core.errors import SettingsError, UserError
from core.types import Scene

__all__ = [
    "SurfaceOptions",
    "VoxelGrid",
    "TSDFVolume",
    "DenseDepthRequiredError",
    "EmptySurfaceError",
    "surface_unavailable_reason",
    "require_dense_depth",
    "resolve_depth_masks",
    "kept_points",
    "finite_box",
    "grid_around",
    "fusion_memory_bytes",
    "ProjectedView",
    "projected_view",
    "lookup",
    "pixel_index",
    "fuse_tsdf",
    "closed_field",
]

logger = logging.getLogger(__name__)


class DenseDepthRequiredError(SettingsError):
    """Surfaces and voxels were asked of a scene without dense depth (the COLMAP engine's sparse
    points)."""

    title = "Surface unavailable"


class EmptySurfaceError(UserError, ValueError):
    """No kept point or no surface crossing: nothing to fuse or extract."""

    title = "No surface"


@dataclass(frozen=True)
class SurfaceOptions:
    """How the surface is fused and extracted (defaults are the app's)."""

    resolution: int = 256
    """Voxels along the longest side of the kept points' bounding box (16..1024); ignored when voxel_size is given."""
    voxel_size: float | None = None
    """Voxel edge in world units (> 0), or None for automatic (extent / resolution)."""
    watertight: bool = True
    """Close the surface by carving (unobserved space is solid); False: observed surfaces only."""
    truncation_voxels: float = 3.0
    """TSDF truncation distance in voxels (1..16)."""
    chunk_voxels: int = 1 << 18
    """Voxels fused per chunk (4096..2^24): bounds the temporary memory (about 120 B per voxel)."""
    carve_weight: float = 1.0
    """Weight of a free-space observation from a pixel that is not kept (0..100; 0: no carving)."""
    carve_window: int = 5
    """Odd window (px, 1..31) whose smallest depth bounds how far a pixel that is not kept carves."""
    occlusion_ratio: float = 0.1
    """(0..1) A voxel whose observations weigh less than this fraction of the views that have it hidden
    behind a kept surface counts as unobserved (so stray pixels cannot drill tunnels into solids)."""
    min_hidden_views: int = 2
    """(1..64) Watertight: an unobserved voxel is solid when at least this many views (or all, when
    fewer) have it hidden behind a kept surface; else it is empty (no view saw anything there)."""
    min_component_voxels: int = 8
    """(0..10^6) Watertight: solid specks and enclosed cavities smaller than this (voxels) are removed."""
    max_faces: int = 0
    """Face budget for quadric decimation (0: keep every face; else >= 100)."""
    max_voxels: int = 1 << 26
    """Largest grid allowed (voxels), so a tiny voxel_size fails early instead of exhausting memory."""

    def __post_init__(self) -> None:
        checks = [
            (16 <= self.resolution <= 1024, f"resolution must be in 16..1024, got {self.resolution}"),
            (self.voxel_size is None or self.voxel_size > 0, f"voxel_size must be > 0, got {self.voxel_size}"),
            (1 <= self.truncation_voxels <= 16, f"truncation_voxels must be in 1..16, got {self.truncation_voxels}"),
            (4096 <= self.chunk_voxels <= 1 << 24, f"chunk_voxels must be in 4096..2^24, got {self.chunk_voxels}"),
            (0 <= self.carve_weight <= 100, f"carve_weight must be in 0..100, got {self.carve_weight}"),
            (
                self.carve_window % 2 == 1 and 1 <= self.carve_window <= 31,
                f"carve_window must be odd in 1..31, got {self.carve_window}",
            ),
            (0 <= self.occlusion_ratio <= 1, f"occlusion_ratio must be in 0..1, got {self.occlusion_ratio}"),
            (1 <= self.min_hidden_views <= 64, f"min_hidden_views must be in 1..64, got {self.min_hidden_views}"),
            (
                0 <= self.min_component_voxels <= 10**6,
                f"min_component_voxels must be in 0..10^6, got {self.min_component_voxels}",
            ),
            (self.max_faces == 0 or self.max_faces >= 100, f"max_faces must be 0 or >= 100, got {self.max_faces}"),
            (self.max_voxels >= 4096, f"max_voxels must be >= 4096, got {self.max_voxels}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise SettingsError(msg)


@dataclass(frozen=True)
class VoxelGrid:
    """A regular grid: voxel (i, j, k) has its centre at ``origin + voxel_size * (i, j, k)`` (world)."""

    origin: tuple[float, float, float]
    """World position of the centre of voxel (0, 0, 0)."""
    voxel_size: float
    """Voxel edge in world units."""
    shape: tuple[int, int, int]
    """(nx, ny, nz) voxels along world x, y, z."""

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    def world_from_grid(self) -> np.ndarray:
        """(4, 4) float64: voxel centre (i, j, k, 1) -> world point."""
        mat = np.eye(4)
        mat[:3, :3] *= self.voxel_size
        mat[:3, 3] = self.origin
        return mat


@dataclass(frozen=True)
class TSDFVolume:
    """A fused truncated signed distance volume (CPU arrays on ``grid``)."""

    grid: VoxelGrid
    tsdf: np.ndarray
    """(nx, ny, nz) float32 in [-1, 1]: weighted mean of sdf / truncation, positive in front of surfaces
    (1 where unobserved)."""
    weight: np.ndarray
    """(nx, ny, nz) float32 summed observation weight (0: unobserved)."""
    hidden: np.ndarray
    """(nx, ny, nz) bool: at least ``min_hidden_views`` views have the voxel behind a kept surface
    (farther than the truncation)."""
    truncation: float
    """Truncation distance in world units."""
    watertight: bool
    """Mode the volume was fused for (see the module docstring)."""
    min_component_voxels: int = 0
    """Solid specks and cavities smaller than this are dropped from :func:`closed_field`."""


def surface_unavailable_reason(scene: Scene) -> str | None:
    """None when the scene has dense depth (surfaces and voxels can be built), else why not."""
    if scene.depths is not None and scene.conf is not None:
        return None
    return (
        f"surfaces and voxels need dense depth maps; the {scene.engine!r} engine's scene has only sparse "
        "points (use the DUSt3R engine for a surface)"
    )


def require_dense_depth(scene: Scene) -> None:
    """Raise :class:`DenseDepthRequiredError` unless the scene has per-view depth and confidence."""
    reason = surface_unavailable_reason(scene)
    if reason is not None:
        raise DenseDepthRequiredError(reason)


def resolve_depth_masks(scene: Scene, masks) -> tuple[np.ndarray, ...]:
    """N (H, W) bool keep masks (None: every finite depth), validated against the depth maps."""
    require_dense_depth(scene)
    assert scene.depths is not None
    if masks is None:
        return tuple(np.isfinite(d) & (d > 0) for d in scene.depths)
    if len(masks) != scene.n_views:
        raise ValueError(f"expected {scene.n_views} masks, got {len(masks)}")
    out = []
    for k, (m, d) in enumerate(zip(masks, scene.depths, strict=True)):
        m = np.asarray(m)
        if m.shape != d.shape:
            raise ValueError(f"mask {k} must be {d.shape}, got {m.shape}")
        out.append(m.astype(bool) & np.isfinite(d) & (d > 0))
    return tuple(out)


def kept_points(scene: Scene, masks=None) -> np.ndarray:
    """World points (M, 3) float64 of the kept pixels, back-projected from depth (OpenCV camera)."""
    masks = resolve_depth_masks(scene, masks)
    assert scene.depths is not None
    pts = []
    for k, m in enumerate(masks):
        v, u = np.nonzero(m)
        z = scene.depths[k][v, u].astype(np.float64)
        (cx, cy), f = scene.principal_points[k].astype(np.float64), float(scene.focals[k])
        cam = np.stack([(u - cx) / f * z, (v - cy) / f * z, z], 1)
        pose = scene.world_from_cam[k].astype(np.float64)
        pts.append(cam @ pose[:3, :3].T + pose[:3, 3])
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def finite_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi): (3,) float64 corners of the bounding box of the finite rows of ``points`` (M, 3);
    None when no row is finite."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    points = points[np.isfinite(points).all(1)]
    return (points.min(0), points.max(0)) if len(points) else None


def grid_around(points: np.ndarray, opts: SurfaceOptions) -> VoxelGrid:
    """A grid over the bounding box of ``points`` (M, 3) world, padded by truncation + 2 voxels.

    voxel_size = opts.voxel_size or (longest box side / opts.resolution). Raises EmptySurfaceError
    without points and SettingsError when the grid would exceed opts.max_voxels.
    """
    box = finite_box(points)
    if box is None:
        raise EmptySurfaceError("no kept points to fuse; lower the confidence threshold or the filters")
    lo, hi = box
    extent = float((hi - lo).max())
    size = opts.voxel_size if opts.voxel_size is not None else (extent / opts.resolution if extent > 0 else 1.0)
    pad = math.ceil(opts.truncation_voxels) + 2
    shape = tuple(int(n) for n in np.ceil((hi - lo) / size).astype(int) + 1 + 2 * pad)
    if int(np.prod(shape)) > opts.max_voxels:
        raise SettingsError(
            f"a voxel size of {size:.4g} gives a {shape[0]}x{shape[1]}x{shape[2]} grid, over the "
            f"{opts.max_voxels} voxel limit; use a larger voxel size or a lower resolution"
        )
    origin = tuple(float(v) for v in lo - pad * size)
    return VoxelGrid(origin=origin, voxel_size=float(size), shape=shape)  # type: ignore[arg-type]


def fusion_memory_bytes(grid: VoxelGrid, n_pixels: int, chunk_voxels: int) -> int:
    """Peak device memory of :func:`fuse_tsdf` in bytes: the output (9 B per voxel: tsdf, weight,
    hidden), the lookup tables (8 B per pixel) and one chunk's temporaries (about 120 B per voxel)."""
    return 9 * grid.n_voxels + 8 * n_pixels + 120 * min(chunk_voxels, grid.n_voxels)


@dataclass(frozen=True)
class ProjectedView:
    """One view on the fusion device: its projection and a per-pixel lookup table of two values."""

    proj: np.ndarray
    """(3, 4) float64 K @ cam_from_world: world point (x, y, z, 1) -> (u z, v z, z)."""
    height: int
    width: int
    table: torch.Tensor
    """((H + 2) * (W + 2),) float64: each entry packs two float32 values of one pixel (see
    :func:`lookup`), row-major over the image padded with a one-pixel border of zeros, where
    points outside the image or behind the camera land."""


def projected_view(scene: Scene, k: int, first: np.ndarray, second: np.ndarray, device) -> ProjectedView:
    """View k with the (H, W) per-pixel values ``first`` and ``second`` packed in its table."""
    h, w = first.shape
    pair = np.zeros((h + 2, w + 2, 2), np.float32)
    pair[1:-1, 1:-1, 0], pair[1:-1, 1:-1, 1] = first, second
    table = torch.from_numpy(pair.reshape(-1, 2)).to(device).view(torch.float64).reshape(-1)
    proj = scene.intrinsics()[k] @ np.linalg.inv(scene.world_from_cam[k].astype(np.float64))[:3]
    return ProjectedView(proj=proj, height=h, width=w, table=table)


def lookup(view: ProjectedView, idx: torch.Tensor) -> torch.Tensor:
    """The two values of table entries ``idx`` (M,) int64 -> (M, 2) float32."""
    return torch.index_select(view.table, 0, idx).view(torch.float32).view(-1, 2)


def _fusion_view(scene: Scene, k: int, keep: np.ndarray, opts: SurfaceOptions, device) -> ProjectedView:
    """View k's table (effective depth, signed weight): kept pixels (weight > 0: confidence x
    incidence cosine) observe, the others (weight -carve_weight) only carve, in front of the
    smallest depth of their window."""
    assert scene.depths is not None and scene.conf is not None
    depth = np.asarray(scene.depths[k], np.float32)
    finite = np.where(np.isfinite(depth) & (depth > 0), depth, np.inf).astype(np.float32)
    carve = ndimage.minimum_filter(finite, size=opts.carve_window, mode="nearest")
    conf = np.nan_to_num(np.asarray(scene.conf[k], np.float32), nan=0.0, posinf=0.0)
    eff = np.where(keep, finite, carve)
    cos = _incidence_cosine(finite, float(scene.focals[k]), scene.principal_points[k])
    signed_w = np.where(keep, np.maximum(conf, 1e-3) * np.clip(cos, 0.1, 1.0), -opts.carve_weight)
    return projected_view(scene, k, eff, signed_w, device)


def _incidence_cosine(depth: np.ndarray, focal: float, pp: np.ndarray) -> np.ndarray:
    """(H, W) float32 |cos| of the angle between each pixel's ray and the surface normal estimated
    from the depth map (central differences); 0 where a neighbour has no finite depth."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    pts = np.stack([(u - pp[0]) / focal * depth, (v - pp[1]) / focal * depth, depth], -1)  # (H, W, 3)
    with np.errstate(invalid="ignore"):
        du, dv = np.gradient(pts, axis=1), np.gradient(pts, axis=0)
        normal = np.cross(du, dv)
        cos = np.abs((normal * pts).sum(-1)) / (np.linalg.norm(normal, axis=-1) * np.linalg.norm(pts, axis=-1) + 1e-20)
    return np.nan_to_num(cos, nan=0.0, posinf=0.0).astype(np.float32)


def pixel_index(view: ProjectedView, q: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected points q = [u z, v z, z] (each (M,) float32) -> z (M,) and the table entry (M,)
    int64 of the nearest pixel (the zero border when outside the image or behind the camera)."""
    z = q[2]
    front = z > 1e-9
    recip = torch.reciprocal(z)
    # pixel u covers [u - 0.5, u + 0.5); in the padded table it is column u + 1 = floor(u + 1.5)
    u = torch.where(front, q[0] * recip, -10.0).add_(1.5).clamp_(0, view.width + 1).long()
    v = torch.where(front, q[1] * recip, -10.0).add_(1.5).clamp_(0, view.height + 1).long()
    return z, v.mul_(view.width + 2).add_(u)


def _block_projection(
    view: ProjectedView, grid: VoxelGrid, block: tuple[int, int, int, int], device
) -> list[torch.Tensor]:
    """[u z, v z, z], each (di * dj * nz,) float32, of the voxel centres of grid block
    (i0, i1, j0, j1) x all k, C order. Affine in (i, j, k), so built from three 1-D terms."""
    i0, i1, j0, j1 = block
    proj = view.proj
    q0 = proj[:, :3] @ np.asarray(grid.origin) + proj[:, 3]  # (3,) at voxel (0, 0, 0)
    step = grid.voxel_size * proj[:, :3]  # (3, 3): per unit of i, j, k
    ranges = (np.arange(i0, i1), np.arange(j0, j1), np.arange(grid.shape[2]))
    out = []
    for r in range(3):
        a, b, c = (
            torch.from_numpy((step[r, n] * x + (q0[r] if n == 0 else 0.0)).astype(np.float32)).to(device)
            for n, x in enumerate(ranges)
        )
        out.append((a[:, None, None] + b[None, :, None] + c[None, None, :]).reshape(-1))
    return out


def _fuse_block(
    grid: VoxelGrid,
    views: list[ProjectedView],
    block: tuple[int, int, int, int],
    *,
    trunc: float,
    ratio: float,
    min_hidden: int,
    device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fuse one grid block: tsdf (M,) float32, weight (M,) float32, hidden (M,) bool (C order)."""
    m = (block[1] - block[0]) * (block[3] - block[2]) * grid.shape[2]
    num, den, occ = (torch.zeros(m, dtype=torch.float32, device=device) for _ in range(3))
    hid = torch.zeros(m, dtype=torch.int16, device=device)
    for view in views:
        z, idx = pixel_index(view, _block_projection(view, grid, block, device))
        look = lookup(view, idx)  # (M, 2): effective depth, signed weight (0 outside the image)
        sdf = look[:, 0] - z
        kept = look[:, 1] > 0
        w = look[:, 1].abs()
        w_obs = w * (sdf > torch.where(kept, -trunc, trunc))  # kept: from -trunc on; others: free only
        behind = kept & (sdf <= -trunc)  # hidden behind a kept surface, beyond the truncation
        num.addcmul_(w_obs, sdf.div_(trunc).clamp_(-1.0, 1.0))
        den.add_(w_obs)
        occ.add_(w * behind)
        hid.add_(behind)
    den = torch.where(ratio * occ > den, 0.0, den)  # too little evidence against what hides it
    return torch.where(den > 0, num / den.clamp_min(1e-12), 1.0), den, hid >= min_hidden


def _blocks(shape: tuple[int, int, int], chunk_voxels: int) -> list[tuple[int, int, int, int]]:
    """Split (nx, ny, nz) into (i0, i1, j0, j1) blocks (all k) of at most max(chunk, nz) voxels."""
    nx, ny, nz = shape
    if ny * nz <= chunk_voxels:
        di = max(1, chunk_voxels // (ny * nz))
        return [(i, min(i + di, nx), 0, ny) for i in range(0, nx, di)]
    dj = max(1, chunk_voxels // nz)
    return [(i, i + 1, j, min(j + dj, ny)) for i in range(nx) for j in range(0, ny, dj)]


def fuse_tsdf(
    scene: Scene,
    masks=None,
    opts: SurfaceOptions | None = None,
    *,
    device: str | torch.device | None = None,
    grid: VoxelGrid | None = None,
) -> TSDFVolume:
    """Fuse every view's depth map into a TSDF volume (see the module docstring).

    scene: dense Scene (depths N (H, W) float32 z-depth, conf, focals, principal_points,
    world_from_cam (N, 4, 4) camera-to-world, OpenCV axes). masks: N (H, W) bool keep masks from
    ``point_masks`` (None: every finite depth). opts: SurfaceOptions (resolution or voxel_size,
    truncation, watertight, chunk size, carving). device: torch device of the fusion (None: CPU).
    grid: fuse on this grid instead of one around the kept points (``opts.resolution`` and
    ``opts.voxel_size`` are then ignored). Returns a TSDFVolume on the CPU. Raises
    DenseDepthRequiredError for a sparse scene, EmptySurfaceError when nothing is kept.
    """
    opts = opts or SurfaceOptions()
    keep = resolve_depth_masks(scene, masks)
    if grid is None:
        grid = grid_around(kept_points(scene, keep), opts)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    trunc = opts.truncation_voxels * grid.voxel_size
    views = [_fusion_view(scene, k, m, opts, dev) for k, m in enumerate(keep)]
    min_hidden = min(opts.min_hidden_views, len(views))
    tsdf = torch.empty(grid.shape, dtype=torch.float32, device=dev)
    weight = torch.empty_like(tsdf)
    hidden = torch.empty(grid.shape, dtype=torch.bool, device=dev)
    with torch.inference_mode():
        for block in _blocks(grid.shape, opts.chunk_voxels):
            i0, i1, j0, j1 = block
            out = _fuse_block(
                grid, views, block, trunc=trunc, ratio=opts.occlusion_ratio, min_hidden=min_hidden, device=dev
            )
            for dst, src in zip((tsdf, weight, hidden), out, strict=True):
                dst[i0:i1, j0:j1] = src.reshape(i1 - i0, j1 - j0, grid.shape[2])
    if logger.isEnabledFor(logging.DEBUG):
        observed = 100.0 * float((weight > 0).sum()) / grid.n_voxels
        logger.debug(
            "fused %d views into %s voxels of %.4g (%.1f%% observed)", len(views), grid.shape, grid.voxel_size, observed
        )
    return TSDFVolume(
        grid=grid,
        tsdf=tsdf.cpu().numpy(),
        weight=weight.cpu().numpy(),
        hidden=hidden.cpu().numpy(),
        truncation=trunc,
        watertight=opts.watertight,
        min_component_voxels=opts.min_component_voxels,
    )


def closed_field(volume: TSDFVolume) -> np.ndarray:
    """(nx, ny, nz) float32 of the watertight mode: unobserved voxels that are hidden -1 (solid),
    other unobserved voxels (nothing was ever seen there) and the outer layer +1; solid specks and
    cavities under ``volume.min_component_voxels`` voxels flipped. Its zero level set is closed;
    ``closed_field(v) < 0`` is the solid occupancy.
    """
    one, two = np.float32(1.0), np.float32(2.0)
    field = np.where(volume.weight > 0, volume.tsdf, one - two * volume.hidden)  # float32 throughout
    field[[0, -1], :, :] = 1.0
    field[:, [0, -1], :] = 1.0
    field[:, :, [0, -1]] = 1.0
    if volume.min_component_voxels > 1:
        for solid in (True, False):
            specks = _small_components(field < 0 if solid else field >= 0, volume.min_component_voxels)
            field[specks] = 1.0 if solid else -1.0
    return field


def _small_components(occ: np.ndarray, min_voxels: int) -> np.ndarray:
    """(nx, ny, nz) bool: voxels of face-connected components of ``occ`` smaller than min_voxels."""
    labels, n = ndimage.label(occ)
    if n == 0:
        return np.zeros_like(occ)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes < min_voxels
    small[0] = False
    return small[labels]
