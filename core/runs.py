"""Running one job: per-run limits, the checks before the engine, and the outputs written so
they never lie.

:func:`run_job` runs a pipeline stage body inside a job folder: ``.running`` while it runs, the
manifest ``running`` first, the engine and the writers in a hidden staging folder, then every
output moved into place and checked, and ``manifest.json`` (``done``) last. Any failure writes
``failed`` (or ``interrupted`` for Ctrl-C, SIGTERM and cancel) with the error, removes the
staging folder, and turns a full disk into :class:`core.errors.DiskFullError` naming the folder
and the free space. :class:`RunLimits` and :func:`guarded_progress` bound a run's pairs and time
and stop it when the process shuts down. Used by :mod:`pipeline` only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from config import AppConfig, PostprocessConfig
from core import jobs
from core.errors import Cancelled, Interrupted, RunLimitError, SettingsError, Terminated
from core.inference.memory import check_alignment_memory
from core.inputs.pairs import make_pairs
from core.inputs.preprocessing import check_image_file, list_image_files, plan_resize_crop
from core.inputs.video import is_video
from core.jobs import MANIFEST_FILE, SCENE_FILE, Job, write_manifest
from core.manifests import manifest_data
from core.outputs.export import add_to_zip, export_scene
from core.outputs.postprocessing import point_masks, sparse_mask
from core.runtime import resolve_device
from core.types import ProgressFn, Scene

__all__ = [
    "Result",
    "StageClock",
    "RunLimits",
    "guarded_progress",
    "polled",
    "check_pairs",
    "check_known_focal",
    "check_images",
    "check_alignment_fits",
    "add_warnings",
    "safe_names",
    "scene_masks",
    "moved_paths",
    "run_job",
    "estimate_run_bytes",
]

logger = logging.getLogger(__name__)

#: A stage body: ``body(stage_dir) -> (scene, pairs_path or None, extra manifest keys)``.
StageBody = Callable[[Path], tuple[Scene, "Path | None", dict[str, Any]]]


class StageClock:
    """Wraps a progress callback and times the stages it reports (thread-confined, one run)."""

    def __init__(self, progress: ProgressFn | None = None) -> None:
        self._progress = progress
        self._stage: str | None = None
        self._since = 0.0
        self._timings: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage != self._stage:
            self._close(now)
            self._stage, self._since = stage, now
        if self._progress is not None:
            self._progress(stage, int(done), int(total))

    def _close(self, now: float) -> None:
        if self._stage is not None:
            self._timings[self._stage] = self._timings.get(self._stage, 0.0) + now - self._since

    def finish(self) -> dict[str, float]:
        """Close the current stage; returns seconds per stage."""
        self._close(time.perf_counter())
        self._stage = None
        return {k: round(v, 4) for k, v in self._timings.items()}


@dataclass(frozen=True)
class Result:
    """A finished reconstruction: what the page keeps (gr.State) so display changes only re-export."""

    scene: Scene
    """The aligned scene (CPU numpy arrays)."""
    job: Job
    """The job folder it lives in."""
    engine: str
    """Engine name."""
    timings: dict[str, float]
    """Seconds per stage, in the order the stages ran (``total`` = the whole run)."""
    pairs_path: Path | None
    """Saved pair predictions (DUSt3R with ``save_pairs``), or None."""
    settings: AppConfig
    """The settings of the run."""
    files: Mapping[str, Path] = field(default_factory=dict)
    """What the run wrote: ``scene`` (scene.npz), ``pairs``, and each requested export format."""

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.scene.warnings


# --------------------------------------------------------------------------------------------
# Limits and stopping (checked at every progress report)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLimits:
    """Per-run limits of the web app (the CLI runs without any)."""

    max_pairs: int | None = None
    """Most image pairs through the network (DUSt3R); None = no limit."""
    max_seconds: float | None = None
    """Longest run, in seconds; None = no limit."""

    @classmethod
    def from_config(cls, cfg: AppConfig) -> RunLimits:
        """The web app's limits: ``cfg.ui.max_pairs`` and ``cfg.ui.max_run_s``."""
        return cls(max_pairs=cfg.ui.max_pairs, max_seconds=cfg.ui.max_run_s)


