"""Analytic solids (sphere, box, torus) rendered to exact depth maps from known cameras.

For the surface and voxel tests and bench_surface.py. Each shape has an exact signed distance
function (negative inside), its volume, its Euler characteristic and an area-uniform surface
sampler. Depth maps are sphere-traced against the SDF (to 1e-6), so they are exact up to float32.

Cameras: OpenCV axes (x right, y down, z forward), ``world_from_cam`` 4x4, pixel centres at integer
coordinates, principal point at ((W - 1) / 2, (H - 1) / 2). ``sphere_rig`` spreads cameras over a
sphere around the origin (Fibonacci lattice), all looking at the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.types import PairPredictions, Scene

__all__ = [
    "Shape",
    "Sphere",
    "Box",
    "Torus",
    "look_at",
    "sphere_rig",
    "arc_rig",
    "render_depth",
    "shape_scene",
    "shape_pair_predictions",
    "surface_metrics",
]


class Shape:
    """An analytic solid: ``sdf`` (M, 3) -> (M,) (negative inside), ``volume``, ``euler``, ``sample``."""

    volume: float
    euler: int
    radius: float
    """Radius of a bounding sphere around the origin."""

    def sdf(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) points uniformly distributed over the surface area."""
        raise NotImplementedError


@dataclass(frozen=True)
class Sphere(Shape):
    r: float = 1.0

    @property
    def volume(self) -> float:  # type: ignore[override]
        return 4 / 3 * np.pi * self.r**3

    euler = 2

    @property
    def radius(self) -> float:  # type: ignore[override]
        return self.r

    def sdf(self, p: np.ndarray) -> np.ndarray:
        return np.linalg.norm(p, axis=-1) - self.r

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Ray parameter of the first hit (M,) (inf on a miss); origin (3,) outside, dirs (M, 3)."""
        a, b, c = (dirs**2).sum(1), 2 * dirs @ origin, origin @ origin - self.r**2
        disc = b**2 - 4 * a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / (2 * a)
        return np.where((disc >= 0) & (t > 0), t, np.inf)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        d = rng.normal(size=(n, 3))
        return self.r * d / np.linalg.norm(d, axis=1, keepdims=True)


@dataclass(frozen=True)
class Box(Shape):
    half: tuple[float, float, float] = (0.9, 0.6, 0.45)

    @property
    def volume(self) -> float:  # type: ignore[override]
        return float(8 * np.prod(self.half))

    euler = 2

    @property
    def radius(self) -> float:  # type: ignore[override]
        return float(np.linalg.norm(self.half))

    def sdf(self, p: np.ndarray) -> np.ndarray:
        q = np.abs(p) - np.array(self.half)
        return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        h = np.array(self.half)
        areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]])  # faces normal to x, y, z
        axis = rng.choice(3, size=n, p=areas / areas.sum())
        pts = rng.uniform(-1, 1, size=(n, 3)) * h
        sign = rng.choice([-1.0, 1.0], size=n)
        pts[np.arange(n), axis] = sign * h[axis]
        return pts


@dataclass(frozen=True)
class Torus(Shape):
    """Ring in the x-z plane around the y axis: major radius ``big``, tube radius ``small``."""

    big: float = 0.8
    small: float = 0.3

    @property
    def volume(self) -> float:  # type: ignore[override]
        return 2 * np.pi**2 * self.big * self.small**2

    euler = 0

    @property
    def radius(self) -> float:  # type: ignore[override]
        return self.big + self.small

    def sdf(self, p: np.ndarray) -> np.ndarray:
        ring = np.hypot(p[..., 0], p[..., 2]) - self.big
        return np.hypot(ring, p[..., 1]) - self.small

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out: list[np.ndarray] = []
        while sum(len(o) for o in out) < n:  # rejection: area density ~ (big + small cos v)
            u, v = rng.uniform(0, 2 * np.pi, size=(2, 2 * n))
            ok = rng.uniform(0, self.big + self.small, size=2 * n) < self.big + self.small * np.cos(v)
            rad = self.big + self.small * np.cos(v[ok])
            out.append(np.stack([rad * np.cos(u[ok]), self.small * np.sin(v[ok]), rad * np.sin(u[ok])], 1))
        return np.concatenate(out)[:n]


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) world_from_cam of an OpenCV camera at ``eye`` looking at ``target`` (world -y is up)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    up = np.array([0.0, -1.0, 0.0]) if abs(forward[1]) < 0.95 else np.array([0.0, 0.0, 1.0])
    right = np.cross(up, forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], 1)
    pose[:3, 3] = eye
    return pose


def sphere_rig(n: int, distance: float) -> np.ndarray:
    """(n, 4, 4) world_from_cam on a Fibonacci sphere of radius ``distance``, looking at the origin."""
    k = np.arange(n) + 0.5
    y = 1 - 2 * k / n
    phi = k * np.pi * (3 - np.sqrt(5))
    r = np.sqrt(1 - y**2)
    eyes = distance * np.stack([r * np.cos(phi), y, r * np.sin(phi)], 1)
    return np.stack([look_at(e, np.zeros(3)) for e in eyes])


def arc_rig(n: int, distance: float, span_deg: float = 120.0, elevation_deg: float = 20.0) -> np.ndarray:
    """(n, 4, 4) world_from_cam on a horizontal arc in front of the origin (-z side), looking at it."""
    el = np.deg2rad(elevation_deg)
    eyes = [
        distance * np.array([np.sin(a) * np.cos(el), -np.sin(el), -np.cos(a) * np.cos(el)])
        for a in np.deg2rad(np.linspace(-span_deg / 2, span_deg / 2, n))
    ]
    return np.stack([look_at(e, np.zeros(3)) for e in eyes])


def _rays(world_from_cam: np.ndarray, focal: float, height: int, width: int, pp: np.ndarray | None) -> np.ndarray:
    """(H * W, 3) world ray directions with camera z = 1 (so the ray parameter is the z-depth)."""
    cx, cy = ((width - 1) / 2, (height - 1) / 2) if pp is None else pp
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    dirs = np.stack([(u - cx) / focal, (v - cy) / focal, np.ones_like(u)], -1)
    return dirs.reshape(-1, 3) @ world_from_cam[:3, :3].T


def render_depth(
    shape: Shape, world_from_cam: np.ndarray, focal: float, height: int, width: int, pp: np.ndarray | None = None
) -> np.ndarray:
    """Exact z-depth (H, W) float64 of ``shape`` (inf where the ray misses), by sphere tracing.

    pp: principal point (cx, cy), default the image centre ((W - 1) / 2, (H - 1) / 2)."""
    dirs = _rays(world_from_cam, focal, height, width, pp)
    if isinstance(shape, Sphere):  # closed form (fast, for the benchmark's large images)
        return shape.intersect(world_from_cam[:3, 3], dirs).reshape(height, width)
    norm = np.linalg.norm(dirs, axis=1)
    origin = world_from_cam[:3, 3]
    t = np.zeros(len(dirs))
    active = np.ones(len(dirs), bool)
    t_max = np.linalg.norm(origin) + shape.radius + 1
    hit = np.zeros(len(dirs), bool)
    for _ in range(400):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        d = shape.sdf(origin + t[idx, None] * dirs[idx])
        t[idx] += d / norm[idx]
        done = d < 1e-7
        hit[idx[done]] = True
        gone = t[idx] > t_max
        active[idx[done | gone]] = False
    return np.where(hit, t, np.inf).reshape(height, width)


def shape_scene(
    shape: Shape,
    poses: np.ndarray,
    *,
    height: int = 72,
    width: int = 96,
    focal: float = 90.0,
    noise: float = 0.0,
    outlier_frac: float = 0.0,
    seed: int = 0,
) -> tuple[Scene, tuple[np.ndarray, ...]]:
    """A dense Scene of ``shape`` seen from ``poses`` (N, 4, 4), plus N (H, W) bool "hit" masks.

    Object pixels get confidence 10; misses depth inf and confidence 1. ``noise``: relative Gaussian
    depth noise; ``outlier_frac``: that fraction of object pixels gets depth x U(0.6, 1.6) and
    confidence 1.5 (below the default threshold of 3). Colours encode the surface normal's direction.
    """
    rng = np.random.default_rng(seed)
    depths, confs, images, hits = [], [], [], []
    pp = np.array([(width - 1) / 2, (height - 1) / 2])
    for pose in poses:
        z = render_depth(shape, pose, focal, height, width)
        hit = np.isfinite(z)
        conf = np.where(hit, 10.0, 1.0)
        world = np.nan_to_num(_world_points(z, pose, focal, pp).astype(np.float64))
        img = np.where(hit[..., None], np.clip(128 + 100 * np.sign(world), 0, 255), 60).astype(np.uint8)
        if noise:
            z = z * (1 + noise * rng.normal(size=z.shape))
        if outlier_frac:
            obj = np.flatnonzero(hit.ravel())
            pick = rng.choice(obj, size=int(round(outlier_frac * len(obj))), replace=False)
            z.ravel()[pick] *= rng.uniform(0.6, 1.6, size=len(pick))
            conf.ravel()[pick] = 1.5
        depths.append(z.astype(np.float32))
        confs.append(conf.astype(np.float32))
        images.append(img)
        hits.append(hit)
    n = len(poses)
    pts3d = tuple(_world_points(d, pose, focal, pp) for d, pose in zip(depths, poses, strict=True))
    scene = Scene(
        images=tuple(images),
        world_from_cam=poses.astype(np.float32),
        focals=np.full(n, focal, np.float32),
        principal_points=np.tile(pp, (n, 1)).astype(np.float32),
        depths=tuple(depths),
        pts3d=pts3d,
        conf=tuple(confs),
    )
    return scene, tuple(hits)


def _world_points(depth: np.ndarray, pose: np.ndarray, focal: float, pp: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 world points of a z-depth map (NaN where the depth is not finite)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    z = np.where(np.isfinite(depth), depth, np.nan).astype(np.float64)
    cam = np.stack([(u - pp[0]) / focal * z, (v - pp[1]) / focal * z, z], -1)
    return (cam @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)


def shape_pair_predictions(
    shape: Shape,
    poses: np.ndarray,
    *,
    height: int = 48,
    width: int = 64,
    focal: float = 60.0,
    backdrop: float = 6.0,
    noise: float = 0.002,
    seed: int = 0,
) -> tuple[PairPredictions, dict]:
    """DUSt3R-like pair predictions (complete symmetric graph) of ``shape`` inside a backdrop sphere.

    Every pixel has a depth (rays that miss the shape hit the inside of a sphere of radius
    ``backdrop`` around the origin). Per pair (i, j): view i's and view j's points in camera i's
    frame, times a random scale in [0.5, 2], with ``noise`` relative noise; confidence 12 on the
    shape and 1.5 on the backdrop (below the default threshold of 3). Images are (1, 3, H, W) in
    [-1, 1]: the shape light, the backdrop dark. Returns (predictions, {"world_from_cam", "focal",
    "depths", "hits"}).
    """
    rng = np.random.default_rng(seed)
    pp = np.array([width / 2, height / 2])  # the alignment's principal point convention
    depths, hits, cams, imgs = [], [], [], []
    for pose in poses:
        z = render_depth(shape, pose, focal, height, width, pp)
        room = _backdrop_depth(backdrop, pose, focal, pp, height, width)
        hit = z < room
        depth = np.where(hit, z, room)
        v, u = np.mgrid[0:height, 0:width]
        cams.append(np.stack([(u - pp[0]) / focal * depth, (v - pp[1]) / focal * depth, depth], -1))
        depths.append(depth)
        hits.append(hit)
        grey = np.where(hit, 0.6, -0.6) + 0.2 * np.sin(u / 3.0) * np.cos(v / 4.0)
        imgs.append(torch.from_numpy(np.broadcast_to(grey, (1, 3, height, width)).astype(np.float32).copy()))
    pairs = [(i, j) for i in range(len(poses)) for j in range(len(poses)) if i != j]
    out: dict[str, list[torch.Tensor]] = {"p1": [], "p2": [], "c1": [], "c2": []}
    for i, j in pairs:
        i_from_j = np.linalg.inv(poses[i]) @ poses[j]
        scale = rng.uniform(0.5, 2.0)
        a = cams[i] * scale * (1 + noise * rng.normal(size=cams[i].shape))
        b = (cams[j] @ i_from_j[:3, :3].T + i_from_j[:3, 3]) * scale * (1 + noise * rng.normal(size=cams[j].shape))
        out["p1"].append(torch.from_numpy(a.astype(np.float32)))
        out["p2"].append(torch.from_numpy(b.astype(np.float32)))
        out["c1"].append(torch.from_numpy(np.where(hits[i], 12.0, 1.5).astype(np.float32)))
        out["c2"].append(torch.from_numpy(np.where(hits[j], 12.0, 1.5).astype(np.float32)))
    preds = PairPredictions(
        pairs=torch.tensor(pairs, dtype=torch.int64),
        pts3d_1=tuple(out["p1"]),
        conf_1=tuple(out["c1"]),
        pts3d_2=tuple(out["p2"]),
        conf_2=tuple(out["c2"]),
        true_shapes=tuple((height, width) for _ in poses),
        images=tuple(imgs),
    )
    return preds, {"world_from_cam": poses, "focal": focal, "depths": depths, "hits": hits}


def _backdrop_depth(
    radius: float, pose: np.ndarray, focal: float, pp: np.ndarray, height: int, width: int
) -> np.ndarray:
    """z-depth (H, W) of the inside of a sphere of ``radius`` around the origin (camera inside it)."""
    dirs = _rays(pose, focal, height, width, pp)
    o = pose[:3, 3]
    a, b, c = (dirs**2).sum(1), 2 * dirs @ o, o @ o - radius**2
    return ((-b + np.sqrt(b**2 - 4 * a * c)) / (2 * a)).reshape(height, width)


def surface_metrics(mesh, shape: Shape, voxel: float, *, n: int = 30000, seed: int = 0) -> dict[str, float]:
    """Accuracy of a mesh against the analytic surface, in voxels where it is a distance.

    chamfer: mean |sdf| of points sampled on the mesh + mean distance from points sampled on the
    true surface to the mesh samples (two-way, summed), in voxels. precision / recall / fscore:
    fractions within 2 voxels. volume_ratio: mesh volume / true volume (nan unless watertight).
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    pred = np.asarray(mesh.sample(n, seed=seed)) if len(mesh.faces) else np.zeros((1, 3)) + np.inf
    truth = shape.sample(n, rng)
    d_pred = np.abs(shape.sdf(pred))
    d_true, _ = cKDTree(pred).query(truth)
    precision, recall = float((d_pred < 2 * voxel).mean()), float((d_true < 2 * voxel).mean())
    return {
        "chamfer": float(d_pred.mean() + d_true.mean()) / voxel,
        "precision": precision,
        "recall": recall,
        "fscore": 2 * precision * recall / max(precision + recall, 1e-12),
        "volume_ratio": float(mesh.volume / shape.volume) if mesh.is_watertight else float("nan"),
    }


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: scale, rotation (3, 3), translation with dst ~ scale * rot @ src + t; src, dst (M, 3)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, s, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float((s * np.diag(d)).sum() / (a**2).sum(1).mean())
    return scale, rot, mu_d - scale * rot @ mu_s
