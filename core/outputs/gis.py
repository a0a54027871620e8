"""GIS files of a georeferenced scene: LAS/LAZ point cloud, DSM/DTM/ortho GeoTIFFs.

Every file is in the scene's CRS (:class:`core.outputs.georef.Georef`: WGS 84 / UTM, metres, altitude
as the photos' EXIF gave it), written from the kept points (the display masks) of the scene already
moved into the local frame (:func:`core.outputs.georef.transform_scene`), plus the origin offset.

- ``pointcloud.las`` (and ``pointcloud.laz`` when lazrs is installed): LAS 1.4, point format 7
  (RGB), the CRS as an OGC WKT VLR, scale 1 mm. Classification: 2 = ground, 1 = unclassified, from
  the cloth simulation filter (CSF, ``cloth-simulation-filter``) when it is installed and
  ``ground_filter`` is on (run on at most :data:`FILTER_MAX_POINTS` evenly sampled points; the rest
  take the class of their nearest sample); otherwise every point is 1.
- ``dsm.tif``: float32 GeoTIFF, the highest point per cell, nodata :data:`NODATA` where no point
  fell. North-up grid whose edges are multiples of the cell size in CRS coordinates; cell size
  ``dsm_cell`` or, when 0, :func:`default_cell` (1.5 x a dense scene's ground sample distance, or
  twice the median point spacing of a sparse one).
- ``dtm.tif`` (ground classified only): mean ground height per cell, holes under objects filled by
  linear interpolation between ground cells, nodata outside.
- ``ortho.tif``: the colour of the highest point per cell (RGB + alpha band, alpha 0 = nothing seen).

Open them in QGIS with Layer > Add Layer > Add Raster Layer (the .tif files) and Add Point Cloud
Layer (the .las/.laz); the CRS is read from the files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import griddata
from scipy.ndimage import binary_dilation, uniform_filter
from scipy.spatial import cKDTree

from config import PostprocessConfig
from core.outputs.georef import Georef, pyproj
from core.outputs.postprocessing import even_sample, gather_points, resolve_masks
from core.types import Scene

try:  # optional at import time; the "las" export says how to install it
    import laspy

    _LASPY_ERROR: str | None = None
except ImportError as _e:  # pragma: no cover - depends on the environment
    laspy = None  # type: ignore[assignment]
    _LASPY_ERROR = str(_e)
try:  # optional; the "dsm" export says how to install it
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import Affine

    _RASTERIO_ERROR: str | None = None
except ImportError as _e:  # pragma: no cover - depends on the environment
    rasterio = None  # type: ignore[assignment]
    _RASTERIO_ERROR = str(_e)
try:  # optional: without it there is no ground class and no DTM
    import CSF as _csf
except ImportError:  # pragma: no cover - depends on the environment
    _csf = None

__all__ = [
    "NODATA",
    "FILTER_MAX_POINTS",
    "RasterGrid",
    "las_unavailable",
    "raster_unavailable",
    "laz_available",
    "ground_filter_available",
    "crs_points",
    "pixel_spacing",
    "default_cell",
    "classify_ground",
    "raster_grid",
    "dsm_and_ortho",
    "dtm_from_ground",
    "write_las",
    "write_geotiff",
    "write_gis",
]

logger = logging.getLogger(__name__)

NODATA = -9999.0
"""DSM/DTM value of cells where nothing was seen."""
FILTER_MAX_POINTS = 200_000
"""The ground filter runs on at most this many evenly sampled points."""
_MAX_CELLS = 25_000_000
"""Rasters larger than this many cells get a coarser cell."""
_GROUND, _UNCLASSIFIED = 2, 1


def las_unavailable() -> str | None:
    """None when laspy imports, else why not and how to install it."""
    if laspy is None:
        return f"laspy is not installed ({_LASPY_ERROR}); install it with: pip install 'laspy[lazrs]'"
    return None


def raster_unavailable() -> str | None:
    """None when rasterio imports, else why not and how to install it."""
    if rasterio is None:
        return f"rasterio is not installed ({_RASTERIO_ERROR}); install it with: pip install rasterio"
    return None


def laz_available() -> bool:
    """Whether laspy can write compressed LAZ (a lazrs or laszip backend is installed)."""
    return laspy is not None and bool(laspy.LazBackend.detect_available())


def ground_filter_available() -> bool:
    """Whether the cloth simulation filter (package ``cloth-simulation-filter``) is installed."""
    return _csf is not None


def crs_points(scene_local: Scene, masks, geo: Georef) -> tuple[np.ndarray, np.ndarray]:
    """Kept points in CRS coordinates: ((M, 3) float64 easting, northing, altitude; (M, 3) uint8 RGB).

    scene_local: the scene in the local frame (``transform_scene(scene, geo.local_from_scene)``).
    """
    pts = gather_points(scene_local, masks)
    ok = np.isfinite(pts.xyz).all(axis=1)
    return pts.xyz[ok].astype(np.float64) + geo.origin_offset, pts.rgb[ok]


def _round2(value: float) -> float:
    """Round to 2 significant digits."""
    return round(value, 1 - int(math.floor(math.log10(value))))


def pixel_spacing(scene_local: Scene, masks) -> float | None:
    """Median horizontal distance (metres) between the points of neighbouring kept pixels of a dense
    scene (its ground sample distance), or None for sparse scenes or when no neighbours are kept."""
    if scene_local.pts3d is None:
        return None
    per_view = []
    for pts, keep in zip(scene_local.pts3d, resolve_masks(scene_local, masks), strict=True):
        d = [
            np.linalg.norm(pts[:, 1:, :2] - pts[:, :-1, :2], axis=-1)[keep[:, 1:] & keep[:, :-1]],
            np.linalg.norm(pts[1:, :, :2] - pts[:-1, :, :2], axis=-1)[keep[1:] & keep[:-1]],
        ]
        d = np.concatenate(d)
        d = d[np.isfinite(d)]
        if d.size:
            per_view.append(float(np.median(d)))
    return float(np.median(per_view)) if per_view else None


def default_cell(xy: np.ndarray, spacing: float | None = None) -> float:
    """Cell size from the point density (metres, 2 significant digits): 1.5 x ``spacing`` when given
    (a dense scene's ground sample distance, :func:`pixel_spacing`: every cell a view covers holds a
    point), else twice the median nearest-neighbour distance of the points. xy: (M, 2), M >= 2."""
    if spacing is not None and spacing > 0:
        return _round2(1.5 * spacing)
    xy = np.asarray(xy, np.float64)
    if len(xy) < 2:
        raise ValueError(f"need at least 2 points for a cell size, got {len(xy)}")
    sel = even_sample(len(xy), 50_000)
    sample = xy[sel]
    dist, _ = cKDTree(sample).query(sample, k=2)
    nn = float(np.median(dist[:, 1])) * math.sqrt(len(sample) / len(xy))
    return _round2(max(2.0 * nn, 1e-3))


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """The CSF library prints its progress on the C stdout; send file descriptor 1 to /dev/null meanwhile."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def classify_ground(xyz: np.ndarray, *, cloth_resolution: float) -> np.ndarray | None:
    """(M,) uint8 LAS classes (2 ground, 1 other) by the cloth simulation filter, or None when CSF is
    not installed. xyz: (M, 3) metres, z up. The filter runs on at most :data:`FILTER_MAX_POINTS`
    evenly sampled points; every other point takes the class of its nearest sample."""
    if _csf is None:
        return None
    xyz = np.asarray(xyz, np.float64)
    sel = even_sample(len(xyz), FILTER_MAX_POINTS)
    sample = xyz[sel]
    csf = _csf.CSF()
    csf.params.bSloopSmooth = True
    csf.params.cloth_resolution = float(cloth_resolution)
    csf.params.class_threshold = max(0.5, float(cloth_resolution) / 2)
    csf.params.rigidness = 2
    csf.setPointCloud(sample - sample.mean(0))
    ground, other = _csf.VecInt(), _csf.VecInt()
    with _stdout_silenced():
        csf.do_filtering(ground, other, False)
    sample_cls = np.full(len(sample), _UNCLASSIFIED, np.uint8)
    sample_cls[np.asarray(list(ground), np.int64)] = _GROUND
    if len(sample) == len(xyz):
        return sample_cls
    _, nearest = cKDTree(sample).query(xyz, k=1)
    return sample_cls[nearest]


