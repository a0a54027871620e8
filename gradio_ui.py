"""The web page: upload photos, reconstruct, look at the 3D model, download it.

:func:`build_demo` builds the Gradio Blocks and never launches; ``main.py`` launches it with
:func:`launch_kwargs` (theme, CSS, the fullscreen script, upload limits, allowed paths: in
Gradio 6 these are ``launch()`` parameters, not ``Blocks()`` ones).

State per browser session: the finished :class:`pipeline.Result` (CPU arrays) lives in a
``gr.State``, so display options re-export from it without re-running anything; every run writes
into its own job folder, and a :class:`SessionJobs` registry (owned by the demo, not a global)
remembers which jobs belong to live sessions so the age/size cleanup never deletes them. When a
tab closes (``demo.unload``) its jobs are released (and deleted if ``cfg.jobs.keep_session_jobs``
is False); Gradio's own cache of served files is cleaned with ``delete_cache``.

Named API endpoints (``gradio_client``): ``/reconstruct`` (files + settings -> viewer GLB,
gallery, GLB download, status, engine status), ``/render`` (display settings -> viewer GLB, GLB
download, status), ``/package`` (display settings -> zip of every format), ``/realign``
(settings -> same as /reconstruct), ``/thumbnails`` (files -> previews). In the page, the zip is
made by a chained event after each run and display change. Reconstructions share one queue slot
per device (``cfg.ui.concurrency_limit``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageOps

from config import SETTINGS, AppConfig, PostprocessConfig, VizConfig, apply_settings, current_value, settings_of
from core.errors import UserError, internal_error_id
from core.inputs.preprocessing import IMAGE_EXTENSIONS, heif_available
from core.outputs.export import EXPORT_FORMATS
from pipeline import Pipeline, Result, stage_label

__all__ = [
    "build_demo",
    "launch_kwargs",
    "SessionJobs",
    "UIHandlers",
    "settings_to_config",
    "display_config",
    "ASSETS_DIR",
]

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
_THUMB_SIZE = 256
_ZIP_LABEL = "Download all (zip)"
_ZIP_BUSY = "Preparing zip…"

ENGINE_CHOICES = [
    ("DUSt3R · neural, works from 2 photos", "dust3r"),
    ("COLMAP · classical SfM, no weights needed", "colmap"),
]
GRAPH_CHOICES = [
    ("complete · every pair (best, N² pairs)", "complete"),
    ("sliding window · neighbours in order", "swin"),
    ("log window · neighbours at 1, 2, 4, ...", "logwin"),
    ("one reference · all pairs with one image", "oneref"),
]
IMAGE_SIZES = (512, 384, 320, 224)

#: Display settings (re-export only) and run settings (what changes the reconstruction), by flat name.
DISPLAY_KEYS = tuple(s.name for s in settings_of("display"))
RUN_KEYS = (
    "engine", "image_size", "enhance", "scene_graph", "window_size", "cyclic", "ref_image", "niter",
    "schedule", "lr", "init_conf_thr", "known_focal", "shared_focal", "early_stop", "matcher", "mapper",
)  # fmt: skip


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


class SessionJobs:
    """Which job ids belong to which live browser session (thread-safe; one per demo)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, set[str]] = {}

    def add(self, session: str, job_id: str) -> None:
        with self._lock:
            self._jobs.setdefault(session, set()).add(job_id)

    def release(self, session: str) -> set[str]:
        """Forget a session; returns its job ids."""
        with self._lock:
            return self._jobs.pop(session, set())

    def protected(self) -> frozenset[str]:
        with self._lock:
            return frozenset(j for jobs in self._jobs.values() for j in jobs)


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


def _thumbnail(path: Path) -> np.ndarray:
    heif_available()  # registers the HEIC opener when pillow-heif is installed
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.thumbnail((_THUMB_SIZE, _THUMB_SIZE))
        return np.asarray(im.convert("RGB"))


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 0.95 else f"{s * 1000:.0f} ms"


