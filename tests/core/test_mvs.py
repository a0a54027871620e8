"""Dense multi-view stereo (core/engines/mvs*.py): textured scenes with known depth, then the COLMAP
engine's dense run and its exports read back like the DUSt3R ones (tests/core/test_export.py)."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

from config import AppConfig, ColmapConfig, PostprocessConfig, VizConfig
from core.engines.colmap import STAGE_DENSE, ColmapEngine
from core.engines.mvs import MvsConfig, MvsView, dense_depth, depth_range, select_neighbors
from core.engines.mvs_colmap import rescale_affine, undistort
from core.engines.mvs_kernels import box_sum, consistent_views, level_images
from core.errors import Cancelled
from core.outputs.export import GIS_FORMATS, export_scene
from core.outputs.postprocessing import gather_points, point_masks
from core.outputs.visualization import scene_mesh, unique_stems
from tests.core.synthetic_render import render_orbit, sparse_points

POST = PostprocessConfig()
VIZ = VizConfig()


class _Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.calls.append((stage, done, total))

    def stage(self, name: str) -> list[tuple[int, int]]:
        return [c[1:] for c in self.calls if c[0] == name]


# --------------------------------------------------------------------------------------------
# Known cameras, known depth
# --------------------------------------------------------------------------------------------

N_VIEWS, WIDTH, HEIGHT, FOCAL = 6, 256, 192, 208.0


@pytest.fixture(scope="module")
def rendered():
    """6 views on a +-40 degree arc around the textured box, with exact depth maps."""
    views = render_orbit(
        N_VIEWS, width=WIDTH, height=HEIGHT, focal=FOCAL, with_depth=True, azimuth_range_deg=(-40.0, 40.0)
    )
    xyz, visible = sparse_points(views)
    mvs_views = [MvsView(v.image, v.K, np.linalg.inv(v.world_from_cam)) for v in views]
    return views, mvs_views, xyz, visible


@pytest.fixture(scope="module")
def dense(rendered):
    _, mvs_views, xyz, visible = rendered
    progress = _Progress()
    return dense_depth(mvs_views, xyz, visible, MvsConfig(), progress=progress), progress


def test_dense_depth_matches_the_rendered_depth(rendered, dense):
    """The acceptance criterion: median |relative depth error| < 1 % on kept pixels, >= 80 % of the
    textured pixels (those that see a surface) kept."""
    views, *_ = rendered
    result, _ = dense
    errors, kept, textured = [], 0, 0
    for k, view in enumerate(views):
        surface = np.isfinite(view.depth)
        keep = result.kept[k] & surface
        errors.append(np.abs(result.depths[k][keep] / view.depth[keep] - 1))
        kept, textured = kept + int(keep.sum()), textured + int(surface.sum())
    errors = np.concatenate(errors)
    assert np.median(errors) < 0.01, f"median relative depth error {np.median(errors):.4f}"
    assert kept / textured >= 0.8, f"kept {kept / textured:.3f} of the textured pixels"
    assert np.mean(errors > 0.05) < 0.02  # few gross outliers among the kept depths


def test_dense_depth_outputs_are_consistent(rendered, dense):
    views, mvs_views, _, _ = rendered
    result, progress = dense
    assert progress.stage(STAGE_DENSE) == [(k, N_VIEWS) for k in range(N_VIEWS + 1)]
    assert len(result.depths) == len(result.conf) == len(result.pts3d) == len(result.kept) == N_VIEWS
    assert result.depth_ranges.shape == (N_VIEWS, 2) and len(result.seconds) == N_VIEWS
    for k, view in enumerate(mvs_views):
        depth, conf, pts, kept = result.depths[k], result.conf[k], result.pts3d[k], result.kept[k]
        assert depth.shape == conf.shape == kept.shape == (HEIGHT, WIDTH) and pts.shape == (HEIGHT, WIDTH, 3)
        assert depth.dtype == conf.dtype == pts.dtype == np.float32 and kept.dtype == bool
        assert np.isfinite(depth).all() and (depth > 0).all() and np.isfinite(pts).all()
        # confidence: exactly 1 where not kept, > 3 (the default display threshold) where kept
        np.testing.assert_array_equal(conf[~kept], 1.0)
        assert (conf[kept] > 3).all() and (conf[kept] <= 1 + 2 * len(result.neighbors[k])).all()
        # pts3d are the depths lifted through K and the pose: project back to the pixel grid
        in_cam = pts.reshape(-1, 3) @ view.cam_from_world[:3, :3].T + view.cam_from_world[:3, 3]
        np.testing.assert_allclose(in_cam[:, 2], depth.reshape(-1), rtol=1e-4)
        uv = in_cam @ view.K.T
        rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
        np.testing.assert_allclose(uv[:, 0] / uv[:, 2], cols.reshape(-1), atol=2e-3)
        np.testing.assert_allclose(uv[:, 1] / uv[:, 2], rows.reshape(-1), atol=2e-3)
        assert k not in result.neighbors[k] and len(result.neighbors[k]) == 4
    # the uniform grey background (no texture) is essentially never kept
    background = sum(int((result.kept[k] & ~np.isfinite(v.depth)).sum()) for k, v in enumerate(views))
    assert background < 0.02 * N_VIEWS * WIDTH * HEIGHT


def test_dense_depth_cancel_between_views(rendered):
    _, mvs_views, xyz, visible = rendered
    progress = _Progress()
    with pytest.raises(Cancelled, match="after 1 of 3 views"):
        dense_depth(
            mvs_views[:3],
            xyz,
            visible[:3],
            dataclasses.replace(MvsConfig(), max_planes=32),
            progress=progress,
            cancel=lambda: progress.stage(STAGE_DENSE)[-1][0] >= 1,
        )
    assert progress.stage(STAGE_DENSE) == [(0, 3), (1, 3)]


def test_dense_depth_rejects_bad_input(rendered):
    _, mvs_views, xyz, visible = rendered
    with pytest.raises(ValueError, match="at least 2 views, got 1"):
        dense_depth(mvs_views[:1], xyz, visible[:1], MvsConfig())
    with pytest.raises(ValueError, match="one visibility list per view"):
        dense_depth(mvs_views[:2], xyz, visible[:3], MvsConfig())
    grey = dataclasses.replace(mvs_views[0], image=mvs_views[0].image[..., 0])
    with pytest.raises(ValueError, match=r"view 0: image must be \(H, W, 3\) uint8"):
        dense_depth([grey, mvs_views[1]], xyz, visible[:2], MvsConfig())
    with pytest.raises(ValueError, match="window must be odd"):
        MvsConfig(window=4)
    with pytest.raises(ValueError, match="min_planes <= max_planes"):
        MvsConfig(min_planes=64, max_planes=32)
    with pytest.raises(ValueError, match="mvs_size must be >= 64, got 10"):
        ColmapConfig(mvs_size=10)


def test_consistency_counts_agreeing_views(rendered):
    """Exact depth maps agree everywhere both views see the surface; a 5 % depth bias does not."""
    views, mvs_views, _, _ = rendered
    device = torch.device("cpu")
    images = [level_images(v.image, v.K, v.cam_from_world, 1, 7, device)[0] for v in mvs_views[:3]]
    truth = [torch.from_numpy(np.where(np.isfinite(v.depth), v.depth, 1e3).astype(np.float32)) for v in views[:3]]
    usable = [torch.from_numpy(np.isfinite(v.depth)) for v in views[:3]]
    agree = consistent_views(1, images, truth, usable, [0, 2], 1.0, 0.01).numpy()
    surface = np.isfinite(views[1].depth)
    assert agree.max() == 2 and np.mean(agree[surface] == 2) > 0.8
    biased = [truth[0], truth[1] * 1.05, truth[2]]
    biased_agree = consistent_views(1, images, biased, usable, [0, 2], 1.0, 0.01).numpy()
    assert np.mean(biased_agree[surface] > 0) < 0.01  # (a few pixels near occluding edges land on another surface)


# --------------------------------------------------------------------------------------------
# Small pieces, hand-computed
# --------------------------------------------------------------------------------------------


def test_box_sum_equals_a_zero_padded_window_sum():
    gen = torch.Generator().manual_seed(0)
    for shape in ((2, 13, 17), (1, 5, 4)):
        x = torch.rand(shape, generator=gen, dtype=torch.float64)
        for w in (3, 7):
            ref = F.conv2d(F.pad(x[:, None], (w // 2,) * 4), torch.ones(1, 1, w, w, dtype=torch.float64))[:, 0]
            torch.testing.assert_close(box_sum(x.clone(), w), ref)
    x = torch.zeros(9, 9, dtype=torch.float64)
    x[0, 0] = 1.0
    s = box_sum(x, 3)
    assert s[:2, :2].eq(1).all() and s.sum() == 4  # a corner pixel is in 4 windows


def test_select_neighbors_prefers_a_useful_triangulation_angle():
    # Cameras on the x axis at 10 units from the points: x = 0, 0.05 (0.3 deg), 0.9 (5 deg), 5 (27 deg).
    centres = np.array([[0.0, 0, 0], [0.05, 0, 0], [0.9, 0, 0], [5.0, 0, 0]])
    xyz = np.array([[0.0, 0, 10], [0.5, 0, 10], [0.3, 0.2, 10]])
    visible = [np.arange(3)] * 4
    order = select_neighbors(centres, xyz, visible, MvsConfig(num_neighbors=3))
    assert order[0] == (2, 3, 1)  # 5 degrees beats 27, which beats a near-zero baseline
    assert select_neighbors(centres, xyz, visible, MvsConfig(num_neighbors=1))[0] == (2,)
    # no shared point: ranked by distance
    assert select_neighbors(centres, xyz, [np.arange(0)] * 4, MvsConfig(num_neighbors=2))[0] == (1, 2)


def test_depth_range_widens_the_sparse_range_in_inverse_depth():
    xyz = np.array([[0.0, 0, 2], [0, 0, 4]])
    near, far = depth_range(np.eye(4), xyz, 0.0)
    assert (near, far) == pytest.approx((2.0, 4.0))
    near, far = depth_range(np.eye(4), xyz, 0.5)  # inverse span 0.25 -> +-0.125
    assert (near, far) == pytest.approx((1 / 0.625, 1 / 0.125))
    with pytest.raises(ValueError, match="in front of the camera"):
        depth_range(np.eye(4), -xyz, 0.2)


def _pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth grey pattern of normalised camera coordinates -> (..., 3) uint8."""
    g = 127.5 + 100 * np.sin(9 * x + 1) * np.cos(7 * y)
    return np.repeat(np.clip(g, 0, 255)[..., None], 3, -1).round().astype(np.uint8)


