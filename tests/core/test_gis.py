"""GIS exports of the synthetic town: LAS/LAZ with its CRS, DSM/DTM/ortho GeoTIFFs, georef.json."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import laspy
import numpy as np
import pytest
import rasterio
import trimesh

from config import PostprocessConfig, VizConfig
from core.inputs.exif_gps import attach_gps
from core.outputs.export import EXPORT_FORMATS, GIS_FORMATS, export_scene, parse_formats, skipped_formats
from core.outputs.gis import NODATA, ground_filter_available
from tests.core.synthetic_town import EPSG, ORIGIN, ground_z, make_town, town_scene, write_town_jpegs

POST, VIZ = PostprocessConfig(), VizConfig()


@pytest.fixture(scope="module")
def town():
    return make_town()


@pytest.fixture(scope="module")
def exported(town, tmp_path_factory):
    scene = town_scene(town)[0]
    folder = tmp_path_factory.mktemp("town")
    scene = attach_gps(scene, write_town_jpegs(town, folder / "photos"))
    result = export_scene(scene, None, folder / "out", {"las", "dsm", "georef", "ply"}, post_cfg=POST, viz_cfg=VIZ)
    return result, scene


def _surface(town, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True top surface height (local z) below (x, y): roofs or the ground."""
    z = ground_z(x, y)
    for b in town.boxes:
        inside = (x >= b.x0) & (x <= b.x1) & (y >= b.y0) & (y <= b.y1)
        z = np.where(inside, b.top, z)
    return z


def test_formats_are_listed_and_parsed() -> None:
    assert {"las", "dsm", "georef", "splat-ready"} <= set(EXPORT_FORMATS) and EXPORT_FORMATS[-1] == "zip"
    assert parse_formats("las,dsm,georef") == set(GIS_FORMATS)


def test_las_reads_back_with_its_crs_and_points_where_they_belong(exported, town) -> None:
    result, _ = exported
    assert result.skipped == {} and {"las", "dsm", "dtm", "ortho", "georef"} <= set(result.written)
    las = laspy.read(result.written["las"])
    assert las.header.version.major == 1 and las.header.version.minor == 4 and las.header.point_format.id == 7
    assert las.header.parse_crs().to_epsg() == EPSG
    local = np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], 1) - ORIGIN
    err = np.abs(local[:, 2] - _surface(town, local[:, 0], local[:, 1]))
    assert len(local) > 50_000 and np.quantile(err, 0.99) < 0.05  # walls excepted, every point on its surface
    assert np.asarray(las.red).max() > 255  # 16-bit colours
    if ground_filter_available():
        roof = local[:, 2] > ground_z(local[:, 0], local[:, 1]) + 2.0
        ground = np.asarray(las.classification) == 2
        assert (ground[~roof]).mean() > 0.97 and (~ground[roof]).mean() > 0.97
    if "laz" in result.written:
        assert len(laspy.read(result.written["laz"]).points) == len(las.points)


def test_dsm_has_the_crs_transform_nodata_and_the_roof_heights(exported, town) -> None:
    result, _ = exported
    with rasterio.open(result.written["dsm"]) as ds:
        assert ds.crs.to_epsg() == EPSG and ds.nodata == NODATA and ds.count == 1
        t = ds.transform
        cell = t.a
        assert t.b == 0 and t.d == 0 and t.e == -cell and 0.3 < cell < 2.0
        assert t.c / cell == pytest.approx(round(t.c / cell)) and t.f / cell == pytest.approx(round(t.f / cell))
        dsm = ds.read(1)
        rows, cols = np.mgrid[0 : ds.height, 0 : ds.width]
        xs, ys = rasterio.transform.xy(t, rows.ravel(), cols.ravel())
    x, y = np.asarray(xs).reshape(dsm.shape) - ORIGIN[0], np.asarray(ys).reshape(dsm.shape) - ORIGIN[1]
    assert (dsm != NODATA).mean() > 0.9
    for b in town.boxes:
        inner = (x > b.x0 + cell) & (x < b.x1 - cell) & (y > b.y0 + cell) & (y < b.y1 - cell)
        assert inner.sum() > 20
        assert np.abs(dsm[inner] - (b.top + ORIGIN[2])).max() < cell, b
    open_ground = (dsm != NODATA) & (np.abs(dsm - ORIGIN[2] - _surface(town, x, y)) < 0.1 * cell)
    assert open_ground.mean() > 0.5
    if "dtm" in result.written:
        with rasterio.open(result.written["dtm"]) as ds:
            dtm = ds.read(1)
            assert ds.crs.to_epsg() == EPSG and ds.transform == t
        for b in town.boxes:  # under the roofs: the terrain, interpolated
            inner = (x > b.x0 + 1) & (x < b.x1 - 1) & (y > b.y0 + 1) & (y < b.y1 - 1) & (dtm != NODATA)
            assert inner.sum() > 20 and np.abs(dtm[inner] - ORIGIN[2] - ground_z(x[inner], y[inner])).max() < 1.0
    with rasterio.open(result.written["ortho"]) as ds:
        assert ds.count == 4 and ds.crs.to_epsg() == EPSG and ds.transform == t


