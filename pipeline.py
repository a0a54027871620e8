"""The reconstruction pipeline: the stages users run, in order.

A run reads as a sequence of named stages::

    prepare (job folder, copies of the inputs)
      -> engine.reconstruct: load -> pair -> infer -> align      (DUSt3R, core.engines.dust3r)
                             features -> matching -> mapping      (COLMAP, core.engines.colmap)
      -> save (scene.npz, requested exports, manifest.json last)
    export (GLB, PLY, OBJ, COLMAP model, cameras.json, depth maps, zip), any number of times

Engines sit behind one protocol in a registry (:mod:`core.engines`), so nothing downstream branches
on the engine. Job folders, their cleanup and manifests live in :mod:`core.jobs`; a run's outputs
are written in a staging folder and published with the manifest last (:mod:`core.runs`), so a
manifest says ``done`` only beside complete outputs; only this module writes a job's manifest. Re-alignment (:func:`realign`) re-runs the global alignment on a saved
``pairs.npz`` with new alignment settings, without the network. Timings are wall-clock seconds per
stage, measured from the progress reports (:class:`core.runs.StageClock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from config import AppConfig, ModelConfig, PostprocessConfig, VizConfig
from core import jobs
from core.alignment import align
from core.checkpoint import weights_availability
from core.engines import Engine
from core.engines import make_engines as _make_engines
from core.engines.dust3r import Dust3rEngine, ModelStatus
from core.errors import Cancelled, ImageLoadError, Interrupted, PairsFileError, ResultExpiredError, SettingsError
from core.inference.memory import check_alignment_memory
from core.inputs.exif_gps import attach_gps, gps_from_manifest
from core.inputs.plan import resolve_scene_graph, video_options, with_scene_graph
from core.inputs.preprocessing import list_image_files
from core.inputs.video import VideoFrames, expand_inputs, is_video
from core.jobs import (
    MANIFEST_FILE,
    PAIRS_FILE,
    SCENE_FILE,
    Job,
    cleanup_jobs,
    create_job,
    job_in_folder,
    library_versions,
    read_manifest,
    update_manifest,
    write_manifest,
)
from core.outputs.export import ALL_FORMATS, add_to_zip, export_scene
from core.outputs.visualization import render_view_maps
from core.runs import (
    Result,
    RunLimits,
    StageClock,
    add_warnings,
    check_alignment_fits,
    check_images,
    check_known_focal,
    check_pairs,
    estimate_run_bytes,
    guarded_progress,
    moved_paths,
    run_job,
    safe_names,
    scene_masks,
)
from core.runs import polled as _polled
from core.runtime import resolve_device
from core.types import PairPredictions, ProgressFn
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
    "RunLimits",
    "StageClock",
    "Pipeline",
    "create_job",
    "job_in_folder",
    "cleanup_jobs",
    "expand_image_paths",
    "sample_videos",
    "check_run",
    "estimate_run_bytes",
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
    "frames": "Reading video frames",
    "load": "Loading images",
    "model": "Loading the DUSt3R network",
    "encode": "Encoding images",
    "pairs": "Pair inference",
    "save": "Saving pair predictions",
    "align": "Global alignment",
    "features": "SIFT features",
    "matching": "Feature matching",
    "mapping": "Mapping",
    "dense": "Dense stereo",
    "outputs": "Writing outputs",
    "export": "Writing outputs",
}
#: Unit of the (done, total) counts per stage, where it is not obvious.
_STAGE_UNITS: dict[str, str] = {
    "frames": "s of video",
    "load": "images",
    "encode": "images",
    "pairs": "pairs",
    "align": "iterations",
    "features": "images",
    "matching": "pairs",
    "mapping": "images",
    "dense": "views",
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
                videos = " (videos in a folder are not read: give them as files)" if _has_videos(p) else ""
                raise ImageLoadError(f"{p}: folder has no images{videos}", filename=str(p))
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ImageLoadError(f"{p}: file not found", filename=str(p))
    if not out:
        raise ImageLoadError("no images given")
    return out


def _has_videos(folder: Path) -> bool:
    return any(is_video(p) for p in folder.iterdir() if p.is_file())


def sample_videos(
    paths: Sequence[str | Path], cfg: AppConfig, out_dir: str | Path, progress: ProgressFn | None = None
) -> tuple[list[Path], list[VideoFrames]]:
    """Photos and videos -> the run's image files, in the given order: each video (by extension,
    :data:`core.inputs.video.VIDEO_EXTENSIONS`) is replaced by its kept frames, written into
    ``out_dir`` (created only when there is a video) with ``cfg.video``'s sampling.

    progress: ``progress("frames", seconds_decoded, total_seconds)`` per video. Returns (image
    paths, one :class:`VideoFrames` per video). Raises :class:`core.inputs.video.VideoError` (an
    ImageLoadError) naming a video that cannot be used.
    """
    paths = [Path(p) for p in paths]
    if not any(is_video(p) for p in paths):
        return paths, []
    report = (lambda done, total: progress("frames", done, total)) if progress is not None else None
    return expand_inputs(paths, out_dir, video_options(cfg), progress=report)


def _run_settings(cfg: AppConfig, images: Sequence[Path], videos: Sequence[VideoFrames]) -> AppConfig:
    """``cfg`` with the scene graph ``auto`` resolved for these images (a sequence graph for video frames)."""
    n_frames = sum(len(v.frames) for v in videos)
    all_frames = bool(videos) and n_frames == len(images)
    return with_scene_graph(cfg, resolve_scene_graph(cfg.inference, len(images), all_video_frames=all_frames))


def _videos_manifest(videos: Sequence[VideoFrames], cfg: AppConfig) -> dict[str, Any]:
    """Manifest keys: ``videos`` (per video: duration, frame rate, rotation, each kept frame's time
    and sharpness) and ``scene_graph`` (the one run)."""
    out: dict[str, Any] = {}
    if videos:
        out["videos"] = [v.to_manifest() for v in videos]
    if cfg.engine == "dust3r":
        out["scene_graph"] = cfg.inference.scene_graph
    return out


def check_run(image_paths: Sequence[str | Path], cfg: AppConfig, *, limits: RunLimits | None = None) -> list[Path]:
    """What can be checked before a job exists: the images exist (:func:`expand_image_paths`), the
    known focal lengths fit their count (SettingsError) and the pair limit (RunLimitError).
    Returns the image files."""
    paths = expand_image_paths(image_paths)
    check_known_focal(cfg, len(paths))
    check_pairs(len(paths), cfg, limits)
    return paths


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
    exports: Sequence[str] = (),
    limits: RunLimits | None = None,
    stop: threading.Event | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Result:
    """Images -> aligned scene, as a job (see the module docstring).

    image_paths: files and/or folders (a folder = its images in sorted name order).
    engine: overrides ``cfg.engine`` (a key of ``engines``; default registry: :func:`make_engines`).
    job: where to write; default a new job below ``cfg.jobs.output_root``.
    progress: ``progress(stage, done, total)``; stage names in :data:`STAGE_LABELS`.
    exports: formats of :data:`core.outputs.export.ALL_FORMATS` written with the scene, before
    the manifest says ``done`` (the CLI's ``--export``). limits: the web app's per-run limits.
    stop: set it to stop the run at its next progress report (:class:`Interrupted`).
    cancel: asked between steps; True stops the run with :class:`core.errors.Cancelled`.

    Returns a frozen :class:`Result`; writes ``scene.npz`` and ``manifest.json`` (``running`` at
    the start, ``done`` after every output is in place, ``failed``/``interrupted`` with the error
    otherwise; partial files are removed). Raises :class:`core.errors.UserError` subclasses for
    what the user can fix (bad images, weights, alignment, COLMAP, memory, a full disk).
    """
    engines = engines if engines is not None else make_engines(cfg)
    name = engine if engine is not None else cfg.engine
    if name not in engines:
        raise SettingsError(f"unknown engine {name!r}; available: {', '.join(sorted(engines))}")
    cfg, eng = dataclasses.replace(cfg, engine=name), engines[name]
    paths = check_run(image_paths, cfg, limits=limits)
    job = job if job is not None else create_job(cfg.jobs.output_root)
    clock = StageClock(_polled(guarded_progress(progress, stop, limits), cancel, STAGE_LABELS))

    def body(stage: Path):
        clock("prepare", 0, 1)
        inputs = jobs.copy_inputs(paths, job) if job.copy_inputs else paths
        images, videos = sample_videos(inputs, cfg, job.inputs_dir / "frames", clock)
        run_cfg = _run_settings(cfg, images, videos)
        check_alignment_fits(check_images(images, run_cfg), run_cfg)
        clock("prepare", 1, 1)
        try:
            scene = eng.reconstruct(images, run_cfg, stage, clock)
        except Exception as e:  # a cancel raised inside a library callback may come back wrapped (COLMAP's own)
            if cancel is not None and not isinstance(e, Cancelled) and cancel():
                raise Cancelled("cancelled") from e
            raise
        scene = attach_gps(scene, images)  # EXIF GPS, by image name
        scene = safe_names(scene, [p.name for p in (images if videos else paths)])
        scene = add_warnings(scene, [w for v in videos for w in v.warnings])
        pairs = stage / PAIRS_FILE if (stage / PAIRS_FILE).is_file() and cfg.jobs.save_pairs else None
        shown = [str(p.relative_to(job.dir)) for p in inputs] if job.copy_inputs else [str(p) for p in paths]
        return scene, pairs, {"inputs": shown, **_videos_manifest(videos, run_cfg)}

    logger.info("job %s: %s on %d image(s) in %s", job.id, cfg.engine, len(paths), job.dir)
    return run_job(job, cfg, clock, body, exports)


def _load_pairs(pairs_npz: Path) -> PairPredictions:
    """Read a pairs file; anything that is not one (not a zip, truncated, wrong arrays) is a bad
    input file (:class:`PairsFileError`, exit 3)."""
    try:
        return PairPredictions.load_npz(pairs_npz)
    except (zipfile.BadZipFile, EOFError, KeyError, IndexError) as e:
        raise PairsFileError(f"{pairs_npz.name}: not a readable pair-predictions .npz file ({e})") from e


def realign(
    pairs_npz: str | Path,
    cfg: AppConfig,
    *,
    job: Job | None = None,
    progress: ProgressFn | None = None,
    exports: Sequence[str] = (),
    limits: RunLimits | None = None,
    stop: threading.Event | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Result:
    """Global alignment (and the scene outputs) again from saved pair predictions; no network.

    pairs_npz: a file in the reference fixture key layout (``PairPredictions.save_npz``); images
    inside it are optional (without them the points are grey). Image names, original sizes and the
    processed->original maps come from the file itself (:meth:`PairPredictions.view_info`).
    exports, limits, stop: as in :func:`reconstruct`.
    """
    pairs_npz = Path(pairs_npz)
    if not pairs_npz.is_file():
        raise ImageLoadError(f"pair predictions file not found: {pairs_npz}", filename=str(pairs_npz))
    cfg = dataclasses.replace(cfg, engine="dust3r")
    job = job if job is not None else create_job(cfg.jobs.output_root)
    clock = StageClock(_polled(guarded_progress(progress, stop, limits), cancel, STAGE_LABELS))

    def body(stage: Path):
        clock("load", 0, 1)
        preds = _load_pairs(pairs_npz)
        check_known_focal(cfg, preds.n_views)
        clock("load", 1, 1)
        device = resolve_device(cfg.model.device)
        pairs = [(int(i), int(j)) for i, j in preds.pairs.tolist()]
        check_alignment_memory(
            preds.true_shapes, pairs, device=device, scene_graph=f"from {pairs_npz.name}",
            memory_fraction=cfg.inference.memory_fraction,
        )  # fmt: skip
        clock("align", 0, cfg.alignment.niter)
        scene = dataclasses.replace(align(preds, cfg.alignment, device=device, progress=clock), **preds.view_info())
        scene = gps_from_manifest(pairs_npz.parent / MANIFEST_FILE, scene)  # the GPS the original run recorded
        scene = safe_names(scene, scene.names)
        if preds.images is None:
            scene = add_warnings(scene, [f"{pairs_npz.name} holds no images: the points are grey"])
        extra = {**scene.extra, "device": str(device), "n_pairs": int(preds.pairs.shape[0])}
        return dataclasses.replace(scene, extra=extra), pairs_npz, {"source_pairs": str(pairs_npz)}

    logger.info("job %s: re-aligning %s in %s", job.id, pairs_npz, job.dir)
    return run_job(job, cfg, clock, body, exports)


# --------------------------------------------------------------------------------------------
# Stage: export (any number of times, from the kept scene)
# --------------------------------------------------------------------------------------------


def _check_alive(result: Result) -> None:
    """A kept result whose job folder was cleaned up cannot be exported (nothing is re-created)."""
    if not jobs.job_exists(result.job):
        raise ResultExpiredError(
            "this result has expired: its files were cleaned up (results are kept while their page is open, "
            f"and up to {result.settings.jobs.max_age_hours:g} h). Run the reconstruction again"
        )


@contextlib.contextmanager
def _expired_if_gone(result: Result) -> Iterator[None]:
    """A job folder that disappears while its export is written -> :class:`ResultExpiredError`."""
    try:
        yield
    except FileNotFoundError:
        if jobs.job_exists(result.job):
            raise
        _check_alive(result)
        raise  # pragma: no cover - _check_alive raised


def export(
    result: Result,
    post_cfg: PostprocessConfig,
    viz_cfg: VizConfig,
    formats: Sequence[str],
    *,
    out_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write the scene's outputs with these display settings; nothing is re-run.

    formats: names from :data:`core.outputs.export.ALL_FORMATS`. out_dir: default a fresh
    ``exports/<n>`` folder of the job (written under a hidden name and renamed when complete, so
    concurrent exports never share or lose a file). Returns format -> written path (and
    ``manifest``). Writing into the job's own folder records the files in its manifest. Raises
    :class:`ResultExpiredError` when the job's folder was cleaned up.
    """
    unknown = [f for f in formats if f not in ALL_FORMATS]
    if unknown:
        raise SettingsError(f"unknown export format(s) {unknown}; choose from {', '.join(ALL_FORMATS)}")
    _check_alive(result)
    masks = scene_masks(result.scene, post_cfg)
    own = out_dir is not None and Path(out_dir).resolve() == result.job.dir.resolve()
    with _expired_if_gone(result):
        if out_dir is None:
            final = jobs.new_export_dir(result.job, keep_s=result.settings.jobs.export_keep_s, create=False)
            parent = final.parent
        else:
            final = parent = Path(out_dir)
            parent.mkdir(parents=True, exist_ok=True)
        with jobs.staging(parent) as stage:
            res = export_scene(result.scene, masks, stage, set(formats), post_cfg=post_cfg, viz_cfg=viz_cfg)
            files = dict(res.written)
            if not own:
                files["manifest"] = stage / MANIFEST_FILE
                jobs.write_json(files["manifest"], res.describe())
                if "zip" in files:
                    add_to_zip(files["zip"], [files["manifest"]], stage)
            if out_dir is None:
                os.replace(stage, final)  # the whole folder appears at once
            else:
                jobs.publish(stage, final, exclude=(), last=MANIFEST_FILE)
        out = {k: Path(moved_paths(str(p), stage, final)) for k, p in files.items()}
    if own:
        out["manifest"] = update_manifest(result.job, exports=res.describe())
    return out


def render_views(result: Result, viz_cfg: VizConfig, *, conf_threshold: float | None = None) -> list[tuple[Path, str]]:
    """RGB / depth / confidence images per view (for the gallery), in ``<job>/views`` (written
    complete, then renamed into place). Raises :class:`ResultExpiredError` for a cleaned-up job.

    conf_threshold: marked on the confidence colour bars (default: the run's display threshold).
    """
    _check_alive(result)
    if conf_threshold is None:
        conf_threshold = result.settings.postprocess.min_conf_thr
    with _expired_if_gone(result), jobs.staging(result.job.dir) as stage:
        views = render_view_maps(result.scene, viz_cfg, stage / "views", conf_threshold=conf_threshold)
        jobs.publish(stage, result.job.dir)
    return [(Path(moved_paths(str(p), stage, result.job.dir)), caption) for p, caption in views]


class Pipeline:
    """The engine registry plus the pipeline functions bound to it (what the page is given).

    It also knows the jobs running in this process (never cleaned up while they run) and can stop
    them: :meth:`request_stop` makes each stop at its next progress report, marked interrupted.
    """

    def __init__(self, cfg: AppConfig | None = None, engines: Mapping[str, Engine] | None = None) -> None:
        self.cfg = cfg if cfg is not None else AppConfig()
        self.engines: dict[str, Engine] = dict(engines) if engines is not None else make_engines(self.cfg)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active: set[str] = set()
        self._stop = threading.Event()

    @property
    def engine_names(self) -> tuple[str, ...]:
        return tuple(self.engines)

    def availability(self) -> dict[str, str | None]:
        """Engine name -> None (usable) or why not (without touching the network)."""
        return {name: eng.availability() for name, eng in self.engines.items()}

    def model_status(self) -> ModelStatus | None:
        dust3r = self.engines.get("dust3r")
        return dust3r.model_status() if isinstance(dust3r, Dust3rEngine) else None

    # -- jobs of this process ------------------------------------------------------------------
    def active_jobs(self) -> frozenset[str]:
        """Ids of the jobs created by :meth:`new_job` or running here right now."""
        with self._lock:
            return frozenset(self._active)

    def request_stop(self) -> None:
        """Stop every running job at its next progress report (marked interrupted); new runs stop at once."""
        self._stop.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the running jobs to end; True when none is left."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _done(self, job: Job | None) -> None:
        if job is not None:
            with self._idle:
                self._active.discard(job.id)
                self._idle.notify_all()

    def new_job(
        self, cfg: AppConfig, *, protected: frozenset[str] | set[str] = frozenset(), inputs: Sequence[str | Path] = ()
    ) -> Job:
        """Make room (:func:`core.jobs.ensure_room`: cleanup that never touches ``protected`` or
        running jobs; :class:`StorageError` when a run of ``inputs`` would not fit), then a new
        job below ``cfg.jobs.output_root``, kept from cleanup until its run ends."""
        if self._stop.is_set():
            raise Interrupted("the server is shutting down; no new runs are started")
        reserve = estimate_run_bytes(cfg, inputs) if inputs else 0
        with self._lock:
            jobs.ensure_room(cfg.jobs, protected=set(protected) | self._active, reserve_bytes=reserve)
            job = create_job(cfg.jobs.output_root)
            self._active.add(job.id)
        return job

    def reconstruct(
        self,
        image_paths: Sequence[str | Path],
        cfg: AppConfig,
        *,
        engine: str | None = None,
        job: Job | None = None,
        progress: ProgressFn | None = None,
        exports: Sequence[str] = (),
        limits: RunLimits | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Result:
        try:
            return reconstruct(
                image_paths,
                cfg,
                engine=engine,
                job=job,
                progress=progress,
                engines=self.engines,
                exports=exports,
                limits=limits,
                stop=self._stop,
                cancel=cancel,
            )
        finally:
            self._done(job)

    def realign(
        self,
        pairs_npz: str | Path,
        cfg: AppConfig,
        *,
        job: Job | None = None,
        progress: ProgressFn | None = None,
        exports: Sequence[str] = (),
        limits: RunLimits | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Result:
        try:
            return realign(
                pairs_npz,
                cfg,
                job=job,
                progress=progress,
                exports=exports,
                limits=limits,
                stop=self._stop,
                cancel=cancel,
            )
        finally:
            self._done(job)

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