def guarded_progress(
    progress: ProgressFn | None, stop: threading.Event | None, limits: RunLimits | None
) -> ProgressFn | None:
    """``progress`` plus the checks every report makes: a requested stop (SIGTERM/SIGINT of the
    server: :class:`Interrupted`) and the run-time limit (:class:`RunLimitError`)."""
    deadline = limits.max_seconds if limits is not None else None
    if stop is None and deadline is None:
        return progress
    t0 = time.monotonic()

    def report(stage: str, done: int, total: int) -> None:
        if stop is not None and stop.is_set():
            raise Interrupted("the server is shutting down: the run was stopped and marked interrupted")
        if deadline is not None and time.monotonic() - t0 > deadline:
            raise RunLimitError(
                f"stopped after {deadline:g} s: the server allows at most {deadline:g} s per run (max_run_s); "
                "use fewer images, a sparser scene graph (swin-3, logwin-3) or fewer iterations"
            )
        if progress is not None:
            progress(stage, done, total)

    return report


def polled(
    progress: ProgressFn | None, cancel: Callable[[], bool] | None, labels: Mapping[str, str] | None = None
) -> ProgressFn | None:
    """``progress`` that first asks ``cancel()`` and raises :class:`Cancelled` when it says so.

    Every stage reports progress between its steps (images, pairs, iterations, COLMAP stages),
    so a run stops at the next step boundary. ``labels``: stage name -> what the message calls it.
    """
    if cancel is None:
        return progress

    def report(stage: str, done: int, total: int) -> None:
        if cancel():
            raise Cancelled(f"cancelled during {(labels or {}).get(stage, stage).lower()} ({done}/{total})")
        if progress is not None:
            progress(stage, done, total)

    return report


def check_pairs(n_images: int, cfg: AppConfig, limits: RunLimits | None) -> None:
    """The pair limit (DUSt3R) before anything runs; the scene graph itself is checked by the engine."""
    if limits is None or limits.max_pairs is None or cfg.engine != "dust3r":
        return
    try:
        n_pairs = len(make_pairs(max(n_images, 2), cfg.inference.scene_graph))
    except ValueError:
        return  # a bad scene graph: the engine's own message names it
    if n_pairs > limits.max_pairs:
        raise RunLimitError(
            f"{n_pairs} image pairs ({n_images} images, scene graph '{cfg.inference.scene_graph}'): the server "
            f"allows at most {limits.max_pairs} per run (max_pairs). Use a sparser scene graph such as swin-3 or "
            "logwin-3, or fewer images"
        )


def check_known_focal(cfg: AppConfig, n_images: int) -> None:
    """A ``known_focal`` list must hold one value or one per image: a bad setting (exit 2), found
    before the network runs."""
    focal = cfg.alignment.known_focal
    n_views = max(n_images, 2)  # a single image is paired with its copy
    if focal is not None and len(focal) not in (1, n_views):
        raise SettingsError(
            f"known_focal must hold 1 value or one per image ({n_views}), got {len(focal)}: "
            f"{','.join(f'{f:g}' for f in focal)}"
        )


def check_images(paths: Sequence[Path], cfg: AppConfig) -> list[tuple[int, int]]:
    """Every image decoded once with the same checks and messages as the DUSt3R path, whichever
    engine runs (a tiny, broken or decompression-bomb image is a bad input for COLMAP too).
    Returns each image's network input size (H, W)."""
    sizes = []
    for p in paths:
        if not is_video(p):
            _, box = plan_resize_crop(check_image_file(p, cfg.preprocess), cfg.preprocess)
            sizes.append((box[3] - box[1], box[2] - box[0]))
    return sizes


def check_alignment_fits(sizes: Sequence[tuple[int, int]], cfg: AppConfig) -> None:
    """DUSt3R: the global alignment after inference must fit in memory too (pair outputs plus its
    working set, :func:`core.inference.memory.check_alignment_memory`), checked before anything runs."""
    if cfg.engine != "dust3r" or not sizes:
        return
    sizes = list(sizes) if len(sizes) > 1 else [sizes[0], sizes[0]]  # a single image pairs with its copy
    try:
        pairs = make_pairs(len(sizes), cfg.inference.scene_graph)
    except ValueError:
        return  # a bad scene graph: the engine's own message names it
    check_alignment_memory(
        sizes,
        pairs,
        device=resolve_device(cfg.model.device),
        scene_graph=cfg.inference.scene_graph,
        memory_fraction=cfg.inference.memory_fraction,
    )


# --------------------------------------------------------------------------------------------
# Stage: save (scene.npz, requested exports, manifest last)
# --------------------------------------------------------------------------------------------


def _quality_warnings(scene: Scene, post_cfg: PostprocessConfig) -> list[str]:
    """Warnings for poor dense scenes: views with few confident pixels."""
    if scene.conf is None:
        return []
    out = []
    for name, conf in zip(scene.names, scene.conf, strict=True):
        frac = float(np.mean(conf > post_cfg.min_conf_thr)) if conf.size else 0.0
        if frac < 0.05:
            out.append(
                f"{name}: only {frac:.0%} of its pixels are confident (confidence > "
                f"{post_cfg.min_conf_thr:g}); that view is probably poorly reconstructed"
            )
    return out


