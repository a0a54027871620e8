"""Small pure geometry functions used by global alignment.

Conventions (see ``core/types.py``): OpenCV camera axes (x right, y down, z forward), poses are
``world_from_cam`` 4x4, pixel (u, v) = (column, row) with integer pixel centres, quaternions in
roma's XYZW order. Everything is torch except the PnP wrapper, which talks to OpenCV in numpy.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import roma
import torch

__all__ = [
    "signed_log1p",
    "signed_expm1",
    "pixel_grid",
    "estimate_focal_weiszfeld",
    "pose_params_to_matrix",
    "matrix_to_pose_params",
    "register_points",
    "similarity_between_poses",
    "depth_to_cam_points",
    "depth_to_world_points",
    "transform_points",
    "solve_pnp_ransac",
]

logger = logging.getLogger(__name__)


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|), elementwise (the reference's translation encoding)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def signed_expm1(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`signed_log1p`: sign(x) * (exp|x| - 1)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def pixel_grid(h: int, w: int, *, device: str | torch.device = "cpu") -> torch.Tensor:
    """(H, W, 2) float32 pixel coordinates: ``grid[v, u] = (u, v)`` (column, row), no 0.5 offset."""
    v, u = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack((u, v), dim=-1)


def estimate_focal_weiszfeld(pts3d: torch.Tensor, pp: torch.Tensor | None = None, *, n_iter: int = 10) -> torch.Tensor:
    """Focal length of a camera from a point map in that camera's frame (reference "weiszfeld").

    pts3d: (B, H, W, 3) points in the camera frame. pp: (B, 2) or (2,) principal point in pixels,
    default (W/2, H/2). Minimises sum_pix |pixel - pp - f * (x/z, y/z)| by iteratively re-weighted
    least squares started from the least-squares solution. Returns (B,) float32, clipped at >= 0
    (0 or NaN means the points do not look like a camera seen from the front).

    >>> pts = torch.cat((pixel_grid(4, 6) - torch.tensor([3.0, 2.0]), torch.full((4, 6, 1), 50.0)), -1) / 50
    >>> round(float(estimate_focal_weiszfeld(pts[None])[0]), 3)
    50.0
    """
    if pts3d.ndim != 4 or pts3d.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) points, got {tuple(pts3d.shape)}")
    b, h, w, _ = pts3d.shape
    pts3d = pts3d.float()
    if pp is None:
        pp = torch.tensor((w / 2, h / 2), device=pts3d.device, dtype=torch.float32)
    pixels = pixel_grid(h, w, device=pts3d.device).view(1, -1, 2) - pp.float().view(-1, 1, 2)  # (B|1, HW, 2)
    pts = pts3d.flatten(1, 2)  # (B, HW, 3)
    ray = (pts[..., :2] / pts[..., 2:3]).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # (B, HW, 2)
    dot_xy_px = (ray * pixels).sum(dim=-1)
    dot_xy_xy = ray.square().sum(dim=-1)
    focal = dot_xy_px.mean(dim=1) / dot_xy_xy.mean(dim=1)
    for _ in range(n_iter):
        dist = (pixels - focal.view(-1, 1, 1) * ray).norm(dim=-1)
        weight = dist.clip(min=1e-8).reciprocal()
        focal = (weight * dot_xy_px).mean(dim=1) / (weight * dot_xy_xy).mean(dim=1)
    return focal.clip(min=0.0)


def pose_params_to_matrix(params: torch.Tensor) -> torch.Tensor:
    """Decode pose parameters into rigid 4x4 matrices (differentiable).

    params: (..., 7) = unnormalised quaternion XYZW (4) + signed-log1p translation (3).
    Returns (..., 4, 4) float32 [R | t] with R from the normalised quaternion.
    """
    if params.shape[-1] < 7:
        raise ValueError(f"expected (..., 7) pose parameters, got {tuple(params.shape)}")
    quat = params[..., :4]
    quat = quat / quat.norm(dim=-1, keepdim=True)
    rot = roma.unitquat_to_rotmat(quat)  # (..., 3, 3)
    trans = signed_expm1(params[..., 4:7])
    top = torch.cat((rot, trans[..., None]), dim=-1)  # (..., 3, 4)
    bottom = torch.zeros(top.shape[:-2] + (1, 4), dtype=top.dtype, device=top.device)
    bottom[..., 0, 3] = 1
    return torch.cat((top, bottom), dim=-2)


def matrix_to_pose_params(rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """Encode a rotation (..., 3, 3) and translation (..., 3) as (..., 7) pose parameters."""
    return torch.cat((roma.rotmat_to_unitquat(rot), signed_log1p(trans)), dim=-1)


def register_points(
    src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted similarity (Umeyama) that maps ``src`` onto ``dst``: dst ~ s * R @ src + t.

    src, dst: (..., 3) point sets of the same shape (flattened over all leading dims);
    weights: same leading shape, or None. Returns (s (), R (3, 3), t (3,)), float32.
    """
    if src.shape != dst.shape or src.shape[-1] != 3:
        raise ValueError(f"expected matching (..., 3) point sets, got {tuple(src.shape)} and {tuple(dst.shape)}")
    w = None if weights is None else weights.reshape(-1)
    rot, trans, scale = roma.rigid_points_registration(
        src.reshape(-1, 3), dst.reshape(-1, 3), weights=w, compute_scaling=True
    )
    return scale, rot, trans


