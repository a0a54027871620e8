"""A scene as a COLMAP model (cameras, images with their 2-D points, 3-D points with tracks),
written by pycolmap's own writer in COLMAP's text AND binary formats.

Pixel conventions: COLMAP puts pixel (0, 0)'s centre at (0.5, 0.5) (COLMAP = OpenCV + 0.5); the
scene uses integer pixel centres (``core.types``). Every camera refers to the ORIGINAL image
(``scene.original_sizes``, reached through ``scene.original_from_processed``). Poses are COLMAP's
``cam_from_world`` (OpenCV axes, the scene's world frame). Image names are ``scene.names``.

Where the points and tracks come from:

- dense scenes (DUSt3R): up to ``max_points`` kept points (even subsample), each observed in its
  source view and in every view where it projects onto a kept pixel with a consistent depth
  (:data:`COLMAP_DEPTH_TOL`); the observations are the points' projections, so the stored errors
  (pycolmap's reprojection errors) are ~0. One PINHOLE camera per image.
- sparse scenes of the COLMAP engine whose model is still on disk (``scene.extra["model_dir"]``,
  matching ``scene.sparse`` point for point): the engine's own model, i.e. its camera models
  (SIMPLE_RADIAL by default, shared as the engine shared them) rescaled to the original image
  size, its poses, and the tracks of the kept points (observations of dropped points removed).
- other sparse scenes: the kept points with their colours and errors, empty tracks, one PINHOLE
  camera per image.

pycolmap 4 also writes ``rigs`` and ``frames`` files (one trivial rig and frame per camera and
image), which COLMAP 3.12+ reads and older readers ignore.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from core.outputs.postprocessing import (
    PointSet,
    dense_maps,
    even_sample,
    gather_points,
    resolve_masks,
    transform_points,
)
from core.types import Scene

try:  # optional at import time; the "colmap" export says how to install it
    import pycolmap

    _PYCOLMAP_IMPORT_ERROR: str | None = None
except ImportError as _e:  # pragma: no cover - depends on the environment
    pycolmap = None  # type: ignore[assignment]
    _PYCOLMAP_IMPORT_ERROR = str(_e)

__all__ = [
    "COLMAP_DEPTH_TOL",
    "colmap_unavailable",
    "original_intrinsics",
    "colmap_intrinsics",
    "cam_from_world_qt",
    "colmap_reconstruction",
    "write_colmap",
]

logger = logging.getLogger(__name__)

#: A dense point is observed in another view when its z-depth there is within this fraction of
#: that view's depth at the pixel it projects to (visible, not occluded).
COLMAP_DEPTH_TOL = 0.02


def colmap_unavailable() -> str | None:
    """None when pycolmap imports, else why not and how to install it."""
    if pycolmap is None:
        return f"pycolmap is not installed ({_PYCOLMAP_IMPORT_ERROR}); install it with: pip install pycolmap"
    return None


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
# the model, before pycolmap


@dataclass(frozen=True)
class _Model:
    """Everything a COLMAP model holds; N images, C cameras, M points, K_j observations in image j."""

    cameras: tuple
    """C pycolmap.Camera with camera_id 1..C, sizes and params of the ORIGINAL images."""
    camera_of_view: tuple[int, ...]
    """N camera ids."""
    cam_from_world: tuple[np.ndarray, ...]
    """N (3, 4) float64 poses (OpenCV axes, the scene's world)."""
    xyz: np.ndarray
    """(M, 3) float64 world points."""
    rgb: np.ndarray
    """(M, 3) uint8 colours."""
    obs_pts: tuple[np.ndarray, ...]
    """N (K_j,) int64 indices into the points, increasing: the points image j observes."""
    obs_xy: tuple[np.ndarray, ...]
    """N (K_j, 2) float64 observations in COLMAP pixels of the original image."""
    errors: np.ndarray | None
    """(M,) float64 errors to store; None = pycolmap's reprojection errors of the tracks."""


def _pinhole_cameras(scene: Scene) -> tuple:
    params = colmap_intrinsics(scene)
    return tuple(
        pycolmap.Camera(camera_id=j + 1, model="PINHOLE", width=int(w), height=int(h), params=params[j])
        for j, (w, h) in enumerate(scene.original_sizes)
    )


def _pose(world_from_cam: np.ndarray) -> np.ndarray:
    """(4, 4) camera-to-world -> (3, 4) float64 cam_from_world, via :func:`cam_from_world_qt`."""
    q, t = cam_from_world_qt(world_from_cam)
    return np.c_[Rotation.from_quat(np.r_[q[1:], q[0]]).as_matrix(), t]


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


def _scene_model(scene: Scene, masks, max_points: int) -> _Model:
    """Dense scenes: projected observations; sparse scenes without the engine's model: no tracks."""
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
    if scene.pts3d is not None:
        seen, errors = _dense_tracks(scene, masks, pts), None
    else:
        seen = [np.zeros(m, bool) for _ in range(n)]
        errors = scene.sparse.reproj_error[np.flatnonzero(masks)][sel].astype(np.float64)
    obs_pts, obs_xy = [], []
    for j in range(n):
        idx = np.flatnonzero(seen[j])
        uv, _ = _project(scene, j, pts.xyz[idx])
        obs_pts.append(idx)
        obs_xy.append(_affine_2d(scene.original_from_processed[j], uv) + 0.5)  # COLMAP: pixel centres at +0.5
    return _Model(
        cameras=_pinhole_cameras(scene),
        camera_of_view=tuple(range(1, n + 1)),
        cam_from_world=tuple(_pose(scene.world_from_cam[j]) for j in range(n)),
        xyz=pts.xyz.astype(np.float64),
        rgb=pts.rgb,
        obs_pts=tuple(obs_pts),
        obs_xy=tuple(obs_xy),
        errors=errors,
    )


# ----------------------------------------------------------------------------------------------
# the COLMAP engine's own model


def _engine_source(scene: Scene):
    """(pycolmap.Reconstruction, N source images) of the COLMAP engine's model when it is still on
    disk and matches the scene point for point and image for image; else None (logged)."""
    extra = scene.extra or {}
    cams = extra.get("cameras")
    model_dir = extra.get("model_dir")
    if scene.engine != "colmap" or scene.sparse is None or not model_dir or not isinstance(cams, list):
        return None
    if len(cams) != scene.n_views or not Path(model_dir).is_dir():
        logger.info("COLMAP export: the engine's model %s is gone; writing pinhole cameras without tracks", model_dir)
        return None
    try:
        src = pycolmap.Reconstruction(str(model_dir))
    except (OSError, RuntimeError, ValueError) as e:
        logger.warning("COLMAP export: cannot read the engine's model %s (%s); writing it without tracks", model_dir, e)
        return None
    ids = sorted(src.points3D)
    xyz = np.array([src.points3D[i].xyz for i in ids], np.float64).reshape(-1, 3)
    images = [src.find_image_with_name(str(c.get("colmap_name", ""))) for c in cams]
    same_points = xyz.shape == scene.sparse.xyz.shape and np.allclose(
        xyz.astype(np.float32), scene.sparse.xyz, rtol=1e-6, atol=1e-6
    )
    same_images = all(im is not None and im.has_pose for im in images) and [c.get("name") for c in cams] == list(
        scene.names
    )
    if not (same_points and same_images):
        logger.warning(
            "COLMAP export: the engine's model %s does not match the scene; writing it without tracks", model_dir
        )
        return None
    return src, images


def _engine_cameras(src, images: list, scene: Scene) -> tuple[tuple, tuple[int, ...], list[np.ndarray]]:
    """The engine's cameras rescaled to the original image sizes (shared where the engine shared
    them and the originals agree): (cameras, camera id per view, (sx, sy) per view)."""
    cameras: list = []
    new_id: dict[tuple[int, tuple[int, int]], int] = {}
    camera_of_view, scales = [], []
    for k, im in enumerate(images):
        cam = src.cameras[im.camera_id]
        w, h = (int(v) for v in scene.original_sizes[k])
        key = (int(im.camera_id), (w, h))
        if key not in new_id:
            copy = pycolmap.Camera(cam.todict())
            copy.camera_id = len(cameras) + 1
            if (copy.width, copy.height) != (w, h):
                copy.rescale(w, h)
            cameras.append(copy)
            new_id[key] = copy.camera_id
        camera_of_view.append(new_id[key])
        scales.append(np.array([w / cam.width, h / cam.height]))
    return tuple(cameras), tuple(camera_of_view), scales


def _engine_model(scene: Scene, keep: np.ndarray, max_points: int) -> _Model | None:
    """The COLMAP engine's own model restricted to the kept points (None: not available)."""
    found = _engine_source(scene)
    if found is None:
        return None
    src, images = found
    cameras, camera_of_view, scales = _engine_cameras(src, images, scene)
    kept = np.flatnonzero(keep)
    kept = kept[even_sample(len(kept), max_points)]
    point_ids = np.array(sorted(src.points3D), np.int64)[kept]
    view_of = {int(im.image_id): k for k, im in enumerate(images)}
    obs_pts: list[list[int]] = [[] for _ in images]
    obs_xy: list[list[np.ndarray]] = [[] for _ in images]
    xyz, rgb = np.zeros((len(kept), 3)), np.zeros((len(kept), 3), np.uint8)
    for s, pid in enumerate(point_ids.tolist()):
        pt = src.points3D[pid]
        xyz[s], rgb[s] = pt.xyz, pt.color
        for el in pt.track.elements:
            k = view_of.get(int(el.image_id))
            if k is not None:
                obs_pts[k].append(s)
                obs_xy[k].append(images[k].point2D(el.point2D_idx).xy * scales[k])
    return _Model(
        cameras=cameras,
        camera_of_view=camera_of_view,
        cam_from_world=tuple(np.asarray(im.cam_from_world().matrix(), np.float64) for im in images),
        xyz=xyz,
        rgb=rgb,
        obs_pts=tuple(np.array(o, np.int64) for o in obs_pts),
        obs_xy=tuple(np.array(o, np.float64).reshape(-1, 2) for o in obs_xy),
        errors=None,
    )


# ----------------------------------------------------------------------------------------------
# pycolmap


def _to_reconstruction(model: _Model, names: tuple[str, ...]):
    """Build the pycolmap.Reconstruction: cameras (trivial rigs), images (trivial frames, posed)
    whose 2-D points are the observations, 3-D points (ids 1..M in order) with their tracks."""
    rec = pycolmap.Reconstruction()
    for cam in model.cameras:
        rec.add_camera_with_trivial_rig(cam)
    for j, name in enumerate(names):
        image = pycolmap.Image(name=name, keypoints=model.obs_xy[j], camera_id=model.camera_of_view[j], image_id=j + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(model.cam_from_world[j]))
    point = np.concatenate([np.zeros(0, np.int64), *model.obs_pts])
    image_id = np.concatenate([np.zeros(0, np.int64), *(np.full(len(o), j + 1) for j, o in enumerate(model.obs_pts))])
    point2d = np.concatenate([np.zeros(0, np.int64), *(np.arange(len(o)) for o in model.obs_pts)])
    order = np.lexsort((image_id, point))  # by point, then by image
    starts = np.searchsorted(point[order], np.arange(len(model.xyz) + 1)).tolist()
    image_id, point2d = image_id[order].tolist(), point2d[order].tolist()
    xyz, rgb = model.xyz.tolist(), model.rgb.tolist()
    point_ids = []
    for s in range(len(xyz)):
        track = pycolmap.Track()
        for e in range(starts[s], starts[s + 1]):
            track.add_element(image_id[e], point2d[e])
        point_ids.append(rec.add_point3D(xyz[s], track, rgb[s]))
    if model.errors is None:
        rec.update_point_3d_errors()
    else:
        for pid, err in zip(point_ids, model.errors.tolist(), strict=True):
            rec.point3D(pid).error = err
    return rec


def colmap_reconstruction(scene: Scene, masks, max_points: int):
    """The scene as a ``pycolmap.Reconstruction`` (see the module docstring for its content).

    masks: keep masks of the scene (``resolve_masks``; dense N (H, W), sparse (M,) bool).
    max_points: at most this many 3-D points (even subsample of the kept ones).
    Raises ValueError for duplicate image names (COLMAP keys images by name) or max_points < 1,
    RuntimeError when pycolmap is missing.
    """
    if (why := colmap_unavailable()) is not None:
        raise RuntimeError(f"the COLMAP export needs pycolmap: {why}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    names = list(scene.names)
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"COLMAP needs unique image names, got duplicates: {dups}")
    if any(any(c.isspace() for c in n) for n in names):
        logger.warning("image names with spaces cannot be read back from COLMAP's text format; use the .bin files")
    masks = resolve_masks(scene, masks)
    model = _engine_model(scene, masks, max_points) if scene.pts3d is None else None
    if model is None:
        model = _scene_model(scene, masks, max_points)
    rec = _to_reconstruction(model, scene.names)
    logger.debug(
        "COLMAP model: %d images, %d points, mean track %.2f",
        rec.num_images(),
        rec.num_points3D(),
        rec.compute_mean_track_length(),
    )
    return rec


def write_colmap(scene: Scene, masks, out_dir: Path, max_points: int) -> Path:
    """Write :func:`colmap_reconstruction` into ``out_dir`` (usually colmap/sparse/0) in COLMAP's
    text and binary formats (cameras, images, points3D, plus pycolmap 4's rigs and frames), with
    pycolmap's writers. Returns ``out_dir``. Raises as :func:`colmap_reconstruction`."""
    rec = colmap_reconstruction(scene, masks, max_points)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec.write_text(str(out_dir))
    rec.write_binary(str(out_dir))
    return out_dir
