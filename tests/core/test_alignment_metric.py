"""Metric scale (issue 16): metric pair predictions (MASt3R) give a scene in metres.

The synthetic scene of :func:`tests.core.synthetic_pairs.make_scene` is in metres (depths about
2 m, cameras up to 0.3 m from the origin); ``pair_scale=(1, 1)`` makes its predictions metric.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import roma
import torch

from config import AlignmentConfig, PostprocessConfig, VizConfig
from core.alignment import align
from core.alignment.metric import metric_scale, rescale_world
from core.outputs.export import export_scene
from core.types import PairPredictions, Scene
from tests.conftest import one_torch_thread
from tests.core.synthetic_pairs import make_scene

CFG = AlignmentConfig(niter=300, mst_stale_focal=False)
SIZES = [(24, 32)] * 4


_one_thread = pytest.fixture(autouse=True, name="_one_thread")(one_torch_thread)


def _scaled_pair(preds: PairPredictions, p: int, factor: float) -> PairPredictions:
    """Pair p's two point maps multiplied by ``factor`` (a pair whose metric scale is wrong)."""
    p1, p2 = list(preds.pts3d_1), list(preds.pts3d_2)
    p1[p], p2[p] = p1[p] * factor, p2[p] * factor
    return dataclasses.replace(preds, pts3d_1=tuple(p1), pts3d_2=tuple(p2))


def _layout_scale(est: np.ndarray, gt: np.ndarray) -> float:
    """Size of the estimated camera layout over the true one (least-squares similarity fit)."""
    a = torch.from_numpy(gt[:, :3, 3].astype(np.float64))
    b = torch.from_numpy(est[:, :3, 3].astype(np.float64))
    _, _, s = roma.rigid_points_registration(a, b, compute_scaling=True)
    return float(s)


def _camera_distances(poses: np.ndarray) -> np.ndarray:
    c = poses[:, :3, 3].astype(np.float64)
    return np.array([np.linalg.norm(c[a] - c[b]) for a in range(len(c)) for b in range(a + 1, len(c))])


def _depth_ratios(scene: Scene, gt_depths: list[np.ndarray]) -> np.ndarray:
    """Per image, median of estimated / true depth."""
    return np.array([np.median(d / g) for d, g in zip(scene.depths, gt_depths, strict=True)])


def test_metric_predictions_give_metres():
    """Metric predictions of the synthetic scene, one pair (of 12) 40% too large."""
    preds, gt = make_scene(SIZES, seed=0, pair_scale=(1.0, 1.0), metric=True)
    preds = _scaled_pair(preds, 3, 1.4)
    scene = align(preds, CFG)
    assert scene.units == "m"
    # camera distances: the layout's size and the median distance ratio within 1% (a single short
    # baseline carries the alignment's own pose error, a few % here, metric or not)
    assert abs(_layout_scale(scene.world_from_cam, gt["world_from_cam"]) - 1) < 0.01
    ratios = _camera_distances(scene.world_from_cam) / _camera_distances(gt["world_from_cam"])
    assert abs(np.median(ratios) - 1) < 0.01
    np.testing.assert_allclose(_depth_ratios(scene, gt["depths"]), 1.0, atol=0.01)
    # the wrong pair moved the normalised world (geometric mean of the 12 pair scales = 0.5) by
    # 1.4^(1/12): the factor measured from the pairs follows; a constant 1 / 0.5 would be 2.8% off
    assert scene.extra["metres_per_unit"] == pytest.approx(2 / 1.4 ** (1 / 12), rel=0.005)
    assert scene.extra["metric_scale_spread"] < 0.01  # the wrong pair does not count
    assert not scene.warnings


def test_flag_off_keeps_the_unknown_scale():
    preds, gt = make_scene(SIZES, seed=0, pair_scale=(1.0, 1.0))
    assert preds.metric is False
    scene = align(preds, dataclasses.replace(CFG, niter=20))
    assert scene.units == "unknown" and "metres_per_unit" not in scene.extra
    # the normalised scale of the reference (pair scales' geometric mean 0.5): half the metres
    assert np.median(_depth_ratios(scene, gt["depths"])) == pytest.approx(0.5, rel=0.05)
    dust3r, _ = make_scene(SIZES, seed=0)
    assert align(dust3r, dataclasses.replace(CFG, niter=5)).units == "unknown"


