"""Tests for core/geometry.py: round trips and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import torch

from core.geometry import (
    depth_to_cam_points,
    depth_to_world_points,
    estimate_focal_weiszfeld,
    matrix_to_pose_params,
    pixel_grid,
    pose_params_to_matrix,
    register_points,
    signed_expm1,
    signed_log1p,
    similarity_between_poses,
    solve_pnp_ransac,
    transform_points,
)


def _pinhole_points(h: int, w: int, focal: float, depth: torch.Tensor | float = 2.0, pp=None) -> torch.Tensor:
    pp = torch.tensor((w / 2, h / 2)) if pp is None else torch.as_tensor(pp, dtype=torch.float32)
    d = torch.full((h, w), float(depth)) if not isinstance(depth, torch.Tensor) else depth
    return depth_to_cam_points(d, focal, pp)


def test_signed_log1p_round_trip_and_values():
    x = torch.tensor([-5.0, -0.5, 0.0, 0.25, 3.0])
    torch.testing.assert_close(signed_expm1(signed_log1p(x)), x, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(signed_log1p(torch.tensor([-math.e + 1])), torch.tensor([-1.0]))


def test_pixel_grid_is_column_row():
    g = pixel_grid(2, 3)
    assert g.shape == (2, 3, 2)
    torch.testing.assert_close(g[1, 2], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(g[0, 1], torch.tensor([1.0, 0.0]))


def test_depth_to_cam_points_hand_computed():
    depth = torch.tensor([[2.0, 4.0]])
    pts = depth_to_cam_points(depth, 10.0, torch.tensor([1.0, 0.5]))
    # pixel (u=0, v=0): ((0-1)/10*2, (0-0.5)/10*2, 2); pixel (1, 0): (0, -0.5/10*4, 4)
    torch.testing.assert_close(pts, torch.tensor([[[-0.2, -0.1, 2.0], [0.0, -0.2, 4.0]]]))
    pose = torch.eye(4)
    pose[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(depth_to_world_points(depth, 10.0, torch.tensor([1.0, 0.5]), pose), pts + pose[:3, 3])


@pytest.mark.parametrize("h,w,focal", [(24, 32, 40.0), (64, 48, 77.5), (384, 512, 600.0)])
def test_weiszfeld_focal_exact_on_pinhole(h, w, focal):
    depth = 1.5 + torch.rand(h, w, generator=torch.Generator().manual_seed(0))
    pts = _pinhole_points(h, w, focal, depth)
    est = estimate_focal_weiszfeld(pts[None])
    torch.testing.assert_close(est, torch.tensor([focal]), rtol=1e-4, atol=0)


def test_weiszfeld_batch_and_custom_pp():
    a = _pinhole_points(16, 20, 30.0, pp=(8.0, 9.0))
    b = _pinhole_points(16, 20, 45.0, pp=(11.0, 7.0))
    est = estimate_focal_weiszfeld(torch.stack((a, b)), torch.tensor([[8.0, 9.0], [11.0, 7.0]]))
    torch.testing.assert_close(est, torch.tensor([30.0, 45.0]), rtol=1e-4, atol=0)


def test_weiszfeld_degenerate_mirrored_points_give_zero():
    pts = _pinhole_points(12, 16, 20.0)
    pts[..., 0] *= -1
    pts[..., 1] *= -1  # every ray points the wrong way: least-squares focal is negative -> clipped
    assert float(estimate_focal_weiszfeld(pts[None])[0]) == 0.0


def test_pose_params_round_trip():
    gen = torch.Generator().manual_seed(1)
    rot = roma.random_rotmat(5, generator=gen)
    trans = torch.randn(5, 3, generator=gen)
    params = matrix_to_pose_params(rot, trans)
    mat = pose_params_to_matrix(params)
    torch.testing.assert_close(mat[:, :3, :3], rot, atol=1e-5, rtol=0)
    torch.testing.assert_close(mat[:, :3, 3], trans, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mat[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(5, 4))
    # the quaternion is normalised on decode: scaling it changes nothing
    params2 = params.clone()
    params2[:, :4] *= 3.0
    torch.testing.assert_close(pose_params_to_matrix(params2), mat, atol=1e-6, rtol=0)


def test_register_points_recovers_similarity():
    gen = torch.Generator().manual_seed(2)
    src = torch.randn(200, 3, generator=gen)
    rot = roma.rotvec_to_rotmat(torch.tensor([0.3, -0.2, 0.5]))
    dst = 2.5 * src @ rot.T + torch.tensor([1.0, -2.0, 0.5])
    s, r, t = register_points(src, dst, torch.rand(200, generator=gen) + 0.1)
    torch.testing.assert_close(float(s), 2.5, rtol=1e-5, atol=0)
    torch.testing.assert_close(r, rot, atol=1e-5, rtol=0)
    torch.testing.assert_close(t, torch.tensor([1.0, -2.0, 0.5]), atol=1e-5, rtol=0)


def test_similarity_between_poses():
    gen = torch.Generator().manual_seed(3)
    poses = torch.eye(4).repeat(3, 1, 1)
    poses[:, :3, :3] = roma.rotvec_to_rotmat(0.2 * torch.randn(3, 3, generator=gen))
    poses[:, :3, 3] = torch.randn(3, 3, generator=gen)
    trf = torch.eye(4)
    trf[:3, :3] = 1.7 * roma.rotvec_to_rotmat(torch.tensor([0.1, 0.4, -0.3]))
    trf[:3, 3] = torch.tensor([0.5, 0.0, -1.0])
    target = trf @ poses
    target[:, :3, :3] /= 1.7
    s, r, t = similarity_between_poses(poses, target)
    torch.testing.assert_close(float(s), 1.7, rtol=1e-4, atol=0)
    torch.testing.assert_close(r, trf[:3, :3] / 1.7, atol=1e-4, rtol=0)
    torch.testing.assert_close(t, trf[:3, 3], atol=1e-4, rtol=0)
    same_centre = poses.clone()
    same_centre[:, :3, 3] = 0
    assert similarity_between_poses(same_centre, same_centre) is None


def test_transform_points():
    trf = torch.eye(4)
    trf[:3, :3] = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, math.pi / 2]))
    trf[:3, 3] = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(
        transform_points(trf, torch.tensor([[1.0, 0.0, 0.0]])), torch.tensor([[1.0, 1.0, 0.0]]), atol=1e-6, rtol=0
    )


def test_solve_pnp_ransac_recovers_pose():
    h, w, focal = 24, 32, 30.0
    depth = 2.0 + torch.rand(h, w, generator=torch.Generator().manual_seed(4))
    cam_pts = _pinhole_points(h, w, focal, depth)
    world_from_cam = torch.eye(4)
    world_from_cam[:3, :3] = roma.rotvec_to_rotmat(torch.tensor([0.1, -0.2, 0.05]))
    world_from_cam[:3, 3] = torch.tensor([0.3, -0.1, 0.2])
    world_pts = transform_points(world_from_cam, cam_pts).reshape(-1, 3).numpy()
    pix = pixel_grid(h, w).reshape(-1, 2).numpy()
    res = solve_pnp_ransac(world_pts, pix, focal, (w / 2, h / 2), iterations=100)
    assert res is not None
    pose, n_inliers = res
    assert n_inliers > 0.95 * h * w
    np.testing.assert_allclose(pose, world_from_cam.numpy(), atol=1e-3)
    assert solve_pnp_ransac(world_pts[:3], pix[:3], focal, (w / 2, h / 2), iterations=10) is None
