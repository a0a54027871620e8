"""TSDF fusion and surface extraction against analytic shapes with exact depth maps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import trimesh

from config import AlignmentConfig, PostprocessConfig
from core.alignment import align
from core.errors import SettingsError, UserError
from core.outputs.postprocessing import point_masks
from core.outputs.surface import SURFACE_FILES, extract_surface, vertex_colors, write_surface
from core.outputs.tsdf import (
    DenseDepthRequiredError,
    EmptySurfaceError,
    SurfaceOptions,
    closed_field,
    fuse_tsdf,
    fusion_memory_bytes,
    grid_around,
    kept_points,
    require_dense_depth,
    surface_unavailable_reason,
)
from tests.conftest import one_torch_thread
from tests.core.scene_factory import make_sparse_scene
from tests.core.synthetic_shapes import (
    Box,
    Sphere,
    Torus,
    arc_rig,
    shape_pair_predictions,
    shape_scene,
    similarity,
    sphere_rig,
    surface_metrics,
)

SHAPES = {"sphere": Sphere(), "box": Box(), "torus": Torus()}
RES = 64
"""Voxels along the longest side in these tests (the app's default is 256)."""


_one_thread = pytest.fixture(autouse=True, scope="module", name="_one_thread")(one_torch_thread)


@pytest.fixture(scope="module")
def exact(_one_thread):
    """{name: (scene, hit masks, watertight volume, mesh)}: 24 views all around, exact depth."""
    out = {}
    for name, shape in SHAPES.items():
        scene, hits = shape_scene(shape, sphere_rig(24, 3.5))
        volume = fuse_tsdf(scene, hits, SurfaceOptions(resolution=RES))
        out[name] = (scene, hits, volume, extract_surface(volume, scene, hits))
    return out


@pytest.fixture(scope="module")
def noisy(_one_thread):
    """{name: (scene, display masks, mesh)}: 1% depth noise, 2% low-confidence outliers, masks from
    point_masks with the default display settings."""
    out = {}
    for name, shape in SHAPES.items():
        scene, _ = shape_scene(shape, sphere_rig(24, 3.5), noise=0.01, outlier_frac=0.02, seed=1)
        masks = point_masks(scene, PostprocessConfig())
        volume = fuse_tsdf(scene, masks, SurfaceOptions(resolution=RES))
        out[name] = (scene, masks, extract_surface(volume, scene, masks))
    return out


@pytest.mark.parametrize("name", list(SHAPES))
def test_watertight_surface_of_exact_depth(exact, name):
    shape = SHAPES[name]
    _, _, volume, mesh = exact[name]
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == shape.euler
    m = surface_metrics(mesh, shape, volume.grid.voxel_size)
    assert m["chamfer"] <= 1.5, m
    assert m["fscore"] >= 0.95, m
    assert abs(m["volume_ratio"] - 1) <= 0.05, m


@pytest.mark.parametrize("name", list(SHAPES))
def test_noisy_depth_with_low_confidence_outliers(noisy, name):
    shape = SHAPES[name]
    scene, masks, mesh = noisy[name]
    voxel = grid_around(kept_points(scene, masks), SurfaceOptions(resolution=RES)).voxel_size
    m = surface_metrics(mesh, shape, voxel)
    assert m["fscore"] >= 0.9, m
    assert mesh.is_watertight  # (noise may add a one-voxel handle, so the Euler number is not checked)


def test_observed_only_weights_outliers_by_confidence():
    """Every pixel kept, outliers included: their low confidence keeps them out of the surface."""
    shape = SHAPES["sphere"]
    scene, _ = shape_scene(shape, sphere_rig(24, 3.5), noise=0.01, outlier_frac=0.02, seed=1)
    volume = fuse_tsdf(scene, None, SurfaceOptions(resolution=RES, watertight=False))
    mesh = extract_surface(volume, scene)
    assert surface_metrics(mesh, shape, volume.grid.voxel_size)["fscore"] >= 0.9


def test_observed_only_invents_no_surface():
    """Seen from the front only: the watertight surface closes the back, the observed one does not."""
    shape = SHAPES["sphere"]
    scene, hits = shape_scene(shape, arc_rig(5, 3.5, span_deg=90))
    observed = fuse_tsdf(scene, hits, SurfaceOptions(resolution=RES, watertight=False))
    mesh = extract_surface(observed, scene, hits)
    voxel = observed.grid.voxel_size
    assert not mesh.is_watertight
    m = surface_metrics(mesh, shape, voxel)
    assert m["precision"] >= 0.99, m
    # the cameras are on the -z side: nothing of the far half was seen
    assert mesh.vertices[:, 2].max() < 0.5
    closed = extract_surface(fuse_tsdf(scene, hits, SurfaceOptions(resolution=RES)), scene, hits)
    assert closed.is_watertight  # the unseen back is filled in up to the grid (no Euler check: partial views)
    assert closed.vertices[:, 2].max() > mesh.vertices[:, 2].max() + 0.05


def test_chunking_leaves_no_seams(exact):
    """Fusing in tiny blocks gives bit-identical volumes and meshes (each voxel depends only on its centre)."""
    scene, hits, _, _ = exact["torus"]
    volumes = [fuse_tsdf(scene, hits, SurfaceOptions(resolution=32, chunk_voxels=c)) for c in (4096, 1 << 20)]
    small, big = volumes
    assert small.grid == big.grid and small.grid.n_voxels > 4 * 4096
    np.testing.assert_array_equal(small.tsdf, big.tsdf)
    np.testing.assert_array_equal(small.weight, big.weight)
    np.testing.assert_array_equal(small.hidden, big.hidden)
    meshes = [extract_surface(v, scene, hits) for v in volumes]
    np.testing.assert_array_equal(meshes[0].faces, meshes[1].faces)
    np.testing.assert_array_equal(meshes[0].vertices, meshes[1].vertices)


def test_grid_from_resolution_and_voxel_size():
    pts = np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.5]])
    grid = grid_around(pts, SurfaceOptions(resolution=100))
    assert grid.voxel_size == pytest.approx(0.02)
    pad = 3 + 2  # ceil(truncation) + 2
    assert grid.shape == (101 + 2 * pad, 51 + 2 * pad, 26 + 2 * pad)
    np.testing.assert_allclose(grid.world_from_grid() @ [pad, pad, pad, 1], [0, 0, 0, 1], atol=1e-12)
    assert grid_around(pts, SurfaceOptions(voxel_size=0.1)).shape[0] == 21 + 2 * pad
    with pytest.raises(SettingsError, match="voxel limit"):
        grid_around(pts, SurfaceOptions(voxel_size=1e-4))
    assert fusion_memory_bytes(grid, 1000, 1 << 18) == 9 * grid.n_voxels + 8 * 1000 + 120 * grid.n_voxels


