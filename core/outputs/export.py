"""Downloads: GLB, PLY, OBJ, a COLMAP model, cameras.json, depth/confidence maps, scene.npz, GIS files
(LAS/LAZ, DSM/DTM/ortho GeoTIFFs, georef.json), a splat-ready training folder, a zip.

:func:`export_scene` writes the requested formats and returns an :class:`ExportResult` (what it
wrote, what it skipped and why); it writes no manifest: the caller (the pipeline) records the
result in the job's manifest and may add that manifest to the zip with :func:`add_to_zip`. The
keep masks are computed once by the caller (:mod:`core.outputs.postprocessing`) and passed to
every writer; no writer recomputes them.

Frames and conventions (also written into ``cameras.json``):

- World frame: the scene's own (arbitrary scale), shared by PLY, OBJ, COLMAP, cameras.json and
  scene.npz. Only the GLB is re-expressed in the first camera's OpenGL frame (for viewers).
- Cameras: OpenCV axes (x right, y down, z forward); ``world_from_cam`` is camera-to-world.
- Pixels: cameras.json and scene.npz use integer pixel centres (OpenCV; pixel (0, 0) is centred
  at (0, 0)), as ``core.types`` does. COLMAP files use COLMAP's convention: pixel (0, 0) is
  centred at (0.5, 0.5), i.e. COLMAP = OpenCV + 0.5.
- ``scene.original_from_processed`` (A) maps processed pixels to original pixels, integer
  centres on both sides (``core.types``), so ``K_original = A @ K`` and a processed pixel (u, v)
  lands at ``A @ (u, v, 1) + (0.5, 0.5)`` in COLMAP coordinates of the original image.

Sparse scenes (COLMAP engine) have no depth, point or confidence maps: the ``obj`` and ``depth``
formats are skipped (the reason is logged and returned by :func:`skipped_formats` and in
:attr:`ExportResult.skipped`), the GLB and PLY hold the sparse points, scene.npz holds
``sparse_*`` arrays instead of ``depth_k``/``pts3d_k``/``conf_k``, and the COLMAP model is the
engine's own one (camera models, tracks) when it is still on disk (see
:mod:`core.outputs.colmap_model`).

Georeferencing (:mod:`core.outputs.georef`) is computed here, at export time, from the kept scene
(its views' GPS, or ``post_cfg.scale_from``). When the scene is georeferenced or scaled, every
world-frame file (PLY, OBJ, COLMAP, cameras.json, scene.npz, splat-ready) is written in the local
metric frame (x east, y north, z up, metres; CRS coordinates = local + ``origin_offset`` in
georef.json), the GLB stays in the first camera's frame (now in metres), and the GIS files
(:mod:`core.outputs.gis`) are in the CRS. Without a georeference, ``las``, ``dsm`` and ``georef`` are
skipped with the reason (e.g. how many photos carry GPS).
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from config import PostprocessConfig, VizConfig
from core.outputs.colmap_model import (
    COLMAP_DEPTH_TOL,
    cam_from_world_qt,
    colmap_intrinsics,
    colmap_unavailable,
    original_intrinsics,
    write_colmap,
)
from core.outputs.fused import FUSED_FORMATS, surface_mesh, voxel_mesh, voxel_model, write_fused
from core.outputs.georef import Georef, georef_document, georef_summary, georeference, transform_scene
from core.outputs.gis import las_unavailable, raster_unavailable, write_gis
from core.outputs.postprocessing import PointSet, dense_maps, gather_points, point_masks, resolve_masks, sparse_mask
from core.outputs.splat import SPLAT_DIR, write_splat_ready
from core.outputs.tsdf import surface_unavailable_reason
from core.outputs.visualization import render_view_maps, scene_mesh, scene_to_glb, unique_stems, write_obj
from core.types import Scene

__all__ = [
    "EXPORT_FORMATS",
    "ALL_FORMATS",
    "COLMAP_DEPTH_TOL",
    "FRAMES",
    "GIS_FORMATS",
    "ZIP_NAME",
    "ExportResult",
    "parse_formats",
    "skipped_formats",
    "original_intrinsics",
    "colmap_intrinsics",
    "cam_from_world_qt",
    "depth_png_scale",
    "write_ply",
    "write_colmap",
    "add_to_zip",
    "export_scene",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("glb", "ply", "obj", "colmap", "json", "npz", "depth", "las", "dsm", "georef", "splat-ready", "zip")
ALL_FORMATS = (*EXPORT_FORMATS[:-1], *FUSED_FORMATS, "zip")
"""Every format; the fused ones (``surface``, ``voxels``) cost a fusion, so only ``all`` or their names ask for them."""
GIS_FORMATS = ("las", "dsm", "georef")
"""Formats that need a georeference (``georef`` also accepts a scale from ``scale_from``)."""
ZIP_NAME = "reconstruction.zip"
FRAMES = "GLB: first camera, OpenGL axes (y up, looking down -z); everything else: the scene's world frame"
"""Which frame each file is in (for manifests)."""
_FRAMES_LOCAL = (
    "pointcloud.las/.laz, dsm/dtm/ortho.tif: the CRS of georef.json; everything else: the local frame (x east, "
    "y north, z up, metres; CRS coordinates = local + georef.json origin_offset), the GLBs with glTF's axes "
    "(x east, y up, z south)"
)
_FRAMES_SCALED = (
    "GLB: first camera, OpenGL axes (y up, looking down -z), metres; everything else: the scene's world frame "
    "scaled to metres (georef.json: local_from_scene)"
)
_CONVENTION = (
    "Cameras: OpenCV axes (x right, y down, z forward). world_from_cam is the 4x4 camera-to-world "
    "matrix (x_world = world_from_cam @ x_cam), cam_from_world its inverse. World frame: the "
    "reconstruction's (arbitrary scale), shared by pointcloud.ply, mesh.obj, the COLMAP model and "
    "scene.npz; scene.glb alone is in the first camera's OpenGL frame. Intrinsics K (3x3) in pixels "
    "with integer pixel centres (OpenCV: pixel (0,0) is centred at (0,0)); K_processed refers to "
    "the processed image (processed_size, the network input), K_original to the uploaded image "
    "(original_size); original_from_processed maps processed pixels to original pixels (integer "
    "centres on both sides), K_original = original_from_processed @ K_processed. COLMAP files put "
    "pixel centres at +0.5. Depth is the z coordinate in the camera frame."
)


def parse_formats(text: str) -> set[str]:
    """ "glb, ply" -> {"glb", "ply"}; "all" -> every format. Case and spaces are ignored.

    Raises ValueError naming the unknown entries and the valid ones, or when nothing is given.
    """
    if not isinstance(text, str):
        raise TypeError(f"formats must be a string like 'glb,ply' or 'all', got {type(text).__name__}")
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"no export format given; choose from {', '.join(ALL_FORMATS)} or 'all'")
    if "all" in items:
        return set(ALL_FORMATS)
    unknown = sorted(set(items) - set(ALL_FORMATS))
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(unknown)}; valid: {', '.join(ALL_FORMATS)} or 'all'")
    return set(items)


def skipped_formats(
    scene: Scene, formats: set[str], *, post_cfg: PostprocessConfig | None = None, georef: Georef | None = None
) -> dict[str, str]:
    """Requested formats this scene (or this installation) cannot produce -> the reason (empty
    for dense scenes with a georeference when every optional package is installed).

    georef: the scene's georeference (default: :func:`core.outputs.georef.georeference` with ``post_cfg``,
    default settings when None); without one ``las``, ``dsm`` and (no scale either) ``georef`` are skipped.
    """
    reasons = {}
    if scene.pts3d is None:
        reasons["obj"] = f"no mesh: the {scene.engine!r} scene is sparse (no per-pixel depth maps to triangulate)"
        reasons["depth"] = f"no depth or confidence maps: the {scene.engine!r} scene is sparse"
        reasons["surface"] = reasons["voxels"] = surface_unavailable_reason(scene)
    if (why := colmap_unavailable()) is not None:
        reasons["colmap"] = reasons["splat-ready"] = why
    if formats & set(GIS_FORMATS):
        geo = georef if georef is not None else georeference(scene, post_cfg or PostprocessConfig())
        if not geo.is_georeferenced:
            reasons["las"] = reasons["dsm"] = geo.reason
            if not geo.is_metric:
                reasons["georef"] = geo.reason
        for fmt, why in (("las", las_unavailable()), ("dsm", raster_unavailable())):
            if why is not None:
                reasons.setdefault(fmt, why)
    return {f: r for f, r in reasons.items() if f in formats}


# ----------------------------------------------------------------------------------------------
# writers


def write_ply(path: Path, points: PointSet, sparse_extra: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Binary little-endian PLY: ``x y z`` float, ``red green blue`` uchar, then ``confidence``
    float (dense points) or ``reproj_error`` float + ``track_length`` int (sparse points, given as
    ``sparse_extra`` = (reproj_error (M,), track_length (M,)))."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if points.conf is not None:
        fields.append(("confidence", "<f4"))
    elif sparse_extra is not None:
        fields += [("reproj_error", "<f4"), ("track_length", "<i4")]
    arr = np.zeros(len(points), dtype=np.dtype(fields))
    arr["x"], arr["y"], arr["z"] = points.xyz.T
    arr["red"], arr["green"], arr["blue"] = points.rgb.T
    if points.conf is not None:
        arr["confidence"] = points.conf
    elif sparse_extra is not None:
        arr["reproj_error"], arr["track_length"] = sparse_extra
    ply_types = {"<f4": "float", "u1": "uchar", "<i4": "int"}
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment dust3r-studio point cloud, world frame, OpenCV camera axes",
        f"element vertex {len(arr)}",
    ]
    header += [f"property {ply_types[t]} {name}" for name, t in fields]
    header.append("end_header")
    path = Path(path)
    with path.open("wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(arr.tobytes())
    return path


# ----------------------------------------------------------------------------------------------


def depth_png_scale(scene: Scene) -> float:
    """Scale of the 16-bit depth PNGs (png = round(depth * scale), 0 = invalid): the largest
    finite depth of all views maps to 65535."""
    _, depths, _ = dense_maps(scene, "depth PNGs")
    dmax = max((float(np.max(d[np.isfinite(d)])) for d in depths if np.isfinite(d).any()), default=0.0)
    return 65535.0 / dmax if dmax > 0 else 1.0


def _write_depth(scene: Scene, out_dir: Path, stems: list[str]) -> tuple[float, list[dict[str, str]]]:
    _, depths, confs = dense_maps(scene, "depth maps")
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = depth_png_scale(scene)
    files = []
    for k, stem in enumerate(stems):
        d = depths[k].astype(np.float32)
        np.save(out_dir / f"{stem}_depth.npy", d)
        np.save(out_dir / f"{stem}_conf.npy", confs[k].astype(np.float32))
        valid = np.isfinite(d) & (d > 0)
        png = np.zeros(d.shape, np.uint16)
        png[valid] = np.clip(np.rint(d[valid].astype(np.float64) * scale), 1, 65535).astype(np.uint16)
        Image.fromarray(png).save(out_dir / f"{stem}_depth.png")
        files.append(
            {
                "depth_npy": f"depth/{stem}_depth.npy",
                "depth_png": f"depth/{stem}_depth.png",
                "conf_npy": f"depth/{stem}_conf.npy",
            }
        )
    (out_dir / "depth_png.json").write_text(
        json.dumps(
            {
                "depth_png_scale": scale,
                "meaning": "depth = png_value / depth_png_scale (z-depth in scene units); png_value 0 = invalid",
            },
            indent=2,
        )
    )
    return scale, files


def _cameras_json(
    scene: Scene,
    path: Path,
    depth_scale: float | None,
    depth_files: list[dict] | None,
    skipped: dict[str, str],
    geo: Georef | None = None,
) -> Path:
    intr = scene.intrinsics()
    k_orig = original_intrinsics(scene)
    images = []
    for k in range(scene.n_views):
        wfc = scene.world_from_cam[k].astype(np.float64)
        h, w = scene.images[k].shape[:2]
        entry = {
            "index": k,
            "name": scene.names[k],
            "original_size": [int(v) for v in scene.original_sizes[k]],
            "processed_size": [int(w), int(h)],
            "focal_processed": float(scene.focals[k]),
            "principal_point_processed": [float(v) for v in scene.principal_points[k]],
            "K_processed": intr[k].tolist(),
            "K_original": k_orig[k].tolist(),
            "original_from_processed": np.asarray(scene.original_from_processed[k], np.float64).tolist(),
            "world_from_cam": wfc.tolist(),
            "cam_from_world": np.linalg.inv(wfc).tolist(),
        }
        if depth_files is not None:
            entry["files"] = depth_files[k]
        images.append(entry)
    doc = {
        "convention": _CONVENTION,
        "sizes": "[width, height] in pixels",
        "engine": scene.engine,
        "units": scene.units,
        "final_loss": scene.final_loss,
        "n_images": scene.n_views,
        "dense": scene.pts3d is not None,
        "images": images,
    }
    if depth_scale is not None:
        doc["depth_png_scale"] = depth_scale
        doc["depth_png_meaning"] = "depth = png_value / depth_png_scale; png_value 0 = invalid"
    if skipped:
        doc["missing"] = skipped
    if geo is not None and geo.is_metric:
        doc["world_frame"] = _FRAMES_LOCAL if geo.is_georeferenced else _FRAMES_SCALED
        doc["georef"] = georef_summary(geo)
    if scene.warnings:
        doc["warnings"] = list(scene.warnings)
    path.write_text(json.dumps(doc, indent=2))
    return path


def _write_npz(scene: Scene, masks, path: Path, geo: Georef | None = None) -> Path:
    """scene.npz; see :func:`export_scene` for the keys."""
    arrays: dict[str, np.ndarray] = {
        "world_from_cam": scene.world_from_cam.astype(np.float32),
        "focals": scene.focals.astype(np.float32),
        "principal_points": scene.principal_points.astype(np.float32),
        "final_loss": np.array(np.nan if scene.final_loss is None else scene.final_loss, np.float64),
        "names": np.array(scene.names, dtype=str),
        "original_sizes": np.array(scene.original_sizes, np.int64).reshape(-1, 2),
        "original_from_processed": np.asarray(scene.original_from_processed, np.float64),
        "engine": np.array(scene.engine),
        "units": np.array(scene.units),
    }
    for k, img in enumerate(scene.images):
        arrays[f"image_{k}"] = np.asarray(img, np.uint8)
    if scene.gps is not None:
        arrays["gps"] = np.asarray(scene.gps, np.float64)
    if geo is not None and geo.is_metric:
        arrays["local_from_scene"] = geo.local_from_scene.matrix()
        arrays["origin_offset"] = geo.origin_offset
    if scene.pts3d is not None:
        pts3d, depths, confs = dense_maps(scene, "scene.npz")
        for k in range(scene.n_views):
            arrays[f"depth_{k}"] = depths[k].astype(np.float32)
            arrays[f"pts3d_{k}"] = pts3d[k].astype(np.float32)
            arrays[f"conf_{k}"] = confs[k].astype(np.float32)
            arrays[f"mask_{k}"] = np.asarray(masks[k], bool)
    if scene.sparse is not None:  # COLMAP's points, also beside a dense scene's maps
        arrays["sparse_xyz"] = scene.sparse.xyz.astype(np.float32)
        arrays["sparse_rgb"] = scene.sparse.rgb.astype(np.uint8)
        arrays["sparse_track_length"] = scene.sparse.track_length.astype(np.int32)
        arrays["sparse_reproj_error"] = scene.sparse.reproj_error.astype(np.float32)
    if scene.sparse is not None and scene.pts3d is None:
        arrays["sparse_mask"] = np.asarray(masks, bool)
        arrays["missing_keys"] = np.array(["depth_k", "pts3d_k", "conf_k", "mask_k"])
    np.savez(path, **arrays)
    return path


def _arcname(path: Path, root: Path) -> str:
    path = Path(path)
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def _zip_members(members: Iterable[Path]) -> list[Path]:
    """Files of ``members`` (folders expanded, sorted), each once, in order."""
    files: list[Path] = []
    for m in map(Path, members):
        files.extend(sorted(p for p in m.rglob("*") if p.is_file()) if m.is_dir() else [m])
    return list(dict.fromkeys(files))


def _write_members(zf: zipfile.ZipFile, files: Iterable[Path], root: Path) -> None:
    for f in files:
        kind = zipfile.ZIP_STORED if f.suffix.lower() in (".png", ".zip") else zipfile.ZIP_DEFLATED
        zf.write(f, _arcname(f, root), compress_type=kind)


def _write_zip(out_dir: Path, members: Iterable[Path], path: Path) -> Path:
    """A fresh zip of ``members`` (files or folders), named relative to ``out_dir``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        _write_members(zf, _zip_members(members), out_dir)
    return path


