"""Live progress of a page run and the time it will take (no Gradio here; plain Python).

A run reports ``(stage, done, total)`` from its worker thread into a :class:`RunProgress`; the
page's generator reads a :class:`ProgressView` from it a few times a second and shows the stage,
its count, the elapsed time and an estimate of the time left. Estimates come from
:func:`estimate_run`: seconds per stage from the photo and pair counts, the image size and the
iterations, priced with this machine's measured matrix-multiply speed (:class:`Calibration`) and,
once a run of the same engine and network has finished here, corrected by how long its stages
really took. During a run the stages still to come are scaled by how the finished ones compared
with their estimate, and the current stage is extrapolated from its own count once it has one.

Stages the engines cannot count (COLMAP matching and mapping, model loading, writing files) show
an indeterminate bar until they report a count. :class:`RunBoard` holds the live runs by browser
session, so the Cancel button finds the run to stop.
"""

from __future__ import annotations

import html
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from config import AppConfig
from core.inputs.pairs import count_pairs
from pipeline import STAGE_LABELS, stage_label

__all__ = [
    "PAGE_STAGES",
    "Calibration",
    "Estimate",
    "ProgressView",
    "RunBoard",
    "RunProgress",
    "estimate_run",
    "fmt_duration",
    "plan_html",
    "progress_html",
    "progress_line",
]

#: Stages the page adds after the pipeline's own (what "Writing outputs" is split into).
PAGE_STAGES: dict[str, str] = {
    "glb": "Writing the 3D model",
    "views": "Drawing the depth and confidence maps",
    "zip": "Packaging the downloads",
}
#: Stages that report no useful count while they run: an indeterminate bar until they finish.
_UNCOUNTED = frozenset({"prepare", "model", "save", "matching", "mapping", "outputs", *PAGE_STAGES})

# Cost model, in GFLOP-equivalents priced at the measured matmul speed (fitted on a ViT-Large
# DUSt3R 512 DPT: one 512x384 pair with both encodings took 2,500 GFLOP-equivalents, one 224 pair
# 1,050; the alignment costs about 14 kFLOP per pair-pixel and iteration).
_ENCODE_GFLOP_PER_TOKEN = 0.6
_PAIR_GFLOP_PER_TOKEN = 1.4
_PAIR_GFLOP_FIXED = 500.0
_ALIGN_FLOP_PER_PAIR_PIXEL = 14e3
_ALIGN_INIT_ITERATIONS = 10
_MODEL_LOAD_S = 20.0
"""Loading the official 2.3 GB network from disk (first run only)."""
_COLMAP_S_PER_IMAGE = {"features": 1.2, "mapping": 0.6}
_COLMAP_S_PER_PAIR = 0.04
_COLMAP_REF_GFLOPS = 50.0
"""The machine the COLMAP per-image times were taken on (scaled by the measured speed)."""
_SLOW_S = 60.0
"""A run estimated longer than this on a CPU gets the faster settings suggested."""
_ASPECT = 0.75
"""Assumed height / width of photos (4:3) before they are loaded."""


def fmt_duration(seconds: float) -> str:
    """``8 s``, ``1 min 20 s``, ``12 min``, ``1 h 05 min`` (rounded for reading, not timing).

    >>> fmt_duration(0.4), fmt_duration(8.2), fmt_duration(80), fmt_duration(725), fmt_duration(3900)
    ('<1 s', '8 s', '1 min 20 s', '12 min', '1 h 05 min')
    """
    s = max(0.0, float(seconds))
    if s < 1:
        return "<1 s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 600:
        m, r = divmod(int(round(s / 10) * 10), 60)
        return f"{m} min {r} s" if r else f"{m} min"
    if s < 3600:
        return f"{int(round(s / 60))} min"
    h, m = divmod(int(round(s / 60)), 60)
    return f"{h} h {m:02d} min"


# --------------------------------------------------------------------------------------------
# Estimates
# --------------------------------------------------------------------------------------------


def _measure_gflops() -> float:
    """This process's fp32 matrix-multiply speed on the CPU (GFLOP/s), from a ~0.1 s benchmark."""
    a = torch.randn(384, 384)
    for _ in range(2):
        a @ a  # warm-up
    reps, t0 = 0, time.perf_counter()
    while reps < 4 or (time.perf_counter() - t0 < 0.05 and reps < 200):
        a @ a
        reps += 1
    dt = max(time.perf_counter() - t0, 1e-6)
    return max(1.0, reps * 2 * 384**3 / dt / 1e9)


