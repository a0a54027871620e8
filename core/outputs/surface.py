"""A surface mesh from a fused TSDF volume: marching cubes, decimation, vertex colours, files.

The volume comes from :func:`core.outputs.tsdf.fuse_tsdf` (watertight or observed-only; see that
module). Extraction (:func:`extract_surface`) runs scikit-image's marching cubes (Lewiner) on the
volume in one piece (no seams), optional quadric decimation to a face budget (fast-simplification
through trimesh), then colours every vertex from the views where it is visible (kept pixel whose
depth is within 2 voxels; confidence-weighted mean), the nearest coloured vertex elsewhere.
Files (:func:`write_surface`): ``surface.glb``, ``surface.ply``, ``surface.obj``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from core.errors import SettingsError
from core.outputs.tsdf import (
    EmptySurfaceError,
    ProjectedView,
    TSDFVolume,
    closed_field,
    lookup,
    pixel_index,
    projected_view,
    resolve_depth_masks,
)
from core.types import Scene

__all__ = ["SURFACE_FILES", "extract_surface", "vertex_colors", "obj_text", "write_surface"]

logger = logging.getLogger(__name__)

#: Format -> file name written by :func:`write_surface`.
SURFACE_FILES = {"glb": "surface.glb", "ply": "surface.ply", "obj": "surface.obj"}


def _observed_cubes(weight: np.ndarray) -> np.ndarray:
    """(nx, ny, nz) bool: voxels whose 2x2x2 block (i..i+1, j..j+1, k..k+1) is fully observed."""
    obs = weight > 0
    cube = obs.copy()
    cube[:-1] &= obs[1:]
    cube[:, :-1] &= cube[:, 1:].copy()
    cube[:, :, :-1] &= cube[:, :, 1:].copy()
    cube[-1], cube[:, -1], cube[:, :, -1] = False, False, False
    return cube


def _marching_cubes(volume: TSDFVolume) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set -> vertices (V, 3) float64 world, faces (F, 3) int64 (outward normals).

    Observed-only mode: unobserved voxels read +1 and only the faces inside fully observed cubes
    are kept, so no surface is made up where a corner was never seen.
    """
    if volume.watertight:
        field = closed_field(volume)
    else:
        field = np.where(volume.weight > 0, volume.tsdf, 1.0).astype(np.float32)
    if not (field.min() < 0 < field.max()):
        raise EmptySurfaceError("the fused volume has no surface crossing (nothing solid was observed)")
    verts, faces, _, _ = marching_cubes(field, level=0.0)
    if not volume.watertight:
        cubes = _observed_cubes(volume.weight)
        ijk = np.clip(np.floor(verts[faces].mean(1)).astype(int), 0, np.array(cubes.shape) - 1)
        faces = faces[cubes[ijk[:, 0], ijk[:, 1], ijk[:, 2]]]
        if len(faces) == 0:
            raise EmptySurfaceError("no observed surface: every crossing touches space no view saw")
    world = np.asarray(volume.grid.origin) + volume.grid.voxel_size * verts.astype(np.float64)
    return world, faces.astype(np.int64)


def _color_view(scene: Scene, k: int, keep: np.ndarray, device) -> tuple[ProjectedView, torch.Tensor]:
    """View k with a table (depth, confidence where kept else 0) and its padded ((H + 2) * (W + 2),
    3) float32 RGB."""
    assert scene.depths is not None and scene.conf is not None
    depth = np.nan_to_num(np.asarray(scene.depths[k], np.float32), nan=np.inf)
    conf = np.maximum(np.nan_to_num(np.asarray(scene.conf[k], np.float32), nan=0.0, posinf=0.0), 1e-3)
    view = projected_view(scene, k, depth, np.where(keep, conf, 0.0), device)
    rgb = np.pad(np.asarray(scene.images[k], np.float32), ((1, 1), (1, 1), (0, 0))).reshape(-1, 3)
    return view, torch.from_numpy(rgb).to(device)