def add_warnings(scene: Scene, new: Sequence[str]) -> Scene:
    merged = tuple(dict.fromkeys([*scene.warnings, *new]))
    return scene if merged == scene.warnings else dataclasses.replace(scene, warnings=merged)


def safe_names(scene: Scene, given: Sequence[str]) -> Scene:
    """Names without spaces, line breaks or other control characters (they break COLMAP's text
    files), each renamed one with a warning that says so. ``given``: the names the user gave."""
    names = tuple(jobs.safe_name(n) for n in scene.names)
    originals = list(given) if len(given) == len(names) else list(scene.names)
    renamed = [(o, n) for o, n in zip(originals, names, strict=True) if o != jobs.safe_name(o)]
    if names != scene.names:
        scene = dataclasses.replace(scene, names=names)
    return add_warnings(
        scene,
        [
            f"{o!r} is named {n!r} in the outputs: spaces, line breaks and control characters in file names "
            "break COLMAP's text files and other formats"
            for o, n in renamed
        ],
    )


def scene_masks(scene: Scene, post_cfg: PostprocessConfig) -> tuple[np.ndarray, ...] | np.ndarray:
    """Which points are shown/exported: per-view (H, W) bool masks (dense) or (M,) bool (sparse).

    Computed once per display change and passed to every writer.
    """
    return point_masks(scene, post_cfg) if scene.is_dense else sparse_mask(scene, post_cfg)


def _write_outputs(
    stage: Path, scene: Scene, cfg: AppConfig, clock: StageClock, exports: Sequence[str]
) -> tuple[dict[str, Path], dict[str, Any] | None]:
    """scene.npz, then the requested export formats, into the staging folder. Returns (key ->
    staged path, the exports' description or None)."""
    clock("outputs", 0, 1)
    masks = scene_masks(scene, cfg.postprocess)
    export_scene(scene, masks, stage, ("npz",), post_cfg=cfg.postprocess, viz_cfg=cfg.viz)
    files: dict[str, Path] = {"scene": stage / SCENE_FILE}
    clock("outputs", 1, 1)
    if not exports:
        return files, None
    clock("export", 0, 1)
    formats = {f for f in exports if f != "npz" or "zip" in exports}
    res = export_scene(scene, masks, stage, formats, post_cfg=cfg.postprocess, viz_cfg=cfg.viz)
    files.update(res.written)
    files.setdefault("npz", stage / SCENE_FILE)
    clock("export", 1, 1)
    return files, res.describe()


