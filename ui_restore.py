"""A finished job read back from its folder, so a page reload shows the session's last result.

The page keeps the last job id in the browser (``gr.BrowserState``); on reload
:func:`load_result` rebuilds the :class:`pipeline.Result` from the job's ``scene.npz`` (the
arrays), ``manifest.json`` (status, engine, timings, warnings, diagnostics, settings) and
``pairs.npz`` (re-alignment), or returns None when the job is gone, failed, or not one of ours.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from config import SETTINGS, AppConfig, apply_settings
from core.errors import SettingsError
from core.types import Scene, SparsePoints
from pipeline import Job, Result, read_manifest

__all__ = ["JOB_ID_RE", "load_result", "scene_from_npz", "settings_from_manifest"]

logger = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")
"""A job id as :func:`core.jobs.create_job` makes them (anything else is refused)."""
_RESTORED_GROUPS = ("model", "input", "align", "display")


def scene_from_npz(path: Path, manifest: dict[str, Any]) -> Scene:
    """``scene.npz`` (keys of :func:`core.outputs.export.export_scene`) + manifest -> Scene.

    Warnings and engine diagnostics come from the manifest (they are not in the npz).
    """
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        n = int(z["world_from_cam"].shape[0])
        dense = all(f"pts3d_{k}" in keys for k in range(n))
        sparse = None
        if "sparse_xyz" in keys:
            sparse = SparsePoints(
                xyz=z["sparse_xyz"],
                rgb=z["sparse_rgb"],
                track_length=z["sparse_track_length"],
                reproj_error=z["sparse_reproj_error"],
            )
        loss = float(z["final_loss"])
        return Scene(
            images=tuple(z[f"image_{k}"] for k in range(n)),
            world_from_cam=z["world_from_cam"],
            focals=z["focals"],
            principal_points=z["principal_points"],
            depths=tuple(z[f"depth_{k}"] for k in range(n)) if dense else None,
            pts3d=tuple(z[f"pts3d_{k}"] for k in range(n)) if dense else None,
            conf=tuple(z[f"conf_{k}"] for k in range(n)) if dense else None,
            sparse=sparse,
            final_loss=None if np.isnan(loss) else loss,
            names=tuple(str(s) for s in z["names"]),
            original_sizes=tuple((int(w), int(h)) for w, h in z["original_sizes"]),
            original_from_processed=z["original_from_processed"],
            engine=str(z["engine"]),
            warnings=tuple(manifest.get("warnings") or ()),
            extra=dict(manifest.get("engine_info") or {}),
            units=str(z["units"]) if "units" in keys else "unknown",
        )


def settings_from_manifest(base: AppConfig, nested: dict[str, Any]) -> AppConfig:
    """The run's user-facing settings from ``manifest["settings"]`` on top of ``base`` (server
    settings stay ``base``'s); a value that no longer validates keeps ``base``'s."""
    cfg = base
    for s in SETTINGS.values():
        if s.group not in _RESTORED_GROUPS:
            continue
        section = nested.get(s.section, {}) if s.section else nested
        if not isinstance(section, dict) or s.field not in section:
            continue
        value = section[s.field]
        try:
            cfg = apply_settings(cfg, {s.name: s.show(value) if s.show else value})
        except (SettingsError, TypeError, ValueError) as e:
            logger.info("restored job: setting %s=%r not applied (%s)", s.name, value, e)
    return cfg


def load_result(output_root: Path, job_id: str, base: AppConfig) -> Result | None:
    """The finished job ``job_id`` below ``output_root``, or None (no such job, not finished, unreadable)."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        return None
    folder = Path(output_root) / job_id
    job = Job(id=job_id, dir=folder)
    manifest = read_manifest(job) if folder.is_dir() else {}
    if manifest.get("status") != "done" or not job.scene_path.is_file():
        return None
    try:
        scene = scene_from_npz(job.scene_path, manifest)
    except (OSError, KeyError, ValueError) as e:
        logger.warning("job %s: scene.npz unreadable (%s)", job_id, e)
        return None
    settings = settings_from_manifest(base, manifest.get("settings") or {})
    engine = str(manifest.get("engine") or scene.engine)
    timings = {k: float(v) for k, v in (manifest.get("timings_s") or {}).items() if isinstance(v, (int, float))}
    pairs = job.pairs_path if job.pairs_path.is_file() else None
    return Result(scene=scene, job=job, engine=engine, timings=timings, pairs_path=pairs, settings=settings)
