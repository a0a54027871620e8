"""The splat-ready folder passes what 3DGS / nerfstudio trainers check."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from config import PostprocessConfig, VizConfig
from core.inputs.exif_gps import attach_gps
from core.outputs.export import export_scene
from core.outputs.postprocessing import sparse_mask
from core.outputs.splat import write_splat_ready
from tests.core.scene_factory import make_sparse_scene
from tests.core.synthetic_town import make_town, town_scene, write_town_jpegs

OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def _check_trainer_contract(folder: Path, n_images: int) -> pycolmap.Reconstruction:
    """What trainers check: the model reads, camera sizes equal image files, points reproject within
    1 px where they are observed, transforms.json poses equal the COLMAP poses (OpenGL axes)."""
    rec = pycolmap.Reconstruction(str(folder / "sparse" / "0"))
    assert rec.num_reg_images() == n_images
    assert all(cam.model_name == "PINHOLE" for cam in rec.cameras.values())
    by_name = {}
    for image in rec.images.values():
        cam = rec.cameras[image.camera_id]
        with Image.open(folder / "images" / image.name) as im:
            assert im.size == (cam.width, cam.height), image.name
        cam_from_world = np.asarray(image.cam_from_world().matrix(), np.float64)
        by_name[image.name] = cam_from_world
        for p2d in image.points2D:
            if p2d.has_point3D():
                xyz = rec.points3D[p2d.point3D_id].xyz
                uv = cam.img_from_cam(cam_from_world[:, :3] @ xyz + cam_from_world[:, 3])
                assert np.linalg.norm(uv - p2d.xy) < 1.0, image.name
    doc = json.loads((folder / "transforms.json").read_text())
    assert len(doc["frames"]) == n_images
    for frame in doc["frames"]:
        name = Path(frame["file_path"]).name
        assert frame["file_path"] == f"images/{name}"
        c2w = np.asarray(frame["transform_matrix"]) @ OPENGL_FROM_OPENCV  # back to OpenCV axes
        cfw = np.eye(4)
        cfw[:3] = by_name[name]
        np.testing.assert_allclose(c2w, np.linalg.inv(cfw), atol=1e-9)
        w = frame.get("w", doc.get("w"))
        fl = frame.get("fl_x", doc.get("fl_x"))
        cam = next(rec.cameras[im.camera_id] for im in rec.images.values() if im.name == name)
        assert w == cam.width and fl == pytest.approx(cam.params[0])
    readme = (folder / "README.md").read_text()
    assert "ns-train splatfacto" in readme and "simple_trainer.py" in readme
    return rec


def test_dense_town_is_splat_ready_with_one_shared_camera(tmp_path: Path) -> None:
    town = make_town(grid=(3, 2), size=(96, 72))
    scene = attach_gps(town_scene(town)[0], write_town_jpegs(town, tmp_path / "photos"))
    post = dataclasses.replace(PostprocessConfig(), splat_max_points=6000)
    result = export_scene(scene, None, tmp_path / "out", {"splat-ready"}, post_cfg=post, viz_cfg=VizConfig())
    folder = result.written["splat-ready"]
    assert folder == tmp_path / "out" / "splat-ready"
    rec = _check_trainer_contract(folder, 6)
    assert len(rec.cameras) == 1 and rec.num_points3D() == 6000
    assert rec.compute_mean_track_length() > 2.0  # the views overlap: points are seen by several
    doc = json.loads((folder / "transforms.json").read_text())
    assert doc["w"] == 96 and doc["h"] == 72 and doc["ply_file_path"] == "sparse_pc.ply"
    assert (folder / "sparse_pc.ply").read_bytes().startswith(b"ply\n")
    assert "Units: metres" in (folder / "README.md").read_text()
    # georeferenced: the model is in the local metric frame (camera heights above the ground ~60 m)
    heights = [np.linalg.inv(np.r_[im.cam_from_world().matrix(), [[0, 0, 0, 1]]])[2, 3] for im in rec.images.values()]
    pts_z = np.array([p.xyz[2] for p in rec.points3D.values()])
    assert 50 < np.median(heights) - np.median(pts_z) < 70


def test_colmap_cameras_with_distortion_are_undistorted(tmp_path: Path) -> None:
    scene, _ = make_sparse_scene(n_views=3, height=48, width=64)
    f, (cx, cy) = float(scene.focals[0]), scene.principal_points[0]
    cams = [
        {
            "name": n,
            "model": "SIMPLE_RADIAL",
            "width": 128,
            "height": 96,
            "params": [2 * f, 2 * cx + 1, 2 * cy + 1, -0.08],
        }
        for n in scene.names
    ]
    scene = dataclasses.replace(scene, extra={"cameras": cams})
    out = write_splat_ready(scene, sparse_mask(scene, PostprocessConfig()), tmp_path / "s", max_points=1000)
    rec = _check_trainer_contract(out, 3)
    cam = next(iter(rec.cameras.values()))
    assert len(rec.cameras) == 1 and (cam.width, cam.height) != (64, 48)  # the undistorter's own size
    assert rec.num_points3D() > 100 and "undistorted by COLMAP" in (out / "README.md").read_text()
