"""Every export read back with the library its users would use (trimesh, pycolmap, numpy,
Pillow) and checked against the scene."""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import trimesh
from PIL import Image

from config import PostprocessConfig, VizConfig
from core.engines.colmap import original_from_display
from core.outputs.colmap_model import colmap_reconstruction
from core.outputs.export import (
    ALL_FORMATS,
    EXPORT_FORMATS,
    GIS_FORMATS,
    add_to_zip,
    cam_from_world_qt,
    colmap_intrinsics,
    export_scene,
    original_intrinsics,
    parse_formats,
    skipped_formats,
    write_colmap,
)
from core.outputs.postprocessing import gather_points, point_masks, sparse_mask
from core.outputs.visualization import scene_mesh
from tests.core.scene_factory import make_dense_scene, make_sparse_scene

POST = PostprocessConfig()
VIZ = VizConfig()
SCALE = 4.0  # uploads 4x larger than the processed images, cropped 8 resized rows at the top
CROP_TOP = 8


@pytest.fixture(scope="module")
def dense():
    syn = make_dense_scene(
        original_scale=SCALE, crop_top=CROP_TOP, names=("IMG_0001.JPG", "IMG_0002.JPG", "IMG_0003.JPG")
    )
    return syn.scene, point_masks(syn.scene, POST)


@pytest.fixture(scope="module")
def exported(dense, tmp_path_factory):
    scene, masks = dense
    out_dir = tmp_path_factory.mktemp("export")
    return export_scene(scene, masks, out_dir, parse_formats("all"), post_cfg=POST, viz_cfg=VIZ), out_dir


def test_parse_formats():
    assert parse_formats("glb, PLY ,npz") == {"glb", "ply", "npz"}
    assert parse_formats("all") == set(ALL_FORMATS) == set(EXPORT_FORMATS) | {"surface", "voxels"}  # issue 13
    assert parse_formats("zip") == {"zip"}
    with pytest.raises(ValueError, match="unknown export format.*stl.*valid: glb, ply"):
        parse_formats("glb,stl")
    with pytest.raises(ValueError, match="no export format"):
        parse_formats(" , ")
    with pytest.raises(TypeError):
        parse_formats(["glb"])  # type: ignore[arg-type]


def test_export_writes_every_format_and_zips_them(exported):
    result, out_dir = exported
    out = result.written
    # issue 17: the GIS formats are part of "all" and skipped with a reason when the scene has no GPS
    # issue 13: "all" also asks for the fused surface and voxels (each writes three files)
    fused = {"surface", "surface_ply", "surface_obj", "voxels", "voxels_binvox", "voxels_glb"}
    assert set(out) == (set(EXPORT_FORMATS) - set(GIS_FORMATS)) | {"maps"} | fused
    manifest = result.describe()
    assert set(manifest["skipped"]) == set(GIS_FORMATS) and manifest["written"]["zip"] == "reconstruction.zip"
    assert not (out_dir / "manifest.json").exists()  # the pipeline writes the job's manifest
    on_disk = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    with zipfile.ZipFile(out["zip"]) as zf:
        assert zf.testzip() is None
        assert set(zf.namelist()) == on_disk - {"reconstruction.zip"}
        assert zf.read("cameras.json") == out["json"].read_bytes()
    for required in (
        "scene.glb",
        "pointcloud.ply",
        "mesh.obj",
        "cameras.json",
        "scene.npz",
        "colmap/sparse/0/points3D.bin",
        "colmap/sparse/0/images.txt",
        "depth/IMG_0002_depth.png",
        "maps/IMG_0001_confmap.png",
    ):
        assert required in on_disk


def test_ply_read_back_with_trimesh(dense, exported):
    scene, masks = dense
    out = exported[0].written
    cloud = trimesh.load(out["ply"])
    pts = gather_points(scene, masks)
    assert len(cloud.vertices) == len(pts) == sum(int(m.sum()) for m in masks)
    np.testing.assert_array_equal(cloud.vertices.astype(np.float32), pts.xyz)
    np.testing.assert_array_equal(cloud.colors[:, :3], pts.rgb)
    raw = cloud.metadata["_ply_raw"]["vertex"]["data"]
    np.testing.assert_array_equal(raw["confidence"], pts.conf)
    assert out["ply"].read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")


