"""GPS positions from the photos' EXIF (Pillow), read when the images are loaded.

A position is latitude and longitude in degrees (WGS 84, north and east positive) and the altitude in
metres as the EXIF states it (``GPSAltitude`` with ``GPSAltitudeRef`` 1 = below sea level; usually
above mean sea level). Arrays of positions are ``(N, 3) float64 (lat, lon, alt)``, NaN where a photo
has none (the altitude alone may be NaN). Files Pillow cannot read, or whose GPS tags are missing or
malformed, simply have no position; nothing here raises for a photo.

The pipeline attaches the positions to the scene right after the engine ran (:func:`attach_gps`, by
image name, so engines that drop images still match), the job's manifest records them per image, and
re-alignment reads them back from the manifest beside the pair predictions (:func:`gps_from_manifest`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from core.types import Scene

__all__ = ["read_gps", "read_gps_many", "attach_gps", "gps_from_manifest", "gps_records"]

logger = logging.getLogger(__name__)

_GPS = ExifTags.GPS


def _rational(value: Any) -> float:
    """An EXIF rational (IFDRational, float, int or a (num, den) pair) -> float (NaN when malformed)."""
    try:
        if isinstance(value, tuple) and len(value) == 2:
            return float(value[0]) / float(value[1])
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan


def _degrees(dms: Any, ref: Any, negative: str) -> float:
    """EXIF (degrees, minutes, seconds) and its N/S or E/W reference -> signed degrees (NaN when malformed)."""
    if not isinstance(dms, tuple) or not 1 <= len(dms) <= 3:
        return math.nan
    parts = [_rational(v) for v in dms] + [0.0] * (3 - len(dms))
    value = parts[0] + parts[1] / 60.0 + parts[2] / 3600.0
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    return -value if str(ref).strip().upper().startswith(negative) else value


def _altitude(gps: Any) -> float:
    alt = _rational(gps.get(_GPS.GPSAltitude, math.nan))
    ref = gps.get(_GPS.GPSAltitudeRef, 0)
    if isinstance(ref, bytes):
        ref = ref[0] if ref else 0
    return -alt if ref == 1 else alt


def read_gps(path: str | Path) -> tuple[float, float, float] | None:
    """The photo's GPS position ``(lat_deg, lon_deg, alt_m)`` from its EXIF, or None when it has none.

    The altitude is NaN when only the horizontal position is present. Unreadable files, missing or
    malformed tags and out-of-range values (|lat| > 90, |lon| > 180) give None, never an exception.
    """
    try:
        with Image.open(path) as img:
            gps = img.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        logger.debug("%s: no EXIF GPS (%s)", path, e)
        return None
    if not gps or _GPS.GPSLatitude not in gps or _GPS.GPSLongitude not in gps:
        return None
    lat = _degrees(gps.get(_GPS.GPSLatitude), gps.get(_GPS.GPSLatitudeRef, "N"), "S")
    lon = _degrees(gps.get(_GPS.GPSLongitude), gps.get(_GPS.GPSLongitudeRef, "E"), "W")
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        logger.info("%s: ignoring a malformed EXIF GPS position (%r, %r)", path, lat, lon)
        return None
    if lat == 0.0 and lon == 0.0:  # what some cameras write when they had no fix
        return None
    return lat, lon, _altitude(gps)


def read_gps_many(paths: Sequence[str | Path]) -> np.ndarray:
    """(N, 3) float64 (lat, lon, alt) of each file, NaN rows for files without a position."""
    out = np.full((len(paths), 3), np.nan)
    for k, p in enumerate(paths):
        fix = read_gps(p)
        if fix is not None:
            out[k] = fix
    return out


def _match_by_name(scene: Scene, names: Sequence[str], positions: np.ndarray) -> np.ndarray:
    """The (N, 3) positions of the scene's views, looked up by image name (NaN when not found)."""
    by_name = {}
    for name, pos in zip(names, positions, strict=True):
        by_name.setdefault(name, pos)
    out = np.full((scene.n_views, 3), np.nan)
    for k, name in enumerate(scene.names):
        if name in by_name:
            out[k] = by_name[name]
    return out


def attach_gps(scene: Scene, image_paths: Sequence[str | Path]) -> Scene:
    """The scene with ``gps`` read from the image files, matched to its views by file name.

    image_paths: the files the engine read (their names are the scene's ``names``); views whose name
    is not among them get NaN. Returns a new Scene; logs how many views have a position.
    """
    paths = [Path(p) for p in image_paths]
    gps = _match_by_name(scene, [p.name for p in paths], read_gps_many(paths))
    n = int(np.isfinite(gps[:, :2]).all(axis=1).sum())
    logger.info("GPS in the EXIF of %d of %d image(s)", n, scene.n_views)
    return dataclasses.replace(scene, gps=gps)


def gps_records(scene: Scene) -> list[dict[str, float] | None]:
    """Per view ``{"lat": deg, "lon": deg, "alt": m or None}`` or None (no position): the manifest's form."""
    if scene.gps is None:
        return [None] * scene.n_views
    out: list[dict[str, float] | None] = []
    for lat, lon, alt in np.asarray(scene.gps, np.float64).tolist():
        ok = math.isfinite(lat) and math.isfinite(lon)
        out.append({"lat": lat, "lon": lon, "alt": alt if math.isfinite(alt) else None} if ok else None)
    return out


def gps_from_manifest(manifest_path: str | Path, scene: Scene) -> Scene:
    """The scene with ``gps`` from a job manifest's ``images[k].gps`` (see :func:`gps_records`),
    matched by name; unchanged when the manifest is absent, unreadable or has no positions."""
    try:
        data = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
        images = data["images"]
        names = [str(im["name"]) for im in images]
        recs = [im.get("gps") for im in images]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return scene
    positions = np.full((len(recs), 3), np.nan)
    for k, rec in enumerate(recs):
        if isinstance(rec, dict) and rec.get("lat") is not None and rec.get("lon") is not None:
            alt = rec.get("alt")
            positions[k] = (float(rec["lat"]), float(rec["lon"]), math.nan if alt is None else float(alt))
    if not np.isfinite(positions[:, :2]).any():
        return scene
    return dataclasses.replace(scene, gps=_match_by_name(scene, names, positions))
