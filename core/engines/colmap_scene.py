"""The COLMAP engine's model -> the project's :class:`core.types.Scene` (sparse; the dense step adds maps).

Frames and sizes: ``images[k]`` is the prepared image downscaled to ``display_max_size``; its
intrinsics are COLMAP's pinhole part mapped to that image (:func:`display_from_colmap`);
``world_from_cam`` is the inverse of COLMAP's ``cam_from_world`` (OpenCV axes); the sparse
points keep their colour, track length and reprojection error (pixels of the images COLMAP ran
on). Images that did not register, or landed in a smaller disconnected model, are named in the
warnings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from config import ColmapConfig
from core.inputs.preprocessing import to_rgb8
from core.types import Scene, SparsePoints

__all__ = ["RunInfo", "display_from_colmap", "original_from_display", "scaled_size", "sparse_scene"]

#: Warn when dropping the distortion moves the image corners by more than this fraction of the diagonal.
_DISTORTION_WARN_FRACTION = 0.01


@dataclass(frozen=True)
class RunInfo:
    """What the stages before the scene measured (recorded in ``Scene.extra``)."""

    matcher: str
    seconds: dict[str, float]
    n_pairs: int
    n_verified: int
    n_keypoints: dict[str, int]


def scaled_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(W, H) scaled so the long side is at most ``max_side`` (0 = unchanged)."""
    w, h = size
    if max_side <= 0 or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def display_from_colmap(colmap_size: tuple[int, int], display_size: tuple[int, int]) -> np.ndarray:
    """(3, 3) affine: COLMAP pixel (centres at +0.5) -> display pixel (integer centres).

    Sizes are (W, H). Intrinsics follow the same map: ``K_display = A @ K_colmap``.
    """
    sx, sy = display_size[0] / colmap_size[0], display_size[1] / colmap_size[1]
    return np.array([[sx, 0, -0.5], [0, sy, -0.5], [0, 0, 1]], np.float64)


def original_from_display(original_size: tuple[int, int], display_size: tuple[int, int]) -> np.ndarray:
    """(3, 3) affine: display pixel -> original pixel, both with integer pixel centres.

    Sizes are (W, H); a pixel centre u maps to ``(u + 0.5) * W_orig / W_disp - 0.5``.
    """
    sx, sy = original_size[0] / display_size[0], original_size[1] / display_size[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)