def test_closed_field_is_solid_where_hidden(exact):
    _, _, volume, _ = exact["sphere"]
    field = closed_field(volume)
    g = volume.grid
    centre = np.round(-np.asarray(g.origin) / g.voxel_size).astype(int)
    assert field[tuple(centre)] < 0  # the centre of the sphere: never seen, hidden by every view
    assert (field[0] > 0).all() and (field[:, :, -1] > 0).all()
    ijk = np.argwhere(field < 0)
    inside = SHAPES["sphere"].sdf(np.asarray(g.origin) + g.voxel_size * ijk) < 1.5 * g.voxel_size
    assert inside.all()


def test_vertex_colors_come_from_the_views(exact):
    """shape_scene colours each surface point by the signs of its world coordinates (128 +- 100)."""
    scene, hits, volume, mesh = exact["sphere"]
    v = mesh.vertices
    rgb = mesh.visual.vertex_colors[:, :3].astype(int)
    away = (np.abs(v) > 0.15).all(1)  # vertices well inside one octant
    expected = np.clip(128 + 100 * np.sign(v[away]), 0, 255)
    assert (np.abs(rgb[away] - expected) <= 2).mean() > 0.98
    unseen = vertex_colors(np.array([[0.0, 0.0, 0.0]]), scene, hits, tolerance=0.01)  # the centre: no view sees it
    assert unseen.shape == (1, 3) and unseen.dtype == np.uint8


