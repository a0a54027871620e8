"""GLB content and orientation, pixel-grid meshes, colour maps and gallery PNGs, read back with
trimesh and Pillow."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import trimesh
from PIL import Image

from config import PostprocessConfig, VizConfig
from core.outputs.postprocessing import gather_points, point_masks, sparse_mask
from core.outputs.visualization import (
    OPENGL_FROM_OPENCV,
    depth_colormap,
    glb_from_world,
    grid_faces,
    render_view_maps,
    scene_extent,
    scene_mesh,
    scene_to_glb,
    unique_stems,
)
from core.types import Scene
from tests.core.scene_factory import make_dense_scene, make_sparse_scene


@pytest.fixture(scope="module")
def syn():
    return make_dense_scene()


@pytest.fixture(scope="module")
def masks(syn):
    return point_masks(syn.scene, PostprocessConfig())


def _glb_json(path) -> dict:
    data = path.read_bytes()
    (json_len,) = struct.unpack_from("<I", data, 12)
    return json.loads(data[20 : 20 + json_len])


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of a, the distance to the closest row of b."""
    from scipy.spatial import cKDTree

    return cKDTree(b).query(a)[0]


def test_glb_is_oriented_for_gltf_viewers(syn, masks, tmp_path):
    scene = syn.scene
    assert not np.allclose(scene.world_from_cam[0], np.eye(4))  # the transform matters
    path = scene_to_glb(scene, masks, VizConfig(view_mode="pointcloud", cam_image=False), tmp_path / "s.glb")
    glb = trimesh.load(path)
    for name in glb.graph.nodes_geometry:
        np.testing.assert_allclose(glb.graph[name][0], np.eye(4))  # geometry baked in the GLB frame
    # points: exactly OpenGL-flip(cam_from_world[0] @ world points)
    pts = glb.geometry["points"].vertices
    world = gather_points(scene, masks).xyz.astype(np.float64)
    cam0 = (
        world @ np.linalg.inv(scene.world_from_cam[0].astype(np.float64))[:3, :3].T
        + np.linalg.inv(scene.world_from_cam[0].astype(np.float64))[:3, 3]
    )
    expected = cam0 * [1, -1, -1]
    assert len(pts) == len(expected)
    assert _nearest(expected, pts).max() < 1e-4
    # the first camera sits at the origin and looks down -Z: everything it sees has z < 0
    assert (pts[:, 2] < 0).all()
    # +Y is up: image rows above the principal point (v < cy) are at y > 0
    k0 = gather_points(scene, masks)
    first = k0.view == 0
    upper = first & (k0.rows < scene.principal_points[0, 1] - 2)
    lower = first & (k0.rows > scene.principal_points[0, 1] + 2)
    assert (expected[upper, 1] > 0).all() and (expected[lower, 1] < 0).all()
    # frustum of camera 0: apex at the origin, base at z = -cam_size * extent
    frustum = glb.geometry["camera_0"].vertices
    size = 0.05 * scene_extent(scene, world)
    assert np.abs(frustum[:, 2]).max() <= size * 1.05
    assert frustum[:, 2].min() == pytest.approx(-size, rel=0.05)
    assert np.linalg.norm(frustum, axis=1).min() < 0.05 * size


def test_glb_from_world_matches_the_convention(syn):
    t = glb_from_world(syn.scene)
    cam0 = syn.scene.world_from_cam[0].astype(np.float64)
    np.testing.assert_allclose(t @ cam0, OPENGL_FROM_OPENCV, atol=1e-6)
    forward_world = cam0[:3, :3] @ [0, 0, 1.0]  # camera 0's viewing direction
    np.testing.assert_allclose(t[:3, :3] @ forward_world, [0, 0, -1], atol=1e-6)
    down_world = cam0[:3, :3] @ [0, 1.0, 0]  # image "down"
    np.testing.assert_allclose(t[:3, :3] @ down_world, [0, -1, 0], atol=1e-6)


