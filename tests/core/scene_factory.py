"""Synthetic aligned scenes with known ground truth, for tests and benchmarks.

The world is ray-cast exactly, so every view's depth map, point map and colours agree across
views (what a perfect global alignment would return). On top of that, pixels with known defects
can be planted:

- ``haze``: pixels pulled towards their camera (depth x 0.6) with confidence 1.5, below the
  default threshold (the low-confidence fog real DUSt3R scenes have);
- ``occluders``: a blob of pixels pulled towards the camera (depth x 0.7) with confidence 5.0,
  above the threshold but lower than the surfaces they hide in the other views (what
  ``clean_pointcloud`` removes);
- ``outliers``: isolated pixels pushed far away (depth x 3) with high confidence (what only the
  statistical outlier filter removes);
- a ``satellite`` sphere, a small separate object (what the largest-component filter removes);
- ``sky``: the backdrop wall stops at ``wall_top``; rays above it see a blue sky at depth 100.

Camera convention: OpenCV (x right, y down, z forward); views orbit a unit sphere centred at
(0, 0, 4) and look at its centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.types import Scene, SparsePoints

__all__ = ["SyntheticDense", "make_dense_scene", "make_sparse_scene", "look_at_poses", "project"]

SPHERE_CENTER = np.array([0.0, 0.0, 4.0])
SPHERE_RADIUS = 1.0
SATELLITE_CENTER = SPHERE_CENTER + np.array([1.55, -0.75, -0.2])
SATELLITE_RADIUS = 0.3
SKY_RGB = (110, 165, 235)


@dataclass(frozen=True)
class SyntheticDense:
    """A dense scene plus per-view (H, W) bool masks of what each pixel sees or was made into."""

    scene: Scene
    object_masks: tuple[np.ndarray, ...]
    """Pixels on the main sphere (untouched)."""
    wall_masks: tuple[np.ndarray, ...]
    satellite_masks: tuple[np.ndarray, ...]
    sky_masks: tuple[np.ndarray, ...]
    haze_masks: tuple[np.ndarray, ...]
    occluder_masks: tuple[np.ndarray, ...]
    outlier_masks: tuple[np.ndarray, ...]


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def look_at_poses(n_views: int, *, yaw_step_deg: float = 15.0, distance: float = 4.0) -> np.ndarray:
    """(N, 4, 4) float64 world_from_cam of cameras on an arc around the sphere, looking at it.

    Views get increasing yaw and a small alternating pitch, so view 0 is not the identity.
    """
    poses = np.tile(np.eye(4), (n_views, 1, 1))
    for k in range(n_views):
        yaw = np.deg2rad((k - (n_views - 1) / 2) * yaw_step_deg - 7.0)
        pitch = np.deg2rad(6.0 if k % 2 == 0 else -4.0)
        rot = _rot_y(yaw) @ _rot_x(pitch)
        poses[k, :3, :3] = rot
        poses[k, :3, 3] = SPHERE_CENTER - rot @ np.array([0.0, 0.0, distance])
    return poses


def project(world_from_cam: np.ndarray, focal: float, pp: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (..., 3) -> pixels (..., 2) (integer-centre convention) and z-depth (...)."""
    cam_from_world = np.linalg.inv(world_from_cam)
    p = pts @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    z = p[..., 2]
    uv = focal * p[..., :2] / z[..., None] + pp
    return uv, z


