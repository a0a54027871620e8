"""Shared data types: the pair-predictions npz layout and Scene defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.types import InputImage, PairPredictions, Scene, tensor_to_rgb


@pytest.mark.parametrize("name", ["tiny_linear", "tiny_dpt"])
def test_pair_predictions_npz_round_trip_keeps_the_fixture_layout(fixtures_dir, tmp_path, name):
    src = fixtures_dir / f"{name}_inference.npz"
    preds = PairPredictions.load_npz(src)
    assert preds.n_views == 3 and preds.pairs.tolist()[:3] == [[1, 0], [2, 0], [2, 1]]
    out = tmp_path / "pairs.npz"
    preds.save_npz(out)
    ref, new = np.load(src), np.load(out)
    assert set(ref.files) == set(new.files)
    for key in ref.files:
        assert ref[key].dtype == new[key].dtype, key
        np.testing.assert_array_equal(ref[key], new[key], err_msg=key)


def test_pair_predictions_without_images_or_true_shapes(tmp_path):
    pts = torch.zeros(4, 6, 3)
    conf = torch.ones(4, 6)
    preds = PairPredictions(
        pairs=torch.tensor([[0, 1], [1, 0]]),
        pts3d_1=(pts, pts),
        conf_1=(conf, conf),
        pts3d_2=(pts, pts),
        conf_2=(conf, conf),
        true_shapes=((4, 6), (4, 6)),
        names=("a.jpg", "b.jpg"),
    )
    path = tmp_path / "p.npz"
    preds.save_npz(path)
    back = PairPredictions.load_npz(path)
    assert back.images is None and back.names == ("a.jpg", "b.jpg") and back.true_shapes == ((4, 6), (4, 6))


def _two_view_predictions(**view_info) -> PairPredictions:
    pts, conf = torch.zeros(4, 6, 3), torch.ones(4, 6)
    return PairPredictions(
        pairs=torch.tensor([[0, 1], [1, 0]]),
        pts3d_1=(pts, pts),
        conf_1=(conf, conf),
        pts3d_2=(pts, pts),
        conf_2=(conf, conf),
        true_shapes=((4, 6), (4, 6)),
        **view_info,
    )


def test_pair_predictions_round_trip_the_view_info(tmp_path):
    img = InputImage(
        tensor=torch.zeros(1, 3, 4, 6),
        idx=0,
        name="a.jpg",
        original_size=(12, 9),
        resized_size=(6, 4),  # rounded, so sx != sy
        crop_box=(0, 0, 6, 4),
    )
    maps = np.stack([img.original_from_processed(), np.eye(3)])
    preds = _two_view_predictions(
        names=("a.jpg", "b.jpg"), original_sizes=((12, 9), (6, 4)), original_from_processed=maps
    )
    path = tmp_path / "p.npz"
    preds.save_npz(path)
    with np.load(path) as saved:  # only what differs from the defaults is written
        assert {"original_size_0", "original_from_processed_0"} <= set(saved.files)
        assert not {"original_size_1", "original_from_processed_1"} & set(saved.files)
        np.testing.assert_array_equal(saved["original_size_0"], [12, 9])
    back = PairPredictions.load_npz(path)
    assert back.names == ("a.jpg", "b.jpg") and back.original_sizes == ((12, 9), (6, 4))
    assert back.original_from_processed.dtype == np.float64
    np.testing.assert_array_equal(back.original_from_processed, maps)


def test_pair_predictions_view_info_defaults(fixtures_dir):
    old = PairPredictions.load_npz(fixtures_dir / "tiny_linear_inference.npz")  # a file without the view info
    assert old.original_sizes == ((64, 48), (48, 64), (64, 48))  # (W, H) of the processed views
    np.testing.assert_array_equal(old.original_from_processed, np.tile(np.eye(3), (3, 1, 1)))
    made = _two_view_predictions()
    assert made.original_sizes == ((6, 4), (6, 4)) and made.original_from_processed.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="original sizes"):
        _two_view_predictions(original_sizes=((6, 4),))
    with pytest.raises(ValueError, match=r"\(2, 3, 3\) maps"):
        _two_view_predictions(original_from_processed=np.eye(3))


def test_pair_predictions_reports_missing_arrays(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, pairs=np.array([[0, 1]]), true_shape_0=np.array([[4, 4]]), true_shape_1=np.array([[4, 4]]))
    with pytest.raises(ValueError, match="pair0_pred1_pts3d"):
        PairPredictions.load_npz(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        PairPredictions.load_npz(tmp_path / "junk.npz")


def test_pair_predictions_rejects_out_of_range_indices():
    pts, conf = torch.zeros(2, 2, 3), torch.ones(2, 2)
    with pytest.raises(ValueError, match="pair indices"):
        PairPredictions(
            pairs=torch.tensor([[0, 5]]),
            pts3d_1=(pts,),
            conf_1=(conf,),
            pts3d_2=(pts,),
            conf_2=(conf,),
            true_shapes=((2, 2), (2, 2)),
        )


def test_tensor_to_rgb_inverts_the_normalisation():
    u8 = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    img = (u8.float() / 255 - 0.5) / 0.5
    np.testing.assert_array_equal(tensor_to_rgb(img[None]), u8.permute(1, 2, 0).numpy())


def test_original_from_processed_maps_crop_and_resize_back():
    # 1000x750 upload -> resized 512x384 -> crop 480x384 starting at x=16
    img = InputImage(
        tensor=torch.zeros(1, 3, 384, 480),
        idx=0,
        name="a.jpg",
        original_size=(1000, 750),
        resized_size=(512, 384),
        crop_box=(16, 0, 496, 384),
    )
    a = img.original_from_processed()
    sx, sy = 512 / 1000, 384 / 750
    np.testing.assert_allclose(a @ [0, 0, 1], [16.5 / sx - 0.5, 0.5 / sy - 0.5, 1])
    np.testing.assert_allclose(a @ [479, 383, 1], [(479 + 16.5) / sx - 0.5, 383.5 / sy - 0.5, 1])


def test_scene_fills_defaults_and_checks_shapes():
    ims = (np.zeros((4, 6, 3), np.uint8), np.zeros((6, 4, 3), np.uint8))
    scene = Scene(
        images=ims,
        world_from_cam=np.tile(np.eye(4, dtype=np.float32), (2, 1, 1)),
        focals=np.array([5.0, 6.0], np.float32),
        principal_points=np.zeros((2, 2), np.float32),
    )
    assert scene.names == ("image_0", "image_1") and scene.original_sizes == ((6, 4), (4, 6))
    assert scene.intrinsics()[1, 0, 0] == 6.0 and scene.original_from_processed.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="world_from_cam"):
        Scene(images=ims, world_from_cam=np.eye(4), focals=np.ones(2), principal_points=np.zeros((2, 2)))
