"""core.inputs.plan: the auto scene graph, video options from the config, the run's pair count and memory."""

from __future__ import annotations

import pytest

from config import AppConfig, apply_settings
from core.inputs import plan
from core.inputs.pairs import count_pairs, make_pairs, parse_scene_graph
from core.inputs.video import VideoOptions


def test_auto_graph_is_complete_for_photos_and_a_sequence_window_for_video_frames() -> None:
    inf = AppConfig().inference
    assert inf.graph == "auto" and inf.scene_graph == "auto"
    assert parse_scene_graph(" Auto ") == ("auto", None, False)
    assert make_pairs(4, "auto") == make_pairs(4, "complete")  # not resolved: photos
    assert plan.resolve_scene_graph(inf, 4, all_video_frames=False) == "complete"
    assert plan.resolve_scene_graph(inf, 4, all_video_frames=True) == "logwin-2-noncyclic"
    assert plan.resolve_scene_graph(inf, 40, all_video_frames=True) == "logwin-4-noncyclic"
    chosen = apply_settings(AppConfig(), {"scene_graph": "swin-2"}).inference
    assert plan.resolve_scene_graph(chosen, 40, all_video_frames=True) == "swin-2"  # the user's choice wins
    cfg = plan.with_scene_graph(AppConfig(), "logwin-3-noncyclic")
    assert (cfg.inference.graph, cfg.inference.window_size, cfg.inference.cyclic) == ("logwin", 3, False)


def test_video_options_come_from_the_config() -> None:
    cfg = apply_settings(
        AppConfig(), {"fps": 2.5, "max_frames": 7, "target_frames": 5, "sharpest": False, "skip_static": False}
    )
    assert plan.video_options(cfg) == VideoOptions(
        fps=2.5, target_frames=5, max_frames=7, sharpest=False, skip_static=False
    )
    assert plan.video_options(AppConfig()).target_frames is None  # 0 = use fps


def test_auto_max_frames_is_the_image_limit_lowered_to_what_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = apply_settings(AppConfig(), {"device": "cpu", "precision": "fp32"})
    monkeypatch.setattr(plan, "available_memory", lambda device: None)  # unknown: the image limit
    assert plan.auto_max_frames(cfg) == cfg.ui.max_images == plan.video_options(cfg).max_frames
    hw = plan.network_hw((4000, 3000), cfg.preprocess)
    need = {n: plan._estimate(cfg, [hw] * n, plan.sequence_scene_graph(n)).bytes_peak for n in (10, 11)}
    weights = plan._estimate(cfg, [hw] * 2, "complete").bytes_weights  # not counted: already loaded
    free = ((need[10] + need[11]) / 2 - weights) / cfg.inference.memory_fraction  # 10 frames fit, 11 do not
    monkeypatch.setattr(plan, "available_memory", lambda device: int(free))
    assert plan.auto_max_frames(cfg) == 10
    assert plan.auto_max_frames(cfg, engine="colmap") == cfg.ui.max_images  # no pair inference
    monkeypatch.setattr(plan, "available_memory", lambda device: 1)
    assert plan.auto_max_frames(cfg) == 2  # never below two frames: the run's memory guard says why


def test_plan_run_counts_pairs_and_estimates_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = apply_settings(AppConfig(), {"device": "cpu", "precision": "fp32"})
    monkeypatch.setattr(plan, "available_memory", lambda device: 64 * 1024**3)
    frames = plan.plan_run(cfg, [(1920, 1080)] * 12, n_video_frames=12)
    assert frames.scene_graph == "logwin-3-noncyclic" and frames.graph_is_auto
    assert frames.n_pairs == count_pairs(12, "logwin-3-noncyclic") < count_pairs(12, "complete")
    assert frames.memory is not None and frames.memory.n_views == 12 and frames.too_large is None
    line = frames.describe()
    assert "12 video frames" in line and "logwin-3-noncyclic (auto)" in line and f"{frames.n_pairs} pairs" in line
    assert "GB of 64.0 GB free on cpu" in line
    mixed = plan.plan_run(cfg, [(1920, 1080)] * 3 + [(640, 480)], n_video_frames=3)
    assert mixed.scene_graph == "complete" and mixed.n_pairs == 12
    assert mixed.describe().startswith("1 photo + 3 video frames")
    monkeypatch.setattr(plan, "available_memory", lambda device: 1024**2)
    small = plan.plan_run(cfg, [(640, 480)])
    assert small.n_pairs == 2 and "not enough memory" in small.too_large
    colmap = plan.plan_run(apply_settings(cfg, {"engine": "colmap"}), [(640, 480)] * 3)
    assert colmap.memory is None and colmap.describe() == "3 photos · colmap (no pair inference)"
    with pytest.raises(ValueError, match="out of range"):
        plan.plan_run(apply_settings(cfg, {"scene_graph": "oneref-5"}), [(640, 480)] * 3)
    assert plan.network_hw((1920, 1080), cfg.preprocess) == (288, 512)
