"""The optimiser's raw parameters, in the reference's layout, and how they decode to cameras.

The layout is the reference ``PointCloudOptimizer``'s (its fixtures store it under the
``init_raw_*`` / ``raw_*`` keys): log-depth per pixel, a quaternion + signed-log1p translation per
camera, ``FOCAL_BREAK * log(f)`` per focal and one similarity per pair. N views, E pairs (edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch

from core.geometry import signed_expm1, signed_log1p

__all__ = ["BASE_SCALE", "FOCAL_BREAK", "RawParams", "pose_to_params", "pair_scales", "decode", "flat_depth"]

#: Geometric mean of the pair scales when the world scale is free (reference ``base_scale``).
BASE_SCALE = 0.5
#: Focal lengths are optimised as FOCAL_BREAK * log(f) (reference ``focal_break``).
FOCAL_BREAK = 20.0


@dataclass
class RawParams:
    """Optimised parameters in the reference's layout (``init_raw_*`` / ``raw_*`` fixture keys)."""

    im_depthmaps: torch.Tensor
    """(N, max_area) log-depth per pixel (row-major), zero-padded."""
    im_poses: torch.Tensor
    """(N, 7) world_from_cam: quaternion XYZW (unnormalised) + signed-log1p translation."""
    im_focals: torch.Tensor
    """(N, 1) FOCAL_BREAK * log(focal)."""
    pw_poses: torch.Tensor
    """(E, 8) per pair: quaternion XYZW, signed-log1p(T / s), log s."""

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.im_depthmaps, self.im_poses, self.im_focals, self.pw_poses)

    def clone(self) -> RawParams:
        """A detached copy."""
        return RawParams(*(t.detach().clone() for t in self._tensors()))

    def to(self, device: torch.device) -> RawParams:
        """A detached float32 copy on ``device``."""
        return RawParams(*(t.detach().to(device=device, dtype=torch.float32) for t in self._tensors()))


def pose_to_params(poses: torch.Tensor) -> torch.Tensor:
    """(K, 4, 4) rigid world_from_cam -> (K, 7) pose parameters (quaternion XYZW, signed-log1p t)."""
    return torch.cat((roma.rotmat_to_unitquat(poses[:, :3, :3]), signed_log1p(poses[:, :3, 3])), dim=-1)


def pair_scales(pw_poses: torch.Tensor, norm_pw_scale: bool) -> torch.Tensor:
    """(E, 8) pair parameters -> (E,) the scale s_e each pair's points are multiplied by.

    norm_pw_scale: the scales are normalised so that their geometric mean is ``BASE_SCALE``
    (the world scale is free); else they are exp(log s) as stored.
    """
    scale = pw_poses[:, 7].exp()
    if norm_pw_scale:
        scale = scale * (math.log(BASE_SCALE) - pw_poses[:, 7].mean()).exp()
    return scale


def decode(
    raw: RawParams, shapes: tuple[tuple[int, int], ...]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Raw parameters -> world_from_cam (N, 4, 4), focals (N,) pixels, N depth maps (H, W) z-depth."""
    q = raw.im_poses[:, :4] / raw.im_poses[:, :4].norm(dim=-1, keepdim=True)
    poses = torch.eye(4, device=raw.im_poses.device).repeat(len(shapes), 1, 1)
    poses[:, :3, :3] = roma.unitquat_to_rotmat(q)
    poses[:, :3, 3] = signed_expm1(raw.im_poses[:, 4:7])
    focals = (raw.im_focals[:, 0] / FOCAL_BREAK).exp()
    depths = [raw.im_depthmaps[i, : h * w].exp().reshape(h, w) for i, (h, w) in enumerate(shapes)]
    return poses, focals, depths


def flat_depth(raw_depth: torch.Tensor, areas: list[int]) -> torch.Tensor:
    """(N, max_area) zero-padded per-image rows -> (sum(areas),) the pixels of every image, in order."""
    return torch.cat([raw_depth[i, :a] for i, a in enumerate(areas)])
