"""Job folders: atomic writes, run status, cleanup within a size limit, and the manifests.

Every run owns one folder (:class:`Job`) below ``cfg.jobs.output_root`` named by a unique id (UTC
timestamp + random hex): ``inputs/`` (copies of the uploads), ``settings.json``, ``pairs.npz``
(DUSt3R pair predictions), ``scene.npz``, ``views/`` (gallery), ``exports/<n>/`` (one folder per
export, so concurrent exports never share a file) and ``manifest.json`` (status, settings, library
versions, engine, per-stage timings, images, warnings, files). Two runs never share a file.

Outputs never lie:

- every file is written under a temporary name in its folder and renamed into place
  (:func:`atomic_path`, :func:`write_json`); a run writes its outputs into a hidden staging folder
  (:func:`staging`) and moves them into the job folder when all are complete (:func:`publish`),
  ``manifest.json`` last, so ``status: done`` is only ever beside complete outputs;
- ``.running`` names the process that runs the job (pid, its start time, boot id, host): a job
  whose process is gone (``kill -9``, a crash) is marked ``interrupted`` and its temporary files
  are removed by the next start-up or cleanup pass (:func:`recover_job`);
- :func:`cleanup_jobs` deletes failed, interrupted and cancelled jobs first, then the least recently used,
  by age and while the root is over ``max_total_mb`` or the disk's free space is under
  ``min_free_mb``; :func:`ensure_room` refuses a new run (:class:`StorageError`) when that cannot be
  met without deleting live work. The caller passes the ids it must keep; nothing is kept in globals.

Manifests: :func:`write_manifest`, :func:`read_manifest`, :func:`update_manifest` (only the pipeline
calls them). Paths in a manifest are relative to the job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import JobConfig
from core.errors import SettingsError, StorageError
from core.manifests import (
    MANIFEST_FILE,
    SETTINGS_FILE,
    library_versions,
    manifest_data,
    read_manifest_file,
    relative_path,
    settings_dict,
)
from core.storage import (
    atomic_path,
    disk_full_error,
    folder_size,
    free_bytes,
    is_disk_full,
    publish,
    remove_partial_files,
    staging,
    unpublish,
    write_json,
)

__all__ = [
    "PAIRS_FILE",
    "SCENE_FILE",
    "MANIFEST_FILE",
    "SETTINGS_FILE",
    "STATUS_RUNNING",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_INTERRUPTED",
    "STATUS_CANCELLED",
    "Job",
    "create_job",
    "job_in_folder",
    "check_output_folder",
    "drop_previous",
    "cleanup_jobs",
    "ensure_room",
    "recover_job",
    "job_exists",
    "copy_inputs",
    "safe_name",
    "new_export_dir",
    "mark_running",
    "atomic_path",
    "staging",
    "publish",
    "unpublish",
    "remove_partial_files",
    "is_disk_full",
    "disk_full_error",
    "free_bytes",
    "folder_size",
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
STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"
STATUS_CANCELLED = "cancelled"
_MARKER_FILE = ".dust3r-job"
_RUNNING_FILE = ".running"
_PREVIOUS_DIR = ".previous"
_EXPORTS_DIR = "exports"
_KEEP_EXPORTS = 3
_JOB_ID_RE = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")
_EXPORT_RE = re.compile(r"\d{20}-[0-9a-f]{32}")
#: What this app writes into an output folder (the CLI's ``--output``): moved aside or removed before a new run.
_APP_OUTPUTS = (
    MANIFEST_FILE, SETTINGS_FILE, SCENE_FILE, PAIRS_FILE, "scene.glb", "pointcloud.ply", "mesh.obj", "cameras.json",
    "reconstruction.zip", "colmap", "depth", "maps", "colmap_work", "views", _EXPORTS_DIR, _RUNNING_FILE,
    "surface.glb", "surface.ply", "surface.obj", "voxels.npz", "voxels.binvox", "voxels.glb", "pointcloud.las",
    "pointcloud.laz", "dsm.tif", "dtm.tif", "ortho.tif", "georef.json", "splat-ready",
)  # fmt: skip
_UNSAFE_NAME_RE = re.compile(r"[\s\x00-\x1f\x7f/\\]+")
_MB = 1024 * 1024


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

    @property
    def label(self) -> str:
        """How messages name the folder: ``job <id>`` for the web app's jobs (no server paths shown
        to users), the folder as given for the CLI's ``--output``."""
        return f"job {self.id}" if self.copy_inputs else str(self.dir)


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
        try:
            with atomic_path(folder / _MARKER_FILE) as tmp:
                tmp.write_text(job_id + "\n", encoding="utf-8")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Job(id=job_id, dir=folder, copy_inputs=True)