def test_obj_read_back_with_trimesh(dense, exported):
    scene, masks = dense
    out = exported[0].written
    mesh = trimesh.load(out["obj"], process=False)
    verts, faces, cols = scene_mesh(scene, masks, depth_jump=VIZ.mesh_depth_jump, max_vertices=VIZ.max_points)
    assert len(mesh.vertices) == len(verts) and len(mesh.faces) == len(faces) > 1000
    np.testing.assert_allclose(mesh.vertices, verts, atol=1e-5)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_array_equal(mesh.visual.vertex_colors[:, :3], cols)


def test_glb_read_back_with_trimesh(exported):
    out = exported[0].written
    glb = trimesh.load(out["glb"])
    assert "mesh" in glb.geometry and "camera_2" in glb.geometry


def _scene_projection_original(scene, k, xyz):
    """Where the scene says world points land in ORIGINAL image k (integer pixel centres):
    scene K and pose -> processed pixels -> original_from_processed. Also returns z-depth."""
    cam_from_world = np.linalg.inv(scene.world_from_cam[k].astype(np.float64))
    pc = xyz @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    uv = scene.focals[k] * pc[:, :2] / pc[:, 2:] + scene.principal_points[k]
    hom = np.c_[uv, np.ones(len(uv))]
    return (hom @ scene.original_from_processed[k].T)[:, :2], pc[:, 2]


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_colmap_model_loads_and_reprojects_into_original_images(dense, exported, kind):
    scene, masks = dense
    out = exported[0].written
    rec = pycolmap.Reconstruction()
    getattr(rec, f"read_{kind}")(str(out["colmap"]))
    assert rec.num_images() == scene.n_views and rec.num_cameras() == scene.n_views
    kept = sum(int(m.sum()) for m in masks)
    assert rec.num_points3D() == min(kept, POST.colmap_max_points)
    params = colmap_intrinsics(scene)
    depths = scene.depths
    n_checked = 0
    for k, name in enumerate(scene.names):
        image = rec.find_image_with_name(name)
        assert image is not None
        cam = rec.camera(image.camera_id)
        assert cam.model_name == "PINHOLE"
        assert (cam.width, cam.height) == scene.original_sizes[k] == (256, 256)
        np.testing.assert_allclose(cam.params, params[k], rtol=1e-9)
        f = float(scene.focals[k])
        np.testing.assert_allclose(cam.params[:2], [f * SCALE, f * SCALE], rtol=1e-6)
        pose = np.asarray(image.cam_from_world().matrix())
        np.testing.assert_allclose(pose, np.linalg.inv(scene.world_from_cam[k].astype(np.float64))[:3], atol=1e-5)
        obs = image.get_observation_points2D()
        assert len(obs) > 100
        xyz = np.array([rec.point3D(p.point3D_id).xyz for p in obs])
        stored = np.array([p.xy for p in obs])
        colmap_proj = np.array([image.project_point(x) for x in xyz]) - 0.5  # COLMAP centres pixels at +0.5
        scene_says, z = _scene_projection_original(scene, k, xyz)
        assert np.abs(colmap_proj - scene_says).max() < 1.0  # the acceptance criterion
        assert np.abs(colmap_proj - scene_says).max() < 1e-3  # and in fact exact
        assert np.abs(stored - 0.5 - colmap_proj).max() < 1e-3
        # observations are visible (depth-consistent in view k), not occluded
        uv_proc = (np.c_[scene_says, np.ones(len(z))] @ np.linalg.inv(scene.original_from_processed[k]).T)[:, :2]
        u, v = np.rint(uv_proc).astype(int).T
        np.testing.assert_allclose(z, depths[k][v, u], rtol=0.021)
        n_checked += len(obs)
    assert n_checked == sum(len(p.track.elements) for p in rec.points3D.values())
    tracks = np.array([p.track.length() for p in rec.points3D.values()])
    assert tracks.min() >= 1 and tracks.mean() > 1.5  # multi-view tracks


def test_colmap_subsamples_and_refuses_duplicate_names(dense, tmp_path):
    scene, masks = dense
    model = write_colmap(scene, masks, tmp_path / "m", max_points=500)
    rec = pycolmap.Reconstruction(str(model))
    assert rec.num_points3D() == 500
    q, t = cam_from_world_qt(scene.world_from_cam[0])
    assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
    dup = make_dense_scene(n_views=2, height=16, width=16, names=("a.jpg", "a.jpg")).scene
    with pytest.raises(ValueError, match="unique image names"):
        write_colmap(dup, None, tmp_path / "d", max_points=10)


