"""The content of a job's ``manifest.json`` and ``settings.json`` (written through :mod:`core.jobs`).

:func:`manifest_data` builds the manifest: every path inside the job folder is written relative to
it (an absolute server path never reaches a file served to users).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from config import AppConfig
from core.inputs.exif_gps import gps_records
from core.storage import jsonable, read_json
from core.types import Scene

__all__ = [
    "MANIFEST_FILE",
    "SETTINGS_FILE",
    "read_manifest_file",
    "settings_dict",
    "library_versions",
    "manifest_data",
    "relative_path",
]

MANIFEST_FILE = "manifest.json"
SETTINGS_FILE = "settings.json"


def read_manifest_file(path: Path) -> dict[str, Any]:
    """A manifest.json as a dict ({} when absent or unreadable)."""
    return read_json(path)


def settings_dict(cfg: AppConfig) -> dict[str, Any]:
    """The AppConfig as nested dicts, plus the scene graph's name (``inference.scene_graph``)."""
    data = json.loads(json.dumps(dataclasses.asdict(cfg), default=jsonable))
    data["inference"]["scene_graph"] = cfg.inference.scene_graph
    return data


def library_versions() -> dict[str, str | None]:
    """Versions of Python and the libraries that shape the result (None = not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("torch", "numpy", "gradio", "pycolmap", "trimesh", "opencv-python-headless", "pillow"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _relative_strings(value: Any, root: Path) -> Any:
    """Strings that are paths inside ``root`` (at any depth of dicts/lists) -> relative to it."""
    prefix = str(Path(root).resolve()) + os.sep
    if isinstance(value, str) and value.startswith(prefix):
        return value[len(prefix) :]
    if isinstance(value, Mapping):
        return {k: _relative_strings(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_strings(v, root) for v in value]
    return value


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


def manifest_data(
    job_id: str,
    job_dir: Path,
    *,
    cfg: AppConfig,
    engine: str,
    status: str,
    timings: Mapping[str, float],
    scene: Scene | None = None,
    error: str | None = None,
    files: Mapping[str, Path] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a job. Keys:

    ``job_id``, ``created`` (UTC ISO time), ``status`` (``running``/``done``/``failed``/
    ``interrupted``), ``engine``, ``settings`` (the AppConfig as nested dicts), ``versions``
    (:func:`library_versions`), ``timings_s`` (seconds per stage and ``total``), ``images`` (per
    view: name, processed and original (W, H), processed->original 3x3), ``n_views``,
    ``warnings``, ``final_loss``, ``engine_info`` (the scene's diagnostics), ``files`` (kind ->
    path relative to the job), ``error`` (failed and interrupted runs), plus ``extra``. Paths
    inside the job folder are written relative to it.
    """
    data: dict[str, Any] = {
        "job_id": job_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": status,
        "engine": engine,
        "settings": settings_dict(cfg),
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
        data["files"] = {k: relative_path(Path(v), job_dir) for k, v in files.items()}
    if extra:
        data.update(extra)
    return _relative_strings(json.loads(json.dumps(data, default=jsonable)), job_dir)