def vertex_colors(
    vertices: np.ndarray,
    scene: Scene,
    masks=None,
    *,
    tolerance: float,
    device: str | torch.device | None = None,
    chunk: int = 1 << 18,
) -> np.ndarray:
    """Colours (V, 3) uint8 of world points ``vertices`` (V, 3) from the views that see them.

    A vertex is seen by view k when it projects inside the image onto a kept pixel whose depth is
    within ``tolerance`` (world units) of the vertex's z; its colour is the confidence-weighted mean
    over those views. Vertices no view sees take the colour of the nearest seen vertex (grey 128
    when none is seen).
    """
    keep = resolve_depth_masks(scene, masks)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    views = [_color_view(scene, k, m, dev) for k, m in enumerate(keep)]
    verts = np.asarray(vertices, np.float64).reshape(-1, 3)
    out = np.zeros((len(verts), 3), np.float32)
    seen = np.zeros(len(verts), bool)
    with torch.inference_mode():
        for start in range(0, len(verts), chunk):
            xyz = torch.as_tensor(verts[start : start + chunk], dtype=torch.float32, device=dev)
            acc = torch.zeros((len(xyz), 3), dtype=torch.float32, device=dev)
            den = torch.zeros(len(xyz), dtype=torch.float32, device=dev)
            for view, rgb in views:
                proj = torch.as_tensor(view.proj, dtype=torch.float32, device=dev)
                q = xyz @ proj[:, :3].T + proj[:, 3]  # (M, 3): u z, v z, z
                z, idx = pixel_index(view, [q[:, 0], q[:, 1], q[:, 2]])
                look = lookup(view, idx)  # (M, 2): depth, confidence (0 where not kept)
                vis = (look[:, 1] > 0) & ((look[:, 0] - z).abs() < tolerance)
                w = torch.where(vis, look[:, 1], 0.0)
                acc += w[:, None] * torch.index_select(rgb, 0, idx)
                den += w
            out[start : start + len(xyz)] = (acc / den.clamp_min(1e-12)[:, None]).cpu().numpy()
            seen[start : start + len(xyz)] = (den > 0).cpu().numpy()
    if not seen.any():
        return np.full((len(verts), 3), 128, np.uint8)
    if not seen.all():
        _, nearest = cKDTree(verts[seen]).query(verts[~seen])
        out[~seen] = out[seen][nearest]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric decimation to at most ``max_faces`` faces (fast-simplification through trimesh)."""
    if len(mesh.faces) <= max_faces:
        return mesh
    try:
        import fast_simplification  # noqa: F401
    except ImportError as e:
        raise SettingsError(
            "decimating the surface needs the fast-simplification package: pip install fast-simplification"
        ) from e
    out = mesh.simplify_quadric_decimation(face_count=max_faces)
    logger.debug("decimated the surface from %d to %d faces", len(mesh.faces), len(out.faces))
    return out


def extract_surface(
    volume: TSDFVolume,
    scene: Scene,
    masks=None,
    *,
    max_faces: int = 0,
    device: str | torch.device | None = None,
) -> trimesh.Trimesh:
    """The zero level set of a fused volume as a coloured triangle mesh, world frame.

    volume: from :func:`fuse_tsdf` (its ``watertight`` flag picks the mode). scene, masks: the same
    as fused (vertex colours come from the views). max_faces: quadric decimation budget (0: none).
    Returns a trimesh.Trimesh: vertices (V, 3) float64 world, faces (F, 3) with outward normals,
    ``visual.vertex_colors`` (V, 4) uint8. In watertight mode the mesh is closed. Raises
    EmptySurfaceError when the volume has no surface.
    """
    if max_faces and max_faces < 100:
        raise SettingsError(f"max_faces must be 0 or >= 100, got {max_faces}")
    verts, faces = _marching_cubes(volume)
    mesh = trimesh.Trimesh(verts, faces, process=True)  # merges the duplicates of degenerate faces
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if max_faces:
        mesh = _decimate(mesh, max_faces)
    tol = 2.0 * volume.grid.voxel_size
    rgb = vertex_colors(mesh.vertices, scene, masks, tolerance=tol, device=device)
    mesh.visual.vertex_colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "surface: %d vertices, %d faces, closed=%s", len(mesh.vertices), len(mesh.faces), mesh.is_watertight
        )
    return mesh


def obj_text(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, header: str = "") -> str:
    """Wavefront OBJ text of a coloured triangle mesh: ``v x y z r g b`` (colours in 0..1) and
    1-based ``f a b c``. vertices (V, 3) float, faces (F, 3) int (0-based), colors (V, 3) uint8."""
    vertices, faces, colors = np.asarray(vertices, np.float64), np.asarray(faces), np.asarray(colors)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or colors.shape != vertices.shape or faces.shape[1:] != (3,):
        raise ValueError(
            f"expected vertices (V, 3), colors (V, 3), faces (F, 3), got {vertices.shape}, {colors.shape}, {faces.shape}"
        )
    rows = np.concatenate([vertices, colors.astype(np.float64) / 255.0], 1)
    head = "".join(f"# {line}\n" for line in header.splitlines())
    v = ("v %.6f %.6f %.6f %.4f %.4f %.4f\n" * len(rows)) % tuple(rows.ravel().tolist())
    f = ("f %d %d %d\n" * len(faces)) % tuple((faces.astype(np.int64) + 1).ravel().tolist())
    return head + v + f


def write_surface(
    mesh: trimesh.Trimesh, out_dir: str | Path, *, glb_from_world: np.ndarray | None = None
) -> dict[str, Path]:
    """Write ``surface.glb``, ``surface.ply`` (binary, vertex colours) and ``surface.obj``
    (``v x y z r g b``) into out_dir. PLY and OBJ are in the world frame; the GLB is transformed by
    ``glb_from_world`` (4, 4) when given (the viewer's frame). Returns {format: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {fmt: out_dir / name for fmt, name in SURFACE_FILES.items()}
    paths["ply"].write_bytes(trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=False))
    rgba = np.asarray(mesh.visual.vertex_colors, np.uint8)
    header = "dust3r-studio fused surface, world frame (OpenCV axes)"
    paths["obj"].write_text(obj_text(mesh.vertices, mesh.faces, rgba[:, :3], header))
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    if glb_from_world is not None:
        mat = np.asarray(glb_from_world, np.float64)
        vertices = vertices @ mat[:3, :3].T + mat[:3, 3]
        if np.linalg.det(mat[:3, :3]) < 0:  # a mirror: keep the normals outward
            faces = faces[:, ::-1]
    glb_mesh = trimesh.Trimesh(vertices, faces, vertex_colors=rgba, process=False, validate=False)
    paths["glb"].write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene(glb_mesh)))
    return paths
