"""The reconstruction pipeline: engines, jobs, and the stages users run.

A run reads as a sequence of named stages::

    prepare (job folder, copies of the inputs)
      -> engine.reconstruct: load -> pair -> infer -> align      (DUSt3R)
                             features -> matching -> mapping      (COLMAP)
      -> save (scene.npz, manifest.json)
    export (GLB, PLY, OBJ, COLMAP model, cameras.json, depth maps, zip), any number of times

Engines sit behind one interface (:class:`core.types.Engine`: a name, ``availability()``,
``reconstruct(image_paths, cfg, job_dir, progress) -> Scene``) in a registry
(:func:`make_engines`), so nothing downstream branches on the engine.

Jobs. Every run owns one folder (:class:`Job`) below ``cfg.jobs.output_root`` named by a unique
id (UTC timestamp + random hex): ``inputs/`` (copies of the uploads), ``settings.json``,
``pairs.npz`` (DUSt3R pair predictions, when ``cfg.jobs.save_pairs``), ``scene.npz``,
``exports/<n>/`` (one folder per export, so concurrent exports never share a file) and
``manifest.json`` (settings, library versions, engine, per-stage timings, images, warnings).
Two runs never share a file. :func:`cleanup_jobs` deletes old jobs by age and total size; the
caller passes the ids it must keep (the live sessions' jobs), nothing is kept in globals.

Re-alignment. :func:`realign` re-runs global alignment on a saved ``pairs.npz`` with new
alignment settings, without the network.

Timings are wall-clock seconds per stage, measured from the progress reports
(:class:`StageClock`): a stage lasts from its first report until the next stage's first report.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from config import AppConfig, JobConfig, ModelConfig, PostprocessConfig, VizConfig
from core.alignment import align
from core.checkpoint import weights_availability
from core.engines.colmap import ColmapEngine
from core.inference import run_inference
from core.inputs.pairs import make_pairs
from core.inputs.preprocessing import ImageLoadError, list_image_files, load_images
from core.outputs.export import EXPORT_FORMATS, export_scene
from core.outputs.postprocessing import point_masks, sparse_mask
from core.outputs.visualization import render_view_maps
from core.runtime import resolve_device, select_autocast_dtype, tune_cpu_allocator
from core.types import Engine, InputImage, PairPredictions, ProgressFn, Scene
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

PAIRS_FILE = "pairs.npz"
SCENE_FILE = "scene.npz"
MANIFEST_FILE = "manifest.json"
SETTINGS_FILE = "settings.json"
_MARKER_FILE = ".dust3r-job"
_RUNNING_FILE = ".running"
_EXPORTS_DIR = "exports"
_KEEP_EXPORTS = 3
_JOB_ID_RE = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")

#: Human-readable names of the progress stages (UI progress bar, CLI tqdm bar).
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


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelStatus:
    """What the UI shows about the DUSt3R network."""

    checkpoint: str
    device: str
    load_seconds: float


class Dust3rEngine:
    """DUSt3R: preprocess -> pairs -> pair inference -> global alignment.

    The network is loaded lazily on the first run through :func:`model.get_model` (cached by
    checkpoint and device) and reused afterwards. With ``cfg.jobs.save_pairs`` the pair
    predictions are written to ``job_dir / "pairs.npz"`` (reference fixture key layout).
    """

    name = "dust3r"

    def __init__(self, model_cfg: ModelConfig | None = None) -> None:
        self._model_cfg = model_cfg if model_cfg is not None else ModelConfig()
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str, str | None], ModelStatus] = {}

    def availability(self, model_cfg: ModelConfig | None = None) -> str | None:
        """None when the weights load without the network, else what is missing and how to fix it."""
        return weights_availability(model_cfg if model_cfg is not None else self._model_cfg)

    def model_status(self, model_cfg: ModelConfig | None = None) -> ModelStatus | None:
        """How the network for ``model_cfg`` was loaded, or None when it is not loaded yet."""
        cfg = model_cfg if model_cfg is not None else self._model_cfg
        with self._lock:
            for (ckpt, _device, cache), status in self._loaded.items():
                if ckpt == cfg.checkpoint and cache == cfg.cache_dir:
                    return status
        return None

    def _model(self, cfg: ModelConfig) -> torch.nn.Module:
        device = str(resolve_device(cfg.device))
        key = (cfg.checkpoint, device, cfg.cache_dir)
        with self._lock:
            t0 = time.perf_counter()
            model = get_model(cfg)
            if key not in self._loaded:
                self._loaded[key] = ModelStatus(cfg.checkpoint, device, time.perf_counter() - t0)
        return model

    def reconstruct(self, image_paths: list[Path], cfg: AppConfig, job_dir: Path, progress: ProgressFn) -> Scene:
        """Image files -> aligned dense Scene (see the module docstring for the stages)."""
        n = len(image_paths)
        progress("load", 0, n)
        images = load_images(image_paths, cfg.preprocess)
        progress("load", n, n)
        if n > 1:  # validates the scene graph before the (slow) model load
            make_pairs(n, cfg.inference.scene_graph)
        progress("model", 0, 1)
        model = self._model(cfg.model)
        progress("model", 1, 1)
        device = resolve_device(cfg.model.device)
        autocast_dtype = select_autocast_dtype(device, cfg.inference.precision)
        if device.type == "cpu" and cfg.inference.tune_cpu_allocator:
            tune_cpu_allocator()  # process-wide, once; main.py applies it at start-up already
        preds = run_inference(
            model, images, cfg.inference, device=device, autocast_dtype=autocast_dtype, progress=progress
        )
        if cfg.jobs.save_pairs:
            progress("save", 0, 1)
            preds.save_npz(Path(job_dir) / PAIRS_FILE, batch_size=max(1, cfg.inference.batch_size))
            progress("save", 1, 1)
        progress("align", 0, cfg.alignment.niter)
        scene = align(preds, cfg.alignment, device=device, progress=progress)
        scene = _with_image_info(scene, images)
        extra = dict(scene.extra)
        extra.update(
            device=str(device),
            autocast=str(autocast_dtype).replace("torch.", "") if autocast_dtype else "fp32",
            n_pairs=int(preds.pairs.shape[0]),
            checkpoint=cfg.model.checkpoint,
        )
        return dataclasses.replace(scene, extra=extra)


def _with_image_info(scene: Scene, images: Sequence[InputImage]) -> Scene:
    """Copy upload names, original sizes and the processed->original maps into the scene."""
    if len(images) == 1 and scene.n_views == 2:  # a single image is paired with its copy
        images = [images[0], images[0]]
    if len(images) != scene.n_views:
        return scene
    return dataclasses.replace(
        scene,
        names=tuple(im.name for im in images),
        original_sizes=tuple(im.original_size for im in images),
        original_from_processed=np.stack([im.original_from_processed() for im in images]),
    )


def make_engines(cfg: AppConfig | None = None) -> dict[str, Engine]:
    """The engine registry: name -> engine. ``cfg.model`` is the DUSt3R engine's default model."""
    cfg = cfg if cfg is not None else AppConfig()
    return {"dust3r": Dust3rEngine(cfg.model), "colmap": ColmapEngine()}


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One run's folder. ``copy_inputs``: copy the images into ``inputs/`` before running."""

    id: str
    """Unique id: ``YYYYmmdd-HHMMSS-<8 hex>`` (UTC)."""
    dir: Path
    """The folder; everything the run writes goes below it."""
    copy_inputs: bool = True
    """Copy the uploads into ``inputs/`` (the web app); the CLI reads them in place."""

    @property
    def inputs_dir(self) -> Path:
        return self.dir / "inputs"

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST_FILE

    @property
    def pairs_path(self) -> Path:
        return self.dir / PAIRS_FILE

    @property
    def scene_path(self) -> Path:
        return self.dir / SCENE_FILE