def moved_paths(value: Any, stage: Path, dest: Path) -> Any:
    """Path strings inside ``stage`` (at any depth of dicts/lists) -> the same below ``dest``."""
    prefix = str(stage)
    if isinstance(value, str) and (value == prefix or value.startswith(prefix + os.sep)):
        return str(dest) + value[len(prefix) :]
    if isinstance(value, Mapping):
        return {k: moved_paths(v, stage, dest) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(moved_paths(v, stage, dest) for v in value)
    return value


def _publish_run(job: Job, stage: Path, data: dict[str, Any], files: Mapping[str, Path]) -> None:
    """Move the staged outputs into the job folder, check each is there, then write the manifest
    (``status: done``) last: a kill at any point never leaves ``done`` beside missing files."""
    staged_manifest = stage / MANIFEST_FILE
    jobs.write_json(staged_manifest, data)
    if "zip" in files:
        add_to_zip(files["zip"], [staged_manifest], stage)
    moved = jobs.publish(stage, job.dir, exclude=(MANIFEST_FILE,))
    try:
        missing = [k for k, p in files.items() if not Path(moved_paths(str(p), stage, job.dir)).exists()]
        if missing:
            raise RuntimeError(f"outputs missing after writing them: {', '.join(missing)}")
        os.replace(staged_manifest, job.manifest_path)
    except BaseException:
        jobs.unpublish(moved)  # a failed run leaves no outputs beside its "failed" manifest
        raise


def _record_failure(job: Job, cfg: AppConfig, clock: StageClock, t0: float, exc: BaseException) -> None:
    """The manifest of a run that did not finish: ``interrupted`` (Ctrl-C, SIGTERM, server stop),
    ``cancelled`` (the user's Cancel) or ``failed``, with the error. Best effort: a full disk may
    refuse even this."""
    if isinstance(exc, Cancelled) and not isinstance(exc, Interrupted):
        status = jobs.STATUS_CANCELLED
    elif isinstance(exc, (KeyboardInterrupt, Terminated, Cancelled)):
        status = jobs.STATUS_INTERRUPTED
    else:
        status = jobs.STATUS_FAILED
    message = " ".join(str(exc).split()) or type(exc).__name__
    timings = {**clock.finish(), "total": round(time.perf_counter() - t0, 4)}
    try:
        write_manifest(job, cfg=cfg, engine=cfg.engine, status=status, timings=timings, error=message)
    except OSError as e:
        logger.error("job %s: could not record its %s status (%s)", job.id, status, e)


def run_job(job: Job, cfg: AppConfig, clock: StageClock, body: StageBody, exports: Sequence[str] = ()) -> Result:
    """Run ``body(stage) -> (scene, pairs_path, extra)`` as a job (the engine writes into the
    staging folder ``stage``), then scene.npz and ``exports``, published with the manifest last."""
    t0 = time.perf_counter()
    try:
        with jobs.mark_running(job):
            try:
                return _run_staged(job, cfg, clock, body, exports, t0)
            except BaseException as e:
                exc = jobs.disk_full_error(e, job.dir, job.label) if jobs.is_disk_full(e) else e
                _record_failure(job, cfg, clock, t0, exc)
                if exc is e:
                    raise
                raise exc from e
    except OSError as e:  # the running marker itself could not be written
        if jobs.is_disk_full(e):
            raise jobs.disk_full_error(e, job.dir, job.label) from e
        raise


def _run_staged(
    job: Job, cfg: AppConfig, clock: StageClock, body: StageBody, exports: Sequence[str], t0: float
) -> Result:
    running = {"cfg": cfg, "engine": cfg.engine, "timings": {}}
    write_manifest(job, status=jobs.STATUS_RUNNING, **running)  # first: replaces any earlier manifest
    jobs.write_settings(job, cfg)
    with jobs.staging(job.dir) as stage:
        scene, pairs_path, extra = body(stage)
        scene = add_warnings(scene, _quality_warnings(scene, cfg.postprocess))
        files, described = _write_outputs(stage, scene, cfg, clock, exports)
        if pairs_path is not None and Path(pairs_path).is_relative_to(stage):
            files["pairs"] = Path(pairs_path)
        timings = {**clock.finish(), "total": round(time.perf_counter() - t0, 4)}
        final = {k: Path(moved_paths(str(p), stage, job.dir)) for k, p in files.items()}
        scene = dataclasses.replace(scene, extra=moved_paths(scene.extra, stage, job.dir))
        extra = {**extra, **({"exports": described} if described is not None else {})}
        data = manifest_data(
            job.id, job.dir, cfg=cfg, engine=cfg.engine, status=jobs.STATUS_DONE, timings=timings, scene=scene,
            files=final, extra=extra,
        )  # fmt: skip
        _publish_run(job, stage, data, files)
    jobs.drop_previous(job)
    pairs_path = Path(moved_paths(str(pairs_path), stage, job.dir)) if pairs_path is not None else None
    for w in scene.warnings:  # the caller shows them (CLI summary, page messages): logged once, at info
        logger.info("warning: %s", w)
    return Result(
        scene=scene, job=job, engine=cfg.engine, timings=timings, pairs_path=pairs_path, settings=cfg, files=final
    )


def estimate_run_bytes(cfg: AppConfig, image_paths: Sequence[str | Path]) -> int:
    """A generous estimate of what a run writes into its job: input copies, ``pairs.npz``
    (4 floats per pixel of both views of every pair), ``scene.npz`` and a few exports (8 floats
    per pixel of every view, twice), at ``image_size`` squared pixels per view (an upper bound).
    COLMAP: twice the inputs plus ~1 MB of features per image."""
    files = [p for p in map(Path, image_paths) if p.is_file()]
    for folder in (Path(p) for p in image_paths if Path(p).is_dir()):
        files += list_image_files(folder)
    n = max(len(files), 1)
    inputs = sum(p.stat().st_size for p in files)
    if cfg.engine == "colmap":
        return int(3 * inputs + n * 1024 * 1024)
    hw = cfg.preprocess.image_size**2
    try:
        n_pairs = len(make_pairs(max(n, 2), cfg.inference.scene_graph))
    except ValueError:
        n_pairs = n * (n - 1)
    pairs = n_pairs * 2 * hw * 4 * 4 if cfg.jobs.save_pairs else 0
    return int(inputs + pairs + 2 * n * hw * 8 * 4)
