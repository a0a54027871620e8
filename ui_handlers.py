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

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageOps

from config import SETTINGS, AppConfig, PostprocessConfig, VizConfig, apply_settings, current_value, settings_of
from core.errors import ResultExpiredError, UserError, internal_error_id
from core.inputs.plan import plan_run, video_options
from core.inputs.preprocessing import heif_available
from core.inputs.video import VideoError, VideoOptions, is_video, sample_video
from core.outputs.export import EXPORT_FORMATS
from core.outputs.fused import FUSED_FORMATS
from pipeline import Pipeline, Result, RunLimits, check_run, stage_label

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
]

logger = logging.getLogger(__name__)

_THUMB_SIZE = 256
_ZIP_LABEL = "Download all (zip)"
_ZIP_BUSY = "Preparing zip…"

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


@dataclass(frozen=True)
class _VideoPreview:
    """The frames a run would keep from one video, as thumbnails."""

    thumbs: tuple[tuple[np.ndarray, str], ...]
    """(thumbnail (h, w, 3) uint8, frame file name) per kept frame, in time order."""
    size: tuple[int, int]
    """(W, H) of the upright frames."""
    summary: str
    """:meth:`core.inputs.video.VideoFrames.summary`."""
    warnings: tuple[str, ...]


class VideoPreviews:
    """Kept frames of uploaded videos, sampled once per (file, options) into a temporary folder
    below ``root`` (removed right after) and kept as thumbnails; the newest ``max_entries``
    stay (thread-safe; one per demo)."""

    def __init__(self, root: Path, max_entries: int = 8) -> None:
        self.root = Path(root)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, _VideoPreview] = OrderedDict()

    def get(self, path: Path, options: VideoOptions) -> _VideoPreview:
        """The preview of ``path`` sampled with ``options``; raises VideoError for a bad video."""
        st = Path(path).stat()
        key = (str(path), st.st_size, st.st_mtime_ns, options)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="preview-", dir=self.root) as tmp:
            frames = sample_video(path, tmp, options)
            thumbs = tuple(
                (_thumbnail(f.path, frames.info.width * frames.info.height), f.path.name) for f in frames.frames
            )
        preview = _VideoPreview(thumbs, (frames.info.width, frames.info.height), frames.summary(), frames.warnings)
        with self._lock:
            self._cache[key] = preview
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return preview


def _file_paths(files: Any) -> list[Path]:
    """gr.File(file_count='multiple') value (paths, FileData dicts or objects) -> paths."""
    if files is None:
        return []
    if isinstance(files, (str, Path)):
        files = [files]
    out = []
    for f in files:
        if isinstance(f, (str, Path)):
            out.append(Path(f))
        elif isinstance(f, Mapping) and "path" in f:
            out.append(Path(f["path"]))
        elif hasattr(f, "path"):
            out.append(Path(f.path))
        elif hasattr(f, "name"):
            out.append(Path(f.name))
        else:
            raise ValueError(f"cannot read the upload {f!r}")
    return out


def _thumbnail(path: Path, max_pixels: int) -> np.ndarray:
    """A small preview; images over ``max_pixels`` (the pipeline's limit) are refused from their
    header, JPEGs are decoded at a reduced scale (``draft``), so a preview never costs more memory
    than a run would."""
    heif_available()  # registers the HEIC opener when pillow-heif is installed
    with Image.open(path) as im:
        w, h = im.size
        if w * h > max_pixels:
            raise ValueError(f"{w}x{h} is over the limit of {max_pixels} pixels (possible decompression bomb)")
        im.draft("RGB", (_THUMB_SIZE, _THUMB_SIZE))
        im = ImageOps.exif_transpose(im)
        im.thumbnail((_THUMB_SIZE, _THUMB_SIZE))
        return np.asarray(im.convert("RGB"))


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


def _units_label(scene) -> str:
    """``metres, 2.31 m across`` for metric scenes, ``scale unknown`` otherwise."""
    if scene.units != "m" or scene.world_from_cam.shape[0] == 0:
        return "scale unknown"
    pts = np.concatenate([p.reshape(-1, 3) for p in scene.pts3d]) if scene.pts3d else scene.world_from_cam[:, :3, 3]
    lo, hi = np.percentile(pts, [2, 98], axis=0)
    return f"metres, {float(np.max(hi - lo)):.2f} m across"


def status_text(result: Result, *, export_s: float | None = None) -> str:
    """One status line: views, engine, per-stage timings, job id, warnings count."""
    scene = result.scene
    t = dict(result.timings)
    total = t.pop("total", None)
    stages = " · ".join(f"{k} {_fmt_seconds(v)}" for k, v in t.items() if v >= 0.0005)
    what = f"{scene.n_views} views"
    if scene.sparse is not None:
        what += f", {scene.sparse.xyz.shape[0]:,} points"
    parts = [f"**Done** · {what} · {_model_label(result)} · {_units_label(scene)}"]
    if total is not None:
        parts.append(f"total **{_fmt_seconds(total)}**")
    if export_s is not None:
        parts.append(f"display {_fmt_seconds(export_s)}")
    line = " · ".join(parts)
    details = f"<span class='timings'>{stages}</span>" if stages else ""
    warn = f" · ⚠ {len(scene.warnings)} warning(s)" if scene.warnings else ""
    return f"{line}{warn}<br>{details} <span class='job-id'>job {result.job.id}</span>"