def test_glb_mesh_colours_cameras_and_materials(syn, masks, tmp_path):
    path = scene_to_glb(syn.scene, masks, VizConfig(), tmp_path / "mesh.glb")
    glb = trimesh.load(path)
    names = set(glb.geometry)
    assert names == {"mesh"} | {f"camera_{k}" for k in range(3)} | {f"camera_{k}_image" for k in range(3)}
    mesh = glb.geometry["mesh"]
    verts, faces, cols = scene_mesh(syn.scene, masks, depth_jump=0.05, max_vertices=VizConfig().max_points)
    assert len(mesh.vertices) == len(verts) and len(mesh.faces) == len(faces)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_array_equal(mesh.visual.vertex_attributes["color"][:, :3], cols)
    # textured image quad on camera 0: the corner with uv (0, 1) (image top-left) is up and left
    quad = glb.geometry["camera_0_image"]
    uv = quad.visual.uv
    tl = quad.vertices[np.argmin(np.abs(uv - [0, 1]).sum(1))]
    br = quad.vertices[np.argmin(np.abs(uv - [1, 0]).sum(1))]
    assert tl[0] < br[0] and tl[1] > br[1]
    texture = np.asarray(quad.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(texture, syn.scene.images[0])  # small images are kept as they are
    doc = _glb_json(path)
    assert "KHR_materials_unlit" in doc["extensionsUsed"]
    assert all("KHR_materials_unlit" in m["extensions"] and m.get("doubleSided") for m in doc["materials"])
    assert not any(m.get("alphaMode") == "BLEND" for m in doc["materials"])
    transparent = scene_to_glb(syn.scene, masks, VizConfig(cam_transparent=True), tmp_path / "t.glb")
    assert sum(m.get("alphaMode") == "BLEND" for m in _glb_json(transparent)["materials"]) >= 2


def test_camera_toggles_and_size(syn, masks, tmp_path):
    hidden = trimesh.load(scene_to_glb(syn.scene, masks, VizConfig(show_cameras=False), tmp_path / "a.glb"))
    assert set(hidden.geometry) == {"mesh"}
    no_img = trimesh.load(scene_to_glb(syn.scene, masks, VizConfig(cam_image=False), tmp_path / "b.glb"))
    assert set(no_img.geometry) == {"mesh", "camera_0", "camera_1", "camera_2"}
    small = trimesh.load(scene_to_glb(syn.scene, masks, VizConfig(cam_size=0.02), tmp_path / "c.glb"))
    big = trimesh.load(scene_to_glb(syn.scene, masks, VizConfig(cam_size=0.1), tmp_path / "d.glb"))
    ext_small = np.ptp(small.geometry["camera_1"].vertices, axis=0)
    ext_big = np.ptp(big.geometry["camera_1"].vertices, axis=0)
    np.testing.assert_allclose(ext_big / ext_small, 5.0, rtol=1e-4)
    with pytest.raises(ValueError, match="nothing to draw"):
        empty = tuple(np.zeros_like(m) for m in masks)
        scene_to_glb(syn.scene, empty, VizConfig(show_cameras=False), tmp_path / "e.glb")


def test_grid_faces_skip_depth_jumps():
    depth = np.ones((6, 8))
    depth[:, 4:] = 2.0  # a step between columns 3 and 4
    valid = np.ones((6, 8), bool)
    faces = grid_faces(valid, depth, 0.05)
    cols = faces % 8
    assert not ((cols.min(1) <= 3) & (cols.max(1) >= 4)).any()
    assert len(faces) == 2 * 5 * 3 * 2  # two triangles per quad, 3 quads per row on each side
    assert len(grid_faces(valid, depth, 1.5)) == 2 * 5 * 7  # a loose threshold bridges the step
    valid[2, 2] = False
    holed = grid_faces(valid, depth, 0.05)
    assert not (holed == 2 * 8 + 2).any() and len(holed) == len(faces) - 6
    # winding: faces look at the camera (normal towards -z for a fronto-parallel plane)
    v, u = np.mgrid[0:6, 0:8]
    pts = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3).astype(float)
    tri = pts[grid_faces(np.ones((6, 8), bool), np.ones((6, 8)), 0.05)]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert (normals[:, 2] < 0).all()


def test_glb_mesh_has_no_face_across_the_silhouette(syn, tmp_path):
    everything = tuple(np.ones(d.shape, bool) for d in syn.scene.depths)
    path = scene_to_glb(syn.scene, everything, VizConfig(show_cameras=False), tmp_path / "m.glb")
    mesh = trimesh.load(path).geometry["mesh"]
    # distance of each vertex from camera 0 (the GLB origin) is its depth along the ray
    dist = np.linalg.norm(mesh.vertices, axis=1)
    tri = dist[mesh.faces]
    assert (tri.max(1) / tri.min(1)).max() < 1.2  # sphere (~3-4) never joined to the wall (~6-10)
    obj_px = sum(int(o.sum()) for o in syn.object_masks)
    assert len(mesh.faces) > obj_px  # and the surfaces themselves are meshed


@pytest.mark.parametrize("as_pointcloud", [True, False])
def test_max_points_is_respected_and_deterministic(syn, masks, tmp_path, as_pointcloud):
    cfg = VizConfig(max_points=1000, view_mode="pointcloud" if as_pointcloud else "mesh", show_cameras=False)
    a = scene_to_glb(syn.scene, masks, cfg, tmp_path / "a.glb")
    b = scene_to_glb(syn.scene, masks, cfg, tmp_path / "b.glb")
    assert a.read_bytes() == b.read_bytes()
    geom = next(iter(trimesh.load(a).geometry.values()))
    assert 300 <= len(geom.vertices) <= 1000
    assert sum(int(m.sum()) for m in masks) > 5000


