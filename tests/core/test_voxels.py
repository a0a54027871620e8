"""Voxel occupancy grids of analytic shapes, and their npz / binvox / GLB files."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from core.errors import SettingsError
from core.outputs.tsdf import DenseDepthRequiredError, EmptySurfaceError
from core.outputs.voxels import (
    VOXEL_FILES,
    VoxelModel,
    cube_grid,
    read_binvox,
    voxel_faces,
    voxelize,
    write_binvox,
    write_voxels,
)
from tests.conftest import one_torch_thread
from tests.core.scene_factory import make_sparse_scene
from tests.core.synthetic_shapes import Box, Sphere, Torus, shape_scene, sphere_rig

SHAPES = {"sphere": Sphere(), "box": Box(), "torus": Torus()}


_one_thread = pytest.fixture(autouse=True, scope="module", name="_one_thread")(one_torch_thread)


@pytest.fixture(scope="module")
def scenes(_one_thread):
    """{name: (scene, hit masks)}: 24 views all around, exact depth."""
    return {name: shape_scene(shape, sphere_rig(24, 3.5)) for name, shape in SHAPES.items()}


def _centres(model: VoxelModel) -> np.ndarray:
    """(N, N, N, 3) world centres of every voxel."""
    n = model.resolution
    ijk = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).astype(np.float64)
    return ijk @ model.world_from_grid[:3, :3].T + model.world_from_grid[:3, 3]


@pytest.mark.parametrize("name", list(SHAPES))
def test_solid_voxels_match_the_analytic_occupancy(scenes, name):
    scene, hits = scenes[name]
    model = voxelize(scene, hits, resolution=32)
    assert model.occupancy.shape == (32, 32, 32) and model.colors.shape == (32, 32, 32, 3)
    truth = SHAPES[name].sdf(_centres(model)) < 0
    iou = (truth & model.occupancy).sum() / (truth | model.occupancy).sum()
    assert iou >= 0.9, iou
    # the cube has one empty voxel of margin on each side, and the shape spans the rest
    occ = model.occupancy
    assert not occ[[0, -1]].any() and not occ[:, [0, -1]].any() and not occ[:, :, [0, -1]].any()
    assert np.ptp(np.argwhere(occ), axis=0).max() >= 28


def test_surface_voxels_are_a_shell(scenes):
    scene, hits = scenes["sphere"]
    solid = voxelize(scene, hits, resolution=32)
    shell = voxelize(scene, hits, resolution=32, fill="surface")
    assert (shell.occupancy <= solid.occupancy).all()
    assert shell.occupancy.sum() < solid.occupancy.sum() / 3
    voxel = shell.voxel_size
    assert (np.abs(Sphere().sdf(_centres(shell)[shell.occupancy])) < 1.5 * voxel).all()
    observed = voxelize(scene, hits, resolution=32, fill="surface", watertight=False)
    assert (np.abs(Sphere().sdf(_centres(observed)[observed.occupancy])) < 1.5 * voxel).all()
    assert observed.occupancy.sum() > 0.5 * shell.occupancy.sum()


def test_voxel_colours_come_from_the_kept_points(scenes):
    """shape_scene colours each surface point by the signs of its world coordinates (128 +- 100)."""
    scene, hits = scenes["box"]
    model = voxelize(scene, hits, resolution=32, fill="surface")
    centres = _centres(model)[model.occupancy]
    rgb = model.colors[model.occupancy].astype(int)
    away = (np.abs(centres) > 0.2).all(1)
    expected = np.clip(128 + 100 * np.sign(centres[away]), 0, 255)
    assert (np.abs(rgb[away] - expected) <= 30).all(1).mean() > 0.9
    assert (model.colors[~model.occupancy] == 0).all()


def test_voxel_files_round_trip(scenes, tmp_path):
    scene, hits = scenes["torus"]
    model = voxelize(scene, hits, resolution=32)
    paths = write_voxels(model, tmp_path)
    assert {p.name for p in paths.values()} == set(VOXEL_FILES.values())

    with np.load(paths["npz"]) as data:
        assert set(data.files) == {"occupancy", "colors", "world_from_grid"}
        assert data["occupancy"].dtype == bool and data["colors"].dtype == np.uint8
        np.testing.assert_array_equal(data["occupancy"], model.occupancy)
        np.testing.assert_array_equal(data["colors"], model.colors)
        np.testing.assert_allclose(data["world_from_grid"], model.world_from_grid)

    occ, world_from_grid = read_binvox(paths["binvox"])
    np.testing.assert_array_equal(occ, model.occupancy)
    np.testing.assert_allclose(world_from_grid, model.world_from_grid, rtol=1e-12, atol=1e-12)
    loaded = trimesh.load(paths["binvox"])  # trimesh's reader: same occupancy, its own placement
    np.testing.assert_array_equal(loaded.matrix, model.occupancy)

    glb = trimesh.load(paths["glb"])
    (mesh,) = glb.geometry.values()
    lo = model.world_from_grid @ np.append(np.argwhere(model.occupancy).min(0) - 0.5, 1)
    hi = model.world_from_grid @ np.append(np.argwhere(model.occupancy).max(0) + 0.5, 1)
    np.testing.assert_allclose(mesh.bounds, [lo[:3], hi[:3]], atol=1e-5)
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)


def test_binvox_follows_the_format(tmp_path):
    """x-z-y order with y fastest, RLE runs of at most 255, placement from translate and scale."""
    occ = np.zeros((16, 16, 16), bool)
    occ[1, 2, 3] = True
    occ[4:, :, :] = True  # a run longer than 255
    mat = np.diag([0.5, 0.5, 0.5, 1.0])
    mat[:3, 3] = (1.0, 2.0, 3.0)
    path = write_binvox(tmp_path / "v.binvox", occ, mat)
    raw = path.read_bytes()
    header, data = raw.split(b"data\n", 1)
    assert header.splitlines()[:4] == [b"#binvox 1", b"dim 16 16 16", b"translate 0.75 1.75 2.75", b"scale 8.0"]
    pairs = np.frombuffer(data, np.uint8).reshape(-1, 2)
    assert pairs[:, 1].max() <= 255 and pairs[:, 1].sum() == 16**3
    flat = np.repeat(pairs[:, 0], pairs[:, 1])
    assert flat[1 * 256 + 3 * 16 + 2] == 1  # index x * 256 + z * 16 + y
    back, back_mat = read_binvox(path)
    np.testing.assert_array_equal(back, occ)
    np.testing.assert_allclose(back_mat, mat)


def test_glb_faces_are_merged_and_closed():
    occ = np.zeros((16, 16, 16), bool)
    occ[2:6, 3:8, 4:9] = True  # one box of one colour: 6 rectangles
    colors = np.zeros((16, 16, 16, 3), np.uint8)
    colors[occ] = (200, 10, 20)
    model = VoxelModel(occupancy=occ, colors=colors, world_from_grid=np.diag([0.1, 0.1, 0.1, 1.0]))
    vertices, faces, rgb = voxel_faces(model)
    assert len(faces) == 12 and (rgb == (200, 10, 20)).all()
    mesh = trimesh.Trimesh(vertices, faces)
    mesh.merge_vertices()
    assert mesh.is_watertight and mesh.volume == pytest.approx(4 * 5 * 5 * 0.001)
    colors[2, 5, 6] = (0, 255, 0)  # a different colour on the -x face splits its rectangle
    _, faces2, _ = voxel_faces(VoxelModel(occupancy=occ, colors=colors, world_from_grid=model.world_from_grid))
    assert len(faces2) > len(faces)


def test_cube_grid_and_settings():
    grid = cube_grid(np.array([[0.0, 0.0, 0.0], [2.9, 1.0, 0.5]]), 32)
    assert grid.shape == (32, 32, 32) and grid.voxel_size == pytest.approx(0.1)
    np.testing.assert_allclose(grid.world_from_grid() @ [1, 0, 0, 1], [0.0, -1.05, -1.3, 1], atol=1e-12)
    for bad in (8, 300):
        with pytest.raises(SettingsError, match="16..256"):
            cube_grid(np.zeros((2, 3)), bad)


def test_voxel_errors(scenes):
    scene, hits = scenes["sphere"]
    with pytest.raises(SettingsError, match="watertight"):
        voxelize(scene, hits, fill="solid", watertight=False)
    with pytest.raises(SettingsError, match="fill"):
        voxelize(scene, hits, fill="hollow")  # type: ignore[arg-type]
    with pytest.raises(EmptySurfaceError):
        voxelize(scene, [np.zeros_like(h) for h in hits])
    with pytest.raises(DenseDepthRequiredError, match="dense depth"):
        voxelize(make_sparse_scene()[0])
