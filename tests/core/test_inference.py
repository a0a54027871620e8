"""Pair inference engine: reference parity, encode-once, batching, precision, memory guard."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import model as M
from config import InferenceConfig, PreprocessConfig
from core.inference import (
    InsufficientMemoryError,
    ModelDims,
    check_memory,
    estimate_memory,
    run_inference,
)
from core.inference import memory as inf_memory
from core.inference import run as inf_run
from core.inputs.pairs import duplicate_single_image, make_pairs
from core.inputs.preprocessing import load_images, load_views
from core.types import InputImage, PairPredictions
from tests.conftest import one_torch_thread

TINY = ["tiny_linear", "tiny_dpt"]
CPU = torch.device("cpu")
OUTPUT_KEYS = {  # PairPredictions field -> fixture key suffix
    "pts3d_1": "pred1_pts3d",
    "conf_1": "pred1_conf",
    "pts3d_2": "pred2_pts3d_in_other_view",
    "conf_2": "pred2_conf",
}


one_thread = pytest.fixture(autouse=True, scope="module", name="one_thread")(one_torch_thread)


@pytest.fixture(scope="module")
def nets(fixtures_dir):
    return {name: M.load_model(fixtures_dir / name) for name in TINY}


def _reference(fixtures_dir, name):
    return np.load(fixtures_dir / f"{name}_inference.npz")


def _image(tensor: torch.Tensor, idx: int, name: str | None = None) -> InputImage:
    h, w = tensor.shape[-2:]
    return InputImage(
        tensor=tensor,
        idx=idx,
        name=name or f"img{idx}.png",
        original_size=(w, h),
        resized_size=(w, h),
        crop_box=(0, 0, w, h),
    )


def _fixture_images(ref) -> list[InputImage]:
    """The fixture's three inputs: img0 landscape 48x64, img1 portrait 64x48, img2 square-cropped 48x64."""
    return [_image(torch.from_numpy(ref[f"img_{k}"]), k) for k in range(int(ref["n_images"]))]


def _random_images(shapes, seed=0) -> list[InputImage]:
    g = torch.Generator().manual_seed(seed)
    return [_image(torch.rand(1, 3, h, w, generator=g) * 2 - 1, k) for k, (h, w) in enumerate(shapes)]