def status_text(result: Result, *, export_s: float | None = None) -> str:
    """One status line: views, engine, per-stage timings, job id, warnings count."""
    scene = result.scene
    t = dict(result.timings)
    total = t.pop("total", None)
    stages = " · ".join(f"{k} {_fmt_seconds(v)}" for k, v in t.items() if v >= 0.0005)
    what = f"{scene.n_views} views"
    if scene.sparse is not None:
        what += f", {scene.sparse.xyz.shape[0]:,} points"
    parts = [f"**Done** · {what} · {result.engine.upper() if result.engine == 'colmap' else 'DUSt3R'}"]
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
    def thumbnails(self, files: Any):
        """Uploads -> small previews (a Gallery update); unreadable files and too many files give warnings."""
        paths = _file_paths(files)
        if len(paths) > self.cfg.ui.max_images:
            gr.Warning(f"{len(paths)} images uploaded; at most {self.cfg.ui.max_images} are allowed per run.")
        out = []
        for p in paths:
            try:
                out.append((_thumbnail(p), p.name))
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                gr.Warning(f"{p.name}: not a readable image ({type(e).__name__})")
        return gr.Gallery(value=out, visible=bool(out))

    def _settings(self, settings: Mapping[str, Any]) -> tuple[str, AppConfig]:
        try:
            engine, cfg = settings_to_config(self.cfg, settings)
        except ValueError as e:
            raise gr.Error(f"Invalid setting: {e}", print_exception=False) from e
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
        message = " ".join(str(e).split()) or type(e).__name__
        if job_dir is not None:  # server paths mean nothing to the user: keep the file names
            for folder in (job_dir / "inputs", job_dir):
                message = message.replace(f"{folder}{os.sep}", "").replace(str(folder), "")
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
        job = self.pipeline.new_job(cfg, protected=self.sessions.protected())
        self.sessions.add(session, job.id)
        try:
            result = self.pipeline.reconstruct(paths, cfg, engine=engine, job=job, progress=self._progress_fn(progress))
            return self._outputs(result)
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by _fail
            raise self._fail(e, "Reconstruction", job.dir) from e

    def realign(
        self,
        result: Result | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio idiom)
        **settings: Any,
    ):
        """Re-align button / ``/realign``: the last DUSt3R run's pairs with new alignment settings."""
        if result is None or result.pairs_path is None or not Path(result.pairs_path).is_file():
            raise gr.Error(
                "Re-alignment needs a finished DUSt3R reconstruction (its saved pair predictions). Run one first.",
                title="Nothing to re-align",
                print_exception=False,
            )
        _engine, cfg = self._settings(settings)
        session = getattr(request, "session_hash", None) or "anonymous"
        job = self.pipeline.new_job(cfg, protected=self.sessions.protected())
        self.sessions.add(session, job.id)
        try:
            new = self.pipeline.realign(result.pairs_path, cfg, job=job, progress=self._progress_fn(progress))
            return self._outputs(new)
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by _fail
            raise self._fail(e, "Re-alignment", job.dir) from e

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
            files = self.pipeline.export(result, post, viz, EXPORT_FORMATS)
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by _fail
            raise self._fail(e, "Packaging") from e
        return str(files["zip"])

    def unload(self, request: gr.Request) -> None:
        """Tab closed: release the session's jobs (delete them unless ``keep_session_jobs``)."""
        session = getattr(request, "session_hash", None)
        if not session:
            return
        jobs = self.sessions.release(session)
        if self.cfg.jobs.keep_session_jobs:
            return
        root = Path(self.cfg.jobs.output_root)
        for job_id in jobs:
            shutil.rmtree(root / job_id, ignore_errors=True)

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


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

_HEADER = """
<div id="app-header">
  <div class="brand">
    <div class="logo">◈</div>
    <div>
      <h1>DUSt3R Studio</h1>
      <p>Photos in, 3D model out. Dense stereo reconstruction (DUSt3R) or classical structure-from-motion (COLMAP).</p>
    </div>
  </div>
</div>
"""

_HOWTO = """
<div id="howto">
  <div class="step"><span>1</span><b>Add photos</b> 2 or more views of one object or scene, overlapping, from different angles.</div>
  <div class="step"><span>2</span><b>Reconstruct</b> defaults work; the first DUSt3R run loads the network.</div>
  <div class="step"><span>3</span><b>Explore &amp; download</b> drag to orbit, ⤢ for fullscreen (Esc exits); GLB or the full zip.</div>
</div>
"""