def test_georef_json_and_world_frame_files_are_local_metres(exported, town) -> None:
    result, scene = exported
    doc = json.loads(result.written["georef"].read_text())
    assert doc["georeferenced"] and doc["crs"]["epsg"] == EPSG and doc["rmse_m"] < 0.1
    offset = np.array(doc["origin_offset"])
    np.testing.assert_allclose(offset, np.round(offset))
    sim = np.array(doc["similarity"]["matrix"])
    centres = scene.world_from_cam[:, :3, 3].astype(np.float64) @ sim[:3, :3].T + sim[:3, 3]
    np.testing.assert_allclose(centres, town.centres + ORIGIN, atol=0.1)
    assert "local frame" in result.frames and result.describe()["georef"]["epsg"] == EPSG
    ply = result.written["ply"].read_bytes()
    n = int(ply.split(b"element vertex ")[1].split(b"\n")[0])
    data = np.frombuffer(
        ply.split(b"end_header\n", 1)[1], np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3), ("c", "<f4")])
    )
    assert len(data) == n
    local = data["xyz"].astype(np.float64) + offset - ORIGIN  # local frame + offset = UTM
    assert np.quantile(np.abs(local[:, 2] - _surface(town, local[:, 0], local[:, 1])), 0.99) < 0.05


def test_the_glb_of_a_georeferenced_scene_is_level_in_the_local_frame(town, tmp_path: Path) -> None:
    """scene.glb holds the local east-north-up points with glTF's axes (x east, y up, z south)."""
    scene = attach_gps(town_scene(town)[0], write_town_jpegs(town, tmp_path / "photos"))
    viz = VizConfig(view_mode="pointcloud", show_cameras=False)
    result = export_scene(scene, None, tmp_path / "out", {"glb", "georef"}, post_cfg=POST, viz_cfg=viz)
    offset = np.array(json.loads(result.written["georef"].read_text())["origin_offset"])
    glb = trimesh.load(result.written["glb"])
    points = np.concatenate([np.asarray(g.vertices) for g in glb.geometry.values()])
    east, up, north = points[:, 0], points[:, 1], -points[:, 2]
    local = np.stack([east, north, up], 1) + offset - ORIGIN
    assert len(points) > 1000
    assert np.quantile(np.abs(local[:, 2] - _surface(town, local[:, 0], local[:, 1])), 0.99) < 0.05


def test_photos_without_gps_give_a_clear_message_and_no_gis_files(tmp_path: Path) -> None:
    small = make_town(grid=(2, 2), size=(48, 36))
    scene = attach_gps(town_scene(small)[0], write_town_jpegs(small, tmp_path / "photos")[:1])  # one photo with GPS
    result = export_scene(scene, None, tmp_path / "out", {"las", "dsm", "georef", "zip"}, post_cfg=POST, viz_cfg=VIZ)
    tmp_path = tmp_path / "out"
    for fmt in GIS_FORMATS:
        assert "1 of 4 photos carry a GPS position" in result.skipped[fmt]
    assert result.skipped == {k: v for k, v in skipped_formats(scene, set(EXPORT_FORMATS)).items() if k in GIS_FORMATS}
    assert (
        not any(tmp_path.glob("*.las")) and not any(tmp_path.glob("*.tif")) and not (tmp_path / "georef.json").exists()
    )
    with zipfile.ZipFile(result.written["zip"]) as zf:
        assert not any(n.endswith((".las", ".laz", ".tif")) or n == "georef.json" for n in zf.namelist())
        assert "splat-ready/transforms.json" in zf.namelist()
