"""A tiny numpy ray caster for structure-from-motion tests: a textured box on a textured ground.

World frame: z up, the ground is the plane z = 0, the box stands on it centred on the origin.
Cameras use OpenCV axes (x right, y down, z forward) and ``world_from_cam`` 4x4 poses; pixel
(u, v) has its centre at integer coordinates (the project convention), so a camera looking
straight through the image centre has cx = (W - 1) / 2.

Every face has its own random band-pass texture (blobs at several scales), so SIFT finds
many distinctive, non-repeating features and the ground truth is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

__all__ = [
    "SyntheticView",
    "BoxScene",
    "look_at",
    "orbit_poses",
    "intrinsics",
    "render",
    "render_depth",
    "render_orbit",
    "sparse_points",
]

_BACKGROUND = 0.55
"""Uniform grey for rays that miss everything (no features there)."""


@dataclass(frozen=True)
class SyntheticView:
    """One rendered view and its exact camera."""

    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    world_from_cam: np.ndarray
    """(4, 4) float64 camera-to-world, OpenCV axes."""
    K: np.ndarray
    """(3, 3) float64 intrinsics, integer pixel centres."""
    depth: np.ndarray | None = None
    """(H, W) float32 z-depth of the surface seen through each pixel centre (inf: background),
    when rendered with ``with_depth=True``."""


def _band_pass_texture(rng: np.random.Generator, shape: tuple[int, int], sigmas: tuple[float, ...]) -> np.ndarray:
    """Random blobs at several scales (in texels) -> (rows, cols, 3) float32 in [0, 1]."""
    tex = np.zeros((*shape, 3), np.float64)
    for s in sigmas:
        noise = rng.standard_normal((*shape, 3))
        layer = gaussian_filter(noise, sigma=(s, s, 0), mode="wrap")
        tex += layer / (layer.std() + 1e-12)
    lo, hi = np.percentile(tex, [1, 99])
    return np.clip((tex - lo) / (hi - lo), 0, 1).astype(np.float32)


@dataclass(frozen=True)
class BoxScene:
    """A box on a square patch of ground, each of the 6 surfaces with its own texture.

    Build with :meth:`random`. Textures are (rows, cols, 3) float32 in [0, 1] spanning each face
    (rows along the face's second axis), all with the same texel size in world units, chosen
    so that one texel covers about one pixel of the default views (no aliasing).
    """

    ground_half: float
    """The ground is the square [-g, g]^2 at z = 0."""
    box_min: np.ndarray
    """(3,) lower corner of the box (z = 0)."""
    box_max: np.ndarray
    """(3,) upper corner of the box."""
    textures: dict[str, np.ndarray]
    """Face name (ground, +x, -x, +y, -y, top) -> (rows, cols, 3) float32 texture."""

    @classmethod
    def random(
        cls,
        seed: int = 0,
        *,
        ground_half: float = 3.0,
        box_size: tuple[float, float, float] = (1.4, 1.0, 0.9),
        texels_per_unit: float = 64.0,
    ) -> BoxScene:
        rng = np.random.default_rng(seed)
        bx, by, bz = box_size
        extents = {  # face -> (extent along its first texture axis, along its second)
            "ground": (2 * ground_half, 2 * ground_half),
            "+x": (by, bz),
            "-x": (by, bz),
            "+y": (bx, bz),
            "-y": (bx, bz),
            "top": (bx, by),
        }
        textures = {
            name: _band_pass_texture(
                rng, (max(8, round(b * texels_per_unit)), max(8, round(a * texels_per_unit))), (1.5, 3.0, 6.0)
            )
            for name, (a, b) in extents.items()
        }
        return cls(ground_half, np.array([-bx / 2, -by / 2, 0.0]), np.array([bx / 2, by / 2, bz]), textures)


def look_at(eye: np.ndarray, target: np.ndarray, up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """(4, 4) world_from_cam of an OpenCV camera at ``eye`` looking at ``target`` (z up world)."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def orbit_poses(
    n: int,
    *,
    radius: float = 4.2,
    elevation_deg: float = 45.0,
    azimuth_range_deg: tuple[float, float] = (-70.0, 70.0),
    target_z: float = 0.3,
) -> np.ndarray:
    """(n, 4, 4) world_from_cam on an arc around the z axis, all looking at (0, 0, target_z)."""
    poses = []
    el = np.deg2rad(elevation_deg)
    for az in np.deg2rad(np.linspace(*azimuth_range_deg, n)):
        eye = radius * np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])
        poses.append(look_at(eye, np.array([0.0, 0.0, target_z])))
    return np.stack(poses)