def similarity_between_poses(
    src: torch.Tensor, dst: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Similarity (s, R, t) mapping camera set ``src`` onto ``dst`` (both (K, 4, 4) world_from_cam).

    Fits the camera centres and, to pin the rotation, one point per camera on its optical axis at
    1% of the median inter-camera distance. Returns None when the centres coincide (scale
    undefined), in which case callers should fall back to a rigid alignment.
    """
    if src.shape != dst.shape or src.shape[-2:] != (4, 4) or src.ndim != 3:
        raise ValueError(f"expected two (K, 4, 4) pose sets, got {tuple(src.shape)} and {tuple(dst.shape)}")

    def _points(poses: torch.Tensor) -> torch.Tensor | None:
        centres = poses[:, :3, 3].double()
        dists = torch.cdist(centres, centres)
        iu = torch.triu_indices(len(centres), len(centres), 1, device=centres.device)
        if iu.shape[1] == 0:
            return None
        eps = float(dists[iu[0], iu[1]].median()) / 100
        if not eps > 0:
            return None
        return torch.cat((centres, centres + eps * poses[:, :3, 2].double()))

    a, b = _points(src), _points(dst)
    if a is None or b is None:
        return None
    rot, trans, scale = roma.rigid_points_registration(a, b, compute_scaling=True)
    return scale.float(), rot.float(), trans.float()


def transform_points(world_from_frame: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply a 4x4 (or 3x4) transform (4, 4) to points (..., 3); returns (..., 3)."""
    return pts @ world_from_frame[:3, :3].T + world_from_frame[:3, 3]


def depth_to_cam_points(depth: torch.Tensor, focal: float | torch.Tensor, pp: torch.Tensor) -> torch.Tensor:
    """Back-project a depth map: depth (H, W), focal (scalar), pp (2,) -> (H, W, 3) camera frame.

    X = depth * ((u - ppx) / f, (v - ppy) / f, 1) with integer pixel coordinates.
    """
    if depth.ndim != 2:
        raise ValueError(f"expected (H, W) depth, got {tuple(depth.shape)}")
    grid = pixel_grid(*depth.shape, device=depth.device) - pp.to(depth.device).float()
    d = depth[..., None]
    return torch.cat((d * grid / focal, d), dim=-1)


def depth_to_world_points(
    depth: torch.Tensor, focal: float | torch.Tensor, pp: torch.Tensor, world_from_cam: torch.Tensor
) -> torch.Tensor:
    """depth (H, W), focal, pp (2,), world_from_cam (4, 4) -> (H, W, 3) world points."""
    return transform_points(world_from_cam, depth_to_cam_points(depth, focal, pp))


def solve_pnp_ransac(
    pts3d: np.ndarray,
    pixels: np.ndarray,
    focal: float,
    pp: tuple[float, float],
    *,
    iterations: int,
    reproj_error: float = 5.0,
) -> tuple[np.ndarray, int] | None:
    """Camera pose from 3D-2D matches with OpenCV's RANSAC PnP (SQPNP), no distortion.

    pts3d: (M, 3) float32 points in the target frame; pixels: (M, 2) float32 (u, v).
    Returns (world_from_cam (4, 4) float64 where "world" is the points' frame, inlier count), or
    None when there are fewer than 4 points or OpenCV finds no solution.
    """
    if len(pts3d) < 4:
        return None
    k = np.float32([(focal, 0, pp[0]), (0, focal, pp[1]), (0, 0, 1)])
    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            np.ascontiguousarray(pts3d, dtype=np.float32),
            np.ascontiguousarray(pixels, dtype=np.float32),
            k,
            None,
            iterationsCount=int(iterations),
            reprojectionError=float(reproj_error),
            flags=cv2.SOLVEPNP_SQPNP,
        )
    except cv2.error as e:
        logger.debug("solvePnPRansac failed: %s", e)
        return None
    if not ok or inliers is None or not np.all(np.isfinite(tvec)):
        return None
    cam_from_world = np.eye(4)
    cam_from_world[:3, :3] = cv2.Rodrigues(rvec)[0]
    cam_from_world[:3, 3] = tvec.ravel()
    world_from_cam = np.linalg.inv(cam_from_world)
    if not np.all(np.isfinite(world_from_cam)):
        return None
    return world_from_cam, len(inliers)
