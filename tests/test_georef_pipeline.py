"""GPS read at load time, recorded in the manifest, and the GIS exports from the CLI (synthetic town;
a stand-in engine returns the town's exact scene, so no network or SfM runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import main as cli
import pipeline
from config import AppConfig, JobConfig
from core.types import Scene
from tests.core.synthetic_town import EPSG, make_town, town_scene, write_gps_jpeg, write_town_jpegs


class _TownEngine:
    """Returns a fixed scene whatever the images (its names are the photos' file names)."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def availability(self) -> str | None:
        return None

    def reconstruct(self, image_paths, cfg, job_dir, progress) -> Scene:
        progress("mapping", 1, 1)
        return self.scene


@pytest.fixture(scope="module")
def town():
    return make_town(grid=(2, 2), size=(64, 48))


def test_reconstruct_reads_the_gps_and_the_export_georeferences(town, tmp_path: Path) -> None:
    paths = write_town_jpegs(town, tmp_path / "photos", noise_m=1.0)
    engines = {"colmap": _TownEngine(town_scene(town)[0])}
    cfg = AppConfig(jobs=JobConfig(output_root=tmp_path / "jobs"))
    result = pipeline.reconstruct(paths, cfg, engine="colmap", engines=engines)
    assert result.scene.gps.shape == (4, 3) and np.isfinite(result.scene.gps).all()
    manifest = json.loads(result.job.manifest_path.read_text())
    assert all(im["gps"]["lat"] == pytest.approx(47.366, abs=0.01) for im in manifest["images"])
    with np.load(result.job.scene_path) as z:  # scene.npz: the local metric frame, with the way back
        np.testing.assert_allclose(z["gps"], result.scene.gps)
        assert z["local_from_scene"].shape == (4, 4)
    files = pipeline.export(result, cfg.postprocess, cfg.viz, ("las", "dsm", "georef"), out_dir=result.job.dir)
    assert {"las", "dsm", "georef"} <= set(files)
    doc = json.loads(files["georef"].read_text())
    assert doc["crs"]["epsg"] == EPSG and doc["rmse_m"] < 3.0
    exports = json.loads(result.job.manifest_path.read_text())["exports"]
    assert exports["georef"]["epsg"] == EPSG and exports["written"]["dsm"] == "dsm.tif"


@pytest.mark.parametrize("with_gps", [True, False])
def test_cli_gis_exports_and_the_message_without_gps(town, tmp_path: Path, monkeypatch, capsys, with_gps) -> None:
    photos = tmp_path / "photos"
    if with_gps:
        write_town_jpegs(town, photos)
    else:
        photos.mkdir()
        for name, image in zip(town.names, town.images, strict=True):
            write_gps_jpeg(photos / name, image, None)
    engine = _TownEngine(town_scene(town)[0])
    monkeypatch.setattr(pipeline, "make_engines", lambda cfg=None: {"dust3r": engine, "colmap": engine})
    out = tmp_path / "out"
    assert cli.main(["reconstruct", str(photos), "--output", str(out), "--export", "las,dsm,georef"]) == 0
    text = capsys.readouterr().out
    gis = [out / "pointcloud.las", out / "dsm.tif", out / "georef.json"]
    if with_gps:
        assert "Georeferenced: WGS 84 / UTM zone 32N (EPSG:32632)" in text
        assert all(p.is_file() for p in gis)
    else:
        assert "skipped las, dsm, georef: not georeferenced: 0 of 4 photos carry a GPS position" in text
        assert not any(p.exists() for p in gis) and not list(out.glob("*.tif"))