def job_in_folder(folder: str | Path, *, keep: Sequence[str | Path] = ()) -> Job:
    """A job writing into a folder the user chose (the CLI's ``--output DIR``); inputs read in place.

    An earlier result of this app in the folder is first moved aside into ``.previous/`` (when it
    was ``done``; removed by :func:`drop_previous` once the new run is done) or removed (a failed
    or interrupted one), so the folder never shows an earlier manifest beside this run's files.
    Files in ``keep`` (the run's inputs) are never touched. Raises SettingsError when ``folder`` is
    a file or cannot be created or written (a bad command line).
    """
    folder = Path(folder)
    check_output_folder(folder)
    _set_aside_previous(folder, {Path(p).resolve() for p in keep})
    return Job(id=_new_job_id(), dir=folder, copy_inputs=False)


def check_output_folder(folder: str | Path) -> None:
    """Create ``folder`` if needed and check that a file can be written in it. Raises SettingsError
    (a bad command line) when it is a file or cannot be created or written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SettingsError(f"output {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / ".write-test") as tmp:
            tmp.write_bytes(b"")
        (folder / ".write-test").unlink()
    except OSError as e:
        raise SettingsError(f"output {folder} cannot be created or written ({e.strerror or e})") from e


def _set_aside_previous(folder: Path, keep: set[Path]) -> None:
    """Move an earlier ``done`` result into ``.previous/`` (its manifest first, renamed so that it
    claims nothing until every file has joined it), or remove an unfinished one. Resumes a
    set-aside that a kill interrupted."""
    previous = folder / _PREVIOUS_DIR
    pending = previous / f"{MANIFEST_FILE}.pending"
    if (folder / _RUNNING_FILE).exists() and _is_live(folder / _RUNNING_FILE):
        raise SettingsError(f"output {folder} is in use: another run is writing into it")
    data = read_manifest_file(folder / MANIFEST_FILE)
    resume = pending.is_file()
    ours = bool(data.get("job_id")) or (folder / _RUNNING_FILE).exists() or resume
    remove_partial_files(folder, subfolders=(_EXPORTS_DIR,))
    if not ours:
        return
    listed = {
        Path(str(rel)).parts[0]
        for rel in (data.get("files") or {}).values()
        if str(rel) and not Path(str(rel)).is_absolute()
    }
    names = dict.fromkeys(
        [*_APP_OUTPUTS, *sorted(listed - {"..", "."})]
    )  # the fixed names, and whatever the manifest lists
    entries = [folder / n for n in names if (folder / n).exists() and (folder / n).resolve() not in keep]
    if data.get("status") == STATUS_DONE or resume:
        if not resume:
            shutil.rmtree(previous, ignore_errors=True)
            previous.mkdir()
            os.replace(folder / MANIFEST_FILE, pending)
        for p in entries:
            if p.name != MANIFEST_FILE:  # already moved (pending)
                _move_replacing(p, previous / p.name)
        os.replace(pending, previous / MANIFEST_FILE)
        logger.info("moved the earlier result in %s aside into %s", folder, previous)
        return
    for p in entries:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _move_replacing(src: Path, dst: Path) -> None:
    if not src.exists():
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)


def drop_previous(job: Job) -> None:
    """Remove the earlier result that :func:`job_in_folder` moved aside (after this run is done)."""
    shutil.rmtree(job.dir / _PREVIOUS_DIR, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Running marker, liveness, interrupted jobs
# --------------------------------------------------------------------------------------------


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None when unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _running_info() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "start": _proc_start(pid), "boot": _boot_id(), "host": socket.gethostname()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_live(running: Path) -> bool:
    """Whether the process named by a ``.running`` file still runs (unknown hosts count as live)."""
    try:
        text = running.read_text(encoding="utf-8").strip()
    except OSError:
        return False
    try:
        info = json.loads(text) if text.startswith("{") else {"pid": int(text)}
        pid = int(info["pid"])
    except (ValueError, KeyError, TypeError):
        return False  # empty or garbled: written by a process that died mid-write
    if info.get("host") not in (None, socket.gethostname()):
        return True  # another machine sharing the folder: cannot tell
    if info.get("boot") not in (None, _boot_id()) or not _pid_alive(pid):
        return False
    start = info.get("start")
    return start is None or _proc_start(pid) in (None, start)


@contextlib.contextmanager
def mark_running(job: Job) -> Iterator[None]:
    """A ``.running`` file (this process's pid, start time, boot id, host) while the block runs:
    cleanup keeps the job while that process lives, and marks it interrupted once it is gone."""
    running = job.dir / _RUNNING_FILE
    write_json(running, _running_info())
    try:
        yield
    finally:
        running.unlink(missing_ok=True)


def recover_job(folder: Path) -> str | None:
    """Bring a job folder up to date and return its status (None: no manifest).

    A job whose ``.running`` process is gone, or whose manifest still says ``running`` with no
    live process, is marked ``interrupted`` (its manifest says so and why) and its temporary files
    and staging folders are removed. Live jobs are left alone.
    """
    folder = Path(folder)
    running = folder / _RUNNING_FILE
    if running.exists() and _is_live(running):
        return STATUS_RUNNING
    data = read_manifest_file(folder / MANIFEST_FILE)
    status = data.get("status")
    stale = running.exists() or status == STATUS_RUNNING
    if not stale:
        return status
    remove_partial_files(folder, subfolders=(_EXPORTS_DIR,))
    if status in (None, STATUS_RUNNING):
        data.update(
            status=STATUS_INTERRUPTED,
            error="the process running this job stopped before it finished (killed or crashed)",
            interrupted=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        data.setdefault("job_id", folder.name)
        with contextlib.suppress(OSError):
            write_json(folder / MANIFEST_FILE, data)
        status = STATUS_INTERRUPTED
        logger.warning("job %s: its process is gone; marked interrupted", folder.name)
    running.unlink(missing_ok=True)
    return status


# --------------------------------------------------------------------------------------------
# Cleanup and room for new runs
# --------------------------------------------------------------------------------------------


def job_exists(job: Job) -> bool:
    """Whether the job's folder is still there (web jobs: with their marker; not cleaned up)."""
    return job.dir.is_dir() and (not job.copy_inputs or (job.dir / _MARKER_FILE).is_file())


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


@dataclass
class _Entry:
    folder: Path
    status: str | None
    last: float
    size: int


def _survey(root: Path) -> list[_Entry]:
    """Every job below ``root`` (stale ones recovered first): failed and interrupted first, then
    the least recently active."""
    entries = []
    for folder in _job_folders(root):
        try:
            status = recover_job(folder)
            entries.append(_Entry(folder, status, _last_activity(folder), folder_size(folder)))
        except OSError:
            continue
    entries.sort(key=lambda e: (e.status not in (STATUS_FAILED, STATUS_INTERRUPTED, STATUS_CANCELLED), e.last))
    return entries


def _over(cfg: JobConfig, total: int, root: Path, reserve: int) -> bool:
    if total + reserve > cfg.max_total_mb * _MB:
        return True
    free = free_bytes(root)
    return free is not None and free - reserve < cfg.min_free_mb * _MB


def cleanup_jobs(
    cfg: JobConfig,
    *,
    protected: frozenset[str] | set[str] = frozenset(),
    now: float | None = None,
    reserve_bytes: int = 0,
) -> list[str]:
    """Delete jobs below ``cfg.output_root``; returns the deleted ids.

    Stale jobs (process gone) are marked interrupted first (:func:`recover_job`). Then, failed
    and interrupted jobs first and otherwise the least recently active first: every job older than
    ``cfg.max_age_hours``, and more while the root plus ``reserve_bytes`` is over
    ``cfg.max_total_mb`` or the disk's free space minus ``reserve_bytes`` is under
    ``cfg.min_free_mb``. Never deleted: ids in ``protected`` (live sessions' jobs), jobs whose
    process still runs, and anything that is not a job folder created by :func:`create_job`.
    """
    now = time.time() if now is None else now
    root = Path(cfg.output_root)
    entries = _survey(root)
    total = sum(e.size for e in entries)
    deleted: list[str] = []
    for e in entries:
        too_old = now - e.last > cfg.max_age_hours * 3600
        if e.folder.name in protected or e.status == STATUS_RUNNING:
            continue
        if not (too_old or _over(cfg, total, root, reserve_bytes)):
            continue
        shutil.rmtree(e.folder, ignore_errors=True)
        if not e.folder.exists():
            deleted.append(e.folder.name)
            total -= e.size
    if deleted:
        logger.info("cleaned %d job(s) from %s", len(deleted), root)
    return deleted


def ensure_room(
    cfg: JobConfig, *, protected: frozenset[str] | set[str] = frozenset(), reserve_bytes: int = 0
) -> list[str]:
    """Clean up (:func:`cleanup_jobs`), then raise :class:`StorageError` when a new run that may
    write ``reserve_bytes`` still does not fit under ``max_total_mb`` or above ``min_free_mb``
    (live work is never deleted to make room). Returns the deleted ids."""
    deleted = cleanup_jobs(cfg, protected=protected, reserve_bytes=reserve_bytes)
    root = Path(cfg.output_root)
    total = sum(folder_size(f) for f in _job_folders(root))
    need, limit = f"{reserve_bytes / _MB:.1f} MB", f"{cfg.max_total_mb:g} MB"
    if reserve_bytes > cfg.max_total_mb * _MB:
        raise StorageError(
            f"this run would write about {need}, more than the server's storage limit of {limit} "
            "(max_total_mb); use fewer or smaller images or a sparser scene graph"
        )
    if total + reserve_bytes > cfg.max_total_mb * _MB:
        raise StorageError(
            f"the server's storage limit is reached: results still in use take {total / _MB:.1f} MB of the "
            f"{limit} allowed (max_total_mb) and this run needs about {need} more. Try again later"
        )
    free = free_bytes(root)
    if free is not None and free - reserve_bytes < cfg.min_free_mb * _MB:
        raise StorageError(
            f"the server's disk is almost full: {free / _MB:.0f} MB free, this run needs about {need} "
            f"and {cfg.min_free_mb:g} MB must stay free (min_free_mb). Try again later"
        )
    return deleted


# --------------------------------------------------------------------------------------------
# Inputs and export folders
# --------------------------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """A file name without spaces, control characters (line breaks, tabs) or path separators,
    which break COLMAP's text files (a name ends at its first space) and line-based tools:
    ``"my photo\\n2.png"`` -> ``"my_photo_2.png"``."""
    cleaned = _UNSAFE_NAME_RE.sub("_", name).strip()
    return cleaned if cleaned.strip("._") else "image" + Path(cleaned).suffix


def copy_inputs(paths: Sequence[Path], job: Job) -> list[Path]:
    """Copy the images into the job's ``inputs/`` (each atomically), keeping their names; unsafe
    characters are replaced (:func:`safe_name`), duplicates get ``-k``."""
    job.inputs_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    copies = []
    for src in paths:
        base = safe_name(src.name)
        stem, suffix = Path(base).stem, Path(base).suffix
        name, k = base, 1
        while name.lower() in used:
            name = f"{stem}-{k}{suffix}"
            k += 1
        used.add(name.lower())
        with atomic_path(job.inputs_dir / name) as tmp:
            shutil.copyfile(src, tmp)
        copies.append(job.inputs_dir / name)
    return copies


def _export_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and _EXPORT_RE.fullmatch(p.name))


def new_export_dir(job: Job, *, keep_s: float = 120.0, create: bool = True) -> Path:
    """A fresh ``exports/<n>`` folder name (``n`` sortable by time, with 128 random bits, so its
    address cannot be guessed); created unless ``create`` is False. Older export folders beyond
    the newest few are removed, but none younger than ``keep_s`` seconds (a download of it may
    still be in flight). Raises FileNotFoundError when the job folder itself is gone."""
    root = job.dir / _EXPORTS_DIR
    root.mkdir(exist_ok=True)  # no parents: an expired job is never re-created
    folder = root / f"{time.time_ns():020d}-{uuid.uuid4().hex}"
    if create:
        folder.mkdir()
    now = time.time()
    for p in _export_folders(root)[:-_KEEP_EXPORTS]:
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > keep_s:
                shutil.rmtree(p, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------


def write_settings(job: Job, cfg) -> Path:
    """``settings.json``: the run's settings, written before it starts (atomic)."""
    path = job.dir / SETTINGS_FILE
    write_json(path, {"engine": cfg.engine, **settings_dict(cfg)})
    return path


def write_manifest(job: Job, **fields: Any) -> Path:
    """Write ``job.dir/manifest.json`` (atomic); keyword arguments as :func:`core.manifests.manifest_data`."""
    write_json(job.manifest_path, manifest_data(job.id, job.dir, **fields))
    return job.manifest_path


def read_manifest(job: Job) -> dict[str, Any]:
    """The job's manifest.json as a dict ({} when absent or unreadable)."""
    return read_manifest_file(job.manifest_path)


def update_manifest(
    job: Job, *, files: Mapping[str, Path] | None = None, timings: Mapping[str, float] | None = None, **updates: Any
) -> Path:
    """Merge into the job's manifest: ``files`` (added, relative to the job), ``timings`` (added to
    ``timings_s``) and any other top-level keys (replaced). Atomic write."""
    data = read_manifest(job)
    if files:
        merged = dict(data.get("files") or {})
        merged.update({k: relative_path(Path(v), job.dir) for k, v in files.items()})
        data["files"] = merged
    if timings:
        merged_t = dict(data.get("timings_s") or {})
        merged_t.update(timings)
        data["timings_s"] = merged_t
    data.update(updates)
    write_json(job.manifest_path, data)
    return job.manifest_path