def _hit_sphere(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """Ray parameter of the first hit (inf where none). dirs (..., 3) not normalised."""
    oc = origin - center
    a = (dirs**2).sum(-1)
    b = 2 * (dirs @ oc)
    c = oc @ oc - radius**2
    disc = b**2 - 4 * a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def _render(
    pose: np.ndarray,
    focal: float,
    pp: np.ndarray,
    h: int,
    w: int,
    *,
    wall_z: float,
    wall_top: float | None,
    satellite: bool,
) -> dict[str, np.ndarray]:
    """Ray-cast one view. Returns t (z-depth), pts (H, W, 3), label (H, W) int, rgb."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    dirs_cam = np.stack([(u - pp[0]) / focal, (v - pp[1]) / focal, np.ones_like(u)], -1)  # z = 1
    dirs = dirs_cam @ pose[:3, :3].T
    origin = pose[:3, 3]
    t_sphere = _hit_sphere(origin, dirs, SPHERE_CENTER, SPHERE_RADIUS)
    t_sat = _hit_sphere(origin, dirs, SATELLITE_CENTER, SATELLITE_RADIUS) if satellite else np.full((h, w), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_wall = (wall_z - origin[2]) / dirs[..., 2]
    t_wall = np.where(t_wall > 0, t_wall, np.inf)
    if wall_top is not None:
        y_wall = origin[1] + t_wall * dirs[..., 1]
        t_wall = np.where(y_wall >= wall_top, t_wall, np.inf)
    t_sky = np.full((h, w), 100.0)
    stack = np.stack([t_sphere, t_wall, t_sat, t_sky])  # label 0 sphere, 1 wall, 2 satellite, 3 sky
    label = stack.argmin(0)
    t = stack.min(0)
    pts = origin + t[..., None] * dirs
    rgb = np.zeros((h, w, 3), np.uint8)
    # sphere: checkerboard in longitude/latitude; wall: grey stripes; satellite: orange; sky: blue
    rel = pts - SPHERE_CENTER
    lon = np.arctan2(rel[..., 0], -rel[..., 2])
    lat = np.arcsin(np.clip(rel[..., 1] / SPHERE_RADIUS, -1, 1))
    checker = ((np.floor(lon / 0.4) + np.floor(lat / 0.4)) % 2).astype(bool)
    sphere_rgb = np.where(checker[..., None], [200, 60, 50], [240, 220, 80])
    wall_rgb = np.where((np.floor(pts[..., 0] / 0.5) % 2).astype(bool)[..., None], [120, 120, 120], [160, 150, 140])
    rgb[label == 0] = sphere_rgb[label == 0]
    rgb[label == 1] = wall_rgb[label == 1]
    rgb[label == 2] = (250, 140, 20)
    rgb[label == 3] = SKY_RGB
    return {"t": t, "pts": pts, "label": label, "rgb": rgb, "dirs": dirs, "origin": origin}


def _defect_masks(
    label: np.ndarray, rng: np.random.Generator, n_haze: int, n_occluders: int, n_outliers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(haze, occluder, outlier) (H, W) bool masks planted on the object and the wall of one view."""
    haze, occ, out = (np.zeros(label.shape, bool) for _ in range(3))
    surface = np.flatnonzero((label == 0).ravel() | (label == 1).ravel())
    if n_occluders:
        # a compact blob on the sphere near the image centre, visible from the other views
        sphere_px = np.argwhere(label == 0)
        centre = sphere_px.mean(0)
        order = np.argsort(((sphere_px - centre) ** 2).sum(1))[:n_occluders]
        occ[tuple(sphere_px[order].T)] = True
    free = np.setdiff1d(surface, np.flatnonzero(occ.ravel()))
    picks = rng.choice(free, size=n_haze + n_outliers, replace=False)
    haze.ravel()[picks[:n_haze]] = True
    out.ravel()[picks[n_haze:]] = True
    return haze, occ, out


def make_dense_scene(
    n_views: int = 3,
    height: int = 48,
    width: int = 64,
    *,
    seed: int = 0,
    focal_ratio: float = 0.8,
    wall_z: float = 7.0,
    wall_conf: float = 8.0,
    wall_top: float | None = None,
    sky_conf: float = 4.0,
    satellite: bool = False,
    n_haze: int = 0,
    n_occluders: int = 0,
    n_outliers: int = 0,
    original_scale: float = 1.0,
    crop_top: int = 0,
    names: tuple[str, ...] = (),
    final_loss: float | None = 0.0123,
) -> SyntheticDense:
    """A dense Scene (float32 arrays, like the alignment returns) with planted defects. focal =
    focal_ratio * width, pp (W/2, H/2); uploads ``original_scale`` times larger, cropped by
    ``crop_top`` rows: u_orig = s * (u + 0.5) - 0.5, v_orig = s * (v + crop_top + 0.5) - 0.5."""
    rng = np.random.default_rng(seed)
    poses = look_at_poses(n_views)
    focal = focal_ratio * width
    pp = np.array([width / 2, height / 2])
    images, depths, pts3d, confs = [], [], [], []
    masks: dict[str, list[np.ndarray]] = {k: [] for k in ("obj", "wall", "sat", "sky", "haze", "occ", "out")}
    for k in range(n_views):
        r = _render(poses[k], focal, pp, height, width, wall_z=wall_z, wall_top=wall_top, satellite=satellite)
        t, label = r["t"].copy(), r["label"]
        conf = np.select([label == 0, label == 1, label == 2], [30.0, wall_conf, 25.0], sky_conf)
        haze, occ, out = _defect_masks(label, rng, n_haze, n_occluders, n_outliers)
        t[haze] *= 0.6
        conf[haze] = 1.5
        t[occ] *= 0.7
        conf[occ] = 5.0
        t[out] *= 3.0
        conf[out] = 20.0
        pts = r["origin"] + t[..., None] * r["dirs"]
        images.append(r["rgb"])
        depths.append(t.astype(np.float32))
        pts3d.append(pts.astype(np.float32))
        confs.append(conf.astype(np.float32))
        clean = ~(haze | occ | out)
        masks["obj"].append((label == 0) & clean)
        masks["wall"].append((label == 1) & clean)
        masks["sat"].append((label == 2) & clean)
        masks["sky"].append((label == 3) & clean)
        masks["haze"].append(haze)
        masks["occ"].append(occ)
        masks["out"].append(out)
    s = float(original_scale)
    ofp = np.array([[s, 0, 0.5 * s - 0.5], [0, s, (crop_top + 0.5) * s - 0.5], [0, 0, 1]], dtype=np.float64)
    orig_size = (int(round(width * s)), int(round((height + 2 * crop_top) * s)))
    scene = Scene(
        images=tuple(images),
        world_from_cam=poses.astype(np.float32),
        focals=np.full(n_views, focal, np.float32),
        principal_points=np.tile(pp, (n_views, 1)).astype(np.float32),
        depths=tuple(depths),
        pts3d=tuple(pts3d),
        conf=tuple(confs),
        final_loss=final_loss,
        names=names or tuple(f"view_{k}.jpg" for k in range(n_views)),
        original_sizes=tuple(orig_size for _ in range(n_views)),
        original_from_processed=np.tile(ofp, (n_views, 1, 1)),
    )
    return SyntheticDense(
        scene=scene,
        object_masks=tuple(masks["obj"]),
        wall_masks=tuple(masks["wall"]),
        satellite_masks=tuple(masks["sat"]),
        sky_masks=tuple(masks["sky"]),
        haze_masks=tuple(masks["haze"]),
        occluder_masks=tuple(masks["occ"]),
        outlier_masks=tuple(masks["out"]),
    )


def make_sparse_scene(
    n_views: int = 3,
    height: int = 48,
    width: int = 64,
    *,
    n_points: int = 400,
    n_outliers: int = 8,
    seed: int = 0,
) -> tuple[Scene, np.ndarray]:
    """A sparse (COLMAP-engine-like) scene: points on the visible side of the sphere plus far
    outliers. Returns (scene, outlier (M,) bool); outliers are the last ``n_outliers`` points."""
    rng = np.random.default_rng(seed)
    dense = make_dense_scene(n_views, height, width, seed=seed)
    d = rng.normal(size=(n_points, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d[:, 2] = -np.abs(d[:, 2])  # the half facing the cameras
    xyz = SPHERE_CENTER + SPHERE_RADIUS * d
    far = SPHERE_CENTER + rng.uniform(-1, 1, size=(n_outliers, 3)) * 25 + np.array([0, 0, 30])
    xyz = np.concatenate([xyz, far]).astype(np.float32)
    m = len(xyz)
    sparse = SparsePoints(
        xyz=xyz,
        rgb=rng.integers(0, 256, size=(m, 3), dtype=np.uint8),
        track_length=rng.integers(2, n_views + 1, size=m).astype(np.int32),
        reproj_error=rng.uniform(0.2, 1.5, size=m).astype(np.float32),
    )
    base = dense.scene
    scene = Scene(
        images=base.images,
        world_from_cam=base.world_from_cam,
        focals=base.focals,
        principal_points=base.principal_points,
        sparse=sparse,
        final_loss=None,
        names=base.names,
        engine="colmap",
    )
    outlier = np.zeros(m, bool)
    outlier[n_points:] = True
    return scene, outlier
