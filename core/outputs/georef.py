"""Georeferencing: the scene frame -> metres on the map, from the photos' GPS or one known distance.

Decided here, for every engine alike: the fit runs at export time on the kept scene (so re-alignment,
the COLMAP engine and DUSt3R all get it, and display settings can change it without re-running), as a
pure function of the camera centres in the scene frame and the views' GPS positions
(:attr:`core.types.Scene.gps`):

1. GPS -> the UTM zone of the scene (WGS 84 / UTM, EPSG 326zz north, 327zz south, with the Norway and
   Svalbard exceptions), via pyproj. Eastings/northings/altitudes minus ``origin_offset`` (their
   centre, rounded to whole metres) form the *local frame*: x east (grid), y north (grid), z up, in
   metres, small enough for float32 files.
2. A similarity ``local_from_scene`` (scale, rotation, translation) by RANSAC over camera centres
   (minimal samples of 3, MSAC score, inlier threshold ``gps_inlier_m``), then least squares
   (Umeyama) on the inliers. Residuals per camera and their RMSE (over the inliers) are reported;
   photos whose GPS disagrees (residual above the threshold) are named.
3. It needs 3+ views with a GPS position that spread at least ``gps_min_spread_m`` and do not lie on
   one line; missing altitudes are filled with the others' median (all missing: 0 m, noted).

pycolmap's ``align_reconstruction_to_locations`` does the same estimation (LO-RANSAC over
projection centres) but only on a ``pycolmap.Reconstruction``; the scene (every engine) only keeps
camera poses, so the fit is done here on arrays, identically for both engines.

Without GPS, ``scale_from`` ("nameA,nameB,metres") scales the scene so that those two cameras are that
far apart: outputs are metric but not on the map (no CRS). Otherwise units stay unknown.

:func:`georeference` returns a :class:`Georef` (always: ``status`` says what it is and ``reason`` why
not more); :func:`transform_scene` applies ``local_from_scene`` to a scene; :func:`georef_document`
is the content of ``georef.json``; :func:`georef_summary` is the one-line status for the page.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from config import PostprocessConfig, parse_scale_from
from core.types import Scene, SparsePoints

try:  # optional at import time; georeferencing says how to install it
    import pyproj

    _PYPROJ_IMPORT_ERROR: str | None = None
except ImportError as _e:  # pragma: no cover - depends on the environment
    pyproj = None  # type: ignore[assignment]
    _PYPROJ_IMPORT_ERROR = str(_e)

__all__ = [
    "Similarity",
    "Georef",
    "umeyama",
    "ransac_similarity",
    "utm_epsg",
    "gps_to_crs",
    "georeference",
    "transform_scene",
    "georef_document",
    "georef_summary",
    "pyproj_unavailable",
]

logger = logging.getLogger(__name__)

#: Minimal samples tried by RANSAC when there are too many views to try every triple.
_RANSAC_SAMPLES = 2000
#: Every triple is tried up to this many views (C(24, 3) = 2024 samples).
_EXHAUSTIVE_MAX = 24
#: Points lie on a line when the second singular value of their spread is below this fraction of the first.
_COLLINEAR_RATIO = 0.05
_VERTICAL = "altitude from the photos' EXIF (GPSAltitude, usually metres above mean sea level)"


def pyproj_unavailable() -> str | None:
    """None when pyproj imports, else why not and how to install it."""
    if pyproj is None:
        return f"pyproj is not installed ({_PYPROJ_IMPORT_ERROR}); install it with: pip install pyproj"
    return None


@dataclass(frozen=True)
class Similarity:
    """``x_dst = scale * rotation @ x_src + translation`` (a 3-D similarity, no reflection)."""

    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    """(3, 3) float64 rotation (det +1)."""
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """(3,) float64."""

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """(..., 3) points -> (..., 3) float64 transformed points."""
        pts = np.asarray(pts, np.float64)
        return self.scale * pts @ self.rotation.T + self.translation

    def matrix(self) -> np.ndarray:
        """(4, 4) float64 homogeneous matrix."""
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = self.translation
        return out

    def shifted(self, offset: np.ndarray) -> Similarity:
        """The same similarity followed by ``+ offset``."""
        return Similarity(self.scale, self.rotation, self.translation + np.asarray(offset, np.float64))


def umeyama(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity with ``dst ~ s R src + t`` (Umeyama 1991).

    src, dst: (M, 3) corresponding points, M >= 3 not all on a line. Raises ValueError for bad shapes
    or degenerate input (all source points equal).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape or len(src) < 3:
        raise ValueError(f"expected two (M, 3) arrays with M >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var_s = float((a**2).sum() / len(src))
    if var_s <= 0:
        raise ValueError("degenerate source points: all equal")
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / var_s)
    return Similarity(scale, rot, mu_d - scale * rot @ mu_s)


def _spread(pts: np.ndarray) -> np.ndarray:
    """Singular values (3,) of the centred (M, 3) points / sqrt(M): RMS extent along the principal axes."""
    pts = np.asarray(pts, np.float64)
    return np.linalg.svd(pts - pts.mean(0), compute_uv=False) / math.sqrt(len(pts))


def _samples(m: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    if m <= _EXHAUSTIVE_MAX:
        return list(itertools.combinations(range(m), 3))
    return [tuple(rng.choice(m, 3, replace=False).tolist()) for _ in range(_RANSAC_SAMPLES)]


def ransac_similarity(
    src: np.ndarray, dst: np.ndarray, inlier_thr: float, *, seed: int = 0
) -> tuple[Similarity, np.ndarray]:
    """Robust ``dst ~ s R src + t``: RANSAC over triples (MSAC score), then least squares on the inliers
    (repeated until the inlier set is stable).

    src, dst: (M, 3), M >= 3; inlier_thr: residual norm (dst units) below which a pair agrees.
    Returns (similarity, (M,) bool inliers). Raises ValueError when no triple is usable (all collinear).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if inlier_thr <= 0:
        raise ValueError(f"inlier_thr must be > 0, got {inlier_thr}")
    m = len(src)
    if m < 3:
        raise ValueError(f"need at least 3 correspondences, got {m}")
    rng = np.random.default_rng(seed)
    best, best_cost = None, math.inf
    for tri in _samples(m, rng):
        idx = list(tri)
        sv_s, sv_d = _spread(src[idx]), _spread(dst[idx])
        if sv_s[1] <= _COLLINEAR_RATIO * sv_s[0] or sv_d[1] <= _COLLINEAR_RATIO * sv_d[0]:
            continue
        sim = umeyama(src[idx], dst[idx])
        res = np.linalg.norm(sim.apply(src) - dst, axis=1)
        cost = float(np.minimum(res, inlier_thr).__pow__(2).sum())
        if cost < best_cost:
            best, best_cost = sim, cost
    if best is None:
        raise ValueError("every triple of positions lies on a line")
    inliers = np.linalg.norm(best.apply(src) - dst, axis=1) < inlier_thr
    for _ in range(10):
        if inliers.sum() < 3 or _spread(src[inliers])[1] <= _COLLINEAR_RATIO * _spread(src[inliers])[0]:
            break
        best = umeyama(src[inliers], dst[inliers])
        new = np.linalg.norm(best.apply(src) - dst, axis=1) < inlier_thr
        if np.array_equal(new, inliers):
            break
        inliers = new
    return best, inliers