# ----------------------------------------------------------------------------------------------
# rasters


@dataclass(frozen=True)
class RasterGrid:
    """A north-up grid in CRS coordinates: cell (row, col) covers x in [x0 + col*cell, x0 + (col+1)*cell)
    and y in (y_top - (row+1)*cell, y_top - row*cell]."""

    x0: float
    """West edge (CRS x)."""
    y_top: float
    """North edge (CRS y)."""
    cell: float
    """Cell size (metres)."""
    height: int
    width: int

    @property
    def transform(self):
        """The rasterio/GDAL affine transform."""
        return Affine(self.cell, 0.0, self.x0, 0.0, -self.cell, self.y_top)

    def cell_index(self, xy: np.ndarray) -> np.ndarray:
        """(M, 2) CRS x, y -> (M,) int64 flat cell index (row * width + col), -1 outside."""
        col = np.floor((xy[:, 0] - self.x0) / self.cell).astype(np.int64)
        row = np.floor((self.y_top - xy[:, 1]) / self.cell).astype(np.int64)
        inside = (col >= 0) & (col < self.width) & (row >= 0) & (row < self.height)
        return np.where(inside, row * self.width + col, -1)

    def centres(self) -> np.ndarray:
        """(height * width, 2) CRS x, y of the cell centres, flat index order."""
        cols, rows = np.meshgrid(np.arange(self.width), np.arange(self.height))
        x = self.x0 + (cols.ravel() + 0.5) * self.cell
        y = self.y_top - (rows.ravel() + 0.5) * self.cell
        return np.stack([x, y], axis=1)


