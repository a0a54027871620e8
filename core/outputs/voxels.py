"""A coloured voxel occupancy grid of the kept geometry, and its files (npz, binvox, GLB).

Grid (:func:`cube_grid`): N^3 voxels (N in 16..256; 32 is the R2N2 convention) in a cube centred on
the bounding box of the kept points, whose longest side spans N - 2 voxels (one empty voxel of
margin on every side). Voxel (i, j, k) has its centre at ``world_from_grid @ (i, j, k, 1)``.

Occupancy (:func:`voxelize`) comes from a TSDF fused on exactly that grid (:mod:`core.outputs.tsdf`):

- ``fill="solid"`` (watertight mode): voxels inside the closed surface (``closed_field < 0``);
- ``fill="surface"``: only the occupied voxels with an empty face neighbour. In the watertight mode
  that is the boundary of the solid; in the observed-only mode the observed voxels just behind a
  surface (negative) next to observed free space.

Colours: the mean colour of the kept points inside each voxel; occupied voxels without points
take the colour of the nearest voxel that has some. Empty voxels are (0, 0, 0).

Files (:func:`write_voxels`): ``voxels.npz`` (``occupancy`` (N, N, N) bool, ``colors`` (N, N, N, 3)
uint8, ``world_from_grid`` (4, 4) float64), ``voxels.binvox`` (Patrick Min's format: RLE in x-z-y
order; ``translate`` is the cube's min corner and ``scale`` its side, so voxel (i, j, k) has its
centre at ``translate + scale * ((i, j, k) + 0.5) / N``; trimesh reads the same occupancy but places
voxel centres at ``translate + scale * (i, j, k) / (N - 1)``), and ``voxels.glb`` (the exposed voxel
faces only, coplanar neighbours of equal colour merged into rectangles, for the viewer).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import trimesh
from scipy import ndimage

from core.errors import SettingsError
from core.outputs.tsdf import (
    EmptySurfaceError,
    SurfaceOptions,
    VoxelGrid,
    closed_field,
    finite_box,
    fuse_tsdf,
    kept_points,
    resolve_depth_masks,
)
from core.types import Scene

__all__ = [
    "VOXEL_FILES",
    "VOXEL_FUSION",
    "VoxelModel",
    "cube_grid",
    "voxelize",
    "voxel_faces",
    "write_voxels",
    "write_binvox",
    "read_binvox",
]

logger = logging.getLogger(__name__)

#: Fusion settings of :func:`voxelize` when none are given: a truncation of 2 voxels (at coarse
#: resolutions 3 voxels is a wide band, and grazing views thicken convex edges by part of it).
VOXEL_FUSION = SurfaceOptions(truncation_voxels=2.0)
#: Format -> file name written by :func:`write_voxels`.
VOXEL_FILES = {"npz": "voxels.npz", "binvox": "voxels.binvox", "glb": "voxels.glb"}


@dataclass(frozen=True)
class VoxelModel:
    """A coloured occupancy grid, world frame."""

    occupancy: np.ndarray
    """(N, N, N) bool, indexed [i, j, k] along world x, y, z."""
    colors: np.ndarray
    """(N, N, N, 3) uint8 RGB ((0, 0, 0) where empty)."""
    world_from_grid: np.ndarray
    """(4, 4) float64: voxel centre (i, j, k, 1) -> world point (a uniform scale and a translation)."""

    def __post_init__(self) -> None:
        occ, col, mat = self.occupancy, self.colors, self.world_from_grid
        n = occ.shape[0] if occ.ndim == 3 else -1
        if occ.shape != (n, n, n) or occ.dtype != bool:
            raise ValueError(f"occupancy must be (N, N, N) bool, got {occ.shape} {occ.dtype}")
        if col.shape != (n, n, n, 3) or col.dtype != np.uint8:
            raise ValueError(f"colors must be ({n}, {n}, {n}, 3) uint8, got {col.shape} {col.dtype}")
        if mat.shape != (4, 4):
            raise ValueError(f"world_from_grid must be (4, 4), got {mat.shape}")

    @property
    def resolution(self) -> int:
        return int(self.occupancy.shape[0])

    @property
    def voxel_size(self) -> float:
        return float(self.world_from_grid[0, 0])


def cube_grid(points: np.ndarray, resolution: int) -> VoxelGrid:
    """An N^3 cube grid around ``points`` (M, 3) world: centred on their bounding box, whose longest
    side spans N - 2 voxels (one voxel of margin). Raises SettingsError for N outside 16..256."""
    if not 16 <= int(resolution) <= 256:
        raise SettingsError(f"voxel resolution must be in 16..256, got {resolution}")
    n = int(resolution)
    box = finite_box(points)
    if box is None:
        raise ValueError("cube_grid needs at least one finite point")
    lo, hi = box
    extent = float((hi - lo).max())
    size = extent / (n - 3) if extent > 0 else 1.0  # centres span n - 3 steps: the box fits in n - 2 voxels
    origin = tuple(float(v) for v in (lo + hi) / 2 - size * (n - 1) / 2)
    return VoxelGrid(origin=origin, voxel_size=size, shape=(n, n, n))  # type: ignore[arg-type]


def _kept_colors(scene: Scene, keep: tuple[np.ndarray, ...]) -> np.ndarray:
    """(M, 3) uint8 colours of the kept pixels, in :func:`kept_points` order."""
    return np.concatenate([np.asarray(img)[m] for img, m in zip(scene.images, keep, strict=True)])


def _voxel_colors(grid: VoxelGrid, points: np.ndarray, rgb: np.ndarray, occupancy: np.ndarray) -> np.ndarray:
    """(N, N, N, 3) uint8: mean colour of the points in each voxel, nearest coloured voxel elsewhere."""
    n = grid.shape[0]
    ijk = np.round((points - np.asarray(grid.origin)) / grid.voxel_size).astype(np.int64)
    inside = ((ijk >= 0) & (ijk < n)).all(1)
    flat = np.ravel_multi_index(tuple(ijk[inside].T), grid.shape)
    count = np.bincount(flat, minlength=n**3).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=rgb[inside, c], minlength=n**3) for c in range(3)], 1)
    has = (count > 0).reshape(grid.shape)
    mean = (sums / np.maximum(count, 1)[:, None]).reshape(*grid.shape, 3)
    out = np.zeros((*grid.shape, 3), np.uint8)
    if not has.any():
        out[occupancy] = 128
        return out
    _, nearest = ndimage.distance_transform_edt(~has, return_indices=True)
    filled = mean[nearest[0], nearest[1], nearest[2]]  # (N, N, N, 3)
    out[occupancy] = np.clip(np.round(filled[occupancy]), 0, 255).astype(np.uint8)
    return out


def _exposed(occ: np.ndarray, axis: int, sign: int) -> np.ndarray:
    """(N, N, N) bool: occupied voxels whose neighbour at ``sign`` along ``axis`` is empty (or outside)."""
    neighbour = np.zeros_like(occ)
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    if sign > 0:
        dst[axis], src[axis] = slice(0, -1), slice(1, None)
    else:
        dst[axis], src[axis] = slice(1, None), slice(0, -1)
    neighbour[tuple(dst)] = occ[tuple(src)]
    return occ & ~neighbour


def voxelize(
    scene: Scene,
    masks=None,
    *,
    resolution: int = 64,
    fill: Literal["solid", "surface"] = "solid",
    watertight: bool = True,
    options: SurfaceOptions | None = None,
    device: str | torch.device | None = None,
) -> VoxelModel:
    """Coloured occupancy grid of the kept geometry (see the module docstring).

    scene: dense Scene; masks: N (H, W) bool keep masks from ``point_masks`` (None: every finite
    depth). resolution: N in 16..256. fill: "solid" (needs watertight) or "surface". options:
    fusion settings (truncation, carving, chunk; default :data:`VOXEL_FUSION`; their resolution,
    voxel_size and watertight are ignored: the grid is the N^3 cube and ``watertight`` is taken
    from this call). Raises DenseDepthRequiredError for a sparse scene, SettingsError for a bad
    setting, EmptySurfaceError when nothing is kept.
    """
    if fill not in ("solid", "surface"):
        raise SettingsError(f"voxel fill must be 'solid' or 'surface', got {fill!r}")
    if fill == "solid" and not watertight:
        raise SettingsError("solid voxels need the watertight mode; use fill='surface' for observed surfaces only")
    keep = resolve_depth_masks(scene, masks)
    points = kept_points(scene, keep)
    opts = dataclasses.replace(options or VOXEL_FUSION, watertight=watertight)
    if len(points) == 0:
        raise EmptySurfaceError("no kept points to voxelize; lower the confidence threshold or the filters")
    grid = cube_grid(points, resolution)
    volume = fuse_tsdf(scene, keep, opts, device=device, grid=grid)
    if watertight:
        occ = closed_field(volume) < 0
        if fill == "surface":
            occ &= np.logical_or.reduce([_exposed(occ, a, s) for a in range(3) for s in (-1, 1)])
    else:
        obs = volume.weight > 0
        free = obs & (volume.tsdf >= 0)
        near_free = ndimage.binary_dilation(free, structure=ndimage.generate_binary_structure(3, 1))
        occ = obs & (volume.tsdf < 0) & near_free
    colors = _voxel_colors(grid, points, _kept_colors(scene, keep).astype(np.float64), occ)
    logger.debug("voxelized %d^3 (%s): %d occupied", resolution, fill, int(occ.sum()))
    return VoxelModel(occupancy=occ, colors=colors, world_from_grid=grid.world_from_grid())


def _runs(code: np.ndarray) -> np.ndarray:
    """Runs of equal non-negative values along the last axis of ``code`` (A, B, C) int64 (-1: no
    face) -> (R, 5) int64 rows (a, b, c0, c1, value)."""
    face = code >= 0
    prev = np.full(code.shape[:2] + (1,), -2, np.int64)
    start = face & (code != np.concatenate([prev, code[..., :-1]], -1))
    end = face & (code != np.concatenate([code[..., 1:], prev], -1))
    s, e = np.argwhere(start), np.argwhere(end)  # same order: runs never overlap
    return np.column_stack([s[:, 0], s[:, 1], s[:, 2], e[:, 2], code[tuple(s.T)]])


def _rectangles(runs: np.ndarray) -> np.ndarray:
    """Merge runs (a, b, c0, c1, value) that repeat on consecutive b -> (Q, 6) rows
    (a, b0, b1, c0, c1, value)."""
    if len(runs) == 0:
        return np.zeros((0, 6), np.int64)
    order = np.lexsort((runs[:, 1], runs[:, 4], runs[:, 3], runs[:, 2], runs[:, 0]))
    r = runs[order]
    same = np.all(r[1:, [0, 2, 3, 4]] == r[:-1, [0, 2, 3, 4]], 1) & (r[1:, 1] == r[:-1, 1] + 1)
    first = np.concatenate([[True], ~same])
    last = np.concatenate([~same, [True]])
    rect = r[first]
    return np.column_stack([rect[:, 0], rect[:, 1], r[last, 1], rect[:, 2], rect[:, 3], rect[:, 4]])


def voxel_faces(model: VoxelModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exposed faces of the occupied voxels, coplanar neighbours of equal colour merged.

    Returns vertices (V, 3) float64 world, faces (F, 3) int64 (outward normals, 2 per rectangle)
    and vertex colours (V, 3) uint8 (4 unshared vertices per rectangle).
    """
    occ = model.occupancy
    code = (model.colors.astype(np.int64) * np.array([1 << 16, 1 << 8, 1])).sum(-1)
    corners, colors = [], []
    for axis in range(3):
        perm = (axis, (axis + 1) % 3, (axis + 2) % 3)  # cyclic, so e_b x e_c = e_axis
        for sign in (-1, 1):
            c = np.where(_exposed(occ, axis, sign), code, -1).transpose(perm)
            rect = _rectangles(_runs(c))
            a = rect[:, 0] + 0.5 * sign
            b0, b1, c0, c1 = rect[:, 1] - 0.5, rect[:, 2] + 0.5, rect[:, 3] - 0.5, rect[:, 4] + 0.5
            quad = np.stack([np.stack([a, bb, cc], 1) for bb, cc in ((b0, c0), (b1, c0), (b1, c1), (b0, c1))], 1)
            if sign < 0:
                quad = quad[:, ::-1]
            xyz = np.empty_like(quad)
            xyz[..., list(perm)] = quad  # back to (i, j, k)
            corners.append(xyz.reshape(-1, 3))
            rgb = np.stack([(rect[:, 5] >> 16) & 255, (rect[:, 5] >> 8) & 255, rect[:, 5] & 255], 1)
            colors.append(np.repeat(rgb, 4, axis=0))
    grid_pts = np.concatenate(corners) if corners else np.zeros((0, 3))
    world = grid_pts @ model.world_from_grid[:3, :3].T + model.world_from_grid[:3, 3]
    base = np.arange(0, len(world), 4)
    faces = np.concatenate([np.stack([base, base + 1, base + 2], 1), np.stack([base, base + 2, base + 3], 1)])
    return world, faces.astype(np.int64), np.concatenate(colors).astype(np.uint8)


