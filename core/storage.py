"""Files that never lie: atomic writes, staging folders, and what a full disk means.

:func:`atomic_path` gives a temporary name in the target's folder (same suffix, so writers that
pick the format from it still work) and renames it into place only when the block succeeds; the
temporary file is removed on any failure (a full disk included). A run writes its outputs into a
hidden staging folder (:func:`staging`, removed on exit whatever happens) and moves them into
place when all are complete (:func:`publish`). :func:`remove_partial_files` clears what a killed
process left. :func:`disk_full_error` names the folder and the free space.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DiskFullError

__all__ = [
    "STAGING_PREFIX",
    "jsonable",
    "atomic_path",
    "write_json",
    "read_json",
    "staging",
    "publish",
    "unpublish",
    "remove_partial_files",
    "free_bytes",
    "folder_size",
    "is_disk_full",
    "disk_full_error",
]

STAGING_PREFIX = ".partial-"
_TEMP_RE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp(\.[^.]+)?")
_MB = 1024 * 1024


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.<stem>.<8 hex>.tmp<suffix>``); when the block
    succeeds it is renamed onto ``path`` (``os.replace``: readers see the old file or the new one,
    never half of one), otherwise removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def jsonable(value: Any) -> Any:
    """``json.dumps`` default: paths as strings, numpy arrays and scalars as Python values, inf/nan as text."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic JSON write (:func:`atomic_path`): readers never see half a file, a failed write
    (a full disk) leaves nothing behind. Paths, numpy values and non-finite floats are converted."""
    text = json.dumps(data, indent=2, default=jsonable) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file as a dict ({} when absent, unreadable or not an object)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def staging(folder: Path) -> Iterator[Path]:
    """A fresh hidden folder inside ``folder`` (created with its parents) for outputs in the
    making; whatever was not published out of it is removed on exit (success, error, Ctrl-C or
    SIGTERM)."""
    stage = Path(folder) / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    stage.mkdir(parents=True)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, folder: Path, *, exclude: Sequence[str] = (), last: str | None = None) -> dict[Path, Path]:
    """Move the entries of ``stage`` (but ``exclude``) into ``folder``, each an atomic rename (a
    folder of the same name is replaced), ``last`` after the others. Returns staged -> final path.
    When a rename fails (a full disk), the entries already moved are removed again (:func:`unpublish`)."""
    moved: dict[Path, Path] = {}
    entries = sorted((p for p in stage.iterdir() if p.name not in exclude), key=lambda p: p.name == last)
    try:
        for src in entries:
            dst = Path(folder) / src.name
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            os.replace(src, dst)
            moved[src] = dst
    except BaseException:
        unpublish(moved)
        raise
    return moved


def unpublish(moved: Mapping[Path, Path]) -> None:
    """Remove what :func:`publish` moved into place (the outputs of a run that then failed)."""
    for dst in moved.values():
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst, ignore_errors=True)
        else:
            dst.unlink(missing_ok=True)


def remove_partial_files(folder: Path, *, subfolders: Sequence[str] = ()) -> int:
    """Remove temporary files (:func:`atomic_path`) and staging folders left in ``folder`` and its
    ``subfolders`` by a process that was killed; returns how many entries were removed."""
    removed = 0
    for parent in (Path(folder), *(Path(folder) / s for s in subfolders)):
        if not parent.is_dir():
            continue
        for p in parent.iterdir():
            if p.name.startswith(STAGING_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
            elif _TEMP_RE.fullmatch(p.name) and not p.is_dir():
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk holding ``path`` (or its nearest existing parent), None if unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def folder_size(folder: Path) -> int:
    """Bytes of every file below ``folder``."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / name).lstat().st_size
    return total


def is_disk_full(exc: BaseException) -> bool:
    """True for 'no space left on device' and 'disk quota exceeded' OS errors."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(exc: OSError, folder: Path, shown: str) -> DiskFullError:
    """A :class:`DiskFullError` naming ``shown`` (the folder as the user knows it) and the free space."""
    free = free_bytes(folder)
    where = f"{free / _MB:.1f} MB free" if free is not None else "free space unknown"
    return DiskFullError(
        f"the disk is full: writing {shown} failed ({exc.strerror or exc}; {where}). The run's partial "
        "files were removed; free some space (or choose another output folder) and run again",
        folder=shown,
        free_bytes=free,
    )
