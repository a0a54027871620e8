"""Downloads: GLB, PLY, OBJ, a COLMAP model, cameras.json, depth/confidence maps, scene.npz, a zip.

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
formats are skipped (the reason is logged, returned by :func:`skipped_formats` and written to
``manifest.json``), the GLB and PLY hold the sparse points, scene.npz holds ``sparse_*`` arrays
instead of ``depth_k``/``pts3d_k``/``conf_k``, and COLMAP tracks are empty (the scene carries no
per-point observations).
"""

from __future__ import annotations

import json
import logging
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from config import PostprocessConfig, VizConfig
from core.outputs.postprocessing import (
    PointSet,
    dense_maps,
    even_sample,
    gather_points,
    point_masks,
    resolve_masks,
    sparse_mask,
    transform_points,
)
from core.types import Scene
from core.outputs.visualization import render_view_maps, scene_mesh, scene_to_glb, unique_stems, write_obj

__all__ = [
    "EXPORT_FORMATS",
    "COLMAP_DEPTH_TOL",
    "parse_formats",
    "skipped_formats",
    "original_intrinsics",
    "colmap_intrinsics",
    "cam_from_world_qt",
    "depth_png_scale",
    "write_ply",
    "write_colmap",
    "export_scene",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("glb", "ply", "obj", "colmap", "json", "npz", "depth", "zip")
#: A dense point is observed in another view when its z-depth there is within this fraction of
#: that view's depth at the pixel it projects to (visible, not occluded).
COLMAP_DEPTH_TOL = 0.02
_PINHOLE_MODEL_ID = 1
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
        raise ValueError(f"no export format given; choose from {', '.join(EXPORT_FORMATS)} or 'all'")
    if "all" in items:
        return set(EXPORT_FORMATS)
    unknown = sorted(set(items) - set(EXPORT_FORMATS))
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(unknown)}; valid: {', '.join(EXPORT_FORMATS)} or 'all'")
    return set(items)


def skipped_formats(scene: Scene, formats: set[str]) -> dict[str, str]:
    """Requested formats this scene cannot produce -> the reason (empty for dense scenes)."""
    if scene.pts3d is not None:
        return {}
    reasons = {
        "obj": f"no mesh: the {scene.engine!r} scene is sparse (no per-pixel depth maps to triangulate)",
        "depth": f"no depth or confidence maps: the {scene.engine!r} scene is sparse",
    }
    return {f: r for f, r in reasons.items() if f in formats}


# ----------------------------------------------------------------------------------------------
# camera conversions


def original_intrinsics(scene: Scene) -> np.ndarray:
    """(N, 3, 3) K of each ORIGINAL image (integer pixel centres): original_from_processed @ K."""
    return np.asarray(scene.original_from_processed, np.float64) @ scene.intrinsics()


def colmap_intrinsics(scene: Scene) -> np.ndarray:
    """(N, 4) PINHOLE params (fx, fy, cx, cy) of each ORIGINAL image, COLMAP pixel convention
    (principal point + 0.5)."""
    k = original_intrinsics(scene)
    return np.stack([k[:, 0, 0], k[:, 1, 1], k[:, 0, 2] + 0.5, k[:, 1, 2] + 0.5], axis=1)