def _rle(values: np.ndarray) -> bytes:
    """binvox run-length encoding of a flat bool array: (value, count <= 255) byte pairs."""
    flat = values.astype(np.uint8).ravel()
    if flat.size == 0:
        return b""
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    out = []
    for value, length in zip(flat[starts], lengths, strict=True):
        full, rest = divmod(int(length), 255)
        out.append(bytes([value, 255]) * full + (bytes([value, rest]) if rest else b""))
    return b"".join(out)


def write_binvox(path: str | Path, occupancy: np.ndarray, world_from_grid: np.ndarray) -> Path:
    """Write an (N, N, N) bool grid as binvox (see the module docstring for the placement)."""
    occ = np.asarray(occupancy, bool)
    n = occ.shape[0]
    if occ.shape != (n, n, n):
        raise ValueError(f"binvox needs a cubic grid, got {occ.shape}")
    size = float(world_from_grid[0, 0])
    translate = np.asarray(world_from_grid[:3, 3], np.float64) - size / 2
    tx, ty, tz = (repr(float(v)) for v in translate)
    header = f"#binvox 1\ndim {n} {n} {n}\ntranslate {tx} {ty} {tz}\nscale {float(size * n)!r}\ndata\n"
    path = Path(path)
    path.write_bytes(header.encode("ascii") + _rle(occ.transpose(0, 2, 1)))  # x-z-y order, y fastest
    return path