def test_colmap_intrinsics_map_pixel_centres():
    syn = make_dense_scene(n_views=1, height=16, width=16, original_scale=SCALE, crop_top=CROP_TOP)
    fx, fy, cx, cy = colmap_intrinsics(syn.scene)[0]
    # processed principal point (8, 8) = centre of pixel 8 = 8.5 in pixel-corner (COLMAP) coordinates;
    # the upload is 4x larger and 8 resized rows were cropped at the top
    assert (fx, fy) == pytest.approx((0.8 * 16 * SCALE,) * 2)
    assert (cx, cy) == pytest.approx((8.5 * SCALE, (8.5 + CROP_TOP) * SCALE))


def test_cameras_json(dense, exported):
    scene, _ = dense
    out = exported[0].written
    doc = json.loads(out["json"].read_text())
    assert "OpenCV" in doc["convention"] and "camera-to-world" in doc["convention"]
    assert doc["n_images"] == 3 and doc["final_loss"] == pytest.approx(scene.final_loss)
    k_orig = original_intrinsics(scene)
    for k, entry in enumerate(doc["images"]):
        assert entry["name"] == scene.names[k]
        assert entry["original_size"] == [256, 256] and entry["processed_size"] == [64, 48]
        np.testing.assert_allclose(entry["K_processed"], scene.intrinsics()[k])
        np.testing.assert_allclose(entry["K_original"], k_orig[k])
        wfc, cfw = np.array(entry["world_from_cam"]), np.array(entry["cam_from_world"])
        np.testing.assert_allclose(wfc, scene.world_from_cam[k], atol=1e-7)
        np.testing.assert_allclose(wfc @ cfw, np.eye(4), atol=1e-9)
        # K_original (integer pixel centres) = COLMAP params - 0.5 on the principal point
        fx, fy, cx, cy = colmap_intrinsics(scene)[k]
        np.testing.assert_allclose(
            np.array(entry["K_original"])[[0, 1, 0, 1], [0, 1, 2, 2]], [fx, fy, cx - 0.5, cy - 0.5]
        )
        assert entry["files"]["depth_png"] == f"depth/{scene.names[k][:-4]}_depth.png"
    assert doc["depth_png_scale"] > 0


def test_depth_and_confidence_files(dense, exported):
    scene, _ = dense
    result, out_dir = exported
    out = result.written
    doc = json.loads(out["json"].read_text())
    sidecar = json.loads((out["depth"] / "depth_png.json").read_text())
    scale = doc["depth_png_scale"]
    assert sidecar["depth_png_scale"] == scale
    for k, entry in enumerate(doc["images"]):
        depth = np.load(out_dir / entry["files"]["depth_npy"])
        np.testing.assert_array_equal(depth, scene.depths[k])
        np.testing.assert_array_equal(np.load(out_dir / entry["files"]["conf_npy"]), scene.conf[k])
        png = Image.open(out_dir / entry["files"]["depth_png"])
        assert png.mode in ("I;16", "I") and png.size == (64, 48)
        values = np.asarray(png).astype(np.float64)
        assert values.max() <= 65535 and (values > 0).all()
        np.testing.assert_allclose(values / scale, depth, atol=0.51 / scale)
    assert max(np.asarray(Image.open(out_dir / e["files"]["depth_png"])).max() for e in doc["images"]) == 65535
    gallery = sorted(p.name for p in out["maps"].iterdir())
    assert len(gallery) == 9 and "IMG_0003_depthmap.png" in gallery


def test_scene_npz(dense, exported):
    scene, masks = dense
    out = exported[0].written
    with np.load(out["npz"], allow_pickle=False) as z:
        required = {"world_from_cam", "focals", "principal_points", "final_loss"}
        for k in range(3):
            required |= {f"image_{k}", f"depth_{k}", f"pts3d_{k}", f"conf_{k}"}
        assert required <= set(z.files)
        assert z["world_from_cam"].shape == (3, 4, 4) and z["focals"].shape == (3,)
        assert z["principal_points"].shape == (3, 2)
        np.testing.assert_array_equal(z["world_from_cam"], scene.world_from_cam)
        assert float(z["final_loss"]) == pytest.approx(scene.final_loss)
        for k in range(3):
            assert z[f"image_{k}"].dtype == np.uint8 and z[f"image_{k}"].shape == (48, 64, 3)
            np.testing.assert_array_equal(z[f"image_{k}"], scene.images[k])
            np.testing.assert_array_equal(z[f"depth_{k}"], scene.depths[k])
            np.testing.assert_array_equal(z[f"pts3d_{k}"], scene.pts3d[k])
            np.testing.assert_array_equal(z[f"conf_{k}"], scene.conf[k])
            np.testing.assert_array_equal(z[f"mask_{k}"], masks[k])
        assert list(z["names"]) == list(scene.names)