def _new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def create_job(output_root: str | Path) -> Job:
    """A new, empty job folder below ``output_root`` (created; the id is unique)."""
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        job_id = _new_job_id()
        folder = root / job_id
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        (folder / _MARKER_FILE).write_text(job_id + "\n", encoding="utf-8")
        return Job(id=job_id, dir=folder, copy_inputs=True)


def job_in_folder(folder: str | Path) -> Job:
    """A job writing into a folder the user chose (the CLI's ``--output DIR``); inputs read in place."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return Job(id=_new_job_id(), dir=folder, copy_inputs=False)


def _folder_size(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(dirpath) / name).stat().st_size
            except OSError:
                continue
    return total


def _job_folders(root: Path) -> list[Path]:
    """Folders below ``root`` that this app created (id-shaped name and marker file)."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and _JOB_ID_RE.fullmatch(p.name) and (p / _MARKER_FILE).is_file()]


def _last_activity(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for name in (MANIFEST_FILE, _MARKER_FILE, _EXPORTS_DIR):
        try:
            times.append((folder / name).stat().st_mtime)
        except OSError:
            continue
    return max(times)


def cleanup_jobs(
    cfg: JobConfig, *, protected: frozenset[str] | set[str] = frozenset(), now: float | None = None
) -> list[str]:
    """Delete old jobs below ``cfg.output_root``; returns the deleted ids.

    First every job whose last activity is older than ``cfg.max_age_hours``, then the least
    recently active ones while the folder holds more than ``cfg.max_total_mb``. Never deleted:
    ids in ``protected`` (the live sessions' jobs), jobs still running (another process), and
    anything that is not a job folder created by :func:`create_job`.
    """
    now = time.time() if now is None else now
    root = Path(cfg.output_root)
    jobs = []
    for folder in _job_folders(root):
        try:
            jobs.append((_last_activity(folder), folder, _folder_size(folder)))
        except OSError:
            continue
    jobs.sort(key=lambda item: item[0])
    total = sum(size for _, _, size in jobs)
    limit = cfg.max_total_mb * 1024 * 1024
    deleted: list[str] = []
    for last, folder, size in jobs:
        too_old = now - last > cfg.max_age_hours * 3600
        if not (too_old or total > limit):
            continue
        if folder.name in protected:
            continue
        running = folder / _RUNNING_FILE
        if running.exists() and now - running.stat().st_mtime < cfg.max_age_hours * 3600:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            deleted.append(folder.name)
            total -= size
    if deleted:
        logger.info("cleaned %d old job(s) from %s", len(deleted), root)
    return deleted


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files and folders -> image files; a folder means its images in sorted name order.

    Raises ValueError naming a path that does not exist, a folder without images, or an empty list.
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


def _copy_inputs(paths: Sequence[Path], job: Job) -> list[Path]:
    """Copy the images into the job's ``inputs/``, keeping their names (duplicates get ``-k``)."""
    job.inputs_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    copies = []
    for src in paths:
        name, k = src.name, 1
        while name.lower() in used:
            name = f"{src.stem}-{k}{src.suffix}"
            k += 1
        used.add(name.lower())
        dst = job.inputs_dir / name
        shutil.copyfile(src, dst)
        copies.append(dst)
    return copies


# --------------------------------------------------------------------------------------------
# Results, manifests
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """A finished reconstruction: what the UI keeps (gr.State) so display changes only re-export."""

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


def library_versions() -> dict[str, str | None]:
    """Versions of Python and the libraries that shape the result (None = not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("torch", "numpy", "gradio", "pycolmap", "trimesh", "opencv-python-headless", "pillow"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _settings_dict(cfg: AppConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=_jsonable))


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic write (temp file + rename) so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _images_info(scene: Scene) -> list[dict[str, Any]]:
    ofp = scene.original_from_processed
    return [
        {
            "name": scene.names[k],
            "processed_size": [int(scene.images[k].shape[1]), int(scene.images[k].shape[0])],
            "original_size": [int(v) for v in scene.original_sizes[k]],
            "original_from_processed": np.asarray(ofp[k]).tolist() if ofp is not None else None,
        }
        for k in range(scene.n_views)
    ]


def write_manifest(
    job: Job,
    *,
    cfg: AppConfig,
    engine: str,
    status: str,
    timings: Mapping[str, float],
    scene: Scene | None = None,
    error: str | None = None,
    files: Mapping[str, Path] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``job.dir/manifest.json`` (atomic). Keys:

    ``job_id``, ``created`` (UTC ISO time), ``status`` (``done``/``failed``), ``engine``,
    ``settings`` (the AppConfig as nested dicts), ``versions`` (:func:`library_versions`),
    ``timings_s`` (seconds per stage and ``total``), ``images`` (per view: name, processed and
    original (W, H), processed->original 3x3), ``n_views``, ``warnings``, ``final_loss``,
    ``engine_info`` (the scene's diagnostics), ``files`` (kind -> path relative to the job),
    ``error`` (failed runs), plus ``extra``.
    """
    data: dict[str, Any] = {
        "job_id": job.id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": status,
        "engine": engine,
        "settings": _settings_dict(cfg),
        "versions": library_versions(),
        "timings_s": dict(timings),
    }
    if scene is not None:
        data.update(
            n_views=scene.n_views,
            images=_images_info(scene),
            warnings=list(scene.warnings),
            final_loss=scene.final_loss,
            engine_info=scene.extra,
            n_sparse_points=int(scene.sparse.xyz.shape[0]) if scene.sparse is not None else None,
        )
    if error is not None:
        data["error"] = error
    if files:
        data["files"] = {k: _relative(Path(v), job.dir) for k, v in files.items()}
    if extra:
        data.update(extra)
    _write_json(job.manifest_path, data)
    return job.manifest_path


def read_manifest(job: Job) -> dict[str, Any]:
    """The job's manifest.json as a dict ({} when absent or unreadable)."""
    try:
        data = json.loads(job.manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_manifest(
    job: Job, *, files: Mapping[str, Path] | None = None, timings: Mapping[str, float] | None = None, **updates: Any
) -> Path:
    """Merge into the job's manifest: ``files`` (added, relative to the job), ``timings`` (added to
    ``timings_s``) and any other top-level keys (replaced). Atomic write."""
    data = read_manifest(job)
    if files:
        merged = dict(data.get("files") or {})
        merged.update({k: _relative(Path(v), job.dir) for k, v in files.items()})
        data["files"] = merged
    if timings:
        merged_t = dict(data.get("timings_s") or {})
        merged_t.update(timings)
        data["timings_s"] = merged_t
    data.update(updates)
    _write_json(job.manifest_path, data)
    return job.manifest_path


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


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
    """Which points are shown/exported: per-view (H, W) bool masks (dense) or (M,) bool (sparse)."""
    return point_masks(scene, post_cfg) if scene.is_dense else sparse_mask(scene, post_cfg)


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------


def _run_job(
    job: Job,
    cfg: AppConfig,
    engine: str,
    clock: StageClock,
    body: Callable[[], tuple[Scene, Path | None, dict[str, Any]]],
) -> Result:
    """Run ``body() -> (scene, pairs_path, extra)`` as a job: running flag, scene.npz, manifest."""
    t0 = time.perf_counter()
    running = job.dir / _RUNNING_FILE
    running.write_text(str(os.getpid()), encoding="utf-8")
    try:
        _write_json(job.dir / SETTINGS_FILE, {"engine": engine, **_settings_dict(cfg)})
        scene, pairs_path, extra = body()
        scene = _add_warnings(scene, _quality_warnings(scene, cfg.postprocess))
        clock("outputs", 0, 1)
        export_scene(
            scene, scene_masks(scene, cfg.postprocess), job.dir, ("npz",), post_cfg=cfg.postprocess, viz_cfg=cfg.viz
        )
        clock("outputs", 1, 1)
    except BaseException as e:
        timings = clock.finish()
        timings["total"] = round(time.perf_counter() - t0, 4)
        write_manifest(job, cfg=cfg, engine=engine, status="failed", timings=timings, error=f"{type(e).__name__}: {e}")
        raise
    finally:
        running.unlink(missing_ok=True)
    timings = clock.finish()
    timings["total"] = round(time.perf_counter() - t0, 4)
    files = {"scene": job.scene_path}
    if pairs_path is not None and Path(pairs_path).is_relative_to(job.dir):
        files["pairs"] = Path(pairs_path)
    write_manifest(job, cfg=cfg, engine=engine, status="done", timings=timings, scene=scene, files=files, extra=extra)
    for w in scene.warnings:
        logger.warning("%s", w)
    return Result(scene=scene, job=job, engine=engine, timings=timings, pairs_path=pairs_path, settings=cfg)


def reconstruct(
    image_paths: Sequence[str | Path],
    cfg: AppConfig,
    *,
    engine: str = "dust3r",
    job: Job | None = None,
    progress: ProgressFn | None = None,
    engines: Mapping[str, Engine] | None = None,
) -> Result:
    """Images -> aligned scene, as a job (see the module docstring).

    image_paths: files and/or folders (a folder = its images in sorted name order).
    engine: a key of ``engines`` (default registry: :func:`make_engines`).
    job: where to write; default a new job below ``cfg.jobs.output_root``.
    progress: ``progress(stage, done, total)``; stage names in :data:`STAGE_LABELS`.

    Returns a frozen :class:`Result`; writes ``scene.npz`` and ``manifest.json`` (also on failure,
    with ``status: failed``). Raises ValueError subclasses for bad input (ImageLoadError,
    CheckpointError, AlignmentError, ColmapError, ...), InsufficientMemoryError when it cannot fit.
    """
    engines = engines if engines is not None else make_engines(cfg)
    if engine not in engines:
        raise ValueError(f"unknown engine {engine!r}; available: {', '.join(sorted(engines))}")
    eng = engines[engine]
    paths = expand_image_paths(image_paths)
    job = job if job is not None else create_job(cfg.jobs.output_root)
    clock = StageClock(progress)

    def body():
        clock("prepare", 0, 1)
        inputs = _copy_inputs(paths, job) if job.copy_inputs else paths
        clock("prepare", 1, 1)
        scene = eng.reconstruct(list(inputs), cfg, job.dir, clock)
        pairs = job.pairs_path if job.pairs_path.is_file() and cfg.jobs.save_pairs else None
        return scene, pairs, {"inputs": [str(p) for p in paths]}

    logger.info("job %s: %s on %d image(s) in %s", job.id, engine, len(paths), job.dir)
    return _run_job(job, cfg, engine, clock, body)


def _image_info_from_manifest(pairs_npz: Path) -> list[dict[str, Any]] | None:
    manifest = pairs_npz.with_name(MANIFEST_FILE)
    if not manifest.is_file():
        return None
    try:
        images = json.loads(manifest.read_text(encoding="utf-8")).get("images")
    except (OSError, ValueError):
        return None
    return images if isinstance(images, list) else None


def _with_manifest_info(scene: Scene, info: Sequence[Mapping[str, Any]]) -> Scene:
    if len(info) != scene.n_views:
        return scene
    try:
        return dataclasses.replace(
            scene,
            names=tuple(str(i["name"]) for i in info),
            original_sizes=tuple((int(i["original_size"][0]), int(i["original_size"][1])) for i in info),
            original_from_processed=np.array([i["original_from_processed"] for i in info], dtype=np.float64),
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return scene


def realign(
    pairs_npz: str | Path,
    cfg: AppConfig,
    *,
    job: Job | None = None,
    progress: ProgressFn | None = None,
    like: Scene | None = None,
) -> Result:
    """Global alignment (and the scene outputs) again from saved pair predictions; no network.

    pairs_npz: a file in the reference fixture key layout (``PairPredictions.save_npz``); images
    inside it are optional (without them the points are grey). Image names and original sizes
    come from ``like`` (the previous scene), else from a ``manifest.json`` beside the file.
    """
    pairs_npz = Path(pairs_npz)
    if not pairs_npz.is_file():
        raise ValueError(f"pair predictions file not found: {pairs_npz}")
    job = job if job is not None else create_job(cfg.jobs.output_root)
    clock = StageClock(progress)

    def body():
        clock("load", 0, 1)
        preds = PairPredictions.load_npz(pairs_npz)
        clock("load", 1, 1)
        device = resolve_device(cfg.model.device)
        clock("align", 0, cfg.alignment.niter)
        scene = align(preds, cfg.alignment, device=device, progress=clock)
        if like is not None and like.n_views == scene.n_views:
            scene = dataclasses.replace(
                scene,
                names=like.names,
                original_sizes=like.original_sizes,
                original_from_processed=like.original_from_processed,
            )
        else:
            info = _image_info_from_manifest(pairs_npz)
            if info is not None:
                scene = _with_manifest_info(scene, info)
        if preds.images is None:
            scene = _add_warnings(scene, [f"{pairs_npz.name} holds no images: the points are grey"])
        extra = dict(scene.extra)
        extra.update(device=str(device), n_pairs=int(preds.pairs.shape[0]))
        return dataclasses.replace(scene, extra=extra), pairs_npz, {"source_pairs": str(pairs_npz.resolve())}

    logger.info("job %s: re-aligning %s in %s", job.id, pairs_npz, job.dir)
    return _run_job(job, cfg, "dust3r", clock, body)


def _new_export_dir(job: Job) -> Path:
    """A fresh ``exports/<n>`` folder; older ones beyond the newest few are removed."""
    root = job.dir / _EXPORTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    old = sorted(p for p in root.iterdir() if p.is_dir())[:-_KEEP_EXPORTS]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return folder


def export(
    result: Result,
    post_cfg: PostprocessConfig,
    viz_cfg: VizConfig,
    formats: Sequence[str],
    *,
    out_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write the scene's outputs with these display settings; nothing is re-run.

    formats: names from :data:`core.outputs.export.EXPORT_FORMATS` (``glb``, ``ply``, ``obj``, ``colmap``,
    ``json``, ``npz``, ``depth``, ``zip``). out_dir: default a fresh ``exports/<n>`` folder of
    the job, so concurrent exports never share a file. Returns format -> written path.
    """
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out_dir) if out_dir is not None else _new_export_dir(result.job)
    out.mkdir(parents=True, exist_ok=True)
    masks = scene_masks(result.scene, post_cfg)
    in_job_root = out.resolve() == result.job.dir.resolve()
    job_manifest = read_manifest(result.job) if in_job_root else {}
    files = export_scene(result.scene, masks, out, set(formats), post_cfg=post_cfg, viz_cfg=viz_cfg)
    if in_job_root:  # export_scene wrote its own manifest.json over the job's: merge it back in
        try:
            written = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            written = {}
        job_manifest["exports"] = {k: written.get(k) for k in ("written", "skipped", "frames") if k in written}
        _write_json(result.job.manifest_path, job_manifest)
        files = {k: v for k, v in files.items() if k != "manifest"}
        files["manifest"] = result.job.manifest_path
    return files


def render_views(result: Result, viz_cfg: VizConfig, *, conf_threshold: float | None = None) -> list[tuple[Path, str]]:
    """RGB / depth / confidence images per view (for the gallery), in ``<job>/views``.

    conf_threshold: marked on the confidence colour bars (default: the run's threshold).
    """
    out = result.job.dir / "views"
    out.mkdir(parents=True, exist_ok=True)
    if conf_threshold is None:
        conf_threshold = result.settings.postprocess.min_conf_thr
    return render_view_maps(result.scene, viz_cfg, out, conf_threshold=conf_threshold)


class Pipeline:
    """The engine registry plus the pipeline functions bound to it (what the UI is given)."""

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
        engine: str = "dust3r",
        job: Job | None = None,
        progress: ProgressFn | None = None,
    ) -> Result:
        return reconstruct(image_paths, cfg, engine=engine, job=job, progress=progress, engines=self.engines)

    def realign(
        self,
        pairs_npz: str | Path,
        cfg: AppConfig,
        *,
        job: Job | None = None,
        progress: ProgressFn | None = None,
        like: Scene | None = None,
    ) -> Result:
        return realign(pairs_npz, cfg, job=job, progress=progress, like=like)

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