class Calibration:
    """How fast this server runs: measured matmul speed plus per-(engine, network) corrections
    learned from finished runs (thread-safe; one per page, no globals)."""

    def __init__(self, gflops: float | None = None) -> None:
        self._gflops = gflops
        self._lock = threading.Lock()
        self._scale: dict[str, float] = {}

    def gflops(self) -> float:
        with self._lock:
            if self._gflops is None:
                self._gflops = _measure_gflops()
            return self._gflops

    def scale(self, key: str) -> float:
        """Measured / estimated time of the compute stages of earlier runs with ``key`` (1 if none)."""
        with self._lock:
            return self._scale.get(key, 1.0)

    def learn(self, estimate: Estimate, timings: Mapping[str, float]) -> None:
        """Correct future estimates of ``estimate.key`` by how long its compute stages took."""
        stages = [s for s in estimate.compute if s in timings and estimate.stages.get(s, 0) > 0]
        planned = sum(estimate.stages[s] for s in stages)
        spent = sum(float(timings[s]) for s in stages)
        if planned <= 0 or spent <= 0:
            return
        with self._lock:
            old = self._scale.get(estimate.key, 1.0)
            self._scale[estimate.key] = old * spent / planned


@dataclass(frozen=True)
class Estimate:
    """Expected seconds per stage of one run, in running order."""

    stages: dict[str, float]
    """Stage name -> seconds (the pipeline's stages, then :data:`PAGE_STAGES`)."""
    n_photos: int
    """Photos given (one photo runs as two views: itself and its copy)."""
    n_pairs: int
    """Network passes (DUSt3R) or candidate image pairs (COLMAP)."""
    engine: str
    device: str
    key: str
    """Calibration key: engine and network."""
    compute: tuple[str, ...]
    """The stages that :class:`Calibration` corrects."""

    @property
    def total(self) -> float:
        return float(sum(self.stages.values()))


_OFFICIAL_DIMS = {"enc_embed_dim": 1024, "enc_depth": 24, "dec_embed_dim": 768, "dec_depth": 12}
"""ViT-Large encoder, base decoder: the network the cost model was fitted on."""
_MIN_PAIR_S = 0.01
"""Per-pair overhead of tiny networks (Python, batching)."""