def test_export_computes_masks_when_none_and_subsets(dense, tmp_path):
    scene, masks = dense
    out = export_scene(scene, None, tmp_path, {"ply"}, post_cfg=POST, viz_cfg=VIZ).written
    assert set(out) == {"ply"}
    assert len(trimesh.load(out["ply"]).vertices) == sum(int(m.sum()) for m in masks)
    unloss = make_dense_scene(n_views=2, height=16, width=16, final_loss=None).scene
    out = export_scene(unloss, None, tmp_path / "u", {"npz"}, post_cfg=POST, viz_cfg=VIZ).written
    with np.load(out["npz"]) as z:
        assert np.isnan(z["final_loss"])
    with pytest.raises(ValueError, match="unknown export format"):
        export_scene(scene, None, tmp_path, {"stl"}, post_cfg=POST, viz_cfg=VIZ)


def test_sparse_scene_exports(tmp_path):
    scene, outlier = make_sparse_scene()
    keep = sparse_mask(scene, POST)
    result = export_scene(scene, None, tmp_path, {"zip"}, post_cfg=POST, viz_cfg=VIZ)
    out = result.written
    assert set(out) == {"glb", "ply", "colmap", "json", "npz", "zip", "splat-ready"}  # + splat-ready (issue 17)
    reasons = skipped_formats(scene, set(EXPORT_FORMATS))
    gis = {f: reasons.pop(f) for f in GIS_FORMATS}  # issue 17: no GPS, no GIS files
    assert all("GPS" in r for r in gis.values())
    assert set(reasons) == {"obj", "depth"} and all("sparse" in r for r in reasons.values())
    reasons.update(gis)
    assert result.skipped == reasons and result.describe()["skipped"] == reasons
    assert json.loads(out["json"].read_text())["missing"] == reasons
    assert not (tmp_path / "mesh.obj").exists() and not (tmp_path / "depth").exists()
    cloud = trimesh.load(out["ply"])
    assert len(cloud.vertices) == keep.sum() == len(keep) - outlier.sum()
    raw = cloud.metadata["_ply_raw"]["vertex"]["data"]
    np.testing.assert_array_equal(raw["track_length"], scene.sparse.track_length[keep])
    np.testing.assert_array_equal(raw["reproj_error"], scene.sparse.reproj_error[keep])
    rec = pycolmap.Reconstruction(str(out["colmap"]))
    assert rec.num_points3D() == keep.sum() and rec.num_images() == 3
    xyz = np.array(sorted(tuple(p.xyz) for p in rec.points3D.values()))
    np.testing.assert_allclose(xyz, np.array(sorted(map(tuple, scene.sparse.xyz[keep].astype(np.float64)))), atol=1e-6)
    with np.load(out["npz"]) as z:
        assert not any(k.startswith(("depth_", "pts3d_", "conf_")) for k in z.files)
        assert set(z["missing_keys"]) == {"depth_k", "pts3d_k", "conf_k", "mask_k"}
        np.testing.assert_array_equal(z["sparse_xyz"], scene.sparse.xyz)
        np.testing.assert_array_equal(z["sparse_mask"], keep)
        assert "image_0" in z.files and "world_from_cam" in z.files
    with zipfile.ZipFile(out["zip"]) as zf:
        assert "colmap/sparse/0/cameras.bin" in zf.namelist()


