"""Cleaning, confidence threshold and background filters on scenes with known defects."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from config import PostprocessConfig
from core.outputs.postprocessing import (
    clean_pointcloud,
    confidence_masks,
    gather_points,
    largest_component_mask,
    point_masks,
    resolve_masks,
    sky_mask,
    sparse_mask,
    statistical_outlier_mask,
)
from core.types import Scene
from tests.core.scene_factory import make_dense_scene, make_sparse_scene

NO_FILTERS = PostprocessConfig(clean_depth=False, outlier_removal=False, largest_component=False, mask_sky=False)


def _fixture_scene(fixtures_dir, name: str) -> tuple[Scene, np.lib.npyio.NpzFile, str]:
    data = np.load(fixtures_dir / f"{name}.npz")
    pre = "ga_" if name == "synth_ga" else ""
    n = data[pre + "im_poses"].shape[0]
    scene = Scene(
        images=tuple(np.zeros((*data[f"{pre}depthmap_{k}"].shape, 3), np.uint8) for k in range(n)),
        world_from_cam=data[pre + "im_poses"],
        focals=data[pre + "focals"].reshape(-1),
        principal_points=data[pre + "pp"],
        depths=tuple(data[f"{pre}depthmap_{k}"] for k in range(n)),
        pts3d=tuple(data[f"{pre}pts3d_{k}"] for k in range(n)),
        conf=tuple(data[f"{pre}im_conf_{k}"] for k in range(n)),
    )
    return scene, data, pre


@pytest.mark.parametrize("name", ["tiny_linear_ga", "tiny_dpt_ga", "synth_ga"])
def test_clean_pointcloud_matches_reference(fixtures_dir, name):
    scene, data, pre = _fixture_scene(fixtures_dir, name)
    before = [c.copy() for c in scene.conf]
    cleaned = clean_pointcloud(scene)
    total = flipped = zeroed = 0
    for k, c in enumerate(cleaned):
        ref = data[f"{pre}clean_conf_{k}"]
        assert c.dtype == np.float32 and c.shape == ref.shape
        flipped += int(((c == 0) != (ref == 0)).sum())
        zeroed += int((ref == 0).sum())
        total += ref.size
        kept = (c != 0) & (ref != 0)
        np.testing.assert_allclose(c[kept], ref[kept], rtol=0, atol=0)
        np.testing.assert_array_equal(scene.conf[k], before[k])  # not in place
    assert flipped <= 0.01 * total
    if name != "synth_ga":
        assert zeroed > 0  # the fixture exercises the rule


def test_clean_pointcloud_drops_occluders_and_nothing_else():
    syn = make_dense_scene(n_occluders=12)
    cleaned = clean_pointcloud(syn.scene)
    for k, c in enumerate(cleaned):
        occ = syn.occluder_masks[k]
        assert occ.sum() == 12 and (c[occ] == 0).all()
        np.testing.assert_array_equal(c[~occ], syn.scene.conf[k][~occ])
    # a defect-free scene is left untouched
    clean = make_dense_scene()
    for c, ref in zip(clean_pointcloud(clean.scene), clean.scene.conf, strict=True):
        np.testing.assert_array_equal(c, ref)


def test_clean_pointcloud_rejects_bad_input():
    syn = make_dense_scene(n_views=2, height=16, width=16)
    with pytest.raises(ValueError, match="tol"):
        clean_pointcloud(syn.scene, tol=1.0)
    sparse, _ = make_sparse_scene()
    with pytest.raises(ValueError, match="dense scene"):
        clean_pointcloud(sparse)


def test_confidence_threshold_is_strict_on_raw_confidence():
    syn = make_dense_scene(n_haze=25)
    masks = point_masks(syn.scene, NO_FILTERS)  # default threshold 3.0
    for k, m in enumerate(masks):
        assert not m[syn.haze_masks[k]].any()  # haze (1.5) dropped
        assert m[syn.object_masks[k] | syn.wall_masks[k]].all()  # object (30) and wall (8) kept
    at_8 = point_masks(syn.scene, dataclasses.replace(NO_FILTERS, min_conf_thr=8.0))
    assert not any(m[w].any() for m, w in zip(at_8, syn.wall_masks, strict=True))  # strictly above: 8 is dropped
    everything = point_masks(syn.scene, dataclasses.replace(NO_FILTERS, min_conf_thr=1.0))
    assert all(m.all() for m in everything)  # raw confidence is always > 1
    with pytest.raises(ValueError, match="min_conf_thr"):
        confidence_masks(syn.scene.conf, -1.0)


def test_cleaned_points_are_dropped_even_at_threshold_zero():
    syn = make_dense_scene(n_occluders=10)
    cfg = dataclasses.replace(NO_FILTERS, min_conf_thr=0.0)
    kept = point_masks(syn.scene, cfg)
    assert all(m[o].any() for m, o in zip(kept, syn.occluder_masks, strict=True))
    cleaned = point_masks(syn.scene, dataclasses.replace(cfg, clean_depth=True))
    assert not any(m[o].any() for m, o in zip(cleaned, syn.occluder_masks, strict=True))
    assert all(m[~o].all() for m, o in zip(cleaned, syn.occluder_masks, strict=True))


def test_statistical_outlier_removal_on_scene():
    syn = make_dense_scene(n_outliers=10)
    cfg = dataclasses.replace(NO_FILTERS, outlier_removal=True)
    masks = point_masks(syn.scene, cfg)
    good = total = 0
    for k, m in enumerate(masks):
        assert not m[syn.outlier_masks[k]].any()
        surface = syn.object_masks[k] | syn.wall_masks[k]
        good += int(m[surface].sum())
        total += int(surface.sum())
    assert good >= 0.9 * total
    off = point_masks(syn.scene, NO_FILTERS)
    assert all(m[o].all() for m, o in zip(off, syn.outlier_masks, strict=True))  # confidence 20: only SOR removes them


def test_statistical_outlier_mask_exact_and_sampled():
    rng = np.random.default_rng(0)
    plane = np.c_[rng.random((3600, 2)), np.zeros(3600)]
    far = np.array([[3.0, 3.0, 3.0], [-2.0, 0.5, 1.0], [0.5, 0.5, 2.0]])
    pts = np.concatenate([plane, far])
    keep = statistical_outlier_mask(pts, k=8, std_ratio=2.0)
    assert keep[: len(plane)].all() and not keep[len(plane) :].any()
    # on an even sample of 1000 (the far points are not in it): the same outliers go, and only
    # the sparsest inliers (mostly along the square's border) with them
    sampled = statistical_outlier_mask(pts, k=8, std_ratio=2.0, max_points=1000)
    assert not sampled[len(plane) :].any()
    assert sampled[: len(plane)].mean() > 0.9
    border = np.minimum(plane[:, :2], 1 - plane[:, :2]).min(1)
    assert sampled[: len(plane)][border > 0.1].mean() > 0.95
    g = np.stack(np.meshgrid(np.linspace(0, 1, 60), np.linspace(0, 1, 60)), -1).reshape(-1, 2)
    plane = np.c_[g, np.zeros(len(g))]
    # scale: a coarsely sampled surface (a far view) is not an outlier once spacing is accounted for
    dense = plane * 0.2  # spacing 0.2 / 59
    g2 = np.stack(np.meshgrid(np.linspace(0, 1, 20), np.linspace(0, 1, 20)), -1).reshape(-1, 2)
    coarse = np.c_[g2, np.zeros(len(g2))] + [5.0, 0, 0]  # spacing 1 / 19
    both = np.concatenate([dense, coarse])
    groups = np.r_[np.zeros(len(dense), int), np.ones(len(coarse), int)]
    spacing = np.r_[np.full(len(dense), 0.2 / 59), np.full(len(coarse), 1 / 19)]
    assert not statistical_outlier_mask(both, k=8, groups=groups)[len(dense) :].any()
    scaled = statistical_outlier_mask(both, k=8, groups=groups, scale=spacing)
    # noise-free grids: only border points (fewer neighbours) exceed mean + 2 std
    assert scaled[len(dense) :].mean() > 0.75 and scaled[: len(dense)].mean() > 0.75
    with pytest.raises(ValueError, match="scale must be > 0"):
        statistical_outlier_mask(both, k=8, scale=np.zeros(len(both)))
    with pytest.raises(ValueError, match="points"):
        statistical_outlier_mask(np.zeros((5, 2)))
    assert statistical_outlier_mask(np.zeros((3, 3)), k=8).all()


def test_largest_component_on_scene():
    syn = make_dense_scene(satellite=True, wall_conf=1.2)  # wall dropped by the threshold
    cfg = dataclasses.replace(NO_FILTERS, largest_component=True)
    masks = point_masks(syn.scene, cfg)
    assert sum(int(s.sum()) for s in syn.satellite_masks) > 100
    assert not any(m[s].any() for m, s in zip(masks, syn.satellite_masks, strict=True))
    kept = sum(int(m[o].sum()) for m, o in zip(masks, syn.object_masks, strict=True))
    assert kept >= 0.9 * sum(int(o.sum()) for o in syn.object_masks)
    off = point_masks(syn.scene, NO_FILTERS)
    assert all(m[s].all() for m, s in zip(off, syn.satellite_masks, strict=True))


def test_largest_component_mask_exact_and_sampled():
    rng = np.random.default_rng(3)
    big = rng.uniform(0, 1, size=(3000, 3)) * [1, 1, 0.01]
    small = rng.uniform(0, 0.3, size=(400, 3)) * [1, 1, 0.01] + [3, 0, 0]
    pts = np.concatenate([big, small])
    keep = largest_component_mask(pts, radius_factor=4.0)
    assert keep[:3000].all() and not keep[3000:].any()
    sampled = largest_component_mask(pts, radius_factor=4.0, max_points=1000)
    assert sampled[:3000].mean() > 0.99 and not sampled[3000:].any()


def test_sky_mask():
    syn = make_dense_scene(wall_top=-1.0)
    for k in range(syn.scene.n_views):
        sky = sky_mask(syn.scene.images[k], syn.scene.depths[k])
        truth = syn.sky_masks[k]
        assert truth.sum() > 100
        assert (sky == truth).mean() > 0.99 and not sky[syn.object_masks[k]].any()
    with_sky = point_masks(syn.scene, dataclasses.replace(NO_FILTERS, mask_sky=True))
    without = point_masks(syn.scene, NO_FILTERS)
    for k in range(syn.scene.n_views):
        assert without[k][syn.sky_masks[k]].all()  # sky confidence 4 passes the threshold
        assert with_sky[k][syn.sky_masks[k]].mean() < 0.01
        assert with_sky[k][syn.object_masks[k] | syn.wall_masks[k]].all()
    # a blue, flat region that is near and at the bottom is not sky
    img = np.full((40, 40, 3), 128, np.uint8)
    img[25:] = (110, 165, 235)
    depth = np.full((40, 40), 10.0)
    depth[25:] = 1.0
    assert not sky_mask(img, depth).any()


def test_default_config_on_scene_with_every_defect():
    syn = make_dense_scene(n_haze=20, n_occluders=10, n_outliers=8)
    masks = point_masks(syn.scene, PostprocessConfig())
    for k, m in enumerate(masks):
        assert m.dtype == bool and m.shape == syn.scene.conf[k].shape
        for bad in (syn.haze_masks[k], syn.occluder_masks[k], syn.outlier_masks[k]):
            assert not m[bad].any()
        assert m[syn.object_masks[k]].mean() > 0.9


def test_sparse_mask():
    scene, outlier = make_sparse_scene(n_points=300, n_outliers=6)
    keep = sparse_mask(scene, PostprocessConfig())
    assert keep.shape == outlier.shape and keep.dtype == bool
    assert not keep[outlier].any() and keep[~outlier].mean() > 0.95
    assert sparse_mask(scene, NO_FILTERS).all()
    with pytest.raises(ValueError, match="dense scene"):
        point_masks(scene, PostprocessConfig())
    with pytest.raises(ValueError, match="sparse points"):
        sparse_mask(make_dense_scene(height=16, width=16).scene, PostprocessConfig())


def test_resolve_masks_and_gather_points():
    syn = make_dense_scene(height=16, width=20)
    scene = syn.scene
    with pytest.raises(ValueError, match="expected 3 masks"):
        resolve_masks(scene, (np.ones((16, 20), bool),))
    with pytest.raises(ValueError, match="mask 1"):
        resolve_masks(scene, (np.ones((16, 20), bool), np.ones((20, 16), bool), np.ones((16, 20), bool)))
    masks = tuple(o.copy() for o in syn.object_masks)
    pts = gather_points(scene, masks)
    assert len(pts) == sum(int(m.sum()) for m in masks)
    k, r, c = pts.view[5], pts.rows[5], pts.cols[5]
    np.testing.assert_array_equal(pts.xyz[5], scene.pts3d[k][r, c])
    np.testing.assert_array_equal(pts.rgb[5], scene.images[k][r, c])
    assert pts.conf is not None and pts.conf[5] == scene.conf[k][r, c]
    sparse, _ = make_sparse_scene()
    sp = gather_points(sparse, None)
    assert len(sp) == len(sparse.sparse.xyz) and sp.conf is None


def test_dense_filters_on_a_pixel_grid_sample():
    """More kept pixels than filter_max_points: the filters run on a strided pixel grid and the
    other pixels follow their cell's nearest sample; the planted defects must still go."""
    syn = make_dense_scene(n_outliers=12, satellite=True, wall_conf=1.2)
    exact_cfg = dataclasses.replace(NO_FILTERS, outlier_removal=True, largest_component=True)
    sampled_cfg = dataclasses.replace(exact_cfg, filter_max_points=1000)
    exact = point_masks(syn.scene, exact_cfg)
    sampled = point_masks(syn.scene, sampled_cfg)
    assert sum(int(m.sum()) for m in exact) > 1000  # so the sampled run really samples (stride >= 2)
    for k in range(syn.scene.n_views):
        assert not sampled[k][syn.outlier_masks[k]].any()
        assert not sampled[k][syn.satellite_masks[k]].any()
        assert sampled[k][syn.object_masks[k]].mean() > 0.9
    agree = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(exact, sampled, strict=True)]))
    assert agree > 0.97
    # a scene with the wall kept too (~9000 pixels -> stride 3)
    walled = make_dense_scene(n_outliers=12, n_haze=10)
    masks = point_masks(walled.scene, dataclasses.replace(PostprocessConfig(), filter_max_points=1000))
    for k, m in enumerate(masks):
        assert not m[walled.outlier_masks[k]].any() and not m[walled.haze_masks[k]].any()
        assert m[walled.object_masks[k] | walled.wall_masks[k]].mean() > 0.9
