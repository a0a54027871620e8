"""Surface and voxel outputs of a scene, with the display settings: the glue between the export
step and the TSDF fusion (:mod:`core.outputs.tsdf`, :mod:`core.outputs.surface`,
:mod:`core.outputs.voxels`).

Both re-export from the kept scene (no network, no alignment): they fuse every view's depth map,
using only the pixels the current masks keep, on the CUDA device when there is one (else the
CPU), and follow ``VizConfig``: ``surface_res`` (voxels along the longest side), ``watertight``
(carve unobserved space so the surface closes; off = observed surfaces only),
``surface_max_faces`` (decimation budget, 0 = all faces), ``voxel_res`` (N of the N^3 grid) and
``voxel_fill`` (solid or surface-only voxels; solid needs watertight). Files: ``surface.glb``,
``surface.ply``, ``surface.obj`` and ``voxels.npz``, ``voxels.binvox``, ``voxels.glb``; the GLBs
in the viewer's frame like ``scene.glb``, the rest in the world frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from config import VizConfig
from core.outputs.surface import extract_surface, write_surface
from core.outputs.tsdf import SurfaceOptions, fuse_tsdf, require_dense_depth
from core.outputs.visualization import glb_from_world
from core.outputs.voxels import VoxelModel, voxel_faces, voxelize, write_voxels
from core.runtime import resolve_device
from core.types import Scene

__all__ = ["FUSED_FORMATS", "surface_options", "surface_mesh", "voxel_model", "voxel_mesh", "write_fused"]

#: Export formats made by fusion; the zip includes them only when they are asked for by name.
FUSED_FORMATS = ("surface", "voxels")


def surface_options(viz: VizConfig) -> SurfaceOptions:
    """The fusion options the display settings ask for."""
    return SurfaceOptions(resolution=viz.surface_res, watertight=viz.watertight, max_faces=viz.surface_max_faces)


def surface_mesh(scene: Scene, masks, viz: VizConfig) -> trimesh.Trimesh:
    """Fused surface, world frame, vertex colours. Raises a SettingsError for sparse scenes
    (surfaces need dense depth) and EmptySurfaceError when no kept pixel gives a surface."""
    require_dense_depth(scene)
    device = resolve_device("auto")
    volume = fuse_tsdf(scene, masks, surface_options(viz), device=device)
    return extract_surface(volume, scene, masks, max_faces=viz.surface_max_faces, device=device)


def voxel_model(scene: Scene, masks, viz: VizConfig) -> VoxelModel:
    """Coloured N^3 occupancy grid (N = ``viz.voxel_res``) around the kept geometry."""
    require_dense_depth(scene)
    return voxelize(
        scene, masks, resolution=viz.voxel_res, fill=viz.voxel_fill, watertight=viz.watertight,
        device=resolve_device("auto"),
    )  # fmt: skip


def voxel_mesh(model: VoxelModel) -> trimesh.Trimesh:
    """The voxels' exposed faces as one vertex-coloured mesh (world frame)."""
    vertices, faces, colors = voxel_faces(model)
    rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(vertices, faces, vertex_colors=rgba, process=False, validate=False)


def write_fused(
    scene: Scene, masks, out_dir: Path, todo: set[str], viz: VizConfig, *, local_enu: bool = False
) -> dict[str, Path]:
    """The fused formats of ``todo`` into ``out_dir``: keys ``surface`` (surface.glb), ``surface_ply``,
    ``surface_obj``, ``voxels`` (voxels.npz), ``voxels_binvox``, ``voxels_glb`` (GLBs in the frame
    of :func:`core.outputs.visualization.glb_from_world` with ``local_enu``)."""
    out: dict[str, Path] = {}
    to_glb = glb_from_world(scene, local_enu=local_enu)
    if "surface" in todo:
        files = write_surface(surface_mesh(scene, masks, viz), out_dir, glb_from_world=to_glb)
        out.update(surface=files["glb"], surface_ply=files["ply"], surface_obj=files["obj"])
    if "voxels" in todo:
        files = write_voxels(voxel_model(scene, masks, viz), out_dir, glb_from_world=to_glb)
        out.update(voxels=files["npz"], voxels_binvox=files["binvox"], voxels_glb=files["glb"])
    return out
