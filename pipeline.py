"""The reconstruction pipeline: the stages users run, in order.

A run reads as a sequence of named stages::

    prepare (job folder, copies of the inputs)
      -> engine.reconstruct: load -> pair -> infer -> align      (DUSt3R, core.engines.dust3r)
                             features -> matching -> mapping      (COLMAP, core.engines.colmap)
      -> save (scene.npz, manifest.json)
    export (GLB, PLY, OBJ, COLMAP model, cameras.json, depth maps, zip), any number of times

Engines sit behind one protocol in a registry (:mod:`core.engines`), so nothing downstream branches
on the engine. Job folders, their cleanup and manifests live in :mod:`core.jobs`; only this module
writes a job's manifest. Re-alignment (:func:`realign`) re-runs the global alignment on a saved
``pairs.npz`` with new alignment settings, without the network. Timings are wall-clock seconds per
stage, measured from the progress reports (:class:`core.jobs.StageClock`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from config import AppConfig, ModelConfig, PostprocessConfig, VizConfig
from core import jobs
from core.alignment import align
from core.checkpoint import weights_availability
from core.engines import Engine
from core.engines import make_engines as _make_engines
from core.engines.dust3r import Dust3rEngine, ModelStatus
from core.errors import Cancelled, ImageLoadError, SettingsError
from core.inputs.preprocessing import list_image_files
from core.jobs import (
    MANIFEST_FILE,
    PAIRS_FILE,
    SCENE_FILE,
    Job,
    StageClock,
    cleanup_jobs,
    create_job,
    job_in_folder,
    library_versions,
    read_manifest,
    update_manifest,
    write_manifest,
)
from core.outputs.export import EXPORT_FORMATS, add_to_zip, export_scene
from core.outputs.postprocessing import point_masks, sparse_mask
from core.outputs.visualization import render_view_maps
from core.runtime import resolve_device
from core.types import PairPredictions, ProgressFn, Scene
from model import get_model

__all__ = [
    "PAIRS_FILE",
    "SCENE_FILE",
    "MANIFEST_FILE",
    "STAGE_LABELS",
    "Dust3rEngine",
    "ModelStatus",
    "weights_availability",
    "make_engines",
    "Job",
    "Result",
    "StageClock",
    "Pipeline",
    "create_job",
    "job_in_folder",
    "cleanup_jobs",
    "expand_image_paths",
    "reconstruct",
    "realign",
    "export",
    "render_views",
    "scene_masks",
    "write_manifest",
    "read_manifest",
    "update_manifest",
    "library_versions",
    "stage_label",
]

logger = logging.getLogger(__name__)

#: Human-readable names of the progress stages (page progress bar, CLI tqdm bar).
STAGE_LABELS: dict[str, str] = {
    "prepare": "Preparing the job",
    "load": "Loading images",
    "model": "Loading the DUSt3R network",
    "encode": "Encoding images",
    "pairs": "Pair inference",
    "save": "Saving pair predictions",
    "align": "Global alignment",
    "features": "SIFT features",
    "matching": "Feature matching",
    "mapping": "Mapping",
    "outputs": "Writing outputs",
    "export": "Writing outputs",
}
#: Unit of the (done, total) counts per stage, where it is not obvious.
_STAGE_UNITS: dict[str, str] = {
    "load": "images",
    "encode": "images",
    "pairs": "pairs",
    "align": "iterations",
    "features": "images",
    "matching": "pairs",
    "mapping": "images",
}


def stage_label(stage: str, done: int, total: int) -> str:
    """``("pairs", 3, 6)`` -> ``"Pair inference 3/6 pairs"``; unknown stages keep their name."""
    name = STAGE_LABELS.get(stage, stage.replace("_", " ").capitalize())
    if total > 1 or stage in _STAGE_UNITS:
        unit = _STAGE_UNITS.get(stage, "")
        return f"{name} {done}/{total} {unit}".rstrip()
    return name


def _load_model(model_cfg: ModelConfig):
    """The app's model loader, given to the DUSt3R engine: :func:`model.get_model` (one cache)."""
    return get_model(model_cfg)