def test_export_returns_written_and_skipped_and_writes_no_manifest(tmp_path):
    scene, _ = make_sparse_scene()
    keep = sparse_mask(scene, POST)
    result = export_scene(scene, keep, tmp_path, {"ply", "obj", "depth", "zip"}, post_cfg=POST, viz_cfg=VIZ)
    assert set(result.skipped) == {"obj", "depth", *GIS_FORMATS} and result.out_dir == tmp_path  # + GIS (issue 17)
    assert set(result.written) == {"glb", "ply", "colmap", "json", "npz", "zip", "splat-ready"}
    assert all(p.exists() and p.is_relative_to(tmp_path) for p in result.written.values())
    assert not list(tmp_path.rglob("manifest.json"))
    doc = result.describe()
    assert doc["written"]["colmap"] == "colmap/sparse/0" and doc["skipped"] == result.skipped
    json.dumps(doc)  # JSON-ready
    # the caller writes its manifest, then adds it to the zip once
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"exports": doc}))
    add_to_zip(result.written["zip"], [manifest], tmp_path)
    with zipfile.ZipFile(result.written["zip"]) as zf:
        assert zf.testzip() is None and json.loads(zf.read("manifest.json"))["exports"] == doc
        assert "pointcloud.ply" in zf.namelist()
    with pytest.raises(ValueError, match="already holds.*manifest.json"):
        add_to_zip(result.written["zip"], [manifest], tmp_path)


def _model_content(rec) -> tuple:
    cams = {i: (c.model_name, c.width, c.height, tuple(c.params)) for i, c in rec.cameras.items()}
    images = {
        i: (
            im.name,
            im.camera_id,
            np.asarray(im.cam_from_world().matrix()).round(9).tolist(),
            [(tuple(p.xy), p.point3D_id) for p in im.points2D],
        )
        for i, im in rec.images.items()
    }
    points = {
        i: (tuple(p.xyz), tuple(p.color), sorted((e.image_id, e.point2D_idx) for e in p.track.elements))
        for i, p in rec.points3D.items()
    }
    return cams, images, points


def test_colmap_model_written_by_pycolmap_reads_back_the_same_in_text_and_binary(dense, tmp_path):
    scene, masks = dense
    built = colmap_reconstruction(scene, masks, max_points=2000)
    model = write_colmap(scene, masks, tmp_path / "m", max_points=2000)
    assert {"cameras.txt", "images.txt", "points3D.txt", "cameras.bin", "images.bin", "points3D.bin"} <= {
        p.name for p in model.iterdir()
    }
    text, binary = pycolmap.Reconstruction(), pycolmap.Reconstruction()
    text.read_text(str(model))
    binary.read_binary(str(model))
    want = _model_content(binary)
    assert want == _model_content(built)
    t_cams, t_images, t_points = _model_content(text)
    assert t_cams == want[0] and t_images.keys() == want[1].keys() and t_points.keys() == want[2].keys()
    for i, (name, cam, pose, obs) in want[1].items():
        assert t_images[i][:3] == (name, cam, pose) and [o[1] for o in t_images[i][3]] == [o[1] for o in obs]
        np.testing.assert_allclose([o[0] for o in t_images[i][3]], [o[0] for o in obs], atol=1e-9)
    for i, (xyz, rgb, track) in want[2].items():
        assert t_points[i][1:] == (rgb, track)
        np.testing.assert_allclose(t_points[i][0], xyz, rtol=1e-12)
    # points = the even subsample of the kept points, in order, each observed in its source view
    pts = gather_points(scene, masks)
    sel = (np.arange(2000) * len(pts)) // 2000
    xyz = np.array([binary.points3D[i + 1].xyz for i in range(2000)])
    np.testing.assert_array_equal(xyz, pts.xyz[sel].astype(np.float64))
    for i in range(2000):
        assert pts.view[sel[i]] + 1 in {e.image_id for e in binary.points3D[i + 1].track.elements}
    assert max(p.error for p in binary.points3D.values()) < 1e-4  # observations are the projections