# ----------------------------------------------------------------------------------------------
# UTM


def utm_epsg(lat: float, lon: float) -> int:
    """EPSG code of the WGS 84 / UTM zone holding (lat, lon) degrees: 326zz north, 327zz south
    (with the Norway 32V and Svalbard 31X-37X exceptions).

    >>> utm_epsg(47.37, 8.54), utm_epsg(-33.9, 151.2), utm_epsg(60.4, 5.3)
    (32632, 32756, 32632)
    """
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"latitude/longitude out of range: ({lat}, {lon})")
    zone = min(int((lon + 180) // 6) + 1, 60)
    if 56 <= lat < 64 and 3 <= lon < 12:
        zone = 32
    elif 72 <= lat < 84 and 0 <= lon < 42:
        zone = 31 if lon < 9 else 33 if lon < 21 else 35 if lon < 33 else 37
    return (32600 if lat >= 0 else 32700) + zone


def gps_to_crs(gps: np.ndarray, epsg: int) -> np.ndarray:
    """(M, 3) (lat, lon, alt) -> (M, 3) float64 (easting, northing, alt) in EPSG ``epsg`` (pyproj)."""
    if (why := pyproj_unavailable()) is not None:
        raise RuntimeError(why)
    gps = np.asarray(gps, np.float64)
    tf = pyproj.Transformer.from_crs(4326, epsg, always_xy=True)
    east, north = tf.transform(gps[:, 1], gps[:, 0])
    return np.stack([np.asarray(east), np.asarray(north), gps[:, 2]], axis=1)


# ----------------------------------------------------------------------------------------------
# the georeference of a scene


@dataclass(frozen=True)
class Georef:
    """Where a scene's frame sits in the world (see the module docstring)."""

    status: Literal["gps", "scale", "none"]
    """gps: on the map (CRS, metres); scale: metric from a known distance, not on the map; none: units unknown."""
    reason: str
    """Why it is not (more) georeferenced, or notes on the fit; '' when nothing to say."""
    local_from_scene: Similarity = field(default_factory=Similarity)
    """Scene frame -> local frame (metres for gps/scale; identity for none)."""
    origin_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """(3,) float64 CRS coordinates (easting, northing, altitude) of the local frame's origin."""
    epsg: int | None = None
    """EPSG code of the CRS (WGS 84 / UTM zone), gps only."""
    names: tuple[str, ...] = ()
    """The scene's view names (residuals are per view, in this order)."""
    residuals: np.ndarray | None = None
    """(N, 3) float64 fitted minus GPS position (east, north, up metres); NaN rows for views without GPS."""
    inliers: np.ndarray | None = None
    """(N,) bool views used in the final least-squares fit."""
    rmse_m: float | None = None
    """RMS residual norm over the inliers, metres."""
    inlier_threshold_m: float | None = None
    """The RANSAC inlier threshold used."""

    @property
    def is_georeferenced(self) -> bool:
        return self.status == "gps"

    @property
    def is_metric(self) -> bool:
        return self.status in ("gps", "scale")

    @property
    def crs_from_scene(self) -> Similarity:
        """Scene frame -> CRS coordinates (local frame + origin offset)."""
        return self.local_from_scene.shifted(self.origin_offset)

    @property
    def disagreeing(self) -> tuple[str, ...]:
        """Names of views with a GPS position that the fit rejected."""
        if self.residuals is None or self.inliers is None:
            return ()
        has = np.isfinite(self.residuals).all(axis=1)
        return tuple(n for n, h, i in zip(self.names, has, self.inliers, strict=True) if h and not i)

    @property
    def crs_name(self) -> str | None:
        if self.epsg is None:
            return None
        return pyproj.CRS.from_epsg(self.epsg).name if pyproj is not None else f"EPSG:{self.epsg}"

    def crs_wkt(self) -> str | None:
        """The CRS as WKT (OGC WKT 1, what LAS and GeoTIFF readers expect), or None."""
        if self.epsg is None or pyproj is None:
            return None
        return pyproj.CRS.from_epsg(self.epsg).to_wkt(pyproj.enums.WktVersion.WKT1_GDAL)


def _none(scene: Scene, reason: str) -> Georef:
    return Georef(status="none", reason=reason, names=scene.names)


def _gps_views(scene: Scene) -> np.ndarray:
    """(N,) bool views with a horizontal GPS position."""
    if scene.gps is None:
        return np.zeros(scene.n_views, bool)
    return np.isfinite(scene.gps[:, :2]).all(axis=1)


def _filled_altitudes(gps: np.ndarray) -> tuple[np.ndarray, str]:
    """Missing altitudes -> the others' median (all missing: 0); returns (gps copy, note)."""
    gps = np.array(gps, np.float64)
    missing = ~np.isfinite(gps[:, 2])
    if not missing.any():
        return gps, ""
    if missing.all():
        gps[:, 2] = 0.0
        return gps, "no photo has a GPS altitude: heights are relative to the cameras (0 m)"
    gps[missing, 2] = float(np.median(gps[~missing, 2]))
    return gps, f"{int(missing.sum())} photo(s) without GPS altitude got the others' median"


def _fit_gps(scene: Scene, cfg: PostprocessConfig, has: np.ndarray) -> Georef:
    """The GPS fit (3+ views with a position); status none with the reason when it cannot be done."""
    if (why := pyproj_unavailable()) is not None:
        return _none(scene, f"not georeferenced: {why}")
    gps, note = _filled_altitudes(scene.gps[has])
    epsg = utm_epsg(float(np.median(gps[:, 0])), float(np.median(gps[:, 1])))
    crs_pts = gps_to_crs(gps, epsg)
    spread = float(np.sqrt((_spread(crs_pts) ** 2).sum()))
    if spread < cfg.gps_min_spread_m:
        return _none(
            scene,
            f"not georeferenced: the {int(has.sum())} GPS positions spread only {spread:.1f} m "
            f"(at least {cfg.gps_min_spread_m:g} m needed; closer together GPS noise would dominate)",
        )
    sv = _spread(crs_pts)
    centres = scene.world_from_cam[has, :3, 3].astype(np.float64)
    sc = _spread(centres)
    if sv[1] <= _COLLINEAR_RATIO * sv[0] or sc[1] <= _COLLINEAR_RATIO * max(sc[0], 1e-12):
        return _none(
            scene, "not georeferenced: the cameras with GPS lie on one line (the rotation about it is unknown)"
        )
    origin = np.round(crs_pts.mean(0))
    local = crs_pts - origin
    try:
        sim, inl = ransac_similarity(centres, local, cfg.gps_inlier_m)
    except ValueError as e:
        return _none(scene, f"not georeferenced: {e}")
    if inl.sum() < 3:
        return _none(
            scene,
            f"not georeferenced: no 3 photos' GPS positions agree with the reconstruction within "
            f"{cfg.gps_inlier_m:g} m",
        )
    residuals = np.full((scene.n_views, 3), np.nan)
    residuals[has] = sim.apply(centres) - local
    inliers = np.zeros(scene.n_views, bool)
    inliers[has] = inl
    rmse = float(np.sqrt(np.mean(np.sum(residuals[inliers] ** 2, axis=1))))
    notes = [note] if note else []
    if scene.gps is not None and parse_scale_from(cfg.scale_from) is not None:
        notes.append("scale_from is ignored: the GPS positions set the scale")
    return Georef(
        status="gps",
        reason="; ".join(notes),
        local_from_scene=sim,
        origin_offset=origin,
        epsg=epsg,
        names=scene.names,
        residuals=residuals,
        inliers=inliers,
        rmse_m=rmse,
        inlier_threshold_m=cfg.gps_inlier_m,
    )


def _fit_scale(scene: Scene, spec: tuple[str, str, float], n_gps: int) -> Georef:
    a, b, metres = spec
    missing = [n for n in (a, b) if n not in scene.names]
    if missing:
        return _none(
            scene,
            f"units unknown: scale_from names {', '.join(repr(n) for n in missing)}, not an image of this scene "
            f"(images: {', '.join(scene.names)})",
        )
    ca = scene.world_from_cam[scene.names.index(a), :3, 3].astype(np.float64)
    cb = scene.world_from_cam[scene.names.index(b), :3, 3].astype(np.float64)
    dist = float(np.linalg.norm(ca - cb))
    if not dist > 0:
        return _none(scene, f"units unknown: cameras {a!r} and {b!r} are at the same place; no scale from them")
    gis = f"no map position: {n_gps} photo(s) carry GPS (3 with well-spread positions needed)"
    return Georef(
        status="scale",
        reason=f"metric from scale_from ({a} to {b} = {metres:g} m); {gis}",
        local_from_scene=Similarity(metres / dist),
        names=scene.names,
    )


def georeference(scene: Scene, cfg: PostprocessConfig) -> Georef:
    """The scene's georeference from its views' GPS (``scene.gps``) or ``cfg.scale_from``.

    cfg: ``georeference`` (on/off), ``scale_from``, ``gps_inlier_m``, ``gps_min_spread_m``.
    Never raises for a scene without GPS: the returned :class:`Georef` says why (``reason``).
    """
    if not cfg.georeference:
        return _none(scene, "not georeferenced: georeferencing is off (georeference setting)")
    has = _gps_views(scene)
    spec = parse_scale_from(cfg.scale_from)
    geo = _fit_gps(scene, cfg, has) if has.sum() >= 3 else None
    if geo is not None and (geo.is_georeferenced or spec is None):
        return geo
    if spec is not None:
        if geo is not None:
            logger.info("%s; using scale_from instead", geo.reason)
        return _fit_scale(scene, spec, int(has.sum()))
    return _none(
        scene,
        f"not georeferenced: {int(has.sum())} of {scene.n_views} photos carry a GPS position in their EXIF "
        "(3 with well-spread positions needed) and no known distance is set (scale_from 'nameA,nameB,metres'); "
        "units are unknown",
    )


def transform_scene(scene: Scene, sim: Similarity) -> Scene:
    """The scene re-expressed by ``sim`` (e.g. ``local_from_scene``): poses, point maps, depths (times
    the scale) and sparse points; intrinsics, images and confidences unchanged. Returns a new Scene."""
    rot, s = sim.rotation, float(sim.scale)
    wfc = scene.world_from_cam.astype(np.float64)
    poses = np.tile(np.eye(4), (scene.n_views, 1, 1))
    poses[:, :3, :3] = rot @ wfc[:, :3, :3]
    poses[:, :3, 3] = sim.apply(wfc[:, :3, 3])
    changes: dict[str, Any] = {"world_from_cam": poses.astype(np.float32)}
    if scene.pts3d is not None:
        changes["pts3d"] = tuple(sim.apply(p).astype(np.float32) for p in scene.pts3d)
    if scene.depths is not None:
        changes["depths"] = tuple((d * s).astype(np.float32) for d in scene.depths)
    if scene.sparse is not None:
        changes["sparse"] = SparsePoints(
            xyz=sim.apply(scene.sparse.xyz).astype(np.float32),
            rgb=scene.sparse.rgb,
            track_length=scene.sparse.track_length,
            reproj_error=scene.sparse.reproj_error,
        )
    return dataclasses.replace(scene, **changes)


# ----------------------------------------------------------------------------------------------
# reporting


def _residual_rows(geo: Georef) -> list[dict[str, Any]]:
    if geo.residuals is None or geo.inliers is None:
        return []
    rows = []
    for name, res, inl in zip(geo.names, geo.residuals.tolist(), geo.inliers.tolist(), strict=True):
        if not all(math.isfinite(v) for v in res):
            rows.append({"name": name, "gps": False})
            continue
        east, north, up = res
        rows.append(
            {
                "name": name,
                "gps": True,
                "east_m": east,
                "north_m": north,
                "up_m": up,
                "error_m": math.sqrt(east**2 + north**2 + up**2),
                "inlier": bool(inl),
            }
        )
    return rows


def georef_document(geo: Georef, frames: str = "") -> dict[str, Any]:
    """The content of ``georef.json`` (JSON-ready). Keys: ``georeferenced``, ``status``, ``units``,
    ``crs`` ({epsg, name, wkt} or null), ``vertical``, ``similarity`` (scene -> CRS: scale, rotation,
    translation, matrix), ``local_from_scene`` (4x4), ``origin_offset`` [E, N, Z], ``frames``,
    ``residuals`` (per camera: east/north/up/error metres, inlier), ``rmse_m``, ``disagreeing``,
    ``inlier_threshold_m``, ``reason``."""
    crs_sim = geo.crs_from_scene
    crs = None
    if geo.epsg is not None:
        crs = {"epsg": geo.epsg, "name": geo.crs_name, "wkt": geo.crs_wkt()}
    return {
        "georeferenced": geo.is_georeferenced,
        "status": geo.status,
        "units": "metre" if geo.is_metric else "unknown",
        "crs": crs,
        "vertical": _VERTICAL if geo.is_georeferenced else None,
        "similarity": {
            "meaning": "x_crs = scale * rotation @ x_scene + translation (scene frame -> CRS coordinates)",
            "scale": crs_sim.scale,
            "rotation": crs_sim.rotation.tolist(),
            "translation": crs_sim.translation.tolist(),
            "matrix": crs_sim.matrix().tolist(),
        },
        "local_from_scene": geo.local_from_scene.matrix().tolist(),
        "origin_offset": geo.origin_offset.tolist(),
        "origin_offset_meaning": "x_crs = x_local + origin_offset; the local frame is x east, y north (UTM grid), "
        "z up, metres",
        "frames": frames,
        "residuals": _residual_rows(geo),
        "rmse_m": geo.rmse_m,
        "disagreeing": list(geo.disagreeing),
        "inlier_threshold_m": geo.inlier_threshold_m,
        "reason": geo.reason,
    }


def georef_summary(geo: Georef) -> str:
    """One line for the page's status: whether the scene is georeferenced, its CRS and RMSE, or why not."""
    if geo.status == "gps":
        n_used = int(geo.inliers.sum()) if geo.inliers is not None else 0
        n_gps = int(np.isfinite(geo.residuals).all(axis=1).sum()) if geo.residuals is not None else 0
        line = f"Georeferenced: {geo.crs_name} (EPSG:{geo.epsg}), RMSE {geo.rmse_m:.2f} m over {n_used} of {n_gps} "
        line += "cameras with GPS"
        if geo.disagreeing:
            line += f"; GPS disagrees for {', '.join(geo.disagreeing)}"
        return line
    if geo.status == "scale":
        return "Metric, not on the map: " + geo.reason
    return geo.reason[:1].upper() + geo.reason[1:]