def add_to_zip(zip_path: Path, files: Iterable[Path], root: Path) -> Path:
    """Append files (e.g. the manifest the caller wrote after :func:`export_scene`) to the export's
    zip. Each is stored under its path relative to ``root`` (the export folder), or its bare name
    when outside it; a name already in the zip raises ValueError. Returns ``zip_path``."""
    zip_path, root = Path(zip_path), Path(root)
    files = _zip_members(files)
    with zipfile.ZipFile(zip_path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        taken = set(zf.namelist()) & {_arcname(f, root) for f in files}
        if taken:
            raise ValueError(f"{zip_path.name} already holds {sorted(taken)}")
        _write_members(zf, files, root)
    return zip_path


# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_scene` wrote into ``out_dir`` and what it could not write."""

    out_dir: Path
    """The export folder."""
    written: dict[str, Path] = field(default_factory=dict)
    """Key -> file or folder written, in writing order. Keys: the formats written (``glb``,
    ``ply``, ``obj``, ``colmap``, ``json``, ``npz``, ``depth``, ``zip``) plus ``maps`` (the
    gallery PNGs, written with ``depth``)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Requested format -> why it was not written (:func:`skipped_formats`)."""
    frames: str = FRAMES
    """Which frame the files are in."""
    georef: Georef | None = None
    """The scene's georeference used by this export (:func:`core.outputs.georef.georeference`)."""

    def describe(self) -> dict[str, Any]:
        """JSON-ready ``{"written": {key: path relative to out_dir}, "skipped": {format: reason},
        "frames": str, "georef": {status, epsg, rmse_m, summary}}`` (what the export folder's
        manifest.json used to hold, plus the georeference)."""
        out: dict[str, Any] = {
            "written": {k: _arcname(p, self.out_dir) for k, p in self.written.items()},
            "skipped": dict(self.skipped),
            "frames": self.frames,
        }
        if self.georef is not None:
            out["georef"] = {
                "status": self.georef.status,
                "epsg": self.georef.epsg,
                "rmse_m": self.georef.rmse_m,
                "summary": georef_summary(self.georef),
            }
        return out


def _plan(scene: Scene, formats: Iterable[str], geo: Georef) -> tuple[set[str], dict[str, str]]:
    """(formats to write, skipped format -> reason); ``zip`` means every format plus the zip."""
    formats = set(formats)
    unknown = formats - set(ALL_FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; valid: {', '.join(ALL_FORMATS)}")
    if "zip" in formats:  # everything, except the fused outputs unless they are named (they cost a fusion)
        formats = set(EXPORT_FORMATS) | (formats & set(FUSED_FORMATS))
    skipped = skipped_formats(scene, formats, georef=geo)
    for fmt, why in skipped.items():
        logger.info("export %s skipped: %s", fmt, why)
    return formats - set(skipped), skipped


def _shown_geometry(scene: Scene, masks, viz_cfg: VizConfig) -> trimesh.Trimesh | None:
    """The fused surface or voxels when the view mode shows one (world frame), else None."""
    if viz_cfg.view_mode == "surface":
        return surface_mesh(scene, masks, viz_cfg)
    if viz_cfg.view_mode == "voxels":
        return voxel_mesh(voxel_model(scene, masks, viz_cfg))
    return None


def _write_geometry(
    scene: Scene, masks, out_dir: Path, todo: set[str], post_cfg, viz_cfg, *, local_enu: bool
) -> dict[str, Path]:
    """glb, ply, obj and colmap, each from the given masks (``local_enu``: the scene is georeferenced)."""
    out: dict[str, Path] = {}
    if "glb" in todo:
        shown = _shown_geometry(scene, masks, viz_cfg)
        out["glb"] = scene_to_glb(scene, masks, viz_cfg, out_dir / "scene.glb", geometry=shown, local_enu=local_enu)
    if "ply" in todo:
        extra = None
        if scene.sparse is not None and scene.pts3d is None:
            sel = np.flatnonzero(masks)
            extra = (scene.sparse.reproj_error[sel], scene.sparse.track_length[sel])
        out["ply"] = write_ply(out_dir / "pointcloud.ply", gather_points(scene, masks), extra)
    if "obj" in todo:
        verts, faces, cols = scene_mesh(
            scene, masks, depth_jump=viz_cfg.mesh_depth_jump, max_vertices=viz_cfg.max_points
        )
        out["obj"] = write_obj(out_dir / "mesh.obj", verts, faces, cols)
    if "colmap" in todo:
        out["colmap"] = write_colmap(scene, masks, out_dir / "colmap" / "sparse" / "0", post_cfg.colmap_max_points)
    return out


def _write_tables(
    scene: Scene, masks, out_dir: Path, todo: set[str], skipped: Mapping[str, str], post_cfg, viz_cfg, geo: Georef
) -> dict[str, Path]:
    """depth (+ maps), json and npz."""
    out: dict[str, Path] = {}
    depth_scale, depth_files = None, None
    if "depth" in todo:
        depth_scale, depth_files = _write_depth(scene, out_dir / "depth", unique_stems(scene.names))
        out["depth"] = out_dir / "depth"
        render_view_maps(scene, viz_cfg, out_dir / "maps", conf_threshold=post_cfg.min_conf_thr)
        out["maps"] = out_dir / "maps"
    if "json" in todo:
        if depth_scale is None and scene.pts3d is not None:
            depth_scale = depth_png_scale(scene)
        out["json"] = _cameras_json(scene, out_dir / "cameras.json", depth_scale, depth_files, dict(skipped), geo)
    if "npz" in todo:
        out["npz"] = _write_npz(scene, masks, out_dir / "scene.npz", geo)
    return out


def _write_geo(scene: Scene, masks, out_dir: Path, todo: set[str], post_cfg, geo: Georef) -> dict[str, Path]:
    """las (+ laz), dsm (+ dtm, ortho), georef.json and splat-ready; ``scene`` already in the local frame."""
    out: dict[str, Path] = {}
    frames = _FRAMES_LOCAL if geo.is_georeferenced else _FRAMES_SCALED if geo.is_metric else FRAMES
    if todo & {"las", "dsm"}:
        files, notes = write_gis(scene, masks, geo, out_dir, todo & {"las", "dsm"}, post_cfg)
        out.update(files)
        for what, why in notes.items():
            logger.info("%s not written: %s", what, why)
    if "georef" in todo:
        path = out_dir / "georef.json"
        path.write_text(json.dumps(georef_document(geo, frames), indent=2))
        out["georef"] = path
    if "splat-ready" in todo:
        units = "metres" if geo.is_metric else "unknown (the reconstruction's own scale)"
        out["splat-ready"] = write_splat_ready(
            scene, masks, out_dir / SPLAT_DIR, max_points=post_cfg.splat_max_points, units=units
        )
    return out


def export_scene(
    scene: Scene, masks, out_dir: Path, formats: Iterable[str], *, post_cfg: PostprocessConfig, viz_cfg: VizConfig
) -> ExportResult:
    """Write the requested formats into ``out_dir``; return what was written and skipped.

    masks: the keep masks the caller computed once for the current display settings
    (:func:`core.outputs.postprocessing.point_masks` / ``sparse_mask``); every writer uses them.
    None computes them here with ``post_cfg``. formats: names from :data:`ALL_FORMATS`;
    ``zip`` means "everything, plus reconstruction.zip". No manifest is written (see
    :class:`ExportResult` and :func:`add_to_zip`). Files per key of ``ExportResult.written``:

    - ``glb``: ``scene.glb`` (:func:`core.outputs.visualization.scene_to_glb` with ``viz_cfg``; with
      ``view_mode`` surface or voxels it holds the fused surface or the voxels instead of the views;
      georeferenced scenes: the local east-north-up frame, glTF axes).
    - ``ply``: ``pointcloud.ply``, every kept point (world frame; see :func:`write_ply`).
    - ``obj``: ``mesh.obj``, pixel-grid mesh with vertex colours, at most ``viz_cfg.max_points``
      vertices (dense only).
    - ``colmap``: ``colmap/sparse/0/`` with cameras/images/points3D (and rigs/frames) in .txt and
      .bin (:func:`write_colmap`, at most ``post_cfg.colmap_max_points`` points).
    - ``json``: ``cameras.json`` (per image: name, sizes, K processed/original, both poses;
      conventions stated in the file).
    - ``npz``: ``scene.npz`` with ``world_from_cam`` (N,4,4), ``focals`` (N,),
      ``principal_points`` (N,2), per view k ``image_k`` (H,W,3) uint8, ``depth_k`` (H,W),
      ``pts3d_k`` (H,W,3) world, ``conf_k`` (H,W) raw confidence, ``final_loss`` (NaN when the
      scene was not optimised); extras ``mask_k`` (export mask), ``names``, ``original_sizes``,
      ``original_from_processed``, ``engine``, ``units`` ("m" or "unknown"). Sparse scenes: no depth/pts3d/conf/mask keys
      (listed in ``missing_keys``), ``sparse_xyz``/``sparse_rgb``/``sparse_track_length``/
      ``sparse_reproj_error``/``sparse_mask`` instead. With GPS: ``gps`` (N, 3) lat/lon/alt; when
      metric: ``local_from_scene`` (4, 4) and ``origin_offset`` (3,).
    - ``depth``: ``depth/<stem>_depth.npy`` (float32 z-depth), ``depth/<stem>_depth.png``
      (uint16, depth * depth_png_scale, scale in depth/depth_png.json and cameras.json),
      ``depth/<stem>_conf.npy``; also key ``maps``: ``maps/`` with the gallery PNGs (input, depth
      and confidence maps with colourbars). Dense only.
    - ``las``: ``pointcloud.las`` (LAS 1.4, CRS WKT, RGB, ground class) and, with lazrs, key ``laz``:
      ``pointcloud.laz``; ``dsm``: ``dsm.tif`` plus keys ``dtm`` (ground classified) and ``ortho``
      (:mod:`core.outputs.gis`); georeferenced scenes only.
    - ``georef``: ``georef.json`` (:func:`core.outputs.georef.georef_document`); georeferenced or scaled.
    - ``splat-ready``: ``splat-ready/`` (images, ``sparse/0``, ``transforms.json``; :mod:`core.outputs.splat`).
    - ``surface``: ``surface.glb`` (viewer frame) plus keys ``surface_ply``, ``surface_obj`` (world
      frame): the TSDF-fused surface (:mod:`core.outputs.fused`); ``voxels``: ``voxels.npz``
      (``occupancy``, ``colors``, ``world_from_grid``) plus ``voxels_binvox``, ``voxels_glb``. Dense only.
    - ``zip``: ``reconstruction.zip`` with all of the above (surface and voxels only when named).

    Raises ValueError for an unknown format or masks that do not fit the scene.
    """
    geo = georeference(scene, post_cfg)
    todo, skipped = _plan(scene, formats, geo)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if masks is None:
        masks = point_masks(scene, post_cfg) if scene.pts3d is not None else sparse_mask(scene, post_cfg)
    masks = resolve_masks(scene, masks)
    if geo.is_metric:  # every world-frame file in the local metric frame (masks are per pixel/point: unchanged)
        scene = transform_scene(scene, geo.local_from_scene)
    enu = geo.is_georeferenced
    written = _write_geometry(scene, masks, out_dir, todo, post_cfg, viz_cfg, local_enu=enu)
    written.update(_write_tables(scene, masks, out_dir, todo, skipped, post_cfg, viz_cfg, geo))
    written.update(_write_geo(scene, masks, out_dir, todo, post_cfg, geo))
    written.update(write_fused(scene, masks, out_dir, todo, viz_cfg, local_enu=enu))
    if "zip" in todo:
        written["zip"] = _write_zip(out_dir, list(written.values()), out_dir / ZIP_NAME)
    frames = _FRAMES_LOCAL if geo.is_georeferenced else _FRAMES_SCALED if geo.is_metric else FRAMES
    return ExportResult(out_dir=out_dir, written=written, skipped=skipped, frames=frames, georef=geo)
