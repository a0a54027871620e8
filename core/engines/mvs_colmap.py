"""The COLMAP engine's dense step: a sparse COLMAP scene -> the same scene with depth maps.

:func:`densify` reads the images COLMAP ran on (``colmap_work/images``), undistorts each to an
exact pinhole camera at the working size (long side ``MvsConfig.max_size``, never enlarged), runs
:func:`core.engines.mvs.dense_depth` on them with COLMAP's poses and triangulated points, and
returns the scene with ``depths``/``pts3d``/``conf`` filled, like the DUSt3R engine's, plus the
sparse points it already had.

Undistortion: working pixel (u, v) (integer pixel centres) has the ray ((u - cx) / f, (v - cy) / f,
1) of the pinhole camera ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]``, where cx, cy and f = (fx + fy)
/ 2 are COLMAP's pinhole parameters rescaled to the working size. COLMAP's camera model
(``Camera.img_from_cam``, distortion included) gives the pixel of that ray in the COLMAP image,
sampled bilinearly (OpenCV ``remap``) from an area-downscaled copy. The scene's images, focals
and principal points then describe these undistorted images exactly; ``original_from_processed``
stays the plain rescale to the upload (it ignores the lens distortion, as the sparse scene does).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from core.engines.mvs import STAGE_DENSE, DenseDepth, MvsConfig, MvsView, dense_depth
from core.inputs.preprocessing import to_rgb8
from core.types import ProgressFn, Scene

__all__ = ["STAGE_DENSE", "resolve_device", "rescale_affine", "undistort", "densify"]

logger = logging.getLogger(__name__)

#: Views whose kept fraction is below this are named in a warning.
_LOW_COVERAGE = 0.1


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def rescale_affine(dst_size: tuple[int, int], src_size: tuple[int, int]) -> np.ndarray:
    """(3, 3) affine: pixel of an image of size ``src_size`` -> pixel of the same image resized
    to ``dst_size`` (sizes (W, H), integer pixel centres on both sides)."""
    sx, sy = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)


def _working_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(W, H) with the long side at most ``max_side`` (never enlarged)."""
    w, h = size
    if max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def undistort(image: np.ndarray, camera, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """One COLMAP image -> (undistorted RGB at the working size, its pinhole K).

    image: (H_c, W_c, 3) uint8, the image COLMAP ran on (its size is the camera's); camera: the
    pycolmap camera (COLMAP pixel centres at +0.5). Returns (H, W, 3) uint8 and (3, 3) float64 K
    with square pixels and integer pixel centres (see the module docstring).
    """
    hc, wc = image.shape[:2]
    if (wc, hc) != (camera.width, camera.height):
        raise ValueError(f"image is {wc}x{hc} but its COLMAP camera is {camera.width}x{camera.height}")
    w, h = _working_size((wc, hc), max_side)
    sx, sy = w / wc, h / hc
    colmap_k = np.asarray(camera.calibration_matrix(), np.float64)
    k_work = np.array([[sx, 0, -0.5], [0, sy, -0.5], [0, 0, 1]]) @ colmap_k  # COLMAP -> working pixels
    f = 0.5 * (k_work[0, 0] + k_work[1, 1])
    K = np.array([[f, 0, k_work[0, 2]], [0, f, k_work[1, 2]], [0, 0, 1]])
    small = image if (w, h) == (wc, hc) else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    if camera.model_name == "SIMPLE_PINHOLE":  # K is exactly the camera's: nothing to resample
        return np.ascontiguousarray(small), K
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u.ravel() - K[0, 2]) / f, (v.ravel() - K[1, 2]) / f, np.ones(u.size)], 1)  # (HW, 3)
    colmap_px = np.asarray(camera.img_from_cam(rays), np.float64)  # (HW, 2), centres at +0.5
    map_x = (colmap_px[:, 0] * sx - 0.5).reshape(h, w).astype(np.float32)
    map_y = (colmap_px[:, 1] * sy - 0.5).reshape(h, w).astype(np.float32)
    out = cv2.remap(small, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return out, K


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(to_rgb8(im), dtype=np.uint8).copy()


def _visibility(rec, image_names: list[str]) -> list[np.ndarray]:
    """Per image (by COLMAP name): indices into ``sorted(rec.points3D)`` of the points it observes."""
    point_ids = np.array(sorted(rec.points3D), np.int64)
    by_name = {im.name: im for im in rec.images.values()}
    out = []
    for name in image_names:
        ids = np.array([p.point3D_id for p in by_name[name].points2D if p.has_point3D()], np.int64)
        out.append(np.unique(np.searchsorted(point_ids, ids)) if ids.size else np.zeros(0, np.int64))
    return out


def _stats(dense: DenseDepth, names: tuple[str, ...], cfg: MvsConfig, device: torch.device) -> dict:
    """JSON-serialisable diagnostics of the dense step (``Scene.extra["dense"]``)."""
    kept = [float(k.mean()) for k in dense.kept]
    return {
        "working_size": [int(dense.depths[0].shape[1]), int(dense.depths[0].shape[0])],
        "device": str(device),
        "config": dataclasses.asdict(cfg),
        "kept_fraction": {n: round(f, 4) for n, f in zip(names, kept, strict=True)},
        "mean_kept_fraction": round(float(np.mean(kept)), 4),
        "neighbors": {n: [names[j] for j in nb] for n, nb in zip(names, dense.neighbors, strict=True)},
        "depth_range": {n: [float(a), float(b)] for n, (a, b) in zip(names, dense.depth_ranges, strict=True)},
        "planes": {n: int(p) for n, p in zip(names, dense.n_planes, strict=True)},
        "seconds_per_view": {n: round(s, 3) for n, s in zip(names, dense.seconds, strict=True)},
    }


def densify(
    scene: Scene,
    rec,
    image_dir: Path,
    cfg: MvsConfig,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Scene:
    """The sparse COLMAP ``scene`` -> the same scene with dense maps at the working size.

    rec: the pycolmap Reconstruction the scene was built from (``scene.extra["cameras"]`` names
    each view's COLMAP image and ``scene.sparse`` holds ``sorted(rec.points3D)`` in order);
    image_dir: the folder of the images COLMAP ran on. The returned scene's images are the
    undistorted working-size images, with their intrinsics; ``depths``, ``pts3d`` and ``conf``
    as :class:`core.engines.mvs.DenseDepth` gives them; ``extra["dense"]`` the diagnostics and
    ``extra["seconds"]["dense"]`` the time. progress: ``progress("dense", done, N)``; cancel:
    polled between views (:class:`core.errors.Cancelled`).
    """
    if scene.sparse is None:
        raise ValueError("densify needs the sparse COLMAP scene (scene.sparse is None)")
    t0 = time.perf_counter()
    device = torch.device(device)
    colmap_names = [c["colmap_name"] for c in scene.extra["cameras"]]
    by_name = {im.name: im for im in rec.images.values()}
    views, images, Ks = [], [], []
    for k, name in enumerate(colmap_names):
        im = by_name[name]
        rgb, K = undistort(_read_rgb(Path(image_dir) / name), im.camera, cfg.max_size)
        cam_from_world = np.linalg.inv(scene.world_from_cam[k].astype(np.float64))
        views.append(MvsView(rgb, K, cam_from_world))
        images.append(rgb)
        Ks.append(K)
    dense = dense_depth(
        views,
        scene.sparse.xyz.astype(np.float64),
        _visibility(rec, colmap_names),
        cfg,
        device=device,
        progress=progress,
        cancel=cancel,
    )
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    stats = _stats(dense, scene.names, cfg, device)
    warnings = [
        f"{n}: dense stereo kept only {f:.0%} of the pixels (too little overlap or texture)"
        for n, f in zip(scene.names, (float(k.mean()) for k in dense.kept), strict=True)
        if f < _LOW_COVERAGE
    ]
    seconds = {**scene.extra.get("seconds", {}), "dense": round(time.perf_counter() - t0, 3)}
    logger.info(
        "colmap: dense stereo on %d views at %dx%d, %.0f%% of the pixels kept (%.1f s)",
        len(views),
        *sizes[0],
        100 * stats["mean_kept_fraction"],
        seconds["dense"],
    )
    return dataclasses.replace(
        scene,
        images=tuple(images),
        focals=np.array([K[0, 0] for K in Ks], np.float32),
        principal_points=np.array([K[:2, 2] for K in Ks], np.float32).reshape(-1, 2),
        original_from_processed=np.stack(
            [rescale_affine(orig, size) for orig, size in zip(scene.original_sizes, sizes, strict=True)]
        ),
        depths=dense.depths,
        pts3d=dense.pts3d,
        conf=dense.conf,
        warnings=scene.warnings + tuple(warnings),
        extra={**scene.extra, "dense": stats, "seconds": seconds},
    )