def read_binvox(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a binvox file -> (occupancy (D, D, D) bool indexed [x, y, z], world_from_grid (4, 4))."""
    raw = Path(path).read_bytes()
    head, sep, data = raw.partition(b"data\n")
    if not sep or not head.startswith(b"#binvox"):
        raise ValueError(f"{Path(path).name}: not a binvox file")
    fields = {}
    for line in head.decode("ascii").splitlines()[1:]:
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            fields[parts[0]] = parts[1:]
    dims = [int(v) for v in fields["dim"]]
    pairs = np.frombuffer(data, np.uint8).reshape(-1, 2)
    flat = np.repeat(pairs[:, 0].astype(bool), pairs[:, 1].astype(np.int64))
    occ = flat.reshape(dims[0], dims[2], dims[1]).transpose(0, 2, 1)
    translate = np.array([float(v) for v in fields.get("translate", ["0", "0", "0"])])
    size = float(fields.get("scale", ["1"])[0]) / dims[0]
    mat = np.eye(4)
    mat[:3, :3] *= size
    mat[:3, 3] = translate + size / 2
    return occ, mat


def write_voxels(
    model: VoxelModel, out_dir: str | Path, *, glb_from_world: np.ndarray | None = None
) -> dict[str, Path]:
    """Write ``voxels.npz``, ``voxels.binvox`` and ``voxels.glb`` into out_dir. npz and binvox are in
    the world frame; the GLB is transformed by ``glb_from_world`` (4, 4) when given (the viewer's
    frame). Returns {format: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {fmt: out_dir / name for fmt, name in VOXEL_FILES.items()}
    np.savez_compressed(
        paths["npz"],
        occupancy=model.occupancy,
        colors=model.colors,
        world_from_grid=model.world_from_grid.astype(np.float64),
    )
    write_binvox(paths["binvox"], model.occupancy, model.world_from_grid)
    vertices, faces, colors = voxel_faces(model)
    if glb_from_world is not None:
        mat = np.asarray(glb_from_world, np.float64)
        vertices = vertices @ mat[:3, :3].T + mat[:3, 3]
    rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=rgba, process=False, validate=False)
    paths["glb"].write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh)))
    return paths