def _max_rel(got: torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    ref_t = torch.as_tensor(ref)
    return float((got - ref_t).abs().max() / ref_t.abs().max())


def _count(monkeypatch, net, method: str) -> list[int]:
    """Wrap net.<method>; returns the list of batch sizes it is called with."""
    calls: list[int] = []
    original = getattr(net, method)

    def wrapper(*args, **kwargs):
        calls.append(int(args[0].shape[0]) if method in ("encode", "decode") else int(args[1][0].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(net, method, wrapper)
    return calls


def _run(net, images, dtype=None, scene_graph="complete", **cfg):
    return run_inference(net, images, InferenceConfig.with_graph(scene_graph, **cfg), device=CPU, autocast_dtype=dtype)


# ---------------------------------------------------------------------------- reference parity


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("name", TINY)
def test_matches_reference_fixture(nets, fixtures_dir, name, batch_size):
    ref = _reference(fixtures_dir, name)
    images = _fixture_images(ref)
    preds = _run(nets[name], images, batch_size=batch_size)
    assert preds.pairs.tolist() == ref["pairs"].tolist() == [[1, 0], [2, 0], [2, 1], [0, 1], [0, 2], [1, 2]]
    assert preds.true_shapes == ((48, 64), (64, 48), (48, 64))
    assert preds.names == ("img0.png", "img1.png", "img2.png")
    for k, img in enumerate(preds.images):
        torch.testing.assert_close(img, images[k].tensor, rtol=0, atol=0)
    for p in range(len(preds.pairs)):
        for field, suffix in OUTPUT_KEYS.items():
            got, want = getattr(preds, field)[p], ref[f"pair{p}_{suffix}"]
            assert got.dtype == torch.float32 and got.device == CPU
            assert tuple(got.shape) == want.shape, (p, field)
            assert _max_rel(got, want) < 1e-4, (name, p, field, _max_rel(got, want))


def test_preprocessed_pngs_reproduce_the_fixture(nets, fixtures_dir):
    """End to end from the fixture PNGs (reference preprocessing at size 64) to the pair outputs."""
    ref = _reference(fixtures_dir, "tiny_dpt")
    paths = sorted((fixtures_dir / "images").glob("img*.png"))
    images = load_images(paths, PreprocessConfig(image_size=64))
    preds = _run(nets["tiny_dpt"], images)
    assert preds.names == ("img0.png", "img1.png", "img2.png")
    for p in range(len(preds.pairs)):
        for field, suffix in OUTPUT_KEYS.items():
            assert _max_rel(getattr(preds, field)[p], ref[f"pair{p}_{suffix}"]) < 1e-4


def test_npz_round_trip_keeps_the_fixture_layout(nets, fixtures_dir, tmp_path):
    ref = _reference(fixtures_dir, "tiny_dpt")
    preds = _run(nets["tiny_dpt"], _fixture_images(ref))
    path = tmp_path / "pairs.npz"
    preds.save_npz(path, batch_size=1)
    saved = np.load(path)
    assert set(saved.files) == set(ref.files) | {f"name_{k}" for k in range(3)}
    for key in ref.files:
        assert saved[key].dtype == ref[key].dtype and saved[key].shape == ref[key].shape, key
    np.testing.assert_array_equal(saved["pairs"], ref["pairs"])
    back = PairPredictions.load_npz(path)
    assert back.pairs.tolist() == preds.pairs.tolist() and back.names == preds.names
    assert back.true_shapes == preds.true_shapes
    for field in OUTPUT_KEYS:
        for a, b in zip(getattr(back, field), getattr(preds, field), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------- encode once, batching


@pytest.mark.parametrize("batch_size, encode_calls, decode_calls", [(1, [1, 1, 1], [1] * 6), (8, [2, 1], [2, 2, 2])])
def test_each_image_is_encoded_once(nets, fixtures_dir, monkeypatch, batch_size, encode_calls, decode_calls):
    net = nets["tiny_linear"]
    enc = _count(monkeypatch, net, "encode")
    dec = _count(monkeypatch, net, "decode")
    _run(net, _fixture_images(_reference(fixtures_dir, "tiny_linear")), batch_size=batch_size)
    # 3 images encoded once each (the two 48x64 ones together when batching); the 6 pairs fall in
    # three (shape1, shape2) groups of 2: (portrait, landscape), (landscape, landscape), (landscape, portrait)
    assert sorted(enc, reverse=True) == encode_calls and sum(enc) == 3
    assert dec == decode_calls


def test_batch_size_does_not_change_the_numbers(nets, fixtures_dir):
    images = _fixture_images(_reference(fixtures_dir, "tiny_dpt"))
    one = _run(nets["tiny_dpt"], images, batch_size=1)
    eight = _run(nets["tiny_dpt"], images, batch_size=8)
    for field in OUTPUT_KEYS:
        for a, b in zip(getattr(one, field), getattr(eight, field), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * float(a.abs().max()))


def test_identical_images_share_one_encoding(nets, monkeypatch):
    net = nets["tiny_linear"]
    a, b = _random_images([(32, 48), (48, 32)])
    twin = _image(a.tensor.clone(), 2, "twin.png")
    enc = _count(monkeypatch, net, "encode")
    preds = _run(net, [a, b, twin])
    assert sum(enc) == 2
    # pair (2, 0) = (twin, a) is the same as (0, 2) = (a, twin) with the views swapped
    i20, i02 = preds.pairs.tolist().index([2, 0]), preds.pairs.tolist().index([0, 2])
    torch.testing.assert_close(preds.pts3d_1[i20], preds.pts3d_1[i02])


def test_single_image_is_paired_with_a_copy_of_itself(nets, monkeypatch):
    net = nets["tiny_dpt"]
    (img,) = _random_images([(48, 32)])
    enc = _count(monkeypatch, net, "encode")
    preds = _run(net, duplicate_single_image([img]))  # the load stage's views
    assert preds.n_views == 2 and preds.pairs.tolist() == [[1, 0], [0, 1]]
    assert preds.names == ("img0.png", "img0.png (copy)")
    assert preds.true_shapes == ((48, 32), (48, 32))
    assert sum(enc) == 1
    with torch.inference_mode():
        pred1, pred2 = net(img.tensor, img.tensor)
    for p in range(2):
        torch.testing.assert_close(preds.pts3d_1[p], pred1["pts3d"][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(preds.conf_2[p], pred2["conf"][0], rtol=1e-5, atol=1e-5)


def test_single_image_loaded_as_two_views_carries_its_original_size_and_map(nets, fixtures_dir, monkeypatch):
    net = nets["tiny_dpt"]
    views = load_views([fixtures_dir / "images" / "img0.png"], PreprocessConfig(image_size=64))
    enc = _count(monkeypatch, net, "encode")
    preds = _run(net, views)
    assert preds.names == ("img0.png", "img0.png (copy)") and preds.pairs.tolist() == [[1, 0], [0, 1]]
    assert sum(enc) == 1  # the copy shares the image's tensor, hence its encoding
    assert preds.original_sizes == ((96, 72), (96, 72))
    assert preds.original_from_processed.shape == (2, 3, 3)
    for k, view in enumerate(views):
        np.testing.assert_array_equal(preds.original_from_processed[k], view.original_from_processed())
    assert not np.allclose(preds.original_from_processed[0], np.eye(3))  # 96x72 -> 64x48: a real map


def test_estimate_and_inference_use_the_same_given_pair_list(nets, monkeypatch):
    net = nets["tiny_linear"]
    images = _random_images([(32, 48), (48, 32), (32, 48)])
    pairs = [(2, 0), (0, 1), (1, 2)]  # no scene graph gives this list: only the given one can
    estimated: list[list[tuple[int, int]]] = []
    original = inf_memory.estimate_memory

    def spy(image_hw, given, *args, **kwargs):
        estimated.append(list(given))
        return original(image_hw, given, *args, **kwargs)

    def no_pairs_made_here(*args, **kwargs):
        raise AssertionError("run_inference made its own pair list")

    monkeypatch.setattr(inf_memory, "estimate_memory", spy)
    monkeypatch.setattr(inf_run, "make_pairs", no_pairs_made_here)
    preds = run_inference(net, images, InferenceConfig(), pairs=pairs, device=CPU, autocast_dtype=None)
    assert estimated == [pairs]
    assert preds.pairs.tolist() == [list(p) for p in pairs]
    with torch.inference_mode():
        for p, (i, j) in enumerate(pairs):
            pred1, pred2 = net(images[i].tensor, images[j].tensor)
            assert _max_rel(preds.pts3d_1[p], pred1["pts3d"][0]) < 1e-4
            assert _max_rel(preds.pts3d_2[p], pred2["pts3d_in_other_view"][0]) < 1e-4
    dims = ModelDims.from_model(net)
    est = estimate_memory([im.true_shape for im in images], pairs, dims, device="cpu", autocast_dtype=None)
    assert est.pairs == 3 and est.n_views == 3
    # the outputs term is exactly the given pairs' pixels: (view-1 + view-2) * (3 + 1) float32
    assert est.bytes_outputs == 3 * 2 * 32 * 48 * 4 * 4


def test_given_pairs_and_single_views_are_checked(nets):
    net = nets["tiny_linear"]
    images = _random_images([(32, 32)] * 3)
    for bad, message in (([(0, 3)], r"pairs\[0\] = \(0, 3\)"), ([(1, 1)], "two different"), ([], "empty")):
        with pytest.raises(ValueError, match=message):
            run_inference(net, images, InferenceConfig(), pairs=bad, device=CPU, autocast_dtype=None)
    with pytest.raises(ValueError, match="duplicate it first"):
        _run(net, images[:1])  # a single view: the load stage pairs it with its copy


@pytest.mark.parametrize("graph", ["swin-2", "oneref-4", "logwin-2-noncyclic"])
def test_scene_graph_passes_through(nets, graph):
    net = nets["tiny_linear"]
    shapes = [(32, 48), (48, 32), (32, 32), (32, 48), (48, 32), (32, 48)]
    images = _random_images(shapes, seed=1)
    preds = _run(net, images, scene_graph=graph, batch_size=4)
    pairs = preds.pairs.tolist()
    assert pairs == [list(p) for p in make_pairs(6, graph)]
    undirected = {frozenset(p) for p in pairs}
    if graph == "swin-2":  # each image with the next two, wrapping: (0,3), (1,4), (2,5) are missing
        assert undirected == {frozenset((i, (i + s) % 6)) for i in range(6) for s in (1, 2)} and len(pairs) == 24
    elif graph == "oneref-4":
        assert undirected == {frozenset((4, j)) for j in range(6) if j != 4} and len(pairs) == 10
    else:  # offsets 1 and 2, no wrap
        assert undirected == {frozenset((i, j)) for i in range(6) for j in (i + 1, i + 2) if j < 6}
    # every pair's outputs are the network's outputs for exactly those two images
    with torch.inference_mode():
        for p, (i, j) in enumerate(pairs):
            pred1, pred2 = net(images[i].tensor, images[j].tensor)
            assert _max_rel(preds.pts3d_1[p], pred1["pts3d"][0]) < 1e-4
            assert _max_rel(preds.pts3d_2[p], pred2["pts3d_in_other_view"][0]) < 1e-4
            assert _max_rel(preds.conf_2[p], pred2["conf"][0]) < 1e-4


def test_bad_scene_graph_is_a_clear_error(nets):
    with pytest.raises(ValueError, match="swin-0"):
        _run(nets["tiny_linear"], _random_images([(32, 32)] * 3), scene_graph="swin-0")
    with pytest.raises(ValueError, match="out of range"):
        _run(nets["tiny_linear"], _random_images([(32, 32)] * 3), scene_graph="oneref-3")


# ---------------------------------------------------------------------------- precision


# max |bf16 - fp32| / max |fp32| over all pairs, measured on this CPU (avx512_bf16), with margin.
# The tiny linear model's head was least-squares fitted on a random backbone: its weights (up to
# 17) cancel to outputs below 2, so it amplifies the ~1% bf16 token error about 10x (conf = 1 +
# exp(c) amplifies again); the DPT fixture shows the usual ~2-4%.
BF16_BOUNDS = {  # name: (pts3d bound, conf bound); measured 0.21 / 0.99 and 0.035 / 0.021
    "tiny_linear": (0.3, 1.3),
    "tiny_dpt": (0.06, 0.04),
}


@pytest.mark.parametrize("name", TINY)
def test_bf16_autocast_stays_within_the_measured_bound(nets, fixtures_dir, monkeypatch, name):
    net = nets[name]
    images = _fixture_images(_reference(fixtures_dir, name))
    fp32 = _run(net, images)
    states: dict[str, list[bool]] = {"encode": [], "decode": [], "head": []}
    for method in states:
        original = getattr(net, method)

        def wrapper(*args, _original=original, _method=method, **kwargs):
            states[_method].append(torch.is_autocast_enabled("cpu"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(net, method, wrapper)
    bf16 = _run(net, images, dtype=torch.bfloat16)
    assert all(states["encode"]) and all(states["decode"]) and not any(states["head"])
    pts_bound, conf_bound = BF16_BOUNDS[name]
    for field in OUTPUT_KEYS:
        dev = max(_max_rel(b, a) for a, b in zip(getattr(fp32, field), getattr(bf16, field), strict=True))
        assert all(t.dtype == torch.float32 for t in getattr(bf16, field))
        assert 1e-4 < dev < (pts_bound if "pts" in field else conf_bound), (name, field, dev)


def test_rejects_unsupported_autocast_dtype(nets):
    with pytest.raises(ValueError, match="autocast_dtype"):
        run_inference(
            nets["tiny_linear"],
            _random_images([(32, 32)] * 2),
            InferenceConfig(),
            device=CPU,
            autocast_dtype=torch.float64,
        )


# ---------------------------------------------------------------------------- per-view head cache


def _count_view_features(monkeypatch, net) -> list[tuple[int, int]]:
    """Wrap net.head_view_features; returns (head, batch size) per call."""
    calls: list[tuple[int, int]] = []
    original = net.head_view_features

    def wrapper(which, enc_tokens, true_shape):
        calls.append((which, int(enc_tokens.shape[0])))
        return original(which, enc_tokens, true_shape)

    monkeypatch.setattr(net, "head_view_features", wrapper)
    return calls


@pytest.mark.parametrize("batch_size", [1, 8])
def test_dpt_view_features_are_computed_once_per_view_and_head(nets, fixtures_dir, monkeypatch, batch_size):
    net = nets["tiny_dpt"]
    images = _fixture_images(_reference(fixtures_dir, "tiny_dpt"))
    calls = _count_view_features(monkeypatch, net)
    cached = _run(net, images, batch_size=batch_size)
    # 3 views x 2 heads, each once, although every view is in 2 pairs per head
    assert sorted(w for w, b in calls for _ in range(b)) == [1, 1, 1, 2, 2, 2]
    calls.clear()
    uncached = _run(net, images, batch_size=batch_size, view_cache_gb=0)
    assert calls == []
    for field in OUTPUT_KEYS:
        for got, want in zip(getattr(cached, field), getattr(uncached, field), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_view_cache_smaller_than_the_views_evicts_and_stays_exact(nets, fixtures_dir, monkeypatch):
    net = nets["tiny_dpt"]
    ref = _reference(fixtures_dir, "tiny_dpt")
    calls = _count_view_features(monkeypatch, net)
    one_entry = 16 * 16 * 12 * 4  # F=16 channels at a quarter of 64x48 (16x12), float32
    preds = _run(net, _fixture_images(ref), view_cache_gb=2.5 * one_entry / 1024**3)
    # room for 2 of the 6 (head, view) entries: evictions force recomputation (more than 6 calls),
    # consecutive pairs sharing a view still reuse it (fewer than 12, one per head per pair)
    assert 6 < len(calls) < 12
    for p in range(len(preds.pairs)):
        for field, suffix in OUTPUT_KEYS.items():
            assert _max_rel(getattr(preds, field)[p], ref[f"pair{p}_{suffix}"]) < 1e-4


def test_linear_head_has_no_view_features(nets, fixtures_dir, monkeypatch):
    net = nets["tiny_linear"]
    calls = _count_view_features(monkeypatch, net)
    _run(net, _fixture_images(_reference(fixtures_dir, "tiny_linear")))
    assert sorted(which for which, _ in calls) == [1, 2]  # each head asked once, answered None, never again


def test_view_cache_size_is_validated():
    with pytest.raises(ValueError, match="view_cache_gb"):
        InferenceConfig(view_cache_gb=-1)


# ---------------------------------------------------------------------------- memory guard


def test_memory_estimate_counts_pairs_and_outputs():
    dims = ModelDims()  # the official 512_dpt model
    hw = [(384, 512)] * 8
    est = estimate_memory(hw, make_pairs(8), dims, device="cpu", autocast_dtype=None, batch_size=8)
    assert est.pairs == 56 and est.n_views == 8
    assert est.bytes_outputs == 56 * 2 * 384 * 512 * 4 * 4
    assert est.bytes_weights == 571_171_208 * 4
    assert est.bytes_tokens == 8 * 768 * (1024 * 4 + 16)
    assert est.bytes_view_cache == 0  # no cap given
    assert est.bytes_peak == est.bytes_weights + est.bytes_tokens + est.bytes_batch + est.bytes_outputs
    cached = estimate_memory(
        hw, make_pairs(8), dims, device="cpu", autocast_dtype=None, batch_size=8, view_cache_bytes=1024**3
    )
    assert cached.bytes_view_cache == 8 * 2 * 256 * 96 * 128 * 4  # both heads, F=256 at a quarter of 512x384
    assert cached.bytes_peak == est.bytes_peak + cached.bytes_view_cache
    capped = estimate_memory(
        hw, make_pairs(8), dims, device="cpu", autocast_dtype=None, batch_size=8, view_cache_bytes=10**8
    )
    assert capped.bytes_view_cache == 10**8
    # official DPT head at full resolution: 336 floats per pixel per view -> ~1 GB per 512x384 pair
    assert 8 * 384 * 512 * 4 * 336 < est.bytes_batch < 3 * 8 * 384 * 512 * 4 * 336
    swin = estimate_memory(hw, make_pairs(8, "swin-2"), dims, device="cpu", autocast_dtype=None, batch_size=8)
    assert swin.pairs == 32 and swin.bytes_peak < est.bytes_peak
    bf16 = estimate_memory(hw, make_pairs(8), dims, device="cpu", autocast_dtype=torch.bfloat16, batch_size=8)
    assert bf16.bytes_tokens < est.bytes_tokens
    cuda = estimate_memory(hw, make_pairs(8), dims, device="cuda", autocast_dtype=torch.bfloat16, batch_size=8)
    assert cuda.bytes_host == cuda.bytes_outputs and cuda.bytes_peak == bf16.bytes_peak - bf16.bytes_outputs
    views = [(384, 512)] * 2  # a single image and its copy, which reuses its encoding
    single = estimate_memory(views, make_pairs(2), dims, device="cpu", autocast_dtype=None, sources=[0, 0])
    assert single.pairs == 2 and single.n_views == 2
    with pytest.raises(ValueError, match="multiples of 16"):
        estimate_memory([(384, 512), (380, 512)], make_pairs(2), dims, device="cpu", autocast_dtype=None)


def test_estimate_from_model_reads_the_architecture(nets):
    dims = ModelDims.from_model(nets["tiny_dpt"])
    assert (dims.enc_embed_dim, dims.dec_embed_dim, dims.dec_depth, dims.head_type) == (64, 24, 10, "dpt")
    assert (dims.dpt_feature_dim, dims.dpt_last_dim) == (16, 16)
    assert dims.weight_bytes == sum(p.numel() * 4 for p in nets["tiny_dpt"].parameters())
    with torch.device("meta"):
        official = M.DUSt3R(M.OFFICIAL_CONFIGS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"])
    assert ModelDims.from_model(official) == ModelDims()


def test_check_memory_names_the_estimate_and_the_remedies():
    est = estimate_memory(
        [(384, 512)] * 30, make_pairs(30), ModelDims(), device="cpu", autocast_dtype=None, batch_size=8
    )
    check_memory(est, "complete", available=10 * est.bytes_peak)
    with pytest.raises(InsufficientMemoryError) as err:
        check_memory(est, "complete", memory_fraction=0.5, available=est.bytes_peak)
    msg = str(err.value)
    assert "870 pairs" in msg and f"{est.gb_peak:.2f} GB" in msg and "50% of" in msg
    assert "swin" in msg and "logwin" in msg and "image size" in msg
    cuda = dataclasses.replace(est, device="cuda:0", bytes_host=est.bytes_outputs)
    with pytest.raises(InsufficientMemoryError, match="host RAM"):
        check_memory(cuda, "complete", available=10 * est.bytes_peak, host_available=est.bytes_outputs // 2)


def test_absurd_job_is_refused_before_any_work(nets, monkeypatch):
    net = nets["tiny_dpt"]
    enc = _count(monkeypatch, net, "encode")
    big = torch.zeros(1, 3, 1, 1).expand(1, 3, 1024, 1024)  # no allocation
    images = [_image(big, k) for k in range(600)]
    with pytest.raises(InsufficientMemoryError) as err:
        _run(net, images)
    msg = str(err.value)
    assert "359400 pairs" in msg and "GB" in msg and "swin" in msg and "smaller image size" in msg
    assert enc == []


def test_batch_shrinks_when_the_requested_one_does_not_fit(nets, monkeypatch):
    net = nets["tiny_dpt"]
    images = _random_images([(64, 48)] * 3)  # one shape group of 6 pairs
    dims = ModelDims.from_model(net)

    def need(batch):
        est = estimate_memory([(64, 48)] * 3, make_pairs(3), dims, device="cpu", autocast_dtype=None, batch_size=batch)
        return est.bytes_peak - est.bytes_weights

    assert need(1) < need(2) < need(4)
    fits_two = (need(2) + need(4)) / 2 / 0.9  # batch 8 and 4 do not fit, 2 does
    monkeypatch.setattr(inf_memory, "available_memory", lambda device: fits_two)
    dec = _count(monkeypatch, net, "decode")
    _run(net, images, batch_size=8)
    assert dec == [2, 2, 2]
    monkeypatch.setattr(inf_memory, "available_memory", lambda device: need(1) / 2)
    with pytest.raises(InsufficientMemoryError, match="6 pairs"):
        _run(net, images, batch_size=8)


def test_out_of_memory_during_the_run_gets_the_same_advice(nets, monkeypatch):
    net = nets["tiny_linear"]

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(net, "decode", boom)
    with pytest.raises(InsufficientMemoryError) as err:
        _run(net, _random_images([(32, 32)] * 3))
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
    assert "6 pairs" in str(err.value) and "swin" in str(err.value) and "batch size" in str(err.value)


# ---------------------------------------------------------------------------- progress, outputs, inputs


def test_progress_reports_encode_then_pairs(nets):
    calls = []
    run_inference(
        nets["tiny_linear"],
        _random_images([(32, 48), (48, 32), (32, 48)]),
        InferenceConfig(batch_size=8),
        device=CPU,
        autocast_dtype=None,
        progress=lambda *a: calls.append(a),
    )
    encode = [c for c in calls if c[0] == "encode"]
    pairs = [c for c in calls if c[0] == "pairs"]
    assert calls.index(encode[-1]) < calls.index(pairs[0])
    assert encode == [("encode", 0, 3), ("encode", 2, 3), ("encode", 3, 3)]
    assert pairs == [("pairs", 0, 6), ("pairs", 2, 6), ("pairs", 4, 6), ("pairs", 6, 6)]


def test_outputs_are_ordinary_cpu_tensors_usable_in_autograd(nets):
    """Regression: tensors made under inference_mode cannot be saved for backward in alignment."""
    preds = _run(nets["tiny_linear"], _random_images([(32, 32)] * 2))
    pts = preds.pts3d_1[0]
    assert not pts.is_inference() and pts.device == CPU and pts.is_contiguous()
    scale = torch.ones((), requires_grad=True)
    (scale * pts * preds.conf_1[0][..., None]).sum().backward()
    assert scale.grad is not None


def test_bad_inputs_are_clear_errors(nets):
    net = nets["tiny_linear"]
    with pytest.raises(ValueError, match="no images"):
        _run(net, [])
    with pytest.raises(TypeError, match="InputImage"):
        _run(net, [torch.zeros(1, 3, 32, 32)])
    bad = _image(torch.zeros(1, 3, 40, 32), 0, "odd.png")
    with pytest.raises(ValueError, match=r"odd.png.*multiples of 16, got 40x32"):
        _run(net, [bad, bad])
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        _run(net, [_image(torch.zeros(3, 32, 32), 0)])


def test_auto_batch_size_is_one_on_cpu_and_eight_on_cuda():
    from core.inference import resolve_batch_size

    assert resolve_batch_size(0, torch.device("cpu")) == 1
    assert resolve_batch_size(0, torch.device("cuda")) == 8
    assert resolve_batch_size(4, torch.device("cpu")) == 4
    with pytest.raises(ValueError, match="batch_size"):
        resolve_batch_size(-1, torch.device("cpu"))