def _network_cost_ratio(checkpoint: str) -> float:
    """Compute of the checkpoint's network relative to the official one, from the transformer
    sizes in its ``config.json`` (1 when there is none to read, e.g. a hub id or a .pth file)."""
    path = Path(checkpoint).expanduser()
    config_path = path / "config.json" if path.is_dir() else path.with_name("config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        config = {}
    dims = {k: config.get(k, v) if isinstance(config, dict) else v for k, v in _OFFICIAL_DIMS.items()}

    def cost(d: Mapping[str, Any]) -> float:
        return float(d["enc_embed_dim"]) ** 2 * d["enc_depth"] + 2 * float(d["dec_embed_dim"]) ** 2 * d["dec_depth"]

    return cost(dims) / cost(_OFFICIAL_DIMS)


def _dust3r_stages(cfg: AppConfig, n: int, gflops: float, scale: float, model_loaded: bool) -> tuple[dict, int]:
    views = max(n, 2)
    try:
        n_pairs = count_pairs(views, cfg.inference.scene_graph)
    except ValueError:  # a reference index past the photos: the run itself will say so
        n_pairs = views * (views - 1)
    size = cfg.preprocess.image_size
    pixels = size * size * (1.0 if size == 224 else _ASPECT)
    tokens = pixels / 256
    net = _network_cost_ratio(cfg.model.checkpoint)
    speed = gflops / (scale * net)
    align_iters = cfg.alignment.niter + _ALIGN_INIT_ITERATIONS
    stages = {
        "prepare": 0.02 * n,
        "load": 0.05 * n,
        "model": 0.0 if model_loaded else _MODEL_LOAD_S * net,
        "encode": views * _ENCODE_GFLOP_PER_TOKEN * tokens / speed,
        "pairs": n_pairs * ((_PAIR_GFLOP_FIXED + _PAIR_GFLOP_PER_TOKEN * tokens) / speed + _MIN_PAIR_S),
        "save": 0.02 * n_pairs,
        "align": align_iters * n_pairs * pixels * _ALIGN_FLOP_PER_PAIR_PIXEL / (gflops / scale * 1e9),
        "outputs": 0.1 + 0.05 * views,
        "glb": 0.3 + 0.1 * views,
        "views": 0.4 * views,
        "zip": 0.5 + 0.2 * views,
    }
    return stages, n_pairs


def _colmap_stages(n: int, gflops: float, scale: float) -> tuple[dict, int]:
    factor = _COLMAP_REF_GFLOPS / gflops * scale
    n_pairs = n * (n - 1) // 2
    stages = {
        "prepare": 0.02 * n,
        "features": _COLMAP_S_PER_IMAGE["features"] * n * factor,
        "matching": _COLMAP_S_PER_PAIR * n_pairs * factor,
        "mapping": _COLMAP_S_PER_IMAGE["mapping"] * n * factor,
        "outputs": 0.1 + 0.02 * n,
        "glb": 0.2,
        "views": 0.05 * n,
        "zip": 0.3 + 0.05 * n,
    }
    return stages, n_pairs


def estimate_run(
    cfg: AppConfig, engine: str, n_photos: int, calib: Calibration, *, device: str = "cpu", model_loaded: bool = False
) -> Estimate:
    """Seconds per stage of a run of ``n_photos`` photos with these settings on this machine."""
    n = max(int(n_photos), 1)
    if engine == "colmap":
        key = "colmap"
        stages, n_pairs = _colmap_stages(n, calib.gflops(), calib.scale(key))
        compute = ("features", "matching", "mapping")
    else:
        key = f"{engine}:{cfg.model.checkpoint}"
        stages, n_pairs = _dust3r_stages(cfg, n, calib.gflops(), calib.scale(key), model_loaded)
        compute = ("encode", "pairs", "align")
    return Estimate(stages, n, n_pairs, engine, device, key, compute)


def _faster_settings(cfg: AppConfig, engine: str) -> list[str]:
    """Setting changes that make a DUSt3R run faster, given the current ones."""
    if engine == "colmap":
        return []
    tips = []
    if cfg.preprocess.image_size > 224:
        tips.append("a smaller image size (384 or 224: 2-5x faster)")
    if cfg.alignment.niter > 150:
        tips.append("fewer iterations (150)")
    if not cfg.alignment.early_stop:
        tips.append("early stop")
    if cfg.inference.graph == "complete":
        tips.append("a sliding-window scene graph for ordered photos")
    return tips


def plan_html(est: Estimate, cfg: AppConfig) -> str:
    """The line shown before a run: photos, pairs, expected time; faster settings when it is slow on a CPU."""
    photos = "1 photo (paired with itself)" if est.n_photos == 1 else f"{est.n_photos} photos"
    unit = "pairs" if est.engine != "colmap" else "image pairs to match"
    line = f"{photos} · {est.n_pairs} {unit} · about <b>{fmt_duration(est.total)}</b> on this {est.device.upper()}"
    out = f"<div class='plan'>{line}</div>"
    tips = _faster_settings(cfg, est.engine)
    if est.device == "cpu" and est.total > _SLOW_S and tips:
        out += f"<div class='plan-slow'>Slow on a CPU. Faster: {html.escape('; '.join(tips))}.</div>"
    return out


# --------------------------------------------------------------------------------------------
# A live run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressView:
    """What the page shows of a run at one moment."""

    stage: str
    label: str
    """Stage name with its count: ``Pair inference 3/6 pairs``."""
    fraction: float | None
    """Done / total of the current stage, None when it has no count (indeterminate bar)."""
    elapsed: float
    """Seconds since the run started."""
    eta: float | None
    """Seconds left (estimate), None before there is anything to go on."""
    cancelling: bool


_RENAMED = {"outputs": "Saving the scene"}
"""Pipeline stages the page names more precisely (it splits "Writing outputs" into its own steps)."""


def _label(stage: str, done: int, total: int) -> str:
    if stage in PAGE_STAGES:
        return PAGE_STAGES[stage]
    if stage in _RENAMED:
        return _RENAMED[stage]
    if stage in _UNCOUNTED and total <= 1:
        return STAGE_LABELS.get(stage, stage)
    return stage_label(stage, done, total)


class RunProgress:
    """One run's progress: the worker thread reports, the page reads (thread-safe)."""

    def __init__(self, estimate: Estimate, clock: Callable[[], float] = time.monotonic) -> None:
        self.estimate = estimate
        self._clock = clock
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.started = clock()
        self._stage, self._done, self._total, self._since = "prepare", 0, 0, self.started
        self._finished: dict[str, float] = {}

    def report(self, stage: str, done: int, total: int) -> None:
        """The pipeline's progress callback (also used by the page for its own stages)."""
        now = self._clock()
        with self._lock:
            if stage != self._stage:
                self._finished[self._stage] = self._finished.get(self._stage, 0.0) + now - self._since
                self._stage, self._since = stage, now
            self._done, self._total = int(done), int(total)

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        """The pipeline's ``cancel`` poll."""
        return self._cancel.is_set()

    def _speed_factor(self) -> float:
        plan = self.estimate.stages
        done = [s for s in self._finished if plan.get(s, 0.0) > 0.3]
        planned = sum(plan[s] for s in done)
        if planned < 1.0:
            return 1.0
        return min(max(sum(self._finished[s] for s in done) / planned, 0.2), 5.0)

    def _eta(self, now: float) -> float | None:
        plan, stage = self.estimate.stages, self._stage
        in_stage = now - self._since
        factor = self._speed_factor()
        if self._total > 1 and 0 < self._done <= self._total and stage not in _UNCOUNTED:
            left = in_stage / self._done * (self._total - self._done)
        elif stage in plan:
            left = max(plan[stage] * factor - in_stage, 0.0)
        else:
            return None
        order = list(plan)
        later = order[order.index(stage) + 1 :] if stage in order else []
        return left + sum(plan[s] * factor for s in later if s not in self._finished)

    def view(self) -> ProgressView:
        now = self._clock()
        with self._lock:
            stage, done, total = self._stage, self._done, self._total
            counted = total > 1 and stage not in _UNCOUNTED or (stage in _UNCOUNTED and 0 < done)
            fraction = min(done / total, 1.0) if counted and total > 0 else None
            return ProgressView(
                stage=stage,
                label=_label(stage, done, total),
                fraction=fraction,
                elapsed=now - self.started,
                eta=self._eta(now),
                cancelling=self._cancel.is_set(),
            )

    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent per finished stage so far."""
        with self._lock:
            return dict(self._finished)


class RunBoard:
    """The live runs by browser session (thread-safe; one per page)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunProgress] = {}

    def start(self, session: str, run: RunProgress) -> RunProgress:
        with self._lock:
            self._runs[session] = run
        return run

    def get(self, session: str) -> RunProgress | None:
        with self._lock:
            return self._runs.get(session)

    def finish(self, session: str, run: RunProgress) -> None:
        with self._lock:
            if self._runs.get(session) is run:
                del self._runs[session]

    def cancel(self, session: str) -> bool:
        """Ask the session's run to stop at its next step; False when none is running."""
        with self._lock:
            run = self._runs.get(session)
        if run is None:
            return False
        run.cancel()
        return True


def _eta_text(view: ProgressView) -> str:
    if view.cancelling:
        return "stopping after the current step…"
    if view.eta is None:
        return "estimating the time left…"
    return f"about {fmt_duration(math.ceil(view.eta))} left"


def progress_line(view: ProgressView) -> str:
    """Markdown status line: ``Running: **Pair inference 3/6 pairs** · 12 s elapsed · about 30 s left``."""
    return f"Running: **{view.label}** · {fmt_duration(view.elapsed)} elapsed · {_eta_text(view)}"


def progress_html(view: ProgressView) -> str:
    """The run card's progress: stage and count, a bar (indeterminate without a count), times."""
    if view.fraction is None:
        bar = "<div class='rp-bar indeterminate'><div></div></div>"
    else:
        bar = f"<div class='rp-bar'><div style='width:{100 * view.fraction:.1f}%'></div></div>"
    return (
        f"<div class='run-progress' data-stage='{html.escape(view.stage)}'>"
        f"<div class='rp-stage'>{html.escape(view.label)}</div>{bar}"
        f"<div class='rp-time'>{fmt_duration(view.elapsed)} elapsed · {html.escape(_eta_text(view))}</div></div>"
    )
