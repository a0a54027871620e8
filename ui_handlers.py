"""The page's event handlers and the settings they read, as plain Python (no layout).

:class:`UIHandlers` holds one method per event of the page (``gradio_ui.build_demo`` wires them);
tests call them without a browser. State per browser session: the finished :class:`pipeline.Result`
(CPU arrays) lives in a ``gr.State``, so display options re-export from it without re-running
anything; every run writes into its own job folder, and a :class:`SessionJobs` registry (owned by
the demo, not a global) remembers the job each session's state holds, so the age/size cleanup never
deletes it while the session can still use it: protection ends when Gradio deletes the state
(:meth:`UIHandlers.release_result`, the state's ``delete_callback``), not when the browser's
heartbeat drops. A result whose files were cleaned up anyway says so and is never re-created.
Errors: a :class:`core.errors.UserError` (or an OS error) shows its own message, without server
paths; any other exception is a bug, logged with its traceback under a short id that the page shows.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from config import SETTINGS, AppConfig, PostprocessConfig, VizConfig, apply_settings, current_value, settings_of
from core.checkpoint import hub_reachable, hub_repo_id
from core.errors import ResultExpiredError, UserError, internal_error_id
from core.jobs import safe_name
from core.outputs.export import EXPORT_FORMATS
from core.outputs.fused import FUSED_FORMATS
from core.outputs.georef import Georef, georef_summary, georeference
from pipeline import Pipeline, Result, RunLimits, check_run, scene_masks, stage_label
from ui_uploads import file_paths as _file_paths
from ui_video import UploadPreviews, VideoPreviews

__all__ = [
    "DISPLAY_KEYS",
    "RUN_KEYS",
    "SessionJobs",
    "UIHandlers",
    "VIDEO_KEYS",
    "VideoPreviews",
    "display_config",
    "settings_to_config",
    "setting_widget",
    "public_message",
    "status_text",
    "kept_points",
    "gis_files",
    "TOAST_S",
]

logger = logging.getLogger(__name__)

_ZIP_LABEL = "Download all (zip)"
_ZIP_BUSY = "Preparing zip…"
TOAST_S = 10.0
"""Seconds an error message stays on the page before it goes away by itself."""
_AVAILABILITY_TTL_S = 30.0
_NOTHING_TO_DRAW = (
    "Nothing to draw: no point passes these display filters (lower the confidence threshold or turn filters off)."
)

#: Display settings (re-export only) and run settings (what changes the reconstruction), by flat name.
DISPLAY_KEYS = tuple(s.name for s in settings_of("display"))
RUN_KEYS = (
    "engine", "checkpoint", "image_size", "enhance", "scene_graph", "window_size", "cyclic", "ref_image", "niter",
    "schedule", "lr", "init_conf_thr", "known_focal", "shared_focal", "early_stop", "matcher", "mapper",
    "dense", "mvs_size", "fps", "max_frames", "sharpest", "skip_static",
)  # fmt: skip
#: The video sampling settings (the page's "Video" accordion; parameters of /thumbnails too).
VIDEO_KEYS = ("fps", "max_frames", "sharpest", "skip_static")


# --------------------------------------------------------------------------------------------
# Settings <-> config (config.SETTINGS is the vocabulary)
# --------------------------------------------------------------------------------------------


def display_config(base: AppConfig, settings: Mapping[str, Any]) -> tuple[PostprocessConfig, VizConfig]:
    """Display settings -> (PostprocessConfig, VizConfig); missing keys keep ``base``'s values."""
    cfg = apply_settings(base, {k: v for k, v in settings.items() if k in DISPLAY_KEYS})
    return cfg.postprocess, cfg.viz


def settings_to_config(base: AppConfig, settings: Mapping[str, Any]) -> tuple[str, AppConfig]:
    """Page/API settings (names in RUN_KEYS and DISPLAY_KEYS) -> (engine name, AppConfig).

    Missing keys keep ``base``'s values. Raises SettingsError (a ValueError, with the value).
    """
    cfg = apply_settings(base, {k: v for k, v in settings.items() if k in RUN_KEYS or k in DISPLAY_KEYS})
    return cfg.engine, cfg