def _default_engine(avail: Mapping[str, str | None]) -> tuple[str, str]:
    """(engine to select, notice markdown) from the engines' availability."""
    dust3r, colmap = avail.get("dust3r", "missing"), avail.get("colmap", "missing")
    if dust3r is None:
        return "dust3r", ""
    if colmap is None:
        note = (
            f"**DUSt3R weights are not available, so COLMAP is selected** (classical structure-from-motion: "
            f"no weights, works offline; it needs several overlapping photos). {dust3r}"
        )
        return "colmap", note
    return "dust3r", f"**No engine is ready.** DUSt3R: {dust3r} COLMAP: {colmap}"


def _read_asset(name: str) -> str:
    path = ASSETS_DIR / name
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _theme() -> gr.themes.Base:
    fonts = ["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["JetBrains Mono", "ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Base(
        primary_hue="violet", secondary_hue="cyan", neutral_hue="slate", radius_size="md", font=fonts, font_mono=mono
    )


def launch_kwargs(cfg: AppConfig) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch()``: server, theme, CSS, scripts, limits, served paths."""
    output_root = Path(cfg.jobs.output_root).resolve()
    output_root.mkdir(parents=True, exist_ok=True)
    script = _read_asset("fullscreen.js")
    return {
        "server_name": cfg.ui.host,
        "server_port": cfg.ui.port,
        "share": cfg.ui.share,
        "theme": _theme(),
        "css_paths": [ASSETS_DIR / "style.css"],
        "head": f"<script>{script}</script>" if script else None,
        "allowed_paths": [str(output_root)],
        "max_file_size": int(cfg.ui.max_upload_mb * 1024 * 1024),
        "footer_links": ["api"],
        "show_error": True,
    }


def build_demo(cfg: AppConfig, pipeline: Pipeline) -> gr.Blocks:
    """The page (never launched here; see :func:`launch_kwargs`)."""
    handlers = UIHandlers(cfg, pipeline)
    avail = pipeline.availability()
    engine0, notice = _default_engine(avail)
    max_age_s = int(cfg.jobs.max_age_hours * 3600)
    sizes = sorted({*IMAGE_SIZES, cfg.preprocess.image_size}, reverse=True)
    ui = cfg.ui

    with gr.Blocks(
        title="DUSt3R Studio", analytics_enabled=False, fill_width=True, delete_cache=(ui.cache_clean_s, max_age_s)
    ) as demo:
        result_state = gr.State(None)
        gr.HTML(_HEADER)
        gr.HTML(_HOWTO)
        gr.Markdown(notice, visible=bool(notice), elem_id="notice")

        with gr.Row(equal_height=False, elem_id="main-row"):
            # ---------------- left: inputs and settings ----------------
            with gr.Column(scale=4, min_width=340, elem_id="left-panel"):
                with gr.Column(scale=0, elem_id="photos-panel"):
                    gr.Markdown("### Photos", elem_classes="panel-title")
                    files = gr.File(
                        file_count="multiple",
                        file_types=list(IMAGE_EXTENSIONS),
                        label="Drop photos here",
                        show_label=False,
                        height=150,
                        elem_id="upload",
                    )
                    thumbs = gr.Gallery(
                        label="Uploaded",
                        show_label=False,
                        columns=5,
                        fit_columns=False,
                        height=124,
                        object_fit="cover",
                        allow_preview=False,
                        elem_id="thumbs",
                        visible=False,
                    )
                with gr.Column(scale=0, elem_id="engine-panel"):
                    gr.Markdown("### Engine", elem_classes="panel-title")
                    engine = setting_widget(
                        cfg,
                        "engine",
                        "Engine",
                        choices=ENGINE_CHOICES,
                        value=engine0,
                        show_label=False,
                        info=None,
                        elem_id="engine",
                    )
                    model_md = gr.Markdown(handlers.model_status_md(), elem_id="model-status")
                with gr.Accordion("Network input", open=False, visible=engine0 == "dust3r") as acc_input:
                    image_size = gr.Dropdown(
                        sizes,
                        value=cfg.preprocess.image_size,
                        label="Image size (long side, px)",
                        info="512 for the 512 models; 224 = square crop for the 224 model. Smaller is faster.",
                    )
                    enhance = setting_widget(cfg, "enhance", "Enhance contrast and sharpness")
                with gr.Accordion("Image pairs", open=False, visible=engine0 == "dust3r") as acc_pairs:
                    kind = cfg.inference.graph
                    scene_graph = setting_widget(
                        cfg,
                        "scene_graph",
                        "Scene graph",
                        choices=GRAPH_CHOICES,
                        info="Which image pairs go through the network. Use a window for long ordered sequences.",
                    )
                    window_size = setting_widget(
                        cfg, "window_size", "Window size", maximum=ui.max_images, visible=kind in ("swin", "logwin")
                    )
                    cyclic = setting_widget(cfg, "cyclic", "Cyclic", visible=kind in ("swin", "logwin"))
                    ref_image = setting_widget(
                        cfg, "ref_image", "Reference image index", maximum=ui.max_images - 1, visible=kind == "oneref"
                    )
                with gr.Accordion("Global alignment", open=False, visible=engine0 == "dust3r") as acc_align:
                    niter = setting_widget(cfg, "niter", "Iterations", maximum=ui.max_niter, step=10)
                    schedule = setting_widget(cfg, "schedule", "Learning-rate schedule")
                    lr = setting_widget(cfg, "lr", "Learning rate", step=0.001)
                    init_conf_thr = setting_widget(
                        cfg, "init_conf_thr", "Initialisation confidence", minimum=1.0, maximum=ui.max_conf_thr
                    )
                    known_focal = setting_widget(
                        cfg,
                        "known_focal",
                        "Known focal length (px of the network input)",
                        placeholder="empty = estimate · one value · or one per image: 480,500",
                    )
                    with gr.Row():
                        shared_focal = setting_widget(cfg, "shared_focal", "Shared focal")
                        early_stop = setting_widget(cfg, "early_stop", "Early stop")
                with gr.Accordion("COLMAP", open=False, visible=engine0 == "colmap") as acc_colmap:
                    matcher = setting_widget(cfg, "matcher", "Feature matching")
                    mapper = setting_widget(cfg, "mapper", "Mapping")
                run_btn = gr.Button("Reconstruct", variant="primary", size="lg", elem_id="run-btn")

            # ---------------- right: results ----------------
            with gr.Column(scale=7, min_width=420, elem_id="right-panel"):
                with gr.Column(elem_id="viewer-wrap"):
                    gr.Button("⤢ Fullscreen", elem_id="fullscreen-btn", size="sm")
                    viewer = gr.Model3D(
                        label="3D model",
                        show_label=False,
                        height=ui.viewer_height,
                        clear_color=(0.043, 0.055, 0.078, 1.0),
                        elem_id="viewer",
                    )
                status = gr.Markdown("Upload photos and press **Reconstruct**.", elem_id="status")
                with gr.Row(elem_id="downloads"):
                    glb_btn = gr.DownloadButton(
                        "Download GLB", value=None, interactive=False, variant="primary", elem_id="download-glb"
                    )
                    zip_btn = gr.DownloadButton(_ZIP_LABEL, value=None, interactive=False, elem_id="download-zip")
                    realign_btn = gr.Button("Re-align (no network)", visible=engine0 == "dust3r", elem_id="realign-btn")
                with gr.Accordion("Display · updates the model without re-running", open=True, elem_id="display"):
                    with gr.Row():
                        min_conf_thr = setting_widget(
                            cfg, "min_conf_thr", "Confidence threshold", minimum=1.0, maximum=ui.max_conf_thr
                        )
                        cam_size = setting_widget(
                            cfg, "cam_size", "Camera size", minimum=0.001, maximum=ui.max_cam_size, step=0.001
                        )
                    with gr.Row():
                        view_mode = setting_widget(
                            cfg,
                            "view_mode",
                            "Show as",
                            choices=[("Mesh", "mesh"), ("Point cloud", "pointcloud")],
                            info=None,
                        )
                        with gr.Column():
                            show_cameras = setting_widget(cfg, "show_cameras", "Show cameras", info=None)
                            cam_transparent = setting_widget(cfg, "cam_transparent", "Transparent cameras", info=None)
                            cam_image = setting_widget(cfg, "cam_image", "Photos on cameras", info=None)
                    with gr.Row():
                        clean_depth = setting_widget(cfg, "clean_depth", "Clean-up")
                        outlier_removal = setting_widget(cfg, "outlier_removal", "Remove outliers")
                        largest_component = setting_widget(cfg, "largest_component", "Main object only")
                        mask_sky = setting_widget(cfg, "mask_sky", "Remove sky", info=None)
                gallery = gr.Gallery(
                    label="Views · RGB, depth, confidence", columns=3, height=300, object_fit="contain", elem_id="views"
                )

        run_inputs = dict(
            engine=engine,
            image_size=image_size,
            enhance=enhance,
            scene_graph=scene_graph,
            window_size=window_size,
            cyclic=cyclic,
            ref_image=ref_image,
            niter=niter,
            schedule=schedule,
            lr=lr,
            init_conf_thr=init_conf_thr,
            known_focal=known_focal,
            shared_focal=shared_focal,
            early_stop=early_stop,
            matcher=matcher,
            mapper=mapper,
        )
        display_inputs = dict(
            min_conf_thr=min_conf_thr,
            view_mode=view_mode,
            clean_depth=clean_depth,
            outlier_removal=outlier_removal,
            largest_component=largest_component,
            mask_sky=mask_sky,
            cam_size=cam_size,
            show_cameras=show_cameras,
            cam_transparent=cam_transparent,
            cam_image=cam_image,
        )
        outputs = [result_state, viewer, gallery, glb_btn, status, model_md]
        package = dict(
            fn=handlers.package,
            inputs=[result_state],
            inputs_kwargs=display_inputs,
            outputs=[zip_btn],
            concurrency_limit=4,
            concurrency_id="display",
            show_progress="hidden",
        )

        files.change(handlers.thumbnails, inputs=files, outputs=thumbs, api_name="thumbnails", queue=False)
        for button, fn, first_input, name in (
            (run_btn, handlers.reconstruct, files, "reconstruct"),
            (realign_btn, handlers.realign, result_state, "realign"),
        ):
            button.click(
                fn,
                inputs=[first_input],
                inputs_kwargs={**run_inputs, **display_inputs},
                outputs=outputs,
                api_name=name,
                concurrency_limit=ui.concurrency_limit,
                concurrency_id="device",
                show_progress_on=[viewer],
            ).success(handlers.glb_ready, outputs=[glb_btn, zip_btn], queue=False, api_visibility="private").success(
                **package, api_name=f"{name}_package", api_visibility="private"
            ).success(handlers.zip_ready, outputs=[zip_btn], queue=False, api_visibility="private")
        display_triggers = [
            min_conf_thr.release,
            cam_size.release,
            view_mode.input,
            show_cameras.input,
            cam_transparent.input,
            cam_image.input,
            clean_depth.input,
            outlier_removal.input,
            largest_component.input,
            mask_sky.input,
        ]
        gr.on(
            display_triggers,
            handlers.render,
            inputs=[result_state],
            inputs_kwargs=display_inputs,
            outputs=[viewer, glb_btn, status],
            api_name="render",
            trigger_mode="always_last",
            concurrency_limit=4,
            concurrency_id="display",
            show_progress="minimal",
            show_progress_on=[viewer],
        ).success(handlers.zip_busy, outputs=[zip_btn], queue=False, api_visibility="private").success(
            **package, api_name="package", trigger_mode="always_last"
        ).success(handlers.zip_ready, outputs=[zip_btn], queue=False, api_visibility="private")
        engine.change(
            handlers.engine_visibility,
            inputs=engine,
            outputs=[acc_input, acc_pairs, acc_align, acc_colmap, realign_btn],
            queue=False,
            api_visibility="private",
        )
        scene_graph.change(
            handlers.graph_visibility,
            inputs=scene_graph,
            outputs=[window_size, cyclic, ref_image],
            queue=False,
            api_visibility="private",
        )
        demo.load(handlers.model_status_md, outputs=model_md, queue=False, api_visibility="private")
        demo.unload(handlers.unload)
    demo.queue(max_size=ui.queue_size, default_concurrency_limit=ui.concurrency_limit)
    return demo