def test_decimation_to_a_face_budget(exact):
    scene, hits, volume, _ = exact["sphere"]
    mesh = extract_surface(volume, scene, hits, max_faces=2000)
    assert len(mesh.faces) <= 2000
    assert surface_metrics(mesh, SHAPES["sphere"], volume.grid.voxel_size)["fscore"] >= 0.9
    with pytest.raises(SettingsError, match="max_faces"):
        extract_surface(volume, scene, hits, max_faces=10)


def test_surface_files_read_back(exact, tmp_path):
    scene, _, _, mesh = exact["box"]
    glb_from_world = np.diag([1.0, -1.0, -1.0, 1.0])
    paths = write_surface(mesh, tmp_path, glb_from_world=glb_from_world)
    assert {p.name for p in paths.values()} == set(SURFACE_FILES.values())
    for fmt in ("ply", "obj"):
        back = trimesh.load(paths[fmt], process=False)
        assert len(back.faces) == len(mesh.faces)
        np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-5)
        np.testing.assert_array_equal(back.visual.vertex_colors[:, :3], mesh.visual.vertex_colors[:, :3])
    glb = trimesh.load(paths["glb"])
    (geom,) = glb.geometry.values()
    assert len(geom.faces) == len(mesh.faces)
    np.testing.assert_allclose(np.sort(geom.vertices[:, 1]), np.sort(-mesh.vertices[:, 1]), atol=1e-5)
    assert geom.visual.vertex_colors.shape == (len(geom.vertices), 4)


def test_sparse_scene_says_surfaces_need_dense_depth():
    scene, _ = make_sparse_scene()
    reason = surface_unavailable_reason(scene)
    assert reason is not None and "dense depth" in reason and "colmap" in reason
    with pytest.raises(DenseDepthRequiredError, match="dense depth") as info:
        fuse_tsdf(scene)
    assert isinstance(info.value, UserError)
    with pytest.raises(DenseDepthRequiredError):
        require_dense_depth(scene)


def test_bad_input_is_a_clear_error(exact):
    scene, hits, _, _ = exact["sphere"]
    with pytest.raises(EmptySurfaceError, match="no kept points"):
        fuse_tsdf(scene, [np.zeros_like(h) for h in hits])
    with pytest.raises(ValueError, match="expected 24 masks"):
        fuse_tsdf(scene, hits[:3])
    with pytest.raises(SettingsError, match="resolution"):
        SurfaceOptions(resolution=8)
    with pytest.raises(SettingsError, match="carve_window"):
        SurfaceOptions(carve_window=4)
    opts = dataclasses.replace(SurfaceOptions(), truncation_voxels=2.0)
    assert opts.truncation_voxels == 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fusion_on_cuda_matches_cpu(exact):
    scene, hits, volume, _ = exact["box"]
    gpu = fuse_tsdf(scene, hits, SurfaceOptions(resolution=RES), device="cuda")
    np.testing.assert_allclose(gpu.tsdf, volume.tsdf, atol=1e-4)
    assert (gpu.hidden != volume.hidden).mean() < 1e-3


def test_align_then_fuse_recovers_the_shape():
    """End to end: DUSt3R-like pair predictions of a known sphere -> global alignment -> display
    masks -> fusion. Compared after the similarity that maps the aligned cameras onto the true ones."""
    poses = arc_rig(3, 3.5, span_deg=90)
    preds, truth = shape_pair_predictions(Sphere(), poses, height=36, width=48, focal=43.0)
    scene = align(preds, AlignmentConfig(niter=100))
    masks = point_masks(scene, PostprocessConfig())
    scale, rot, trans = similarity(scene.world_from_cam[:, :3, 3].astype(np.float64), poses[:, :3, 3])
    for watertight in (False, True):
        volume = fuse_tsdf(scene, masks, SurfaceOptions(resolution=RES, watertight=watertight))
        mesh = extract_surface(volume, scene, masks)
        mesh.apply_transform(np.block([[scale * rot, trans[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]))
        voxel = volume.grid.voxel_size * scale
        assert mesh.is_watertight == watertight
        if not watertight:
            assert surface_metrics(mesh, Sphere(), voxel)["precision"] >= 0.95
        front = mesh.sample(5000, seed=0)
        front = front[front[:, 2] < -0.5]  # the side the cameras saw
        assert len(front) > 500
        assert (np.abs(Sphere().sdf(front)) < 2 * voxel).mean() >= 0.95