def make_engines(cfg: AppConfig | None = None) -> dict[str, Engine]:
    """The engine registry with the app's model loader."""
    return _make_engines(cfg if cfg is not None else AppConfig(), load_model=_load_model)


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

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.scene.warnings


# --------------------------------------------------------------------------------------------
# Stage: prepare
# --------------------------------------------------------------------------------------------


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files and folders -> image files; a folder means its images in sorted name order.

    Raises ImageLoadError naming a path that does not exist, a folder without images, or an empty list.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = list_image_files(p)
            if not found:
                raise ImageLoadError(f"{p}: folder has no images", filename=str(p))
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ImageLoadError(f"{p}: file not found", filename=str(p))
    if not out:
        raise ImageLoadError("no images given")
    return out


# --------------------------------------------------------------------------------------------
# Stage: save (scene.npz, manifest)
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


def _add_warnings(scene: Scene, new: Sequence[str]) -> Scene:
    merged = tuple(dict.fromkeys([*scene.warnings, *new]))
    return scene if merged == scene.warnings else dataclasses.replace(scene, warnings=merged)


def scene_masks(scene: Scene, post_cfg: PostprocessConfig) -> tuple[np.ndarray, ...] | np.ndarray:
    """Which points are shown/exported: per-view (H, W) bool masks (dense) or (M,) bool (sparse).

    Computed once per display change and passed to every writer.
    """
    return point_masks(scene, post_cfg) if scene.is_dense else sparse_mask(scene, post_cfg)


def _save_scene(job: Job, scene: Scene, cfg: AppConfig, clock: StageClock) -> None:
    clock("outputs", 0, 1)
    export_scene(
        scene, scene_masks(scene, cfg.postprocess), job.dir, ("npz",), post_cfg=cfg.postprocess, viz_cfg=cfg.viz
    )
    clock("outputs", 1, 1)


def _polled(progress: ProgressFn | None, cancel: Callable[[], bool] | None) -> ProgressFn | None:
    """``progress`` that first asks ``cancel()`` and raises :class:`Cancelled` when it says so.

    Every stage reports progress between its steps (images, pairs, iterations, COLMAP stages),
    so a run stops at the next step boundary.
    """
    if cancel is None:
        return progress

    def report(stage: str, done: int, total: int) -> None:
        if cancel():
            raise Cancelled(f"cancelled during {STAGE_LABELS.get(stage, stage).lower()} ({done}/{total})")
        if progress is not None:
            progress(stage, done, total)

    return report


def _run_job(
    job: Job,
    cfg: AppConfig,
    clock: StageClock,
    body: Callable[[], tuple[Scene, Path | None, dict[str, Any]]],
    cancel: Callable[[], bool] | None = None,
) -> Result:
    """Run ``body() -> (scene, pairs_path, extra)`` as a job: running flag, scene.npz, manifest
    (status ``done``, ``failed`` or ``cancelled``)."""
    t0 = time.perf_counter()
    with jobs.mark_running(job):
        try:
            jobs.write_settings(job, cfg)
            scene, pairs_path, extra = body()
            scene = _add_warnings(scene, _quality_warnings(scene, cfg.postprocess))
            _save_scene(job, scene, cfg, clock)
        except BaseException as e:
            # a cancel raised inside a library callback may come back wrapped (COLMAP's own error)
            cancelled = isinstance(e, Cancelled) or (cancel is not None and cancel())
            timings = {**clock.finish(), "total": round(time.perf_counter() - t0, 4)}
            status = "cancelled" if cancelled else "failed"
            write_manifest(
                job, cfg=cfg, engine=cfg.engine, status=status, timings=timings, error=f"{type(e).__name__}: {e}"
            )
            if cancelled and not isinstance(e, Cancelled):
                raise Cancelled("cancelled") from e
            raise
    timings = {**clock.finish(), "total": round(time.perf_counter() - t0, 4)}
    files = {"scene": job.scene_path}
    if pairs_path is not None and Path(pairs_path).is_relative_to(job.dir):
        files["pairs"] = Path(pairs_path)
    write_manifest(
        job, cfg=cfg, engine=cfg.engine, status="done", timings=timings, scene=scene, files=files, extra=extra
    )
    for w in scene.warnings:  # the caller shows them (CLI summary, page messages): logged once, at info
        logger.info("warning: %s", w)
    return Result(scene=scene, job=job, engine=cfg.engine, timings=timings, pairs_path=pairs_path, settings=cfg)