def test_undistort_gives_the_pinhole_image_the_scene_describes():
    w, h = 320, 240
    camera = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 200.0, w, h)
    camera.params = [200.0, 161.0, 118.0, -0.12]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    colmap_px = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], 1)  # COLMAP pixel centres
    norm = np.asarray(camera.cam_from_img(colmap_px))  # (HW, 2) undistorted normalised
    distorted = _pattern(norm[:, 0], norm[:, 1]).reshape(h, w, 3)
    errors = {}
    for max_side, scale in ((320, 1.0), (160, 0.5)):
        out, K = undistort(distorted, camera, max_side)
        assert out.shape == (round(h * scale), round(w * scale), 3) and out.dtype == np.uint8
        np.testing.assert_allclose(
            K, [[200 * scale, 0, 161 * scale - 0.5], [0, 200 * scale, 118 * scale - 0.5], [0, 0, 1]]
        )
        r, c = np.mgrid[0 : out.shape[0], 0 : out.shape[1]].astype(np.float64)
        expected = _pattern((c - K[0, 2]) / K[0, 0], (r - K[1, 2]) / K[1, 1])
        errors[scale] = np.abs(out.astype(float) - expected)[2:-2, 2:-2].mean()  # (the borders sample outside)
    # the distorted image read as if it were pinhole is far off; undistorted, it matches
    as_pinhole = np.abs(distorted.astype(float) - _pattern((cols - 160.5) / 200, (rows - 117.5) / 200)).mean()
    assert as_pinhole > 10 and errors[1.0] < 0.5 and errors[0.5] < 1.0, (as_pinhole, errors)
    # an exactly pinhole camera is only resized
    pinhole = pycolmap.Camera.create_from_model_name(2, "SIMPLE_PINHOLE", 200.0, w, h)
    out, K = undistort(distorted, pinhole, 320)
    np.testing.assert_array_equal(out, distorted)
    np.testing.assert_allclose(K, [[200, 0, 159.5], [0, 200, 119.5], [0, 0, 1]])
    with pytest.raises(ValueError, match="COLMAP camera is 320x240"):
        undistort(distorted[:100], camera, 320)