class UIHandlers:
    """The event handlers, as plain methods (tests call them without a browser)."""

    def __init__(self, cfg: AppConfig, pipeline: Pipeline, sessions: SessionJobs | None = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.sessions = sessions if sessions is not None else SessionJobs()
        self.previews = VideoPreviews(Path(cfg.jobs.output_root) / ".previews")
        self._thumb_slots = threading.BoundedSemaphore(cfg.ui.thumbnail_workers)

    # -- status ----------------------------------------------------------------------------
    def model_status_md(self) -> str:
        avail = self.pipeline.availability()
        lines = []
        if "dust3r" in avail:
            status = self.pipeline.model_status()
            ckpt = Path(self.cfg.model.checkpoint).name or self.cfg.model.checkpoint
            if status is not None:
                lines.append(
                    f"<span class='dot ok'></span>DUSt3R network loaded on {status.device} "
                    f"({_fmt_seconds(status.load_seconds)})"
                )
            elif avail["dust3r"] is None:
                lines.append(
                    f"<span class='dot idle'></span>DUSt3R weights ready ({ckpt}); the network loads on the first run"
                )
            else:
                lines.append("<span class='dot off'></span>DUSt3R weights not available (see the note above)")
        if "colmap" in avail:
            if avail["colmap"] is None:
                lines.append("<span class='dot ok'></span>COLMAP ready")
            else:
                lines.append(f"<span class='dot off'></span>COLMAP unavailable: {avail['colmap']}")
        return "<br>".join(lines)

    # -- events ----------------------------------------------------------------------------
    def thumbnails(self, files: Any, **settings: Any):
        """Uploads -> small previews (a Gallery update): photos, and the frames a run keeps from each
        video (sampled with the video ``settings``); unreadable files and too many files give warnings."""
        paths = _file_paths(files)
        if len(paths) > self.cfg.ui.max_images:
            gr.Warning(f"{len(paths)} images uploaded; at most {self.cfg.ui.max_images} are allowed per run.")
        options = video_options(self._settings(settings)[1]) if any(map(is_video, paths)) else None
        out = []
        for p in paths[: self.cfg.ui.max_images]:
            if options is not None and is_video(p):
                preview = self._video_preview(p, options)
                out.extend(preview.thumbs if preview is not None else ())
                continue
            try:
                with self._thumb_slots:  # bounded decodes at once (the event runs outside the queue)
                    out.append((_thumbnail(p, self.cfg.preprocess.max_pixels), p.name))
            except ValueError as e:
                gr.Warning(f"{p.name}: not previewed: {e}")
            except (OSError, Image.DecompressionBombError) as e:
                gr.Warning(f"{p.name}: not a readable image ({type(e).__name__})")
        return gr.Gallery(value=out, visible=bool(out))

    def _video_preview(self, path: Path, options: VideoOptions, *, warn: bool = True) -> _VideoPreview | None:
        """A video's preview, or None (with a page warning) when it cannot be used."""
        try:
            preview = self.previews.get(path, options)
        except (VideoError, OSError) as e:
            if warn:
                gr.Warning(" ".join(str(e).replace(f"{path.parent}{os.sep}", "").split()))
            return None
        for w in preview.warnings if warn else ():
            gr.Warning(w)
        return preview

    def plan(self, files: Any, **settings: Any) -> str:
        """Uploads + settings -> one status line before running (``/plan``): images and video frames,
        the scene graph, pair count and memory estimate (:func:`core.inputs.plan.plan_run`), and a
        line per video (duration, codec, frames kept); '' without uploads."""
        paths = _file_paths(files)
        if not paths:
            return ""
        _engine, cfg = self._settings(settings)
        sizes: list[tuple[int, int]] = []
        n_frames, notes = 0, []
        for p in paths:
            if is_video(p):
                preview = self._video_preview(p, video_options(cfg), warn=False)
                if preview is not None:
                    sizes += [preview.size] * len(preview.thumbs)
                    n_frames += len(preview.thumbs)
                    notes.append(preview.summary)
                continue
            try:
                with Image.open(p) as im:
                    sizes.append(im.size)
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
        if not sizes:
            return ""
        try:
            plan = plan_run(cfg, sizes, n_video_frames=n_frames)
        except ValueError as e:
            return f"⚠ {e}"
        lines = [f"**Before running** · {plan.describe()}"]
        if plan.too_large:
            lines.append(f"⚠ {plan.too_large}")
        lines += [f"<span class='video-summary'>{n}</span>" for n in notes]
        return "<br>".join(lines)

    def _settings(self, settings: Mapping[str, Any]) -> tuple[str, AppConfig]:
        try:
            engine, cfg = settings_to_config(self.cfg, settings)
        except ValueError as e:
            raise gr.Error(f"Invalid setting: {e}", print_exception=False) from e
        if cfg.video.max_frames > self.cfg.ui.max_images:
            raise gr.Error(
                f"Invalid setting: max_frames {cfg.video.max_frames} is above the limit of "
                f"{self.cfg.ui.max_images} images per run.",
                print_exception=False,
            )
        if engine not in self.pipeline.engines:
            raise gr.Error(
                f"Unknown engine {engine!r}; choose {', '.join(self.pipeline.engines)}.", print_exception=False
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
        return result, glb, gallery, glb, status_text(result, export_s=export_s), self.model_status_md()

    def _fail(self, e: BaseException, what: str, job_dir: Path | None = None) -> gr.Error:
        """An exception -> the page's error: a :class:`UserError`'s (or OS error's) own message, else
        an internal error whose short id finds the traceback in the log."""
        title = f"{what} failed"
        if not isinstance(e, (UserError, OSError)):
            eid = internal_error_id()
            logger.error("%s: internal error %s", title, eid, exc_info=e)
            message = (
                f"Internal error {eid}: this is a bug, not your input. The server log has the details under {eid}."
            )
            return gr.Error(message, title=title, duration=None, print_exception=False)
        message = public_message(str(e)) or type(e).__name__  # server paths mean nothing to the user
        logger.warning("%s: %s", title, message)
        return gr.Error(message, title=title, duration=None, print_exception=False)

    def reconstruct(self, files: Any, request: gr.Request, progress: gr.Progress = gr.Progress(), **settings: Any):  # noqa: B008 (Gradio idiom)
        """Run button / ``/reconstruct``: uploads + settings -> the outputs of ``_outputs``."""
        paths = _file_paths(files)
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
        session = getattr(request, "session_hash", None) or "anonymous"
        try:
            check_run(paths, replace(cfg, engine=engine), limits=self._limits())  # nothing is created if not
            job = self.pipeline.new_job(cfg, protected=self.sessions.protected(), inputs=paths)
            result = self.pipeline.reconstruct(
                paths, cfg, engine=engine, job=job, progress=self._progress_fn(progress), limits=self._limits()
            )
            self.sessions.add(session, result.job.id)
            return self._outputs(result)
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by _fail
            raise self._fail(e, "Reconstruction") from e

    def realign(
        self,
        result: Result | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio idiom)
        **settings: Any,
    ):
        """Re-align button / ``/realign``: the last DUSt3R run's pairs with new alignment settings."""
        if result is None or result.pairs_path is None:
            raise gr.Error(
                "Re-alignment needs a finished DUSt3R reconstruction (its saved pair predictions). Run one first.",
                title="Nothing to re-align",
                print_exception=False,
            )
        _engine, cfg = self._settings(settings)
        session = getattr(request, "session_hash", None) or "anonymous"
        try:
            if not Path(result.pairs_path).is_file():
                raise ResultExpiredError(
                    "this result has expired: its files were cleaned up, so there is nothing to re-align. "
                    "Run the reconstruction again"
                )
            job = self.pipeline.new_job(cfg, protected=self.sessions.protected() | {result.job.id})
            new = self.pipeline.realign(
                result.pairs_path, cfg, job=job, progress=self._progress_fn(progress), limits=self._limits()
            )
            self.sessions.add(session, new.job.id)
            return self._outputs(new)
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by _fail
            raise self._fail(e, "Re-alignment") from e

    def render(self, result: Result | None, **display: Any):
        """Display change / ``/render``: re-export the GLB from the kept scene (no re-run).

        Returns (viewer GLB, GLB download, status); before any result, nothing changes.
        """
        if result is None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            post, viz = display_config(result.settings, display)
            t0 = time.perf_counter()
            files = self.pipeline.export(result, post, viz, ("glb",))
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by _fail
            raise self._fail(e, "Display update") from e
        glb = str(files["glb"])
        return glb, glb, status_text(result, export_s=time.perf_counter() - t0)

    def package(self, result: Result | None, **display: Any):
        """``/package``: every format with these display settings, zipped -> the zip's path.

        Runs after each reconstruction and display change (chained), so the zip download always
        matches what the viewer shows.
        """
        if result is None:
            return gr.skip()
        try:
            post, viz = display_config(result.settings, display)
            files = self.pipeline.export(result, post, viz, package_formats(viz))
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by _fail
            raise self._fail(e, "Packaging") from e
        return str(files["zip"])

    def _limits(self) -> RunLimits:
        return RunLimits.from_config(self.cfg)

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