def setting_widget(cfg: AppConfig, name: str, label: str, **overrides: Any):
    """The page's widget for one setting of :data:`config.SETTINGS`: its kind, choices, range,
    current value and info text come from the table; ``overrides`` adjust any of them."""
    s = SETTINGS[name]
    kwargs: dict[str, Any] = {"value": current_value(cfg, name), "label": label, "info": s.help}
    if s.type is bool:
        return gr.Checkbox(**{**kwargs, **overrides})
    if s.choices is not None:
        return gr.Radio(**{**kwargs, "choices": list(s.choices), **overrides})
    if s.type in (int, float) and (s.maximum is not None or "maximum" in overrides):
        step = 1 if s.type is int else 0.1
        kwargs.update(minimum=s.minimum or 0, maximum=s.maximum, step=step)
        return gr.Slider(**{**kwargs, **overrides})
    if s.type in (int, float):
        return gr.Number(**{**kwargs, "minimum": s.minimum, "maximum": s.maximum, **overrides})
    return gr.Textbox(**{**kwargs, "max_lines": 1, **overrides})


# --------------------------------------------------------------------------------------------
# Sessions and handlers
# --------------------------------------------------------------------------------------------


def package_formats(viz: VizConfig) -> tuple[str, ...]:
    """What the page's zip holds: every format, and the fused surface or voxels only while they are
    shown (each costs a fusion, seconds on a CPU)."""
    return (*EXPORT_FORMATS, *(f for f in FUSED_FORMATS if f == viz.view_mode))


#: The export's GIS files the page offers on their own (keys of ``Pipeline.export``'s dict), in this order.
GIS_FILE_KEYS = ("laz", "las", "dsm", "dtm", "ortho", "georef")


def gis_files(files: Mapping[str, Path]) -> list[str]:
    """The GIS files among an export's written files (LAZ/LAS, DSM, DTM, ortho, georef.json), as paths."""
    return [str(files[k]) for k in GIS_FILE_KEYS if k in files]


class SessionJobs:
    """The job each live session's state holds (thread-safe; one per demo): protected from cleanup
    until the session's next result replaces it or Gradio deletes the session's state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, str] = {}

    def add(self, session: str, job_id: str) -> str | None:
        """The session's state now holds ``job_id``; returns the job it held before (no longer protected)."""
        with self._lock:
            previous = self._jobs.get(session)
            self._jobs[session] = job_id
            return previous if previous != job_id else None

    def release(self, session: str) -> set[str]:
        """Forget a session; returns its job ids."""
        with self._lock:
            job = self._jobs.pop(session, None)
            return {job} if job is not None else set()

    def drop_job(self, job_id: str) -> bool:
        """Forget every session holding ``job_id`` (its state was deleted); True when none holds it now."""
        with self._lock:
            for session in [s for s, j in self._jobs.items() if j == job_id]:
                del self._jobs[session]
            return job_id not in self._jobs.values()

    def protected(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._jobs.values())


#: An absolute path in a message (``/srv/app/outputs/2026.../inputs/a.jpg``): users see only its last part.
_ABS_PATH_RE = re.compile(r"(?<![\w.:/])/(?:[^/\s'\"]+/)+([^/\s'\"]*)")


def public_message(text: str) -> str:
    """A message without server paths: each absolute path is shortened to its file name.

    >>> public_message("fake.png: cannot identify image file '/tmp/gradio/1a2b/fake.png'")
    "fake.png: cannot identify image file 'fake.png'"
    >>> public_message("see https://huggingface.co/naver/x")
    'see https://huggingface.co/naver/x'
    """
    return _ABS_PATH_RE.sub(lambda m: m.group(1) or "the server's folder", " ".join(text.split()))


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 0.95 else f"{s * 1000:.0f} ms"


def _model_label(result: Result) -> str:
    """``COLMAP``, or the network that made the result (``DUSt3R_ViTLarge_BaseDecoder_512_dpt``)."""
    if result.engine == "colmap":
        return "COLMAP"
    ckpt = str(result.scene.extra.get("checkpoint") or "DUSt3R")
    return Path(ckpt.rstrip("/")).name or ckpt