def test_rescale_affine_maps_pixel_centres():
    a = rescale_affine((400, 300), (200, 150))  # working 200x150 -> original 400x300
    np.testing.assert_allclose(a @ [0.0, 0.0, 1], [0.5, 0.5, 1])
    np.testing.assert_allclose(a @ [99.5, 74.5, 1], [199.5, 149.5, 1])


# --------------------------------------------------------------------------------------------
# The COLMAP engine's dense run and its exports
# --------------------------------------------------------------------------------------------

ENGINE_VIEWS, MVS_SIZE = 6, 224


@pytest.fixture(scope="module")
def colmap_dense(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("colmap_dense")
    paths = []
    for k, view in enumerate(render_orbit(ENGINE_VIEWS, width=320, height=240)):
        paths.append(folder / f"view_{k}.png")
        Image.fromarray(view.image).save(paths[-1])
    cfg = AppConfig(colmap=ColmapConfig(num_threads=2, mvs_size=MVS_SIZE))
    assert cfg.colmap.dense  # dense by default
    progress = _Progress()
    scene = ColmapEngine().reconstruct(paths, cfg, folder / "job", progress)
    return scene, progress, paths


def test_colmap_engine_runs_dense_by_default(colmap_dense):
    scene, progress, paths = colmap_dense
    assert scene.engine == "colmap" and scene.is_dense and scene.n_views == ENGINE_VIEWS
    assert progress.stage(STAGE_DENSE)[-1] == (ENGINE_VIEWS, ENGINE_VIEWS)
    stages = [c[0] for c in progress.calls]
    assert stages.index("mapping") < stages.index(STAGE_DENSE)
    # the scene stores the undistorted working-size images its intrinsics describe
    h, w = MVS_SIZE * 3 // 4, MVS_SIZE
    for k in range(scene.n_views):
        assert scene.images[k].shape == (h, w, 3)
        assert scene.depths[k].shape == scene.conf[k].shape == (h, w) and scene.pts3d[k].shape == (h, w, 3)
    np.testing.assert_allclose(scene.original_from_processed[0], rescale_affine((320, 240), (w, h)))
    assert scene.sparse is not None and len(scene.sparse.xyz) > 100  # the sparse points stay
    dense = scene.extra["dense"]
    assert dense["working_size"] == [w, h] and set(dense["kept_fraction"]) == set(scene.names)
    assert dense["mean_kept_fraction"] > 0.5 and "dense" in scene.extra["seconds"]
    # depth where COLMAP triangulated a point agrees with it (median relative difference < 1 %)
    model = pycolmap.Reconstruction(scene.extra["model_dir"])
    K = scene.intrinsics()
    rel = []
    for k, cam in enumerate(scene.extra["cameras"]):
        image = next(im for im in model.images.values() if im.name == cam["colmap_name"])
        xyz = np.array([model.points3D[p.point3D_id].xyz for p in image.points2D if p.has_point3D()])
        cam_from_world = np.linalg.inv(scene.world_from_cam[k].astype(np.float64))
        in_cam = xyz @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
        uv = np.rint(in_cam @ K[k].T / in_cam[:, 2:]).astype(int)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        u, v, z = uv[ok, 0], uv[ok, 1], in_cam[ok, 2]
        kept = scene.conf[k][v, u] > 1
        rel.append(np.abs(scene.depths[k][v, u][kept] / z[kept] - 1))
    assert np.median(np.concatenate(rel)) < 0.01


def test_colmap_cancel_before_matching(colmap_dense, tmp_path: Path):
    _, _, paths = colmap_dense
    with pytest.raises(Cancelled, match="before the matching stage"):
        ColmapEngine().reconstruct(paths, AppConfig(), tmp_path / "job", lambda *a: None, cancel=lambda: True)


@pytest.fixture(scope="module")
def colmap_exported(colmap_dense, tmp_path_factory):
    scene, _, _ = colmap_dense
    out_dir = tmp_path_factory.mktemp("colmap_dense_export")
    masks = point_masks(scene, POST)
    return export_scene(scene, None, out_dir, {"zip"}, post_cfg=POST, viz_cfg=VIZ), out_dir, masks


def test_dense_colmap_exports_read_back(colmap_dense, colmap_exported):
    scene, _, _ = colmap_dense
    res, out_dir, masks = colmap_exported
    out = res.written
    assert set(res.skipped) <= set(GIS_FORMATS)  # mesh and depth maps too now (only the GIS files need GPS)
    # PLY: every kept point, with confidence
    cloud = trimesh.load(out["ply"])
    pts = gather_points(scene, masks)
    assert len(cloud.vertices) == len(pts) > 1000
    np.testing.assert_array_equal(cloud.vertices.astype(np.float32), pts.xyz)
    np.testing.assert_array_equal(cloud.metadata["_ply_raw"]["vertex"]["data"]["confidence"], pts.conf)
    # mesh: the pixel-grid mesh of the kept depths
    mesh = trimesh.load(out["obj"], process=False)
    verts, faces, _ = scene_mesh(scene, masks, depth_jump=VIZ.mesh_depth_jump, max_vertices=VIZ.max_points)
    assert len(mesh.faces) == len(faces) > 1000
    np.testing.assert_allclose(mesh.vertices, verts, atol=1e-5)
    assert "mesh" in trimesh.load(out["glb"]).geometry
    # heatmaps and depth files per view
    for k, stem in enumerate(unique_stems(scene.names)):
        for kind in ("rgb", "depthmap", "confmap"):
            with Image.open(out_dir / "maps" / f"{stem}_{kind}.png") as im:
                assert im.size[0] > 0 and im.mode in ("RGB", "RGBA")
        np.testing.assert_array_equal(np.load(out_dir / "depth" / f"{stem}_depth.npy"), scene.depths[k])
        np.testing.assert_array_equal(np.load(out_dir / "depth" / f"{stem}_conf.npy"), scene.conf[k])
    # scene.npz: the DUSt3R keys
    with np.load(out["npz"]) as npz:
        assert str(npz["engine"]) == "colmap"
        for k in range(scene.n_views):
            np.testing.assert_array_equal(npz[f"image_{k}"], scene.images[k])
            np.testing.assert_array_equal(npz[f"depth_{k}"], scene.depths[k])
            np.testing.assert_array_equal(npz[f"pts3d_{k}"], scene.pts3d[k])
            np.testing.assert_array_equal(npz[f"conf_{k}"], scene.conf[k])
    # the zip holds everything written
    on_disk = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    with zipfile.ZipFile(out["zip"]) as zf:
        assert zf.testzip() is None and set(zf.namelist()) == on_disk - {"reconstruction.zip"}
        assert {"mesh.obj", "pointcloud.ply", "scene.npz", "colmap/sparse/0/points3D.bin"} <= set(zf.namelist())
