"""EXIF GPS, the robust similarity fit and the georeference of a scene (synthetic town with GPS JPEGs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from config import AppConfig, PostprocessConfig, apply_settings
from core.errors import SettingsError
from core.inputs.exif_gps import attach_gps, gps_from_manifest, gps_records, read_gps, read_gps_many
from core.jobs import job_in_folder, write_manifest
from core.outputs.georef import (
    Similarity,
    georef_document,
    georef_summary,
    georeference,
    ransac_similarity,
    transform_scene,
    umeyama,
    utm_epsg,
)
from tests.core.synthetic_town import EPSG, ORIGIN, make_town, town_scene, write_gps_jpeg, write_town_jpegs

POST = PostprocessConfig()


@pytest.fixture(scope="module")
def town():
    return make_town()


@pytest.fixture(scope="module")
def scene(town):
    return town_scene(town)[0]


def _centres_in_crs(geo, scene) -> np.ndarray:
    return geo.crs_from_scene.apply(scene.world_from_cam[:, :3, 3].astype(np.float64))


# ----------------------------------------------------------------------------------------------
# EXIF


def test_gps_exif_round_trip_signs_and_altitude(tmp_path: Path) -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    a = write_gps_jpeg(tmp_path / "a.jpg", img, np.array([47.3769, 8.5417, 408.25]))
    b = write_gps_jpeg(tmp_path / "b.jpg", img, np.array([-33.8568, -151.2153, -12.5]))  # south, west, below sea
    lat, lon, alt = read_gps(a)
    assert lat == pytest.approx(47.3769, abs=1e-9) and lon == pytest.approx(8.5417, abs=1e-9)
    assert alt == pytest.approx(408.25)
    assert read_gps(b) == pytest.approx((-33.8568, -151.2153, -12.5), abs=1e-9)


def test_photos_without_gps_or_unreadable_have_no_position(tmp_path: Path) -> None:
    plain = write_gps_jpeg(tmp_path / "plain.jpg", np.zeros((8, 8, 3), np.uint8), None)
    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(png)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    assert read_gps(plain) is None and read_gps(png) is None and read_gps(junk) is None
    assert np.isnan(read_gps_many([plain, png, tmp_path / "missing.jpg"])).all()


def test_attach_gps_matches_views_by_name_and_the_manifest_keeps_it(town, scene, tmp_path: Path) -> None:
    paths = write_town_jpegs(town, tmp_path / "img")
    # the engine kept a subset of the views, in another order (as COLMAP does with unregistered images)
    sub = dataclasses.replace(
        scene,
        images=scene.images[:2][::-1],
        world_from_cam=scene.world_from_cam[:2][::-1],
        focals=scene.focals[:2],
        principal_points=scene.principal_points[:2],
        depths=None,
        pts3d=None,
        conf=None,
        names=scene.names[:2][::-1],
        original_sizes=(),
        original_from_processed=None,
    )
    got = attach_gps(sub, paths)
    assert got.gps.shape == (2, 3)
    np.testing.assert_allclose(got.gps[0], read_gps(paths[1]))
    np.testing.assert_allclose(got.gps[1], read_gps(paths[0]))
    job = job_in_folder(tmp_path / "job")
    write_manifest(job, cfg=AppConfig(), engine="colmap", status="done", timings={}, scene=got)
    images = json.loads(job.manifest_path.read_text())["images"]
    assert images[0]["gps"] == gps_records(got)[0] and images[0]["gps"]["lat"] == pytest.approx(got.gps[0, 0])
    # re-alignment reads the positions back from that manifest, by name
    back = gps_from_manifest(job.manifest_path, dataclasses.replace(got, gps=None))
    np.testing.assert_allclose(back.gps, got.gps)
    assert gps_from_manifest(tmp_path / "nope.json", sub).gps is None


# ----------------------------------------------------------------------------------------------
# the fit


def test_umeyama_and_ransac_recover_a_similarity_despite_outliers() -> None:
    rng = np.random.default_rng(3)
    src = rng.normal(size=(12, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))
    truth = Similarity(42.0, rot, np.array([5.0, -3.0, 100.0]))
    dst = truth.apply(src)
    fit = umeyama(src, dst)
    assert (
        fit.scale == pytest.approx(42.0)
        and np.allclose(fit.rotation, rot)
        and np.allclose(fit.translation, truth.translation)
    )
    dst[[2, 7]] += np.array([[300.0, 0, 0], [0, -250.0, 40.0]])
    fit, inliers = ransac_similarity(src, dst, 1.0)
    assert inliers.tolist() == [k not in (2, 7) for k in range(12)]
    np.testing.assert_allclose(fit.matrix(), truth.matrix(), atol=1e-8)
    with pytest.raises(ValueError, match="line"):
        ransac_similarity(np.outer(np.arange(5.0), [1, 0, 0]), np.outer(np.arange(5.0), [0, 1, 0]), 1.0)


def test_utm_zone_of_the_scene() -> None:
    assert utm_epsg(47.37, 8.54) == 32632 and utm_epsg(-33.9, 151.2) == 32756
    assert utm_epsg(60.4, 5.3) == 32632 and utm_epsg(78.2, 15.6) == 32633 and utm_epsg(0.0, -179.9) == 32601


def test_town_without_gps_noise_puts_cameras_within_10_cm(town, scene, tmp_path: Path) -> None:
    geo = georeference(attach_gps(scene, write_town_jpegs(town, tmp_path)), POST)
    assert geo.status == "gps" and geo.epsg == EPSG and geo.is_georeferenced
    err = np.linalg.norm(_centres_in_crs(geo, scene) - (town.centres + ORIGIN), axis=1)
    assert err.max() < 0.1 and geo.rmse_m < 0.1 and geo.disagreeing == ()
    assert geo.local_from_scene.scale == pytest.approx(1 / 0.037, rel=1e-4)
    doc = georef_document(geo)
    assert doc["crs"]["epsg"] == EPSG and "UTM zone 32N" in doc["crs"]["wkt"] and doc["units"] == "metre"
    assert doc["rmse_m"] == geo.rmse_m and len(doc["residuals"]) == town.centres.shape[0]
    np.testing.assert_allclose(np.array(doc["similarity"]["matrix"]), geo.crs_from_scene.matrix())
    assert georef_summary(geo).startswith("Georeferenced: WGS 84 / UTM zone 32N (EPSG:32632), RMSE 0.00 m")


def test_town_with_3_m_gps_noise_within_5_m_and_the_wrong_photo_is_named(town, scene, tmp_path: Path) -> None:
    paths = write_town_jpegs(town, tmp_path, noise_m=3.0, seed=4, offsets={"town_12.jpg": np.array([0.0, 120.0, 0.0])})
    geo = georeference(attach_gps(scene, paths), POST)
    assert geo.status == "gps" and geo.disagreeing == ("town_12.jpg",)
    err = np.linalg.norm(_centres_in_crs(geo, scene) - (town.centres + ORIGIN), axis=1)
    assert err.max() < 5.0  # the camera with the wrong GPS too: its position comes from the reconstruction
    assert 1.0 < geo.rmse_m < 6.0
    rows = {r["name"]: r for r in georef_document(geo)["residuals"]}
    assert rows["town_12.jpg"]["inlier"] is False and rows["town_12.jpg"]["error_m"] > 100
    assert "GPS disagrees for town_12.jpg" in georef_summary(geo)


def test_no_gps_is_a_clear_reason_and_scale_from_makes_it_metric(scene) -> None:
    geo = georeference(scene, POST)
    assert geo.status == "none" and not geo.is_metric
    assert "0 of 9 photos carry a GPS position" in geo.reason and "scale_from" in geo.reason
    assert georef_summary(geo).startswith("Not georeferenced")
    cfg = apply_settings(AppConfig(), {"scale_from": "town_00.jpg, town_02.jpg, 50"}).postprocess
    geo = georeference(scene, cfg)
    assert geo.status == "scale" and geo.is_metric and not geo.is_georeferenced and geo.epsg is None
    scaled = transform_scene(scene, geo.local_from_scene)
    c = scaled.world_from_cam[:, :3, 3]
    assert np.linalg.norm(c[0] - c[2]) == pytest.approx(50.0, rel=1e-5)
    assert scaled.depths[0][10, 10] == pytest.approx(scene.depths[0][10, 10] * geo.local_from_scene.scale, rel=1e-5)
    bad = georeference(scene, dataclasses.replace(POST, scale_from="town_00.jpg,nope.jpg,5"))
    assert bad.status == "none" and "'nope.jpg'" in bad.reason
    with pytest.raises(SettingsError, match="nameA,nameB,metres"):
        apply_settings(AppConfig(), {"scale_from": "a.jpg,5"})


def test_clustered_or_switched_off_gps_does_not_georeference(scene) -> None:
    gps = np.tile([47.3769, 8.5417, 400.0], (scene.n_views, 1)) + np.random.default_rng(0).normal(0, 1e-5, (9, 3))
    geo = georeference(dataclasses.replace(scene, gps=gps), POST)
    assert geo.status == "none" and "spread only" in geo.reason
    off = georeference(dataclasses.replace(scene, gps=gps), dataclasses.replace(POST, georeference=False))
    assert off.status == "none" and "off" in off.reason


def test_transform_scene_moves_points_and_poses_together(scene) -> None:
    sim = Similarity(2.5, np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), np.array([1.0, 2.0, 3.0]))
    out = transform_scene(scene, sim)
    k, r, c = 4, 30, 50
    np.testing.assert_allclose(out.pts3d[k][r, c], sim.apply(scene.pts3d[k][r, c]), rtol=1e-5)
    cam = np.linalg.inv(out.world_from_cam[k].astype(np.float64))
    p = cam[:3, :3] @ out.pts3d[k][r, c] + cam[:3, 3]
    assert p[2] == pytest.approx(out.depths[k][r, c], rel=1e-4)