def _engine_scene(tmp_path: Path):
    """A sparse scene as the COLMAP engine leaves it: its model on disk (SIMPLE_RADIAL cameras,
    views 0 and 1 sharing one, run on images 2x the display size; the uploads are 4x), tracks of
    every point in the views that see it, plus keypoints without a 3-D point."""
    base, outlier = make_sparse_scene()
    colmap_size, original_size, display = (128, 96), (256, 192), (64, 48)
    src = pycolmap.Reconstruction()
    for cam_id in (1, 2):
        f, (cx, cy) = 2 * float(base.focals[0]), 2 * (base.principal_points[0].astype(np.float64) + 0.5)
        params = [f, cx, cy, 0.02]
        src.add_camera_with_trivial_rig(
            pycolmap.Camera(camera_id=cam_id, model="SIMPLE_RADIAL", width=128, height=96, params=params)
        )
    xyz = base.sparse.xyz.astype(np.float64)
    tracks: list[list[tuple[int, int]]] = [[] for _ in xyz]
    for k in range(base.n_views):
        cam = src.cameras[1 if k < 2 else 2]
        cam_from_world = np.linalg.inv(base.world_from_cam[k].astype(np.float64))[:3]
        in_cam = xyz @ cam_from_world[:3, :3].T + cam_from_world[:, 3]
        uv = cam.img_from_cam(in_cam, check_cheirality=False)
        seen = np.flatnonzero((in_cam[:, 2] > 0) & (uv >= 0).all(1) & (uv < colmap_size).all(1))
        keypoints = np.concatenate([uv[seen], [[3.0, 4.0], [50.0, 60.0]]])  # two untriangulated
        for i, s in enumerate(seen):
            tracks[s].append((k + 1, i))
        image = pycolmap.Image(
            name=f"{k:04d}_{base.names[k]}", keypoints=keypoints, camera_id=cam.camera_id, image_id=k + 1
        )
        src.add_image_with_trivial_frame(image, pycolmap.Rigid3d(cam_from_world))
    for s in range(len(xyz)):
        src.add_point3D(xyz[s], pycolmap.Track([pycolmap.TrackElement(*e) for e in tracks[s]]), base.sparse.rgb[s])
    model_dir = tmp_path / "colmap_work" / "sparse" / "0"
    model_dir.mkdir(parents=True)
    src.write_binary(str(model_dir))
    scene = dataclasses.replace(
        base,
        original_sizes=(original_size,) * base.n_views,
        original_from_processed=np.stack([original_from_display(original_size, display)] * base.n_views),
        extra={
            "model_dir": str(model_dir),
            "cameras": [{"name": n, "colmap_name": f"{k:04d}_{n}"} for k, n in enumerate(base.names)],
        },
    )
    return scene, src, model_dir


def test_colmap_engine_model_keeps_its_camera_model_and_tracks(tmp_path):
    scene, src, model_dir = _engine_scene(tmp_path)
    keep = sparse_mask(scene, POST)
    assert 0 < keep.sum() < len(keep)
    out = export_scene(scene, keep, tmp_path / "out", {"colmap"}, post_cfg=POST, viz_cfg=VIZ).written
    rec = pycolmap.Reconstruction(str(out["colmap"]))
    assert rec.num_cameras() == 2 and rec.num_images() == 3 and rec.num_points3D() == keep.sum()
    for k, name in enumerate(scene.names):
        image = rec.find_image_with_name(name)
        cam, src_cam = rec.camera(image.camera_id), src.cameras[1 if k < 2 else 2]
        assert (cam.model_name, cam.width, cam.height) == ("SIMPLE_RADIAL", 256, 192)
        np.testing.assert_allclose(cam.params, np.r_[2 * src_cam.params[:3], src_cam.params[3]], rtol=1e-12)
        np.testing.assert_allclose(image.cam_from_world().matrix(), src.images[k + 1].cam_from_world().matrix())
        for p in image.points2D:  # observations only, at twice the engine's pixels, where the camera puts them
            assert p.has_point3D()
            np.testing.assert_allclose(image.project_point(rec.point3D(p.point3D_id).xyz), p.xy, atol=1e-6)
    cam_ids = [rec.find_image_with_name(n).camera_id for n in scene.names]
    assert cam_ids[0] == cam_ids[1] != cam_ids[2]  # shared as the engine shared them
    src_ids = np.array(sorted(src.points3D))[keep]
    np.testing.assert_array_equal(
        np.array([rec.points3D[i].xyz for i in sorted(rec.points3D)]), [src.points3D[i].xyz for i in src_ids]
    )
    assert rec.compute_num_observations() == sum(src.points3D[i].track.length() for i in src_ids) > 2 * keep.sum()
    assert rec.compute_mean_reprojection_error() < 1e-4
    # once the engine's model is gone, the export falls back to pinhole cameras without tracks
    shutil.rmtree(model_dir)
    out = export_scene(scene, keep, tmp_path / "out2", {"colmap"}, post_cfg=POST, viz_cfg=VIZ).written
    rec = pycolmap.Reconstruction(str(out["colmap"]))
    assert {c.model_name for c in rec.cameras.values()} == {"PINHOLE"} and rec.compute_num_observations() == 0
