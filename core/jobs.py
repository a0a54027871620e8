"""Job folders, their cleanup, and their manifests.

Every run owns one folder (:class:`Job`) below ``cfg.jobs.output_root`` named by a unique id (UTC
timestamp + random hex): ``inputs/`` (copies of the uploads), ``settings.json``, ``pairs.npz``
(DUSt3R pair predictions), ``scene.npz``, ``exports/<n>/`` (one folder per export, so concurrent
exports never share a file) and ``manifest.json`` (settings, library versions, engine, per-stage
timings, images, warnings, files). Two runs never share a file. :func:`cleanup_jobs` deletes old
jobs by age and total size; the caller passes the ids it must keep (the live sessions' jobs), nothing
is kept in globals. Only the pipeline writes manifests, through the functions here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from config import AppConfig, JobConfig
from core.inputs.exif_gps import gps_records
from core.types import ProgressFn, Scene

__all__ = [
    "PAIRS_FILE",
    "SCENE_FILE",
    "MANIFEST_FILE",
    "SETTINGS_FILE",
    "Job",
    "StageClock",
    "create_job",
    "job_in_folder",
    "cleanup_jobs",
    "copy_inputs",
    "new_export_dir",
    "mark_running",
    "write_json",
    "write_settings",
    "write_manifest",
    "read_manifest",
    "update_manifest",
    "library_versions",
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


@contextlib.contextmanager
def mark_running(job: Job) -> Iterator[None]:
    """A ``.running`` file (holding this process id) while the block runs: cleanup keeps the job."""
    running = job.dir / _RUNNING_FILE
    running.write_text(str(os.getpid()), encoding="utf-8")
    try:
        yield
    finally:
        running.unlink(missing_ok=True)


def copy_inputs(paths: Sequence[Path], job: Job) -> list[Path]:
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


def new_export_dir(job: Job) -> Path:
    """A fresh ``exports/<n>`` folder; older ones beyond the newest few are removed."""
    root = job.dir / _EXPORTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    old = sorted(p for p in root.iterdir() if p.is_dir())[:-_KEEP_EXPORTS]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return folder


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
    """The AppConfig as nested dicts, plus the scene graph's name (``inference.scene_graph``)."""
    data = json.loads(json.dumps(dataclasses.asdict(cfg), default=_jsonable))
    data["inference"]["scene_graph"] = cfg.inference.scene_graph
    return data


def write_settings(job: Job, cfg: AppConfig) -> Path:
    """``settings.json``: the run's settings, written before it starts."""
    path = job.dir / SETTINGS_FILE
    write_json(path, {"engine": cfg.engine, **_settings_dict(cfg)})
    return path


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic write (temp file + rename) so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _images_info(scene: Scene) -> list[dict[str, Any]]:
    ofp = scene.original_from_processed
    gps = gps_records(scene)
    return [
        {
            "name": scene.names[k],
            "processed_size": [int(scene.images[k].shape[1]), int(scene.images[k].shape[0])],
            "original_size": [int(v) for v in scene.original_sizes[k]],
            "original_from_processed": np.asarray(ofp[k]).tolist() if ofp is not None else None,
            "gps": gps[k],
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
    original (W, H), processed->original 3x3, ``gps`` {lat, lon, alt} from the EXIF or null),
    ``n_views``, ``warnings``, ``final_loss``, ``engine_info`` (the scene's diagnostics), ``files``
    (kind -> path relative to the job), ``error`` (failed runs), plus ``extra``.
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
            units=scene.units,
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
    write_json(job.manifest_path, data)
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
    write_json(job.manifest_path, data)
    return job.manifest_path


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