def cam_from_world_qt(world_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(4, 4) camera-to-world -> COLMAP (qw, qx, qy, qz) (4,) with qw >= 0 and t (3,).

    The rotation is projected to the nearest orthonormal one; t keeps the camera centre exact.
    """
    rot_wc = np.asarray(world_from_cam, np.float64)[:3, :3]
    centre = np.asarray(world_from_cam, np.float64)[:3, 3]
    xyzw = Rotation.from_matrix(rot_wc.T).as_quat()
    q = np.r_[xyzw[3], xyzw[:3]]
    if q[0] < 0:
        q = -q
    rot_cw = Rotation.from_quat(xyzw).as_matrix()
    return q, -rot_cw @ centre


def _project(scene: Scene, k: int, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World (M, 3) -> processed-image pixels (M, 2) (OpenCV) and z-depth (M,) in view k."""
    p = transform_points(np.linalg.inv(scene.world_from_cam[k].astype(np.float64)), pts)
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = float(scene.focals[k]) * p[:, :2] / z[:, None] + scene.principal_points[k].astype(np.float64)
    return uv, z


def _affine_2d(mat: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Apply a (3, 3) affine (last row 0 0 1) to (M, 2) pixels -> (M, 2) float64."""
    mat = np.asarray(mat, np.float64)
    u, v = uv[:, 0].astype(np.float64), uv[:, 1].astype(np.float64)
    return np.stack([mat[0, 0] * u + mat[0, 1] * v + mat[0, 2], mat[1, 0] * u + mat[1, 1] * v + mat[1, 2]], axis=1)


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


def _dense_tracks(scene: Scene, masks: tuple[np.ndarray, ...], points: PointSet) -> list[np.ndarray]:
    """For each view j: (S,) bool, point s is observed in j (see :data:`COLMAP_DEPTH_TOL`)."""
    _, depths, _ = dense_maps(scene, "COLMAP tracks")
    seen = []
    for j in range(scene.n_views):
        uv, z = _project(scene, j, points.xyz)
        h, w = depths[j].shape
        u = np.rint(uv[:, 0])
        v = np.rint(uv[:, 1])
        ok = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        idx = np.flatnonzero(ok)
        ui, vi = u[idx].astype(np.int64), v[idx].astype(np.int64)
        dj = depths[j][vi, ui]
        good = masks[j][vi, ui] & (np.abs(z[idx] - dj) <= COLMAP_DEPTH_TOL * np.abs(dj))
        obs = np.zeros(len(points), bool)
        obs[idx[good]] = True
        obs |= points.view == j  # always observed in its source view
        seen.append(obs)
    return seen


def write_colmap(scene: Scene, masks, out_dir: Path, max_points: int) -> Path:
    """COLMAP model (text AND binary) of the scene in ``out_dir`` (usually colmap/sparse/0).

    One PINHOLE camera per image at the ORIGINAL resolution (fx = f / sx, fy = f / sy, principal
    point mapped through original_from_processed, COLMAP pixel convention); image names =
    scene.names; poses as COLMAP cam_from_world (qw qx qy qz, t). Dense scenes: up to
    ``max_points`` kept points (even subsample), each observed in its source view and in every
    view where it projects onto a kept pixel with consistent depth; its 2-D observations are its
    projections (so the stored error is the reprojection error of those, ~0). Sparse scenes:
    the kept sparse points with their colours and errors and empty tracks. Returns ``out_dir``.
    Raises ValueError for duplicate image names (COLMAP keys images by name).
    """
    names = list(scene.names)
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"COLMAP needs unique image names, got duplicates: {dups}")
    if any(any(c.isspace() for c in n) for n in names):
        logger.warning("image names with spaces cannot be read back from COLMAP's text format; use the .bin files")
    masks = resolve_masks(scene, masks)
    pts = gather_points(scene, masks)
    sel = even_sample(len(pts), max_points)
    pts = PointSet(
        pts.xyz[sel],
        pts.rgb[sel],
        None if pts.conf is None else pts.conf[sel],
        pts.view[sel],
        pts.rows[sel],
        pts.cols[sel],
    )
    n, m = scene.n_views, len(pts)
    params = colmap_intrinsics(scene)
    colors = pts.rgb
    seen = _dense_tracks(scene, masks, pts) if scene.pts3d is not None else [np.zeros(m, bool) for _ in range(n)]
    # per image: observed point indices (in point order) -> 2-D positions in COLMAP pixels
    obs_pts, obs_xy, point2d_idx = [], [], np.full((n, m), -1, np.int64)
    err_sum = np.zeros(m)
    for j in range(n):
        idx = np.flatnonzero(seen[j])
        uv, _ = _project(scene, j, pts.xyz[idx])
        xy = _affine_2d(scene.original_from_processed[j], uv) + 0.5  # COLMAP: pixel centres at +0.5
        obs_pts.append(idx)
        obs_xy.append(xy)
        point2d_idx[j, idx] = np.arange(len(idx))
        # reprojection error with the written camera (same numbers, float64)
        q, t = cam_from_world_qt(scene.world_from_cam[j])
        rot = Rotation.from_quat(np.r_[q[1:], q[0]]).as_matrix()
        pc = transform_points(np.c_[rot, t], pts.xyz[idx])
        fx, fy, cx, cy = params[j]
        proj = np.c_[fx * pc[:, 0] / pc[:, 2] + cx, fy * pc[:, 1] / pc[:, 2] + cy]
        err_sum[idx] += np.linalg.norm(proj - xy, axis=1)
    track_len = (point2d_idx >= 0).sum(0)
    if scene.pts3d is not None:
        errors = np.where(track_len > 0, err_sum / np.maximum(track_len, 1), 0.0)
    else:
        errors = scene.sparse.reproj_error[np.flatnonzero(resolve_masks(scene, masks))][sel].astype(np.float64)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(int(v) for v in s) for s in scene.original_sizes]
    poses = [cam_from_world_qt(scene.world_from_cam[j]) for j in range(n)]
    _write_colmap_text(out_dir, names, sizes, params, poses, obs_pts, obs_xy, pts.xyz, colors, errors, point2d_idx)
    _write_colmap_binary(out_dir, names, sizes, params, poses, obs_pts, obs_xy, pts.xyz, colors, errors, point2d_idx)
    logger.debug("COLMAP model: %d images, %d points, mean track %.2f", n, m, track_len.mean() if m else 0.0)
    return out_dir


def _write_colmap_text(out_dir, names, sizes, params, poses, obs_pts, obs_xy, xyz, colors, errors, point2d_idx) -> None:
    n, m = len(names), len(xyz)
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {n}",
    ]
    for j in range(n):
        lines.append(f"{j + 1} PINHOLE {sizes[j][0]} {sizes[j][1]} " + " ".join(f"{v:.17g}" for v in params[j]))
    (out_dir / "cameras.txt").write_text("\n".join(lines) + "\n")
    mean_obs = float(np.mean([len(o) for o in obs_pts])) if n else 0.0
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {n}, mean observations per image: {mean_obs:g}",
    ]
    for j in range(n):
        q, t = poses[j]
        lines.append(f"{j + 1} " + " ".join(f"{v:.17g}" for v in (*q, *t)) + f" {j + 1} {names[j]}")
        lines.append(" ".join(f"{x:.6f} {y:.6f} {p + 1}" for (x, y), p in zip(obs_xy[j], obs_pts[j], strict=True)))
    (out_dir / "images.txt").write_text("\n".join(lines) + "\n")
    track_len = (point2d_idx >= 0).sum(0)
    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {m}, mean track length: {float(track_len.mean()) if m else 0.0:g}",
    ]
    for s in range(m):
        track = " ".join(f"{j + 1} {point2d_idx[j, s]}" for j in np.flatnonzero(point2d_idx[:, s] >= 0))
        x, y, z = xyz[s]
        r, g, b = colors[s]
        lines.append(f"{s + 1} {x:.9g} {y:.9g} {z:.9g} {r} {g} {b} {errors[s]:.6g} {track}".rstrip())
    (out_dir / "points3D.txt").write_text("\n".join(lines) + "\n")


def _write_colmap_binary(
    out_dir, names, sizes, params, poses, obs_pts, obs_xy, xyz, colors, errors, point2d_idx
) -> None:
    n, m = len(names), len(xyz)
    with (out_dir / "cameras.bin").open("wb") as fh:
        fh.write(struct.pack("<Q", n))
        for j in range(n):
            fh.write(struct.pack("<IiQQ", j + 1, _PINHOLE_MODEL_ID, sizes[j][0], sizes[j][1]))
            fh.write(np.asarray(params[j], "<f8").tobytes())
    p2d_dtype = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<u8")])
    with (out_dir / "images.bin").open("wb") as fh:
        fh.write(struct.pack("<Q", n))
        for j in range(n):
            q, t = poses[j]
            fh.write(struct.pack("<I", j + 1) + np.r_[q, t].astype("<f8").tobytes() + struct.pack("<I", j + 1))
            fh.write(names[j].encode("utf-8") + b"\0")
            rec = np.zeros(len(obs_pts[j]), p2d_dtype)
            rec["x"], rec["y"] = obs_xy[j][:, 0], obs_xy[j][:, 1]
            rec["id"] = obs_pts[j] + 1
            fh.write(struct.pack("<Q", len(rec)) + rec.tobytes())
    track_len = (point2d_idx >= 0).sum(0)
    with (out_dir / "points3D.bin").open("wb") as fh:
        fh.write(struct.pack("<Q", m))
        for length in np.unique(track_len):  # records grouped by track length (order is free)
            sel = np.flatnonzero(track_len == length)
            fields = [("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("err", "<f8"), ("len", "<u8")]
            if length:
                fields.append(("track", "<u4", (int(length), 2)))
            rec = np.zeros(len(sel), np.dtype(fields))
            rec["id"] = sel + 1
            rec["xyz"] = xyz[sel]
            rec["rgb"] = colors[sel]
            rec["err"] = errors[sel]
            rec["len"] = length
            if length:
                views = point2d_idx[:, sel].T  # (S, N)
                img = np.argsort(views < 0, axis=1, kind="stable")[:, :length]  # observing views, in order
                rec["track"][..., 0] = img + 1
                rec["track"][..., 1] = np.take_along_axis(views, img, axis=1)
            fh.write(rec.tobytes())


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
    scene: Scene, path: Path, depth_scale: float | None, depth_files: list[dict] | None, skipped: dict[str, str]
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
    if scene.warnings:
        doc["warnings"] = list(scene.warnings)
    path.write_text(json.dumps(doc, indent=2))
    return path


def _write_npz(scene: Scene, masks, path: Path) -> Path:
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
    if scene.pts3d is not None:
        pts3d, depths, confs = dense_maps(scene, "scene.npz")
        for k in range(scene.n_views):
            arrays[f"depth_{k}"] = depths[k].astype(np.float32)
            arrays[f"pts3d_{k}"] = pts3d[k].astype(np.float32)
            arrays[f"conf_{k}"] = confs[k].astype(np.float32)
            arrays[f"mask_{k}"] = np.asarray(masks[k], bool)
    elif scene.sparse is not None:
        arrays["sparse_xyz"] = scene.sparse.xyz.astype(np.float32)
        arrays["sparse_rgb"] = scene.sparse.rgb.astype(np.uint8)
        arrays["sparse_track_length"] = scene.sparse.track_length.astype(np.int32)
        arrays["sparse_reproj_error"] = scene.sparse.reproj_error.astype(np.float32)
        arrays["sparse_mask"] = np.asarray(masks, bool)
        arrays["missing_keys"] = np.array(["depth_k", "pts3d_k", "conf_k", "mask_k"])
    np.savez(path, **arrays)
    return path


def _zip(out_dir: Path, members: list[Path], path: Path) -> Path:
    files: list[Path] = []
    for m in members:
        files.extend(sorted(p for p in m.rglob("*") if p.is_file()) if m.is_dir() else [m])
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in dict.fromkeys(files):
            kind = zipfile.ZIP_STORED if f.suffix.lower() in (".png", ".zip") else zipfile.ZIP_DEFLATED
            zf.write(f, f.relative_to(out_dir).as_posix(), compress_type=kind)
    return path


def export_scene(
    scene: Scene, masks, out_dir: Path, formats: set[str], *, post_cfg: PostprocessConfig, viz_cfg: VizConfig
) -> dict[str, Path]:
    """Write the requested formats into ``out_dir`` and return {key: path}.

    masks: keep masks from :func:`core.outputs.postprocessing.point_masks` / ``sparse_mask`` (None =
    computed here with ``post_cfg``). formats: a subset of :data:`EXPORT_FORMATS`; ``zip`` means
    "everything, plus reconstruction.zip". Keys and files:

    - ``glb``: ``scene.glb`` (:func:`core.outputs.visualization.scene_to_glb` with ``viz_cfg``).
    - ``ply``: ``pointcloud.ply``, every kept point (world frame; see :func:`write_ply`).
    - ``obj``: ``mesh.obj``, pixel-grid mesh with vertex colours, at most ``viz_cfg.max_points``
      vertices (dense only).
    - ``colmap``: ``colmap/sparse/0/`` with cameras/images/points3D in .txt and .bin
      (:func:`write_colmap`, at most ``post_cfg.colmap_max_points`` points).
    - ``json``: ``cameras.json`` (per image: name, sizes, K processed/original, both poses;
      conventions stated in the file).
    - ``npz``: ``scene.npz`` with ``world_from_cam`` (N,4,4), ``focals`` (N,),
      ``principal_points`` (N,2), per view k ``image_k`` (H,W,3) uint8, ``depth_k`` (H,W),
      ``pts3d_k`` (H,W,3) world, ``conf_k`` (H,W) raw confidence, ``final_loss`` (NaN when the
      scene was not optimised); extras ``mask_k`` (export mask), ``names``, ``original_sizes``,
      ``original_from_processed``, ``engine``, ``units`` ("m" or "unknown"). Sparse scenes: no
      depth/pts3d/conf/mask keys (listed in ``missing_keys``), ``sparse_xyz``/``sparse_rgb``/``sparse_track_length``/
      ``sparse_reproj_error``/``sparse_mask`` instead.
    - ``depth``: ``depth/<stem>_depth.npy`` (float32 z-depth), ``depth/<stem>_depth.png``
      (uint16, depth * depth_png_scale, scale in depth/depth_png.json and cameras.json),
      ``depth/<stem>_conf.npy``; also key ``maps``: ``maps/`` with the gallery PNGs (input, depth
      and confidence maps with colourbars). Dense only.
    - ``zip``: ``reconstruction.zip`` with all of the above.
    - always ``manifest``: ``manifest.json`` (what was written, what was skipped and why).
    """
    unknown = set(formats) - set(EXPORT_FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; valid: {', '.join(EXPORT_FORMATS)}")
    formats = set(EXPORT_FORMATS) if "zip" in formats else set(formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if masks is None:
        masks = point_masks(scene, post_cfg) if scene.pts3d is not None else sparse_mask(scene, post_cfg)
    masks = resolve_masks(scene, masks)
    skipped = skipped_formats(scene, formats)
    for fmt, why in skipped.items():
        logger.info("export %s skipped: %s", fmt, why)
    todo = formats - set(skipped)
    stems = unique_stems(scene.names)
    out: dict[str, Path] = {}
    if "glb" in todo:
        out["glb"] = scene_to_glb(scene, masks, viz_cfg, out_dir / "scene.glb")
    if "ply" in todo:
        pts = gather_points(scene, masks)
        extra = None
        if scene.sparse is not None and scene.pts3d is None:
            sel = np.flatnonzero(masks)
            extra = (scene.sparse.reproj_error[sel], scene.sparse.track_length[sel])
        out["ply"] = write_ply(out_dir / "pointcloud.ply", pts, extra)
    if "obj" in todo:
        verts, faces, cols = scene_mesh(
            scene, masks, depth_jump=viz_cfg.mesh_depth_jump, max_vertices=viz_cfg.max_points
        )
        out["obj"] = write_obj(out_dir / "mesh.obj", verts, faces, cols)
    if "colmap" in todo:
        out["colmap"] = write_colmap(scene, masks, out_dir / "colmap" / "sparse" / "0", post_cfg.colmap_max_points)
    depth_scale, depth_files = None, None
    if "depth" in todo:
        depth_scale, depth_files = _write_depth(scene, out_dir / "depth", stems)
        out["depth"] = out_dir / "depth"
        render_view_maps(scene, viz_cfg, out_dir / "maps", conf_threshold=post_cfg.min_conf_thr)
        out["maps"] = out_dir / "maps"
    if "json" in todo:
        if depth_scale is None and scene.pts3d is not None:
            depth_scale = depth_png_scale(scene)
        out["json"] = _cameras_json(scene, out_dir / "cameras.json", depth_scale, depth_files, skipped)
    if "npz" in todo:
        out["npz"] = _write_npz(scene, masks, out_dir / "scene.npz")
    manifest = {
        "written": {k: p.relative_to(out_dir).as_posix() for k, p in out.items()},
        "skipped": skipped,
        "frames": "GLB: first camera, OpenGL axes (y up, looking down -z); everything else: the scene's world frame",
    }
    if "zip" in todo:
        manifest["written"]["zip"] = "reconstruction.zip"
    out["manifest"] = out_dir / "manifest.json"
    out["manifest"].write_text(json.dumps(manifest, indent=2))
    if "zip" in todo:
        out["zip"] = _zip(out_dir, [p for k, p in out.items()], out_dir / "reconstruction.zip")
    return out
