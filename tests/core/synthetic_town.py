"""A synthetic town for georeferencing tests: a sloped ground with flat-roofed boxes of known height,
seen by nadir cameras on a flight grid, ray cast exactly (colour and depth per pixel).

Frames: the *local* frame is UTM zone 32N (EPSG:32632) minus :data:`ORIGIN`: x east, y north, z up,
metres. :func:`town_scene` re-expresses the truth in an arbitrary *scene* frame (a known similarity),
as a reconstruction would, and :func:`write_town_jpegs` writes the views as JPEGs whose EXIF carries
each camera's GPS position (optionally with noise), so the whole chain (EXIF -> fit -> UTM) is tested.
Cameras use OpenCV axes; pixel centres are at integer coordinates (the project convention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyproj
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from core.types import Scene
from tests.core.synthetic_render import intrinsics

__all__ = ["EPSG", "ORIGIN", "Box", "Town", "make_town", "town_scene", "write_town_jpegs", "gps_of"]

EPSG = 32632
ORIGIN = np.array([465_000.0, 5_246_000.0, 420.0])
"""UTM easting, northing and altitude of the local frame's origin (near Zurich)."""
SLOPE = (0.08, 0.03)
"""Ground height z = SLOPE[0] * x + SLOPE[1] * y (local metres)."""