def _units_label(scene, geo: Georef | None = None) -> str:
    """``metres, 2.31 m across`` for metric scenes (MASt3R, or made metric by ``geo``: GPS or a
    known distance), ``scale unknown`` otherwise."""
    scale = 1.0
    if scene.units != "m":
        if geo is None or not geo.is_metric:
            return "scale unknown"
        scale = geo.local_from_scene.scale
    if scene.world_from_cam.shape[0] == 0:
        return "scale unknown"
    pts = np.concatenate([p.reshape(-1, 3) for p in scene.pts3d]) if scene.pts3d else scene.world_from_cam[:, :3, 3]
    lo, hi = np.percentile(pts, [2, 98], axis=0)
    return f"metres, {scale * float(np.max(hi - lo)):.2f} m across"


def kept_points(result: Result, post_cfg: PostprocessConfig) -> int:
    """How many points these display filters keep (0: nothing but cameras to draw)."""
    masks = scene_masks(result.scene, post_cfg)
    if isinstance(masks, np.ndarray):
        return int(masks.sum())
    return int(sum(int(m.sum()) for m in masks))


def _views_label(scene) -> str:
    """``3 views``, or ``1 photo (paired with itself)`` for a single photo run with its copy."""
    if scene.n_views == 2 and scene.names[1] in {copy := f"{scene.names[0]} (copy)", safe_name(copy)}:
        return "1 photo (paired with itself)"
    return f"{scene.n_views} views"


def status_text(
    result: Result,
    *,
    export_s: float | None = None,
    kept: int | None = None,
    post_cfg: PostprocessConfig | None = None,
) -> str:
    """The status as markdown: a line with views, engine, units, total and display time (and
    points shown), a line on where the scene sits in the world with the display settings
    ``post_cfg`` when given (CRS and RMSE, or why not: :func:`core.outputs.georef.georeference`,
    milliseconds), then a line with per-stage timings and the job id. No HTML."""
    scene = result.scene
    geo = georeference(scene, post_cfg) if post_cfg is not None else None
    t = dict(result.timings)
    total = t.pop("total", None)
    t.pop("export", None)
    stages = " · ".join(f"{k} {_fmt_seconds(v)}" for k, v in t.items() if v >= 0.0005)
    what = _views_label(scene)
    if scene.sparse is not None:
        what += f", {scene.sparse.xyz.shape[0]:,} points"
    parts = [f"**Done** · {what} · {_model_label(result)} · {_units_label(scene, geo)}"]
    if total is not None:
        parts.append(f"total **{_fmt_seconds(total)}**")
    if export_s is not None:
        parts.append(f"display {_fmt_seconds(export_s)}" + (f", {kept:,} points shown" if kept is not None else ""))
    warn = f" · ⚠ {len(scene.warnings)} warning(s)" if scene.warnings else ""
    details = " · ".join(x for x in (stages, f"job {result.job.id}") if x)
    where = f"\n\n{'🌍 ' if geo.is_georeferenced else ''}{georef_summary(geo)}" if geo is not None else ""
    return f"{' · '.join(parts)}{warn}{where}\n\n{details}"