def _display_image(path: Path, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a prepared image, long side at most ``max_side``."""
    with Image.open(path) as im:
        rgb = to_rgb8(im)
        size = scaled_size(rgb.size, max_side)
        if size != rgb.size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        return np.asarray(rgb, dtype=np.uint8).copy()


def _max_distortion_px(camera) -> float:
    """How far (COLMAP pixels) the pinhole part of ``camera`` misplaces the image corners."""
    if camera.model_name in ("SIMPLE_PINHOLE", "PINHOLE"):
        return 0.0
    w, h = camera.width, camera.height
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h], [w / 2, 0], [0, h / 2]], np.float64)
    normalized = np.asarray(camera.cam_from_img(corners), np.float64)  # (6, 2) undistorted
    pinhole = normalized * [camera.focal_length_x, camera.focal_length_y] + [
        camera.principal_point_x,
        camera.principal_point_y,
    ]
    err = np.linalg.norm(pinhole - corners, axis=1)
    return float(np.nanmax(err)) if np.isfinite(err).any() else float("inf")


def _view(p, im, image_dir: Path, ccfg: ColmapConfig) -> tuple[dict, str | None]:
    """One registered image -> its scene arrays (image, pose, focal, pp, map), its camera record and a
    distortion warning (sparse scenes only: the dense step undistorts the images it stores)."""
    cam = im.camera
    rgb = _display_image(image_dir / p.colmap_name, ccfg.display_max_size)
    disp_size = (rgb.shape[1], rgb.shape[0])
    k_disp = display_from_colmap(p.colmap_size, disp_size) @ np.asarray(cam.calibration_matrix(), np.float64)
    cam_from_world = np.eye(4)
    cam_from_world[:3, :] = np.asarray(im.cam_from_world().matrix(), np.float64)
    distortion = _max_distortion_px(cam)
    arrays = {
        "image": rgb,
        "pose": np.linalg.inv(cam_from_world),
        "focal": 0.5 * (k_disp[0, 0] + k_disp[1, 1]),
        "pp": k_disp[:2, 2],
        "o_from_p": original_from_display(p.original_size, disp_size),
        "camera": {
            "name": p.name,
            "colmap_name": p.colmap_name,
            "camera_id": int(im.camera_id),
            "model": cam.model_name,
            "width": int(cam.width),
            "height": int(cam.height),
            "params": [float(v) for v in cam.params],
            "max_distortion_px": round(distortion, 3),
        },
    }
    warning = None
    if not ccfg.dense and distortion > _DISTORTION_WARN_FRACTION * math.hypot(cam.width, cam.height):
        warning = (
            f"{p.name}: strong lens distortion ({distortion:.0f} px at the corners of a "
            f"{cam.width}x{cam.height} image) is not represented by the pinhole cameras of the scene"
        )
    return arrays, warning


def _sparse_points(rec) -> SparsePoints:
    pts = [rec.points3D[i] for i in sorted(rec.points3D)]
    return SparsePoints(
        xyz=np.array([pt.xyz for pt in pts], np.float32).reshape(-1, 3),
        rgb=np.array([pt.color for pt in pts], np.uint8).reshape(-1, 3),
        track_length=np.array([pt.track.length() for pt in pts], np.int32),
        reproj_error=np.array([pt.error for pt in pts], np.float32),
    )


def _model_warnings(rec, prepared: Sequence, dropped: list[str], n_models: int) -> list[str]:
    warnings = []
    if dropped:
        warnings.append(
            f"{len(dropped)} of {len(prepared)} images did not register and are left out: {', '.join(dropped)}"
        )
    if n_models > 1:
        warnings.append(
            f"COLMAP split the images into {n_models} disconnected models; only the "
            f"largest ({rec.num_reg_images()} images) is shown"
        )
    return warnings


def _extra(rec, prepared, kept, dropped, models, ccfg: ColmapConfig, info: RunInfo, dirs, cameras) -> dict:
    import pycolmap

    return {
        "engine": "colmap",
        "pycolmap_version": str(pycolmap.__version__),
        "matcher": info.matcher,
        "mapper": ccfg.mapper,
        "camera_model": ccfg.camera_model,
        "n_input_images": len(prepared),
        "n_registered": len(kept),
        "unregistered": dropped,
        "n_models": len(models),
        "n_points": int(rec.num_points3D()),
        "n_pairs": info.n_pairs,
        "n_verified_pairs": info.n_verified,
        "n_keypoints": {p.name: int(info.n_keypoints.get(p.colmap_name, 0)) for p in prepared},
        "mean_reproj_error_px": float(rec.compute_mean_reprojection_error()),
        "reproj_error_unit": "pixels of the images COLMAP ran on (colmap_work/images)",
        "mean_track_length": float(rec.compute_mean_track_length()),
        "seconds": {k: round(v, 3) for k, v in info.seconds.items()},
        "model_dir": str(dirs[0]),
        "image_dir": str(dirs[1]),
        "cameras": cameras,
    }


def sparse_scene(
    rec, prepared: Sequence, image_dir: Path, model_dir: Path, models: dict, ccfg: ColmapConfig, info: RunInfo
) -> Scene:
    """The largest model ``rec`` (pycolmap.Reconstruction) of the prepared images -> a sparse Scene."""
    by_name = {im.name: im for im in rec.images.values() if im.has_pose}
    kept = [p for p in prepared if p.colmap_name in by_name]
    dropped = [p.name for p in prepared if p.colmap_name not in by_name]
    warnings = _model_warnings(rec, prepared, dropped, len(models))
    views = []
    for p in kept:
        arrays, warning = _view(p, by_name[p.colmap_name], image_dir, ccfg)
        views.append(arrays)
        warnings += [warning] if warning else []
    cameras = [v["camera"] for v in views]
    return Scene(
        images=tuple(v["image"] for v in views),
        world_from_cam=np.stack([v["pose"] for v in views]).astype(np.float32),
        focals=np.array([v["focal"] for v in views], np.float32),
        principal_points=np.array([v["pp"] for v in views], np.float32).reshape(-1, 2),
        sparse=_sparse_points(rec),
        names=tuple(p.name for p in kept),
        original_sizes=tuple(p.original_size for p in kept),
        original_from_processed=np.stack([v["o_from_p"] for v in views]),
        engine="colmap",
        warnings=tuple(warnings),
        extra=_extra(rec, prepared, kept, dropped, models, ccfg, info, (model_dir, image_dir), cameras),
    )