def intrinsics(width: int, height: int, focal: float) -> np.ndarray:
    """(3, 3) K with the principal point at the image centre (integer pixel centres)."""
    return np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]], np.float64)


def _sample(tex: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bilinear lookup; s, t in [0, 1] (M,) -> (M, 3)."""
    size_y, size_x = tex.shape[:2]
    rows, cols = t * (size_y - 1), s * (size_x - 1)
    return np.stack([map_coordinates(tex[..., c], [rows, cols], order=1, mode="nearest") for c in range(3)], -1)


def _shade(scene: BoxScene, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour and ray parameter of the first surface hit by each ray.

    origin (3,), dirs (M, 3) world -> colour (M, 3) float32, t (M,) float64 (inf: no hit; the
    hit point is ``origin + t * dirs``)."""
    m = dirs.shape[0]
    colour = np.full((m, 3), _BACKGROUND, np.float32)
    t_best = np.full(m, np.inf)

    # Ground plane z = 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        t_g = -origin[2] / dirs[:, 2]
    hit_g = (t_g > 0) & np.isfinite(t_g)
    p = origin + t_g[:, None] * dirs
    g = scene.ground_half
    hit_g &= (np.abs(p[:, 0]) <= g) & (np.abs(p[:, 1]) <= g)
    if hit_g.any():
        s, t = (p[hit_g, 0] + g) / (2 * g), (p[hit_g, 1] + g) / (2 * g)
        colour[hit_g] = _sample(scene.textures["ground"], s, t) * 0.85
        t_best[hit_g] = t_g[hit_g]

    # Box: slab intersection, remembering which slab gave the entry point.
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t0 = (scene.box_min - origin) * inv
        t1 = (scene.box_max - origin) * inv
    t_lo, t_hi = np.minimum(t0, t1), np.maximum(t0, t1)
    t_lo = np.nan_to_num(t_lo, nan=-np.inf)
    t_hi = np.nan_to_num(t_hi, nan=np.inf)
    t_enter, axis = t_lo.max(1), t_lo.argmax(1)
    t_exit = t_hi.min(1)
    hit_b = (t_enter <= t_exit) & (t_enter > 0) & (t_enter < t_best)
    if hit_b.any():
        idx = np.nonzero(hit_b)[0]
        p = origin + t_enter[idx, None] * dirs[idx]
        size = scene.box_max - scene.box_min
        rel = (p - scene.box_min) / size  # (K, 3) in [0, 1]
        ax = axis[idx]
        negative = dirs[idx, ax] > 0  # entering through the min face of that axis
        faces = {
            ("x", True): ("-x", 1, 2, 0.7),
            ("x", False): ("+x", 1, 2, 0.8),
            ("y", True): ("-y", 0, 2, 0.9),
            ("y", False): ("+y", 0, 2, 0.75),
            ("z", False): ("top", 0, 1, 1.0),
            ("z", True): ("top", 0, 1, 1.0),
        }
        for (axis_name, neg), (face, a, b, light) in faces.items():
            sel = (ax == "xyz".index(axis_name)) & (negative == neg)
            if sel.any():
                colour[idx[sel]] = _sample(scene.textures[face], rel[sel, a], rel[sel, b]) * light
        t_best[idx] = t_enter[idx]
    return colour, t_best


def render(
    scene: BoxScene, world_from_cam: np.ndarray, K: np.ndarray, width: int, height: int, supersample: int = 2
) -> np.ndarray:
    """Ray-cast one view -> (height, width, 3) uint8 RGB (``supersample``^2 rays per pixel)."""
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    acc = np.zeros((height * width, 3), np.float64)
    k_inv = np.linalg.inv(K)
    rot, origin = world_from_cam[:3, :3], world_from_cam[:3, 3]
    for du in offsets:
        for dv in offsets:
            pix = np.stack([(u + du).ravel(), (v + dv).ravel(), np.ones(u.size)], 1)  # (M, 3)
            dirs = pix @ k_inv.T @ rot.T  # (M, 3) world directions
            acc += _shade(scene, origin, dirs)[0]
    rgb = acc / supersample**2
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8).reshape(height, width, 3)