def raster_grid(xy: np.ndarray, cell: float) -> RasterGrid:
    """The grid covering every point, edges at multiples of ``cell``; the cell grows when the raster
    would exceed :data:`_MAX_CELLS`. xy: (M, 2) CRS coordinates, M >= 1."""
    if not cell > 0:
        raise ValueError(f"cell size must be > 0, got {cell}")
    lo, hi = xy.min(0), xy.max(0)
    while True:
        x0, x1 = math.floor(lo[0] / cell) * cell, (math.floor(hi[0] / cell) + 1) * cell
        y0, y1 = math.floor(lo[1] / cell) * cell, (math.floor(hi[1] / cell) + 1) * cell
        width, height = round((x1 - x0) / cell), round((y1 - y0) / cell)
        if width * height <= _MAX_CELLS:
            return RasterGrid(float(x0), float(y1), float(cell), int(height), int(width))
        cell *= 2.0


def dsm_and_ortho(grid: RasterGrid, xyz: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Highest point per cell: ((H, W) float32 DSM with :data:`NODATA`, (4, H, W) uint8 RGBA ortho)."""
    idx = grid.cell_index(xyz[:, :2])
    ok = idx >= 0
    idx, z, rgb = idx[ok], xyz[ok, 2], rgb[ok]
    order = np.lexsort((z, idx))  # by cell, then height: the last of each cell is its highest point
    idx, z, rgb = idx[order], z[order], rgb[order]
    last = np.r_[idx[1:] != idx[:-1], True] if len(idx) else np.zeros(0, bool)
    dsm = np.full(grid.height * grid.width, NODATA, np.float32)
    dsm[idx[last]] = z[last]
    ortho = np.zeros((4, grid.height * grid.width), np.uint8)
    ortho[:3, idx[last]] = rgb[last].T
    ortho[3, idx[last]] = 255
    return dsm.reshape(grid.height, grid.width), ortho.reshape(4, grid.height, grid.width)


def dtm_from_ground(grid: RasterGrid, ground_xyz: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """(H, W) float32 terrain: mean ground height per cell, cells of ``footprint`` ((H, W) bool, e.g.
    where the DSM has data) without ground filled by linear interpolation; NODATA elsewhere."""
    n = grid.height * grid.width
    idx = grid.cell_index(ground_xyz[:, :2])
    ok = idx >= 0
    counts = np.bincount(idx[ok], minlength=n)
    sums = np.bincount(idx[ok], weights=ground_xyz[ok, 2], minlength=n)
    dtm = np.full(n, np.nan)
    has = counts > 0
    dtm[has] = sums[has] / counts[has]
    todo = footprint.ravel() & ~has
    for _ in range(2):  # isolated empty cells: the mean of their ground neighbours (3 or more)
        z2, ok2 = np.where(has, dtm, 0.0).reshape(grid.height, grid.width), has.reshape(grid.height, grid.width)
        num = uniform_filter(z2, 3, mode="constant").ravel()
        den = uniform_filter(ok2.astype(np.float64), 3, mode="constant").ravel()
        fill = todo & (den * 9 >= 2.5)
        dtm[fill], has, todo = num[fill] / den[fill], has | fill, todo & ~fill
    if todo.any() and has.sum() >= 3:
        # the ground cells around the holes carry the interpolation (a small triangulation)
        rim = binary_dilation(todo.reshape(grid.height, grid.width), np.ones((3, 3), bool)).ravel() & has
        rim = rim if rim.sum() >= 3 else has
        centres = grid.centres()
        try:
            dtm[todo] = griddata(centres[rim], dtm[rim], centres[todo], method="linear")
        except (ValueError, RuntimeError) as e:  # qhull: ground cells on one line
            logger.info("DTM holes left open: %s", e)
    return np.where(np.isfinite(dtm), dtm, NODATA).astype(np.float32).reshape(grid.height, grid.width)


def write_geotiff(path: Path, bands: np.ndarray, grid: RasterGrid, epsg: int, *, nodata: float | None) -> Path:
    """A deflate-compressed GeoTIFF. bands: (H, W) or (B, H, W); 4 uint8 bands are written as RGBA."""
    if (why := raster_unavailable()) is not None:
        raise RuntimeError(why)
    bands = bands[None] if bands.ndim == 2 else bands
    rgba = bands.shape[0] == 4 and bands.dtype == np.uint8
    profile = {
        "driver": "GTiff",
        "height": grid.height,
        "width": grid.width,
        "count": bands.shape[0],
        "dtype": bands.dtype.name,
        "crs": rasterio.crs.CRS.from_epsg(epsg),
        "transform": grid.transform,
        "compress": "deflate",
        "nodata": nodata,
    }
    if rgba:
        profile["photometric"] = "RGB"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
        if rgba:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return Path(path)


def write_las(path: Path, xyz: np.ndarray, rgb: np.ndarray, classes: np.ndarray, geo: Georef) -> Path:
    """LAS 1.4 point format 7 (RGB, 16-bit colours = 8-bit * 257), CRS as WKT; ``.laz`` compresses.

    xyz: (M, 3) float64 CRS coordinates; rgb: (M, 3) uint8; classes: (M,) uint8 LAS classes."""
    if (why := las_unavailable()) is not None:
        raise RuntimeError(why)
    header = laspy.LasHeader(point_format=7, version="1.4")
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.floor(xyz.min(0)) if len(xyz) else np.zeros(3)
    header.add_crs(pyproj.CRS.from_epsg(geo.epsg))
    header.generating_software = "dust3r-studio"
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rgb16 = rgb.astype(np.uint16) * 257
    las.red, las.green, las.blue = rgb16[:, 0], rgb16[:, 1], rgb16[:, 2]
    las.classification = classes
    las.write(str(path))
    return Path(path)


# ----------------------------------------------------------------------------------------------


def _cell_size(scene_local: Scene, masks, xyz: np.ndarray, cfg: PostprocessConfig) -> float:
    if cfg.dsm_cell > 0:
        return float(cfg.dsm_cell)
    return default_cell(xyz[:, :2], pixel_spacing(scene_local, masks))


def write_gis(
    scene_local: Scene, masks, geo: Georef, out_dir: Path, todo: set[str], cfg: PostprocessConfig
) -> tuple[dict[str, Path], dict[str, str]]:
    """Write the requested GIS files (``las``: pointcloud.las/.laz; ``dsm``: dsm.tif, dtm.tif, ortho.tif).

    Returns (key -> path written: ``las``, ``laz``, ``dsm``, ``dtm``, ``ortho``; note -> why a
    companion file was left out, e.g. ``dtm``). Raises ValueError for a scene that is not georeferenced
    or has fewer than 2 kept points.
    """
    if not geo.is_georeferenced or geo.epsg is None:
        raise ValueError(f"GIS files need a georeferenced scene ({geo.reason})")
    xyz, rgb = crs_points(scene_local, masks, geo)
    if len(xyz) < 2:
        raise ValueError(f"GIS files need at least 2 kept points, got {len(xyz)}")
    cell = _cell_size(scene_local, masks, xyz, cfg)
    classes, notes = None, {}
    if cfg.ground_filter:
        classes = classify_ground(xyz, cloth_resolution=max(2 * cell, 1.0))
        if classes is None:
            notes["dtm"] = (
                "no ground classification: install the cloth simulation filter (pip install cloth-simulation-filter)"
            )
    else:
        notes["dtm"] = "no ground classification: the ground filter is off (ground_filter)"
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    if "las" in todo:
        cls = classes if classes is not None else np.full(len(xyz), _UNCLASSIFIED, np.uint8)
        written["las"] = write_las(out_dir / "pointcloud.las", xyz, rgb, cls, geo)
        if laz_available():
            written["laz"] = write_las(out_dir / "pointcloud.laz", xyz, rgb, cls, geo)
    if "dsm" in todo:
        grid = raster_grid(xyz[:, :2], cell)
        dsm, ortho = dsm_and_ortho(grid, xyz, rgb)
        written["dsm"] = write_geotiff(out_dir / "dsm.tif", dsm, grid, geo.epsg, nodata=NODATA)
        if classes is not None and (classes == _GROUND).sum() >= 3:
            dtm = dtm_from_ground(grid, xyz[classes == _GROUND], dsm != NODATA)
            written["dtm"] = write_geotiff(out_dir / "dtm.tif", dtm, grid, geo.epsg, nodata=NODATA)
        elif classes is not None:
            notes["dtm"] = "fewer than 3 ground points"
        written["ortho"] = write_geotiff(out_dir / "ortho.tif", ortho, grid, geo.epsg, nodata=None)
        logger.info("DSM %dx%d cells of %.3g m", grid.width, grid.height, grid.cell)
    return written, notes