def test_sparse_scene_glb_draws_points(tmp_path):
    scene, outlier = make_sparse_scene()
    keep = sparse_mask(scene, PostprocessConfig())
    glb = trimesh.load(scene_to_glb(scene, keep, VizConfig(), tmp_path / "s.glb"))  # mesh mode falls back
    pts = glb.geometry["points"]
    assert len(pts.vertices) == keep.sum() == len(keep) - outlier.sum()
    expected = (scene.sparse.xyz[keep].astype(np.float64) @ glb_from_world(scene)[:3, :3].T) + glb_from_world(scene)[
        :3, 3
    ]
    assert _nearest(expected, pts.vertices).max() < 1e-4
    np.testing.assert_array_equal(np.sort(pts.colors[:, :3], axis=0), np.sort(scene.sparse.rgb[keep], axis=0))


def test_depth_colormap():
    d = np.array([[0.0, 1.0], [2.0, np.nan]])
    rgb = depth_colormap(d, 0.0, 2.0, "gray")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 0], [255, 255, 255])
    assert abs(int(rgb[0, 1, 0]) - 128) <= 1
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])  # invalid -> black
    with pytest.raises(ValueError, match="vmin"):
        depth_colormap(d, 1.0, 1.0)
    with pytest.raises(ValueError, match="colormap"):
        depth_colormap(d, 0.0, 1.0, "no_such_map")


def _flat_scene(depth_values: list[float]) -> Scene:
    n = len(depth_values)
    h, w = 30, 40
    depths = tuple(np.full((h, w), v, np.float32) for v in depth_values)
    v, u = np.mgrid[0:h, 0:w]
    pts = tuple(np.stack([(u - w / 2) * d / 40, (v - h / 2) * d / 40, d], -1).astype(np.float32) for d in depths)
    return Scene(
        images=tuple(np.full((h, w, 3), 60 * (k + 1), np.uint8) for k in range(n)),
        world_from_cam=np.tile(np.eye(4, dtype=np.float32), (n, 1, 1)),
        focals=np.full(n, 40, np.float32),
        principal_points=np.tile(np.array([w / 2, h / 2], np.float32), (n, 1)),
        depths=depths,
        pts3d=pts,
        conf=tuple(np.full((h, w), 2.0 + 10 * k, np.float32) for k in range(n)),
        names=tuple(f"shot {k}.png" for k in range(n)),
    )


def test_render_view_maps_share_one_scale(tmp_path):
    scene = _flat_scene([2.0, 4.0, 6.0])
    out = render_view_maps(scene, VizConfig(depth_cmap="viridis"), tmp_path, conf_threshold=3.0)
    assert len(out) == 9
    names = [p.name for p, _ in out]
    assert names[:3] == ["shot_0_rgb.png", "shot_0_depthmap.png", "shot_0_confmap.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out[0][0])), scene.images[0])
    assert "threshold 3" in out[2][1]
    centres = []
    for k in range(3):
        img = np.asarray(Image.open(out[3 * k + 1][0]).convert("RGB"))
        h, w = img.shape[:2]
        # the image axes span x in [0.01, 0.77], y in [0.02, 0.90] (bottom-up) of the figure
        centres.append(img[int(h * (1 - 0.46)), int(w * 0.39)].astype(int))
        assert img.shape[0] >= 300
    # one shared scale: three different depths, three different colours, ordered along viridis
    vmin, vmax = np.percentile([2.0] * 1200 + [4.0] * 1200 + [6.0] * 1200, [1, 99])
    for k, d in enumerate([2.0, 4.0, 6.0]):
        expected = depth_colormap(np.array([[d]]), vmin, vmax, "viridis")[0, 0].astype(int)
        assert np.abs(centres[k] - expected).max() <= 3
    assert np.abs(centres[0] - centres[2]).max() > 100
    assert len({o[1].split(": depth")[1] for o in out[1::3]}) == 1  # same range in every caption


def test_render_view_maps_sparse_and_bad_cmap(tmp_path):
    scene, _ = make_sparse_scene()
    out = render_view_maps(scene, VizConfig(), tmp_path / "sparse")
    assert [p.name for p, _ in out] == [f"view_{k}_rgb.png" for k in range(3)]
    with pytest.raises(ValueError, match="colormap"):
        render_view_maps(_flat_scene([1.0, 2.0]), VizConfig(depth_cmap="nope"), tmp_path / "bad")


def test_unique_stems():
    assert unique_stems(["a b.jpg", "dir/c.png", "a b.jpeg", "...", "x.y.z.jpg"]) == [
        "a_b",
        "c",
        "a_b_2",
        "image_3",
        "x.y.z",
    ]


def test_mesh_mode_falls_back_to_points_without_neighbours(syn, tmp_path):
    sparse_px = tuple(np.zeros(d.shape, bool) for d in syn.scene.depths)
    for m in sparse_px:
        m[::2, ::2] = True  # no two kept pixels are neighbours: no triangle possible
    glb = trimesh.load(scene_to_glb(syn.scene, sparse_px, VizConfig(show_cameras=False), tmp_path / "f.glb"))
    assert set(glb.geometry) == {"points"}
    assert len(glb.geometry["points"].vertices) == sum(int(m.sum()) for m in sparse_px)