class UIHandlers(UploadPreviews):
    """The event handlers shared by the page and the named API, as plain methods (tests call them
    without a browser). The API endpoints are these methods; the page's live versions (progress,
    cancel, refused display changes) are in :mod:`ui_live` and call the same pieces."""

    def __init__(self, cfg: AppConfig, pipeline: Pipeline, sessions: SessionJobs | None = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.sessions = sessions if sessions is not None else SessionJobs()
        self.previews = VideoPreviews(Path(cfg.jobs.output_root) / ".previews")
        self._thumb_slots = threading.BoundedSemaphore(cfg.ui.thumbnail_workers)
        self._avail_lock = threading.Lock()
        self._avail: dict[str, tuple[float, str | None]] = {}

    # -- engines ---------------------------------------------------------------------------
    def dust3r_availability(self, checkpoint: str | None = None) -> str | None:
        """None when the DUSt3R engine can load ``checkpoint`` (default the server's), else why
        not; cached for a few seconds (it may probe the hub)."""
        ckpt = checkpoint or self.cfg.model.checkpoint
        now = time.monotonic()
        with self._avail_lock:
            hit = self._avail.get(ckpt)
            if hit is not None and now - hit[0] < _AVAILABILITY_TTL_S:
                return hit[1]
        engine = self.pipeline.engines.get("dust3r")
        if engine is None:
            why: str | None = "the DUSt3R engine is not installed in this app"
        else:
            avail = getattr(engine, "availability")  # noqa: B009 (protocol method; some engines take a model config)
            why = avail(dataclasses.replace(self.cfg.model, checkpoint=ckpt)) if checkpoint else avail()
        with self._avail_lock:
            self._avail[ckpt] = (now, why)
        return why

    def availability(self) -> dict[str, str | None]:
        """Engine name -> None (usable) or why not (DUSt3R cached, see :meth:`dust3r_availability`)."""
        out: dict[str, str | None] = {}
        for name, engine in self.pipeline.engines.items():
            out[name] = self.dust3r_availability() if name == "dust3r" else engine.availability()
        return out

    def model_status_md(self) -> str:
        """What the engines can do now, one markdown line each (no HTML)."""
        avail = self.availability()
        lines = []
        if "dust3r" in avail:
            status = self.pipeline.model_status()
            ckpt = Path(self.cfg.model.checkpoint).name or self.cfg.model.checkpoint
            if status is not None:
                lines.append(f"● DUSt3R network loaded on {status.device} ({_fmt_seconds(status.load_seconds)})")
            elif avail["dust3r"] is None:
                lines.append(f"● DUSt3R weights ready ({ckpt}); the network loads on the first run")
            elif "download on the first" in avail["dust3r"]:
                lines.append("● DUSt3R weights download on the first run (see the note above)")
            else:
                lines.append("● DUSt3R weights not available here (see the note above)")
        if "colmap" in avail:
            lines.append("● COLMAP ready" if avail["colmap"] is None else f"● COLMAP unavailable: {avail['colmap']}")
        return "\n\n".join(lines)

    # -- checks ----------------------------------------------------------------------------
    def check_run(self, paths: list[Path], settings: Mapping[str, Any]) -> tuple[str, AppConfig]:
        """Uploads and settings -> (engine, config), or a gr.Error (with a title) saying what to fix.

        A DUSt3R run whose weights are neither here nor downloadable fails here, at once.
        """
        if not paths:
            raise gr.Error(
                "Upload one or more photos first (drag them onto the upload area).",
                title="No images",
                print_exception=False,
            )
        if len(paths) > self.cfg.ui.max_images:
            raise gr.Error(
                f"{len(paths)} images uploaded; the limit is {self.cfg.ui.max_images} per run.",
                title="Too many images",
                print_exception=False,
            )
        engine, cfg = self._settings(settings)
        if engine == "dust3r":
            ckpt = cfg.model.checkpoint
            why = self.dust3r_availability(None if ckpt == self.cfg.model.checkpoint else ckpt)
            if why is not None and not (hub_repo_id(ckpt) and hub_reachable()):
                raise gr.Error(why, title="DUSt3R weights unavailable", print_exception=False)
        try:  # the run limits (pairs, known focals): nothing is created if not
            check_run(paths, replace(cfg, engine=engine), limits=self._limits())
        except UserError as e:
            raise self.fail(e, "Reconstruction") from e
        return engine, cfg

    def new_job(self, cfg: AppConfig, *, inputs: Sequence[Path] = (), protected: Collection[str] = ()):
        """A new job folder (older jobs may be cleaned first, but not those of live sessions nor
        ``protected``); the session holds it once its run is done (:meth:`SessionJobs.add`)."""
        return self.pipeline.new_job(cfg, protected=self.sessions.protected() | set(protected), inputs=inputs)

    # -- events ----------------------------------------------------------------------------
    def _settings(self, settings: Mapping[str, Any]) -> tuple[str, AppConfig]:
        try:
            engine, cfg = settings_to_config(self.cfg, settings)
        except ValueError as e:
            raise gr.Error(f"Invalid setting: {e}", title="Invalid setting", print_exception=False) from e
        if cfg.video.max_frames > self.cfg.ui.max_images:
            raise gr.Error(
                f"Invalid setting: max_frames {cfg.video.max_frames} is above the limit of "
                f"{self.cfg.ui.max_images} images per run.",
                title="Invalid setting",
                print_exception=False,
            )
        if engine not in self.pipeline.engines:
            raise gr.Error(
                f"Unknown engine {engine!r}; choose {', '.join(self.pipeline.engines)}.",
                title="Invalid setting",
                print_exception=False,
            )
        return engine, cfg

    def _progress_fn(self, progress: Callable | None) -> Callable[[str, int, int], None]:
        def report(stage: str, done: int, total: int) -> None:
            if progress is None:
                return
            label = stage_label(stage, done, total)
            progress((done, total) if total > 0 else None, desc=label)

        return report

    def _outputs(self, result: Result):
        """What a new result shows first: (result, viewer GLB, gallery, GLB download, status, model status).

        The zip of every format takes longer; ``package`` makes it right after (chained event).
        """
        t0 = time.perf_counter()
        files = self.pipeline.export(result, result.settings.postprocess, result.settings.viz, ("glb",))
        views = self.pipeline.render_views(result, result.settings.viz)
        export_s = time.perf_counter() - t0
        for w in result.warnings:
            gr.Warning(w)
        glb = str(files["glb"])
        gallery = [(str(p), caption) for p, caption in views]
        status = status_text(result, export_s=export_s, post_cfg=result.settings.postprocess)
        return result, glb, gallery, glb, status, self.model_status_md()

    def fail(self, e: BaseException, what: str, job_dir: Path | None = None) -> gr.Error:
        """An exception -> the page's error: a :class:`UserError`'s (or OS error's) own message, else
        an internal error whose short id finds the traceback in the log. Its title is ``<what> failed``."""
        title = f"{what} failed"
        if not isinstance(e, (UserError, OSError)):
            eid = internal_error_id()
            logger.error("%s: internal error %s", title, eid, exc_info=e)
            message = (
                f"Internal error {eid}: this is a bug, not your input. The server log has the details under {eid}."
            )
            return gr.Error(message, title=title, duration=TOAST_S, print_exception=False)
        message = " ".join(str(e).split()) or type(e).__name__
        if job_dir is not None:  # keep the file names of the job's inputs
            for folder in (job_dir / "inputs", job_dir):
                message = message.replace(f"{folder}{os.sep}", "").replace(str(folder), "")
        message = public_message(message) or type(e).__name__  # server paths mean nothing to the user
        logger.warning("%s: %s", title, message)
        return gr.Error(message, title=title, duration=TOAST_S, print_exception=False)

    _fail = fail

    def reconstruct(self, files: Any, request: gr.Request, progress: gr.Progress = gr.Progress(), **settings: Any):  # noqa: B008 (Gradio idiom)
        """``/reconstruct``: uploads + settings -> the outputs of ``_outputs``."""
        paths = _file_paths(files)
        engine, cfg = self.check_run(paths, settings)
        session = _session(request)
        job = None
        try:
            job = self.new_job(cfg, inputs=paths)
            result = self.pipeline.reconstruct(
                paths, cfg, engine=engine, job=job, progress=self._progress_fn(progress), limits=self._limits()
            )
            self.sessions.add(session, result.job.id)
            return self._outputs(result)
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by fail
            raise self.fail(e, "Reconstruction", job.dir if job is not None else None) from e

    def check_realign(self, result: Result | None) -> Path:
        """The saved pair predictions of ``result``, or a gr.Error unless it is a DUSt3R run whose
        pairs are still on disk (an expired result says so)."""
        if result is None or result.pairs_path is None:
            raise gr.Error(
                "Re-alignment needs a finished DUSt3R reconstruction (its saved pair predictions). Run one first.",
                title="Nothing to re-align",
                print_exception=False,
            )
        if not Path(result.pairs_path).is_file():
            expired = ResultExpiredError(
                "this result has expired: its files were cleaned up, so there is nothing to re-align. "
                "Run the reconstruction again"
            )
            raise self.fail(expired, "Re-alignment")
        return Path(result.pairs_path)

    def realign(
        self,
        result: Result | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio idiom)
        **settings: Any,
    ):
        """Re-align button / ``/realign``: the last DUSt3R run's pairs with new alignment settings."""
        pairs = self.check_realign(result)
        _engine, cfg = self._settings(settings)
        session = _session(request)
        job = None
        try:
            job = self.new_job(cfg, protected={result.job.id})
            new = self.pipeline.realign(
                pairs, cfg, job=job, progress=self._progress_fn(progress), limits=self._limits()
            )
            self.sessions.add(session, new.job.id)
            return self._outputs(new)
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by fail
            raise self.fail(e, "Re-alignment", job.dir if job is not None else None) from e

    def render(self, result: Result | None, **display: Any):
        """Display change: re-export the GLB from the kept scene (no re-run).

        Returns (viewer GLB, GLB download, status); before any result, nothing changes.
        """
        if result is None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            post, viz = display_config(result.settings, display)
            kept = kept_points(result, post)
            if kept == 0 and not viz.show_cameras:
                raise gr.Error(_NOTHING_TO_DRAW, title="Nothing to draw", print_exception=False)
            t0 = time.perf_counter()
            files = self.pipeline.export(result, post, viz, ("glb",))
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by fail
            raise self.fail(e, "Display update") from e
        glb = str(files["glb"])
        status = status_text(result, export_s=time.perf_counter() - t0, kept=kept, post_cfg=post)
        return glb, glb, status

    def package(self, result: Result | None, **display: Any):
        """Every format with these display settings, zipped -> the zip's path (before any result: nothing).

        Runs after each reconstruction and display change, so the zip download always matches
        what the viewer shows.
        """
        if result is None:
            return gr.skip()
        return str(self.package_files(result, **display)["zip"])

    def package_files(self, result: Result, **display: Any) -> dict[str, Path]:
        """:meth:`package`'s export: format (and companion file: ``laz``, ``dtm``, ``ortho``) -> path."""
        try:
            post, viz = display_config(result.settings, display)
            if kept_points(result, post) == 0:
                raise gr.Error(_NOTHING_TO_DRAW, title="Nothing to package", print_exception=False)
            return self.pipeline.export(result, post, viz, package_formats(viz))
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by fail
            raise self.fail(e, "Packaging") from e

    def _limits(self) -> RunLimits:
        return RunLimits.from_config(self.cfg)

    @staticmethod
    def _need_result(result: Result | None, endpoint: str) -> Result:
        if result is None:
            raise gr.Error(
                f"{endpoint} needs a reconstruction in this session: call /reconstruct first.",
                title="Nothing to show",
                print_exception=False,
            )
        return result

    def api_render(self, result: Result | None, **display: Any):
        """``/render``: :meth:`render`, and an error before any reconstruction."""
        return self.render(self._need_result(result, "/render"), **display)

    def api_package(self, result: Result | None, **display: Any):
        """``/package``: :meth:`package`, and an error before any reconstruction."""
        return self.package(self._need_result(result, "/package"), **display)

    def unload(self, request: gr.Request) -> None:
        """Heartbeat lost (tab closed, or a network drop the page may recover from): nothing is
        released here. Gradio keeps the session's state for an hour after that; its job is
        released when the state is deleted (:meth:`release_result`)."""
        session = getattr(request, "session_hash", None)
        if session:
            logger.debug("session %s: heartbeat lost; its result stays until its state is deleted", session)

    def release_result(self, result: Result | None) -> None:
        """The state holding ``result`` was deleted (``gr.State(delete_callback=...)``): its job is
        no longer protected, and is deleted now unless ``keep_session_jobs`` (or another session
        holds it)."""
        if not isinstance(result, Result):
            return
        unheld = self.sessions.drop_job(result.job.id)
        if unheld and not self.cfg.jobs.keep_session_jobs and result.job.id not in self.pipeline.active_jobs():
            shutil.rmtree(result.job.dir, ignore_errors=True)

    @staticmethod
    def glb_ready():
        """After a run: the GLB download is clickable; the zip is being made."""
        return (gr.DownloadButton(interactive=True), gr.DownloadButton(label=_ZIP_BUSY, value=None, interactive=False))

    @staticmethod
    def zip_busy():
        return gr.DownloadButton(label=_ZIP_BUSY, interactive=False)

    @staticmethod
    def zip_ready():
        return gr.DownloadButton(label=_ZIP_LABEL, interactive=True)

    @staticmethod
    def engine_visibility(engine: str):
        dust3r = engine == "dust3r"
        return (
            gr.Accordion(visible=dust3r),
            gr.Accordion(visible=dust3r),
            gr.Accordion(visible=dust3r),
            gr.Accordion(visible=not dust3r),
            gr.Button(visible=dust3r),
        )

    @staticmethod
    def graph_visibility(kind: str):
        window = kind in ("swin", "logwin")
        return gr.Slider(visible=window), gr.Checkbox(visible=window), gr.Slider(visible=kind == "oneref")


def _session(request: Any) -> str:
    """The browser session's id (``anonymous`` without one)."""
    return getattr(request, "session_hash", None) or "anonymous"