@dataclass(frozen=True)
class Box:
    """A building: footprint [x0, x1] x [y0, y1] (local metres), flat roof at ``top`` (local z)."""

    x0: float
    x1: float
    y0: float
    y1: float
    height: float
    """Roof height above the ground at the footprint's centre."""

    @property
    def top(self) -> float:
        return ground_z((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2) + self.height


@dataclass(frozen=True)
class Town:
    """The truth: boxes, cameras (local frame) and the rendered views."""

    boxes: tuple[Box, ...]
    world_from_cam: np.ndarray
    """(N, 4, 4) float64 local frame."""
    K: np.ndarray
    """(3, 3) shared intrinsics."""
    images: tuple[np.ndarray, ...]
    """N (H, W, 3) uint8."""
    depths: tuple[np.ndarray, ...]
    """N (H, W) float64 z-depth (metres)."""
    names: tuple[str, ...]

    @property
    def centres(self) -> np.ndarray:
        """(N, 3) camera centres, local frame."""
        return self.world_from_cam[:, :3, 3]


def ground_z(x, y):
    return SLOPE[0] * np.asarray(x) + SLOPE[1] * np.asarray(y)


def _colour(x: np.ndarray, y: np.ndarray, z: np.ndarray, roof: np.ndarray) -> np.ndarray:
    """A procedural texture: ground green-brown stripes, roofs red-grey by height. -> (M, 3) float in [0, 1]."""
    g = 0.5 + 0.25 * np.sin(0.7 * x) * np.cos(0.5 * y)
    ground = np.stack([0.35 + 0.3 * g, 0.45 + 0.2 * g, 0.25 + 0.1 * np.sin(0.3 * x + y)], axis=1)
    r = 0.5 + 0.2 * np.sin(0.9 * x + 0.4 * y)
    roofs = np.stack([0.7 * r + 0.01 * z, 0.3 * r, 0.3 * r], axis=1)
    return np.clip(np.where(roof[:, None], roofs, ground), 0, 1)


def _cast(town_boxes: tuple[Box, ...], origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray distance t (M,) to the first hit (ground plane or a box) and whether it hit a roof (M,)."""
    a, b = SLOPE
    normal_dot = dirs[:, 2] - a * dirs[:, 0] - b * dirs[:, 1]
    t = -(origin[2] - a * origin[0] - b * origin[1]) / normal_dot  # plane z - a x - b y = 0
    roof = np.zeros(len(dirs), bool)
    for box in town_boxes:
        lo = np.array([box.x0, box.y0, -1e3])
        hi = np.array([box.x1, box.y1, box.top])
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = (lo - origin) / dirs, (hi - origin) / dirs
        t_enter = np.nan_to_num(np.minimum(t0, t1), nan=-np.inf).max(1)
        t_exit = np.nan_to_num(np.maximum(t0, t1), nan=np.inf).min(1)
        hit = (t_enter <= t_exit) & (t_enter > 0) & (t_enter < t)
        t = np.where(hit, t_enter, t)
        top_hit = hit & np.isclose(origin[2] + t_enter * dirs[:, 2], box.top, atol=1e-6)
        roof = np.where(hit, top_hit, roof)
    return t, roof


def make_town(
    *, grid: tuple[int, int] = (3, 3), spacing: float = 25.0, altitude: float = 60.0, size: tuple[int, int] = (128, 96)
) -> Town:
    """Render the town from nadir cameras on a ``grid`` (columns east, rows north) ``altitude`` m above the origin."""
    boxes = (
        Box(-22.0, -10.0, -18.0, -8.0, 6.0),
        Box(4.0, 16.0, 6.0, 20.0, 12.0),
        Box(12.0, 24.0, -20.0, -10.0, 9.0),
    )
    width, height = size
    K = intrinsics(width, height, focal=100.0)
    rot = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])  # columns: right = east, down = south, forward = -z
    xs = (np.arange(grid[0]) - (grid[0] - 1) / 2) * spacing
    ys = (np.arange(grid[1]) - (grid[1] - 1) / 2) * spacing
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1) @ np.linalg.inv(K).T  # (M, 3), z = 1
    poses, images, depths, names = [], [], [], []
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            pose = np.eye(4)
            pose[:3, :3], pose[:3, 3] = rot, (x + 0.7 * j, y - 0.4 * i, altitude + 1.5 * ((i + j) % 2))
            dirs = rays @ rot.T
            t, roof = _cast(boxes, pose[:3, 3], dirs)
            p = pose[:3, 3] + t[:, None] * dirs
            rgb = _colour(p[:, 0], p[:, 1], p[:, 2], roof)
            poses.append(pose)
            images.append((rgb.reshape(height, width, 3) * 255).round().astype(np.uint8))
            depths.append(t.reshape(height, width))  # rays have z = 1 in the camera: t is the z-depth
            names.append(f"town_{j}{i}.jpg")
    return Town(boxes, np.stack(poses), K, tuple(images), tuple(depths), tuple(names))


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    return q * np.sign(np.linalg.det(q))


def town_scene(town: Town, *, scale: float = 0.037, seed: int = 1) -> tuple[Scene, np.ndarray]:
    """The town as a dense Scene in an arbitrary frame: x_scene = scale * R @ x_local + t.
    Returns (scene, (4, 4) scene_from_local)."""
    rot = _rotation(seed)
    t = np.array([0.3, -1.2, 2.0])
    scene_from_local = np.eye(4)
    scene_from_local[:3, :3], scene_from_local[:3, 3] = scale * rot, t
    n = len(town.images)
    h, w = town.depths[0].shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pts3d, poses = [], []
    for k in range(n):
        cam = np.stack([(u - town.K[0, 2]) / town.K[0, 0], (v - town.K[1, 2]) / town.K[1, 1], np.ones_like(u)], -1)
        local = (cam * town.depths[k][..., None]) @ town.world_from_cam[k][:3, :3].T + town.world_from_cam[k][:3, 3]
        pts3d.append((local @ scene_from_local[:3, :3].T + t).astype(np.float32))
        pose = scene_from_local @ town.world_from_cam[k]
        pose[:3, :3] /= scale
        poses.append(pose)
    scene = Scene(
        images=town.images,
        world_from_cam=np.stack(poses).astype(np.float32),
        focals=np.full(n, town.K[0, 0], np.float32),
        principal_points=np.tile(town.K[:2, 2], (n, 1)).astype(np.float32),
        depths=tuple((d * scale).astype(np.float32) for d in town.depths),
        pts3d=tuple(pts3d),
        conf=tuple(np.full((h, w), 5.0, np.float32) for _ in range(n)),
        names=town.names,
    )
    return scene, scene_from_local


def gps_of(local: np.ndarray) -> np.ndarray:
    """(M, 3) local metres -> (M, 3) (lat, lon, alt) via UTM 32N."""
    utm = np.asarray(local, np.float64) + ORIGIN
    lon, lat = pyproj.Transformer.from_crs(EPSG, 4326, always_xy=True).transform(utm[:, 0], utm[:, 1])
    return np.stack([np.asarray(lat), np.asarray(lon), utm[:, 2]], axis=1)


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    deg = int(value)
    minutes = int((value - deg) * 60)
    seconds = (value - deg - minutes / 60) * 3600
    return IFDRational(deg, 1), IFDRational(minutes, 1), IFDRational(round(seconds * 1_000_000), 1_000_000)


def write_gps_jpeg(path: Path, image: np.ndarray, lat_lon_alt: np.ndarray | None) -> Path:
    """A JPEG with (or without) GPS EXIF: latitude, longitude (DMS rationals) and altitude."""
    exif = Image.Exif()
    if lat_lon_alt is not None:
        lat, lon, alt = (float(v) for v in lat_lon_alt)
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps[ExifTags.GPS.GPSVersionID] = b"\x02\x03\x00\x00"
        gps[ExifTags.GPS.GPSLatitudeRef] = "N" if lat >= 0 else "S"
        gps[ExifTags.GPS.GPSLatitude] = _dms(lat)
        gps[ExifTags.GPS.GPSLongitudeRef] = "E" if lon >= 0 else "W"
        gps[ExifTags.GPS.GPSLongitude] = _dms(lon)
        gps[ExifTags.GPS.GPSAltitudeRef] = 0 if alt >= 0 else 1
        gps[ExifTags.GPS.GPSAltitude] = IFDRational(round(abs(alt) * 1000), 1000)
    Image.fromarray(image).save(path, quality=92, exif=exif)
    return Path(path)


def write_town_jpegs(
    town: Town, folder: Path, *, noise_m: float = 0.0, seed: int = 0, offsets: dict[str, np.ndarray] | None = None
) -> list[Path]:
    """The views as JPEGs with GPS EXIF of the true camera centres plus N(0, noise_m) per axis (and an
    extra ``offsets[name]`` metres for chosen views). Returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    local = town.centres + rng.normal(0.0, noise_m, town.centres.shape) if noise_m else town.centres.copy()
    for name, off in (offsets or {}).items():
        local[town.names.index(name)] += off
    gps = gps_of(local)
    return [write_gps_jpeg(folder / n, im, g) for n, im, g in zip(town.names, town.images, gps, strict=True)]


def with_gps(scene: Scene, gps: np.ndarray) -> Scene:
    return dataclasses.replace(scene, gps=gps)