def render_depth(scene: BoxScene, world_from_cam: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Exact z-depth through each pixel centre -> (height, width) float32, inf where no surface.

    The camera-frame ray through pixel (u, v) is ``K^-1 (u, v, 1)``, whose z is 1, so the ray
    parameter of the hit is its z-depth.
    """
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)  # (M, 3)
    dirs = pix @ np.linalg.inv(K).T @ world_from_cam[:3, :3].T  # (M, 3) world directions
    _, t = _shade(scene, world_from_cam[:3, 3], dirs)
    return t.astype(np.float32).reshape(height, width)


def render_orbit(
    n: int,
    *,
    width: int = 320,
    height: int = 240,
    focal: float = 260.0,
    seed: int = 0,
    with_depth: bool = False,
    **orbit_kwargs: float,
) -> list[SyntheticView]:
    """Render ``n`` views on an arc around a random box scene (with exact depth maps on request)."""
    scene = BoxScene.random(seed)
    K = intrinsics(width, height, focal)
    views = []
    for pose in orbit_poses(n, **orbit_kwargs):  # type: ignore[arg-type]
        depth = render_depth(scene, pose, K, width, height) if with_depth else None
        views.append(SyntheticView(render(scene, pose, K, width, height), pose, K, depth))
    return views


def sparse_points(views: list[SyntheticView], step: int = 12) -> tuple[np.ndarray, list[np.ndarray]]:
    """Structure-from-motion-like points of rendered views (needs ``with_depth=True``).

    Every ``step``-th pixel (rows and columns) of every view that sees a surface is lifted with its
    exact depth; a point counts as observed by a view when it projects inside it and is not
    hidden there (its depth matches that view's depth map within 1%). Returns xyz (M, 3) float64
    world points and, per view, the int64 indices of the points it observes.
    """
    pts = []
    for v in views:
        if v.depth is None:
            raise ValueError("sparse_points needs views rendered with with_depth=True")
        h, w = v.depth.shape
        rows, cols = np.mgrid[step // 2 : h : step, step // 2 : w : step]
        d = v.depth[rows, cols]
        hit = np.isfinite(d)
        pix = np.stack([cols[hit], rows[hit], np.ones(int(hit.sum()))], 1).astype(np.float64)
        in_cam = pix @ np.linalg.inv(v.K).T * d[hit, None]
        pts.append(in_cam @ v.world_from_cam[:3, :3].T + v.world_from_cam[:3, 3])
    xyz = np.concatenate(pts)
    visible = []
    for v in views:
        h, w = v.depth.shape  # type: ignore[union-attr]
        cam_from_world = np.linalg.inv(v.world_from_cam)
        in_cam = xyz @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
        z = in_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = in_cam @ v.K.T
            u, r = np.rint(uv[:, 0] / z), np.rint(uv[:, 1] / z)
        inside = (z > 0) & (u >= 0) & (u < w) & (r >= 0) & (r < h)
        seen = np.full(len(xyz), np.inf)
        seen[inside] = v.depth[r[inside].astype(int), u[inside].astype(int)]  # type: ignore[index]
        visible.append(np.flatnonzero(inside & (np.abs(seen - z) < 0.01 * z)))
    return xyz, visible