# --------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------


def reconstruct(
    image_paths: Sequence[str | Path],
    cfg: AppConfig,
    *,
    engine: str | None = None,
    job: Job | None = None,
    progress: ProgressFn | None = None,
    engines: Mapping[str, Engine] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Result:
    """Images -> aligned scene, as a job (see the module docstring).

    image_paths: files and/or folders (a folder = its images in sorted name order).
    engine: overrides ``cfg.engine`` (a key of ``engines``; default registry: :func:`make_engines`).
    job: where to write; default a new job below ``cfg.jobs.output_root``.
    progress: ``progress(stage, done, total)``; stage names in :data:`STAGE_LABELS`.
    cancel: asked between steps; True stops the run with :class:`core.errors.Cancelled`.

    Returns a frozen :class:`Result`; writes ``scene.npz`` and ``manifest.json`` (also on failure,
    with ``status: failed``). Raises :class:`core.errors.UserError` subclasses for what the user can
    fix (bad images, weights, alignment, COLMAP, memory).
    """
    engines = engines if engines is not None else make_engines(cfg)
    name = engine if engine is not None else cfg.engine
    if name not in engines:
        raise SettingsError(f"unknown engine {name!r}; available: {', '.join(sorted(engines))}")
    cfg, eng = dataclasses.replace(cfg, engine=name), engines[name]
    paths = expand_image_paths(image_paths)
    job = job if job is not None else create_job(cfg.jobs.output_root)
    clock = StageClock(_polled(progress, cancel))

    def body():
        clock("prepare", 0, 1)
        inputs = jobs.copy_inputs(paths, job) if job.copy_inputs else paths
        clock("prepare", 1, 1)
        scene = eng.reconstruct(list(inputs), cfg, job.dir, clock)
        pairs = job.pairs_path if job.pairs_path.is_file() and cfg.jobs.save_pairs else None
        return scene, pairs, {"inputs": [str(p) for p in paths]}

    logger.info("job %s: %s on %d image(s) in %s", job.id, cfg.engine, len(paths), job.dir)
    return _run_job(job, cfg, clock, body, cancel)


def realign(
    pairs_npz: str | Path,
    cfg: AppConfig,
    *,
    job: Job | None = None,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Result:
    """Global alignment (and the scene outputs) again from saved pair predictions; no network.

    pairs_npz: a file in the reference fixture key layout (``PairPredictions.save_npz``); images
    inside it are optional (without them the points are grey). Image names, original sizes and the
    processed->original maps come from the file itself (:meth:`PairPredictions.view_info`).
    """
    pairs_npz = Path(pairs_npz)
    if not pairs_npz.is_file():
        raise ImageLoadError(f"pair predictions file not found: {pairs_npz}", filename=str(pairs_npz))
    cfg = dataclasses.replace(cfg, engine="dust3r")
    job = job if job is not None else create_job(cfg.jobs.output_root)
    clock = StageClock(_polled(progress, cancel))

    def body():
        clock("load", 0, 1)
        preds = PairPredictions.load_npz(pairs_npz)
        clock("load", 1, 1)
        device = resolve_device(cfg.model.device)
        clock("align", 0, cfg.alignment.niter)
        scene = dataclasses.replace(align(preds, cfg.alignment, device=device, progress=clock), **preds.view_info())
        if preds.images is None:
            scene = _add_warnings(scene, [f"{pairs_npz.name} holds no images: the points are grey"])
        extra = {**scene.extra, "device": str(device), "n_pairs": int(preds.pairs.shape[0])}
        return dataclasses.replace(scene, extra=extra), pairs_npz, {"source_pairs": str(pairs_npz.resolve())}

    logger.info("job %s: re-aligning %s in %s", job.id, pairs_npz, job.dir)
    return _run_job(job, cfg, clock, body, cancel)


# --------------------------------------------------------------------------------------------
# Stage: export (any number of times, from the kept scene)
# --------------------------------------------------------------------------------------------


def export(
    result: Result,
    post_cfg: PostprocessConfig,
    viz_cfg: VizConfig,
    formats: Sequence[str],
    *,
    out_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write the scene's outputs with these display settings; nothing is re-run.

    formats: names from :data:`core.outputs.export.EXPORT_FORMATS`. out_dir: default a fresh
    ``exports/<n>`` folder of the job, so concurrent exports never share a file. Returns format ->
    written path. Writing into the job's own folder records the files in its manifest.
    """
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise SettingsError(f"unknown export format(s) {unknown}; choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out_dir) if out_dir is not None else jobs.new_export_dir(result.job)
    out.mkdir(parents=True, exist_ok=True)
    masks = scene_masks(result.scene, post_cfg)
    res = export_scene(result.scene, masks, out, set(formats), post_cfg=post_cfg, viz_cfg=viz_cfg)
    files = dict(res.written)
    if out.resolve() == result.job.dir.resolve():  # the job's own folder: its manifest records the export
        manifest_path = update_manifest(result.job, exports=res.describe())
    else:
        manifest_path = out / MANIFEST_FILE
        jobs.write_json(manifest_path, res.describe())
    if "zip" in files:
        add_to_zip(files["zip"], [manifest_path], out)
    files["manifest"] = manifest_path
    return files


def render_views(result: Result, viz_cfg: VizConfig, *, conf_threshold: float | None = None) -> list[tuple[Path, str]]:
    """RGB / depth / confidence images per view (for the gallery), in ``<job>/views``.

    conf_threshold: marked on the confidence colour bars (default: the run's display threshold).
    """
    out = result.job.dir / "views"
    out.mkdir(parents=True, exist_ok=True)
    if conf_threshold is None:
        conf_threshold = result.settings.postprocess.min_conf_thr
    return render_view_maps(result.scene, viz_cfg, out, conf_threshold=conf_threshold)


class Pipeline:
    """The engine registry plus the pipeline functions bound to it (what the page is given)."""

    def __init__(self, cfg: AppConfig | None = None, engines: Mapping[str, Engine] | None = None) -> None:
        self.cfg = cfg if cfg is not None else AppConfig()
        self.engines: dict[str, Engine] = dict(engines) if engines is not None else make_engines(self.cfg)

    @property
    def engine_names(self) -> tuple[str, ...]:
        return tuple(self.engines)

    def availability(self) -> dict[str, str | None]:
        """Engine name -> None (usable) or why not (without touching the network)."""
        return {name: eng.availability() for name, eng in self.engines.items()}

    def model_status(self) -> ModelStatus | None:
        dust3r = self.engines.get("dust3r")
        return dust3r.model_status() if isinstance(dust3r, Dust3rEngine) else None

    def new_job(self, cfg: AppConfig, *, protected: frozenset[str] | set[str] = frozenset()) -> Job:
        """Clean old jobs (never ``protected``), then create a new one below ``cfg.jobs.output_root``."""
        cleanup_jobs(cfg.jobs, protected=protected)
        return create_job(cfg.jobs.output_root)

    def reconstruct(
        self,
        image_paths: Sequence[str | Path],
        cfg: AppConfig,
        *,
        engine: str | None = None,
        job: Job | None = None,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Result:
        return reconstruct(
            image_paths, cfg, engine=engine, job=job, progress=progress, engines=self.engines, cancel=cancel
        )

    def realign(
        self,
        pairs_npz: str | Path,
        cfg: AppConfig,
        *,
        job: Job | None = None,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Result:
        return realign(pairs_npz, cfg, job=job, progress=progress, cancel=cancel)

    def export(
        self,
        result: Result,
        post_cfg: PostprocessConfig,
        viz_cfg: VizConfig,
        formats: Sequence[str],
        *,
        out_dir: str | Path | None = None,
    ) -> dict[str, Path]:
        return export(result, post_cfg, viz_cfg, formats, out_dir=out_dir)

    def render_views(
        self, result: Result, viz_cfg: VizConfig, *, conf_threshold: float | None = None
    ) -> list[tuple[Path, str]]:
        return render_views(result, viz_cfg, conf_threshold=conf_threshold)
