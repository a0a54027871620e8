"""Many images on one machine: the count-based default scene graph, compact pair storage (fp16,
memory-mapped on disk) and the memory estimate that counts it; the Ray options without Ray."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import main as cli
import model as M
from config import AlignmentConfig, AppConfig, InferenceConfig, apply_settings
from core.alignment import align
from core.errors import SettingsError
from core.inference import ModelDims, estimate_memory, run_inference
from core.inference import distributed as dist
from core.inference.storage import PairStore, output_bytes, resolve_storage
from core.inputs.pairs import (
    AUTO_COMPLETE_MAX,
    SCENE_GRAPH_KINDS,
    count_pairs,
    default_scene_graph,
    describe_scene_graph,
    format_scene_graph,
    make_pairs,
    parse_scene_graph,
)
from core.types import InputImage, PairPredictions

CPU = torch.device("cpu")
FIELDS = ("pts3d_1", "conf_1", "pts3d_2", "conf_2")


def _connected(n: int, pairs: list[tuple[int, int]]) -> bool:
    seen, todo = {0}, [0]
    nbrs: dict[int, set[int]] = {}
    for i, j in pairs:
        nbrs.setdefault(i, set()).add(j)
        nbrs.setdefault(j, set()).add(i)
    while todo:
        for j in nbrs.get(todo.pop(), ()):
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return len(seen) == n


# --------------------------------------------------------------------------------------------
# The count-based default scene graph
# --------------------------------------------------------------------------------------------


def test_auto_graph_is_complete_for_few_images_and_a_log_window_for_many() -> None:
    assert SCENE_GRAPH_KINDS[:4] == ("complete", "swin", "logwin", "oneref")  # existing kinds, same order
    assert parse_scene_graph("auto") == ("auto", None, False) and format_scene_graph("auto") == "auto"
    for n in (2, 3, AUTO_COMPLETE_MAX):
        assert default_scene_graph(n) == "complete"
        assert make_pairs(n, "auto") == make_pairs(n, "complete")  # same pairs, same order
    assert [default_scene_graph(n) for n in (21, 32, 100, 300)] == ["logwin-3", "logwin-3", "logwin-5", "logwin-7"]
    counts = {n: count_pairs(n, "auto") for n in (21, 50, 100, 300)}
    assert counts == {21: 126, 50: 400, 100: 1000, 300: 4200}
    for n in (21, 50, 300):
        pairs = make_pairs(n, "auto")
        assert pairs == make_pairs(n, default_scene_graph(n)) and _connected(n, pairs)
        assert len(pairs) < n * (n - 1) / 2  # far sparser than complete
    assert describe_scene_graph(100, "auto") == "auto -> logwin-5: 1000 pairs for 100 image(s)"
    assert describe_scene_graph(4, "swin-2") == "swin-2: 12 pairs for 4 image(s)"
    assert count_pairs(1, "auto") == 2  # a single image and its copy


def test_auto_graph_is_a_setting_the_user_can_pick_or_override() -> None:
    cfg = apply_settings(AppConfig(), {"scene_graph": "auto"})
    assert cfg.inference.graph == "auto" and cfg.inference.scene_graph == "auto"
    assert apply_settings(cfg, {"scene_graph": "swin-2"}).inference.scene_graph == "swin-2"
    assert InferenceConfig.with_graph("auto").scene_graph == "auto"


# --------------------------------------------------------------------------------------------
# Compact storage
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net(fixtures_dir):
    return M.load_model(fixtures_dir / "tiny_linear")


@pytest.fixture(scope="module")
def views(fixtures_dir) -> list[InputImage]:
    """The fixture's three inputs (landscape, portrait, landscape; 64 px)."""
    ref = np.load(fixtures_dir / "tiny_linear_inference.npz")
    out = []
    for k in range(3):
        t = torch.from_numpy(ref[f"img_{k}"])
        h, w = t.shape[-2:]
        out.append(InputImage(t, k, f"img{k}.png", (w, h), (w, h), (0, 0, w, h)))
    return out


def _run(net, views, storage: str, folder: Path | None = None) -> PairPredictions:
    cfg = InferenceConfig(precision="fp32", pair_storage=storage)
    return run_inference(net, views, cfg, device=CPU, autocast_dtype=None, storage_dir=folder)