def test_two_views_metric():
    preds, gt = make_scene([(24, 32), (32, 24)], seed=1, pair_scale=(1.0, 1.0), metric=True)
    scene = align(preds, CFG)
    assert scene.extra["method"] == "pair_viewer" and scene.units == "m"
    np.testing.assert_allclose(_depth_ratios(scene, gt["depths"]), 1.0, atol=0.01)
    np.testing.assert_allclose(
        _camera_distances(scene.world_from_cam), _camera_distances(gt["world_from_cam"]), rtol=0.01
    )
    # the two directions disagree on the scale: the factor is their geometric mean
    preds = _scaled_pair(preds, 1, 1.02)
    scene = align(preds, CFG)
    np.testing.assert_allclose(_depth_ratios(scene, gt["depths"]), math.sqrt(1.02), atol=0.005)
    ref_is_scaled = scene.extra["reference_image"] == 0  # pair 1 is (0, 1)
    assert scene.extra["metres_per_unit"] == pytest.approx(math.sqrt(1.02) ** (-1 if ref_is_scaled else 1), rel=1e-3)


def test_one_known_pose_stays_and_the_rest_is_metric():
    preds, gt = make_scene([(24, 32)] * 3, seed=2, pair_scale=(1.0, 1.0), metric=True)
    known = gt["world_from_cam"][1]
    scene = align(preds, CFG, known_poses={1: known})
    assert scene.units == "m"
    np.testing.assert_array_equal(scene.world_from_cam[1], known.astype(np.float32))
    np.testing.assert_allclose(_depth_ratios(scene, gt["depths"]), 1.0, atol=0.01)


@pytest.mark.parametrize("n_views", [2, 3])
def test_two_known_poses_fix_the_scale_and_the_unit_is_theirs(n_views):
    preds, gt = make_scene([(24, 32)] * n_views, seed=3, pair_scale=(1.0, 1.0), metric=True)
    known = {0: gt["world_from_cam"][0], 1: gt["world_from_cam"][1]}
    scene = align(preds, dataclasses.replace(CFG, niter=10), known_poses=known)
    assert scene.units == "unknown" and "metres_per_unit" not in scene.extra
    np.testing.assert_allclose(scene.world_from_cam[1], known[1], atol=1e-6)


def test_pairs_npz_keeps_the_flag_and_scene_npz_says_the_unit(tmp_path, fixtures_dir):
    preds, _ = make_scene([(24, 32)] * 3, seed=4, pair_scale=(1.0, 1.0), metric=True)
    preds.save_npz(tmp_path / "pairs.npz")
    loaded = PairPredictions.load_npz(tmp_path / "pairs.npz")
    assert loaded.metric is True
    scene = align(loaded, dataclasses.replace(CFG, niter=20))
    assert scene.units == "m"
    out = export_scene(scene, None, tmp_path / "out", {"npz"}, post_cfg=PostprocessConfig(), viz_cfg=VizConfig())
    with np.load(out.written["npz"]) as d:
        assert str(d["units"]) == "m"
    # files without the key (the reference's, older runs) are not metric
    assert PairPredictions.load_npz(fixtures_dir / "tiny_linear_inference.npz").metric is False
    dataclasses.replace(preds, metric=False).save_npz(tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz") as d:
        assert "metric" not in d.files  # DUSt3R files keep the reference's key set
    assert PairPredictions.load_npz(tmp_path / "d.npz").metric is False


def test_metric_scale_is_the_median_and_rescale_keeps_the_centre():
    k, spread = metric_scale(torch.tensor([0.5, 0.5, 0.4, 0.6, 5.0]))
    assert k == pytest.approx(2.0) and spread == pytest.approx(0.2)
    k, _ = metric_scale(torch.tensor([0.25, 1.0]))  # even count: geometric mean of the middle two
    assert k == pytest.approx(2.0)
    with pytest.raises(ValueError, match="finite and > 0"):
        metric_scale(torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="E >= 1"):
        metric_scale(torch.zeros(0))
    poses = torch.eye(4).repeat(2, 1, 1)
    poses[0, :3, 3] = torch.tensor([1.0, 2.0, 3.0])
    poses[1, :3, 3] = torch.tensor([2.0, 2.0, 3.0])
    new, depths = rescale_world(poses, [torch.ones(2, 2)], 3.0, centre=poses[0, :3, 3])
    assert torch.equal(new[0], poses[0]) and torch.equal(new[1, :3, 3], torch.tensor([4.0, 2.0, 3.0]))
    assert torch.equal(depths[0], torch.full((2, 2), 3.0))
    with pytest.raises(ValueError, match="'m' or 'unknown'"):
        Scene(
            images=(np.zeros((2, 2, 3), np.uint8),),
            world_from_cam=np.eye(4)[None],
            focals=np.ones(1),
            principal_points=np.ones((1, 2)),
            units="cm",
        )
