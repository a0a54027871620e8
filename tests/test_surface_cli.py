"""Surfaces and voxels end to end: ``main.py align`` on pair predictions of a known sphere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh

import main as cli
from core.outputs.voxels import read_binvox
from tests.core.synthetic_shapes import Sphere, arc_rig, shape_pair_predictions, similarity


def test_align_exports_a_surface_and_voxels_of_the_known_shape(tmp_path: Path, capsys) -> None:
    poses = arc_rig(3, 3.5, span_deg=90)
    preds, _ = shape_pair_predictions(Sphere(), poses, height=36, width=48, focal=43.0)
    preds.save_npz(tmp_path / "pairs.npz")
    out = tmp_path / "out"
    code = cli.main(
        ["align", str(tmp_path / "pairs.npz"), "-o", str(out), "--niter", "100", "--export", "surface,voxels",
         "--surface-res", "64", "--no-watertight", "--voxel-res", "32", "--voxel-fill", "surface", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    for name in ("surface.glb", "surface.ply", "surface.obj", "voxels.npz", "voxels.binvox", "voxels.glb"):
        assert (out / name).is_file(), name
    with np.load(out / "scene.npz") as scene:
        scale, rot, trans = similarity(scene["world_from_cam"][:, :3, 3].astype(np.float64), poses[:, :3, 3])
    mesh = trimesh.load(out / "surface.ply")
    assert len(mesh.faces) > 100
    pts = scale * np.asarray(mesh.vertices) @ rot.T + trans  # aligned frame -> the sphere's frame
    front = pts[pts[:, 2] < -0.5]  # the side the cameras saw
    assert len(front) > 100
    assert np.median(np.abs(Sphere().sdf(front))) < 0.05  # radius 1: within 5% of the true surface
    with np.load(out / "voxels.npz") as vox:
        assert vox["occupancy"].shape == (32, 32, 32) and vox["occupancy"].any()
        assert vox["colors"].shape == (32, 32, 32, 3) and vox["world_from_grid"].shape == (4, 4)
        occupancy = vox["occupancy"]
    np.testing.assert_array_equal(read_binvox(out / "voxels.binvox")[0], occupancy)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"surface", "voxels"} <= set(manifest["exports"]["written"])


def test_view_mode_surface_and_voxels_draw_the_fused_geometry(tmp_path: Path) -> None:
    from config import PostprocessConfig, VizConfig
    from core.outputs.export import export_scene
    from tests.core.synthetic_shapes import shape_scene, sphere_rig

    scene, _ = shape_scene(Sphere(), sphere_rig(6, 3.5), height=36, width=48, focal=43.0)
    for mode in ("surface", "voxels"):
        viz = VizConfig(view_mode=mode, surface_res=32, voxel_res=16)
        res = export_scene(scene, None, tmp_path / mode, {"glb"}, post_cfg=PostprocessConfig(), viz_cfg=viz)
        glb = trimesh.load(res.written["glb"])
        assert "surface" in glb.geometry and "mesh" not in glb.geometry and "camera_0" in glb.geometry


def test_sparse_scenes_say_surfaces_need_dense_depth(tmp_path: Path) -> None:
    import pytest

    from config import PostprocessConfig, VizConfig
    from core.errors import SettingsError
    from core.outputs.export import export_scene
    from tests.core.scene_factory import make_sparse_scene

    scene, _ = make_sparse_scene()
    res = export_scene(
        scene, None, tmp_path, {"surface", "voxels", "ply"}, post_cfg=PostprocessConfig(), viz_cfg=VizConfig()
    )
    assert set(res.skipped) == {"surface", "voxels"} and "dense depth" in res.skipped["surface"]
    with pytest.raises(SettingsError, match="dense depth"):
        export_scene(
            scene, None, tmp_path / "s", {"glb"}, post_cfg=PostprocessConfig(), viz_cfg=VizConfig(view_mode="surface")
        )