def test_disk_storage_is_exact_and_leaves_no_files(net, views, tmp_path) -> None:
    ref = _run(net, views, "memory")
    disk = _run(net, views, "disk", tmp_path)
    for name in FIELDS:
        for a, b in zip(getattr(disk, name), getattr(ref, name), strict=True):
            assert a.dtype == torch.float32 and torch.equal(a, b)
    assert not list(tmp_path.iterdir())  # mapped, then unlinked at once
    assert disk.nbytes() == ref.nbytes() == output_bytes([v.true_shape for v in views], make_pairs(3))
    # the alignment reads the mapped tensors and gives the same scene
    a_cfg = AlignmentConfig(niter=5)
    s_disk, s_ref = align(disk, a_cfg, device=CPU), align(ref, a_cfg, device=CPU)
    np.testing.assert_array_equal(s_disk.world_from_cam, s_ref.world_from_cam)


def test_fp16_storage_halves_the_bytes_and_saves_float32(net, views, tmp_path) -> None:
    ref = _run(net, views, "memory")
    half = _run(net, views, "fp16")
    assert half.nbytes() * 2 == ref.nbytes()
    for name in FIELDS:
        for a, b in zip(getattr(half, name), getattr(ref, name), strict=True):
            assert a.dtype == torch.float16
            torch.testing.assert_close(a.float(), b, rtol=2**-10, atol=1e-4)
    half.save_npz(tmp_path / "pairs.npz")
    back = PairPredictions.load_npz(tmp_path / "pairs.npz")
    with np.load(tmp_path / "pairs.npz") as data:
        assert data["pair0_pred1_pts3d"].dtype == np.float32  # the file format is unchanged
    assert torch.equal(back.pts3d_1[0], half.pts3d_1[0].float())
    scene = align(half, AlignmentConfig(niter=5), device=CPU)  # cast back to float32 inside
    assert np.isfinite(scene.world_from_cam).all()


def test_fp16_clamps_to_its_range() -> None:
    store = PairStore([(2, 2), (2, 2)], [(0, 1)], "fp16")
    store.put("c1", 0, torch.full((2, 2), 1e6))
    assert float(store.fields()["conf_1"][0].max()) == float(torch.finfo(torch.float16).max)


def test_auto_storage_by_size(tmp_path) -> None:
    assert resolve_storage("auto", 10, folder=tmp_path, available=100) == "memory"
    assert resolve_storage("auto", 30, folder=tmp_path, available=100) == "disk"
    assert resolve_storage("auto", 30, folder=None, available=100) == "fp16"
    assert resolve_storage("auto", 10**12, folder=None, available=None) == "memory"  # unknown RAM: no change
    with pytest.raises(SettingsError, match="needs a folder"):
        resolve_storage("disk", 10, folder=None, available=100)


def test_memory_estimate_counts_the_real_storage() -> None:
    hw, pairs, dims = [(384, 512)] * 3, make_pairs(3), ModelDims()
    est = {s: estimate_memory(hw, pairs, dims, device="cpu", autocast_dtype=None, storage=s) for s in ("memory", "fp16", "disk")}  # fmt: skip
    fp32 = output_bytes(hw, pairs)
    assert est["memory"].bytes_outputs == fp32 and est["fp16"].bytes_outputs == fp32 // 2
    assert est["memory"].bytes_peak - est["fp16"].bytes_peak == fp32 // 2
    assert est["memory"].bytes_peak - est["disk"].bytes_peak == fp32 and est["disk"].bytes_disk == fp32
    assert "stored as disk" in est["disk"].describe()
    cuda = estimate_memory(hw, pairs, dims, device="cuda", autocast_dtype=None, storage="fp16")
    assert cuda.bytes_host == fp32 // 2


# --------------------------------------------------------------------------------------------
# The Ray options without Ray
# --------------------------------------------------------------------------------------------


def test_workers_without_ray_say_how_to_install_it(monkeypatch, fixtures_dir, tmp_path, capsys) -> None:
    monkeypatch.setattr(dist, "HAS_RAY", False)
    with pytest.raises(SettingsError, match="requirements-ray.txt"):
        dist.RayPairPool(M.get_model, AppConfig().model, workers=2)
    img = str(fixtures_dir / "images" / "img0.png")
    argv = ["reconstruct", img, img, "-o", str(tmp_path / "o"), "--checkpoint", str(fixtures_dir / "tiny_linear")]
    assert cli.main([*argv, "--workers", "2", "--image-size", "64"]) == cli.EXIT_USAGE
    assert "pip install -r requirements-ray.txt" in capsys.readouterr().err


def test_ray_settings_are_in_the_table() -> None:
    cfg = apply_settings(AppConfig(), {"workers": "3", "ray_address": "auto", "pair_storage": "disk"})
    assert (cfg.inference.workers, cfg.inference.ray_address, cfg.inference.pair_storage) == (3, "auto", "disk")
    with pytest.raises(SettingsError):
        dataclasses.replace(cfg.inference, workers=-1)
