"""The page's live side: runs with progress, time left and Cancel; display changes that never
leave a control out of step with the model; upload feedback; the example; a reload that brings
the session's last result back.

:class:`LivePage` wraps :class:`ui_handlers.UIHandlers` (the named API's handlers) with the
page's generators. A run goes to a worker thread; the generator polls its :class:`RunProgress`
twice a second and yields the stage, count, elapsed time and time left into the run card (by the
Reconstruct button) and the status line. A failed or cancelled run leaves the previous model,
gallery and downloads as they were. Every yield is a tuple in the order of :data:`RUN_OUTPUTS` or
:data:`DISPLAY_OUTPUTS` (``gr.skip()`` = unchanged); ``gradio_ui`` maps the names to components.
Errors show once: the same message for the same session within :data:`ui_handlers.TOAST_S` is
not shown again (the API still gets it).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import gradio as gr

from config import AppConfig, current_value
from core.errors import Cancelled, Interrupted
from core.runtime import resolve_device
from pipeline import Result
from ui_handlers import (
    _ZIP_BUSY,
    _ZIP_LABEL,
    TOAST_S,
    UIHandlers,
    _file_paths,
    _session,
    display_config,
    gis_files,
    kept_points,
    settings_to_config,
    status_text,
)
from ui_progress import (
    Calibration,
    Estimate,
    RunBoard,
    RunProgress,
    estimate_run,
    fmt_duration,
    plan_html,
    progress_html,
    progress_line,
)
from ui_restore import load_result
from ui_uploads import example_files, tiles_html, upload_note, upload_tiles

__all__ = ["DISPLAY_LABELS", "DISPLAY_OUTPUTS", "PAGE_DISPLAY_KEYS", "RUN_OUTPUTS", "LivePage", "ToastLedger"]

logger = logging.getLogger(__name__)

#: The page's labels of the display settings (also used in messages about them).
DISPLAY_LABELS: dict[str, str] = {
    "min_conf_thr": "Confidence threshold",
    "view_mode": "Show as",
    "clean_depth": "Clean-up",
    "outlier_removal": "Remove outliers",
    "largest_component": "Main object only",
    "mask_sky": "Remove sky",
    "cam_size": "Camera size",
    "show_cameras": "Show cameras",
    "cam_transparent": "Transparent cameras",
    "cam_image": "Photos on cameras",
    "surface_res": "Surface resolution",
    "watertight": "Watertight",
    "voxel_res": "Voxel grid N",
    "scale_from": "Known distance",
}
#: The display settings the page has widgets for (the others keep the server's values).
PAGE_DISPLAY_KEYS: tuple[str, ...] = tuple(DISPLAY_LABELS)
#: What a run (and a restored result) updates, by name; ``gradio_ui`` maps names to components.
RUN_OUTPUTS: tuple[str, ...] = (
    "result", "shown", "last_job", "viewer", "gallery", "glb", "zip", "gis", "status", "model", "progress",
    "run_btn", "cancel_btn", "realign_btn", "display_note", *PAGE_DISPLAY_KEYS,
)  # fmt: skip
#: What a display change updates (the display widgets are set back when a change is refused).
DISPLAY_OUTPUTS: tuple[str, ...] = ("viewer", "glb", "zip", "gis", "status", "shown", *PAGE_DISPLAY_KEYS)

_POLL_S = 0.5
_RECENT_RESULTS = 16
_DENSE_ONLY = ("min_conf_thr", "clean_depth", "mask_sky")
_SPARSE_NOTE = (
    "This COLMAP result is a sparse point cloud: **Mesh**, **Confidence threshold**, **Clean-up** and "
    "**Remove sky** need dense depth maps (the DUSt3R engine, or COLMAP with **Dense stereo**), so they are off."
)
_GALLERY_DENSE = "Views · RGB, depth, confidence"
_GALLERY_SPARSE = "Views · RGB only: depth and confidence maps need dense depth (DUSt3R, or COLMAP's Dense stereo)"


def _gis(files: Mapping[str, Path] | None):
    """The GIS downloads for an export's files: shown when it holds any (a georeferenced scene)."""
    paths = gis_files(files) if files is not None else []
    return gr.File(value=paths or None, visible=bool(paths))


def _pick(names: tuple[str, ...], **values: Any) -> tuple:
    """Values in the order of ``names`` (missing ones unchanged)."""
    unknown = set(values) - set(names)
    if unknown:
        raise KeyError(f"not an output: {sorted(unknown)}")
    return tuple(values.get(n, gr.skip()) for n in names)


def _viewer(glb: str | None, result: Result):
    """The viewer's update: the model, labelled with its job (``assets/viewer.js`` keeps the
    camera while the job stays the same)."""
    return gr.Model3D(value=glb, label=f"3D model · {result.job.id}")


def _run(**values: Any) -> tuple:
    return _pick(RUN_OUTPUTS, **values)


class ToastLedger:
    """Which messages a session was just shown, so the same one is not stacked (thread-safe)."""

    def __init__(self, ttl_s: float = TOAST_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}

    def first(self, session: str, message: str) -> bool:
        """True when ``message`` was not shown to ``session`` in the last ``ttl_s`` seconds (and note it)."""
        now = time.monotonic()
        with self._lock:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.ttl_s}
            if (session, message) in self._seen:
                return False
            self._seen[(session, message)] = now
            return True


class LivePage:
    """The page's event handlers that show progress, refuse empty views and restore results."""

    def __init__(self, handlers: UIHandlers, calibration: Calibration | None = None) -> None:
        self.h = handlers
        self.board = RunBoard()
        self.calib = calibration if calibration is not None else Calibration()
        self.toasts = ToastLedger()
        self._recent: OrderedDict[str, Result] = OrderedDict()
        self._recent_lock = threading.Lock()

    # -- messages --------------------------------------------------------------------------
    def error(self, session: str, title: str, message: str) -> gr.Error:
        """A page error whose toast carries its title and is not stacked on the same one."""
        text = f"{title}: {message}"
        return gr.Error(text, duration=TOAST_S, visible=self.toasts.first(session, text), print_exception=False)

    def _warn(self, session: str, message: str) -> None:
        if self.toasts.first(session, message):
            gr.Warning(message, duration=TOAST_S)

    def _as_page_error(self, session: str, e: gr.Error) -> gr.Error:
        title = e.title if e.title and e.title != "Error" else "Error"
        return self.error(session, title, e.message)

    def model_html(self, engine: str = "dust3r", checkpoint: str | None = None) -> str:
        """The engines' state as HTML lines with a coloured dot; with DUSt3R selected but its
        weights out of reach, what to do about it."""
        avail = self.h.availability()
        lines = []
        if "dust3r" in avail:
            status = self.h.pipeline.model_status()
            why = self.h.dust3r_availability(checkpoint if checkpoint != self.h.cfg.model.checkpoint else None)
            if status is not None:
                lines.append(f"<span class='dot ok'></span>DUSt3R network loaded on {status.device}")
            elif why is None:
                lines.append("<span class='dot idle'></span>DUSt3R weights ready; the network loads on the first run")
            elif "download on the first" in why:
                lines.append("<span class='dot idle'></span>DUSt3R weights download on the first run")
            else:
                lines.append("<span class='dot off'></span>DUSt3R weights not available here")
                if engine == "dust3r":
                    lines.append(f"<span class='why'>{html.escape(why)} Until then, COLMAP works offline.</span>")
        if "colmap" in avail:
            if avail["colmap"] is None:
                lines.append("<span class='dot ok'></span>COLMAP ready (no weights, works offline)")
            else:
                lines.append(f"<span class='dot off'></span>COLMAP unavailable: {html.escape(avail['colmap'])}")
        return "<br>".join(lines)

    # -- uploads and the plan --------------------------------------------------------------
    def _estimate(self, cfg: AppConfig, engine: str, n_photos: int) -> Estimate:
        device = resolve_device(cfg.model.device).type
        loaded = self.h.pipeline.model_status() is not None
        return estimate_run(cfg, engine, n_photos, self.calib, device=device, model_loaded=loaded)

    def uploads(self, files: Any, request: gr.Request, **settings: Any):
        """Files dropped -> (thumbnail tiles with problems flagged, the problems' summary, the plan)."""
        paths = _file_paths(files)
        max_images = self.h.cfg.ui.max_images
        tiles = upload_tiles(
            paths,
            max_images,
            max_pixels=self.h.cfg.preprocess.max_pixels,
            video_frames=lambda p: self.h.video_tiles(p, **settings),
        )
        note = upload_note(tiles, max_images)
        thumbs = gr.HTML(value=tiles_html(tiles), visible=bool(tiles))
        n_usable = sum(t.problem is None for t in tiles)
        plan = self.plan(files, request, n_photos=n_usable, **settings)
        return thumbs, gr.Markdown(value=note, visible=bool(note)), plan

    def plan(self, files: Any, request: gr.Request, n_photos: int | None = None, **settings: Any):
        """The run card before a run: photos, pairs and the expected time (unchanged while a run goes).
        ``n_photos``: the usable photos among the files (default: every file)."""
        if self.board.get(_session(request)) is not None:
            return gr.skip()
        paths = _file_paths(files)
        if n_photos is not None and paths:
            paths = paths[: max(n_photos, 1)]
        if not paths:
            return "<div class='plan'>Add photos (or try the example) to see how long a run takes here.</div>"
        try:
            engine, cfg = settings_to_config(self.h.cfg, settings)
        except ValueError:
            return gr.skip()
        return plan_html(self._estimate(cfg, engine, len(paths)), cfg)

    def example(self):
        """The example scene: (uploads value, engine). COLMAP when it is installed: it needs no
        weights and takes seconds on a CPU; else the engine stays as chosen."""
        files = [str(p) for p in example_files()[: self.h.cfg.ui.max_images]]
        if not files:
            raise gr.Error("The example scene is missing (assets/examples/box).", print_exception=False)
        colmap_ready = "colmap" in self.h.pipeline.engines and self.h.availability().get("colmap") is None
        return files, "colmap" if colmap_ready else gr.skip()

    # -- runs ------------------------------------------------------------------------------
    def run(self, files: Any, result: Result | None, shown: dict | None, request: gr.Request, **settings: Any):
        """Reconstruct button: uploads + settings -> live progress, then the new result (or the
        previous one kept, with the failure or cancellation said)."""
        session = _session(request)
        paths = _file_paths(files)
        if (shown or {}).get("forced_points") and settings.get("engine") != "colmap":
            settings = {**settings, "view_mode": "mesh"}  # the sparse result chose it, not the user
        try:
            engine, cfg = self.h.check_run(paths, settings)
        except gr.Error as e:
            raise self._as_page_error(session, e) from None
        try:
            job = self.h.new_job(cfg, inputs=paths)
        except Exception as e:  # noqa: BLE001 - no room, or the server is stopping: said on the page
            raise self._as_page_error(session, self.h.fail(e, "Reconstruction")) from None
        est = self._estimate(cfg, engine, len(paths))
        run = self.board.start(session, RunProgress(est))

        def work() -> Result:
            new = self.h.pipeline.reconstruct(
                paths, cfg, engine=engine, job=job, progress=run.report, limits=self.h._limits(), cancel=run.cancelled
            )
            self.h.sessions.add(session, new.job.id)
            return new

        yield from self._drive(session, run, work, "Reconstruction", job.dir, result, shown)

    def realign(self, result: Result | None, shown: dict | None, request: gr.Request, **settings: Any):
        """Re-align button: the last DUSt3R run's pairs with the alignment settings, live."""
        session = _session(request)
        try:
            pairs = self.h.check_realign(result)
            _engine, cfg = self.h._settings(settings)
        except gr.Error as e:
            raise self._as_page_error(session, e) from None
        est = self._estimate(cfg, "dust3r", len(result.scene.names) if result is not None else 2)
        no_network = {"prepare": 0.0, "model": 0.0, "encode": 0.0, "pairs": 0.0, "save": 0.0, "load": 0.2}
        est = dataclasses.replace(est, stages={**est.stages, **no_network})
        try:
            job = self.h.new_job(cfg, protected={result.job.id})
        except Exception as e:  # noqa: BLE001 - no room, or the server is stopping: said on the page
            raise self._as_page_error(session, self.h.fail(e, "Re-alignment")) from None
        run = self.board.start(session, RunProgress(est))

        def work() -> Result:
            new = self.h.pipeline.realign(
                pairs, cfg, job=job, progress=run.report, limits=self.h._limits(), cancel=run.cancelled
            )
            self.h.sessions.add(session, new.job.id)
            return new

        yield from self._drive(session, run, work, "Re-alignment", job.dir, result, shown)

    def cancel(self, request: gr.Request):
        """Cancel button: the session's run stops after its current step."""
        if self.board.cancel(_session(request)):
            return gr.Button(value="Cancelling…", interactive=False)
        return gr.Button(visible=False)

    def _drive(
        self,
        session: str,
        run: RunProgress,
        work: Callable[[], Result],
        what: str,
        job_dir: Path,
        previous: Result | None,
        shown: dict | None,
    ) -> Iterator[tuple]:
        """Run ``work`` in a thread, yielding its progress; then the result, or the failure."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = work()
            except BaseException as e:  # noqa: BLE001 - handed to the page below
                box["error"] = e

        worker = threading.Thread(target=target, name=f"run-{session[:8]}", daemon=True)
        worker.start()
        try:
            yield _run(
                run_btn=gr.Button(interactive=False),
                realign_btn=gr.Button(interactive=False),
                cancel_btn=gr.Button(value="Cancel", visible=True, interactive=True),
                **self._progress(run),
            )
            while worker.is_alive():
                worker.join(_POLL_S)
                if worker.is_alive():
                    yield _run(**self._progress(run))
            if "error" in box:
                yield from self._failed(session, run, box["error"], what, job_dir, previous)
                return
            self.calib.learn(run.estimate, box["result"].timings)
            try:
                yield from self._show(session, box["result"], shown, run)
            except Exception as e:  # noqa: BLE001 - the run is saved; showing it failed: say so, free the buttons
                yield _run(**self._idle_buttons(previous))
                if isinstance(e, gr.Error):
                    raise
                message = self.h.fail(e, "Showing the result").message
                raise self.error(session, "Showing the result failed", message) from e
        finally:
            if worker.is_alive():  # the page went away mid-run: stop the worker at its next step
                run.cancel()
            self.board.finish(session, run)

    @staticmethod
    def _progress(run: RunProgress) -> dict[str, Any]:
        view = run.view()
        return {"progress": progress_html(view), "status": progress_line(view)}

    def _idle_buttons(self, result: Result | None) -> dict[str, Any]:
        can_realign = result is not None and result.pairs_path is not None and Path(result.pairs_path).is_file()
        return {
            "run_btn": gr.Button(interactive=True),
            "cancel_btn": gr.Button(value="Cancel", visible=False, interactive=True),
            "realign_btn": gr.Button(interactive=can_realign),
        }

    def _failed(
        self, session: str, run: RunProgress, e: BaseException, what: str, job_dir: Path, previous: Result | None
    ) -> Iterator[tuple]:
        elapsed = fmt_duration(run.view().elapsed)
        kept = " The previous result is still shown." if previous is not None else ""
        if isinstance(e, Cancelled) and not isinstance(e, Interrupted):
            line = f"Cancelled after {elapsed}.{kept}"
            yield _run(progress=f"<div class='plan'>{line}</div>", status=line, **self._idle_buttons(previous))
            return
        err = self.h.fail(e, what, job_dir)
        title = f"{what} failed"
        message = err.message if err.message.endswith((".", "!", "?")) else f"{err.message}."
        yield _run(
            progress=f"<div class='plan failed'>{html.escape(title)} after {elapsed}.</div>",
            status=f"**{title}**: {message}{kept}",
            **self._idle_buttons(previous),
        )
        raise self.error(session, title, err.message)

    def _applicability(self, result: Result, shown: dict | None, restored: bool) -> dict[str, Any]:
        """Display widgets for this result: off (with the reason) where they cannot change a sparse
        result; on a restored result, set to its settings."""
        sparse = not result.scene.is_dense
        out: dict[str, Any] = {"display_note": gr.Markdown(value=_SPARSE_NOTE if sparse else "", visible=sparse)}
        values = {k: current_value(result.settings, k) for k in PAGE_DISPLAY_KEYS} if restored else {}
        for k in PAGE_DISPLAY_KEYS:
            kwargs: dict[str, Any] = {"value": values[k]} if k in values else {}
            if k in _DENSE_ONLY:
                out[k] = gr.update(interactive=not sparse, **kwargs)
            elif k == "view_mode":
                if sparse:
                    kwargs["value"] = "pointcloud"
                elif (shown or {}).get("forced_points") and not restored:
                    kwargs["value"] = "mesh"
                out[k] = gr.update(interactive=not sparse, **kwargs)
            elif kwargs:
                out[k] = gr.update(**kwargs)
        return out

    def _remember(self, result: Result) -> None:
        with self._recent_lock:
            self._recent[result.job.id] = result
            self._recent.move_to_end(result.job.id)
            while len(self._recent) > _RECENT_RESULTS:
                self._recent.popitem(last=False)

    def _show(
        self, session: str, result: Result, shown: dict | None, run: RunProgress | None, restored: bool = False
    ) -> Iterator[tuple]:
        """A finished result on the page, step by step: GLB, view maps, zip (each yielded when ready)."""
        report = run.report if run is not None else (lambda stage, done, total: None)
        post, viz = result.settings.postprocess, result.settings.viz
        sparse = not result.scene.is_dense
        display = {k: current_value(result.settings, k) for k in PAGE_DISPLAY_KEYS}
        if sparse:
            display["view_mode"] = "pointcloud"
        new_shown = {"display": display, "sparse": sparse, "forced_points": sparse}
        self._remember(result)
        report("glb", 0, 1)
        if run is not None:
            yield _run(**self._progress(run))
        t0 = time.perf_counter()
        kept = kept_points(result, post)
        glb = str(self.h.pipeline.export(result, post, viz, ("glb",))["glb"]) if kept or viz.show_cameras else None
        export_s = time.perf_counter() - t0
        first = {"result": result, "shown": new_shown, "viewer": _viewer(glb, result)}
        first["glb"] = gr.DownloadButton(value=glb, interactive=glb is not None)
        first["zip"] = gr.DownloadButton(label=_ZIP_BUSY, value=None, interactive=False)
        yield _run(**first)
        report("views", 0, 1)
        if run is not None:
            yield _run(**self._progress(run))
        views = self.h.pipeline.render_views(result, viz)
        label = _GALLERY_SPARSE if sparse else _GALLERY_DENSE
        gallery = gr.Gallery(value=[(str(p), c.split(" (")[0]) for p, c in views], label=label)
        yield _run(gallery=gallery)
        status = status_text(result, export_s=export_s, kept=kept, post_cfg=post)
        zip_btn = gr.DownloadButton(label=_ZIP_LABEL, value=None, interactive=False)
        gis = _gis(None)
        if kept == 0:
            status += (
                f"\n\n**Nothing to draw**: no point passes the display filters (confidence > {post.min_conf_thr:g})."
            )
        else:
            report("zip", 0, 1)
            if run is not None:
                yield _run(**self._progress(run))
            files = self.h.package_files(result)
            zip_btn = gr.DownloadButton(label=_ZIP_LABEL, value=str(files["zip"]), interactive=True)
            gis = _gis(files)
        done = "Restored" if restored else f"Done in {fmt_duration(run.view().elapsed)}" if run else "Done"
        for w in result.warnings:
            self._warn(session, w)
        yield _run(
            zip=zip_btn,
            gis=gis,
            status=status,
            progress=f"<div class='plan done'>{done} · job {result.job.id}</div>",
            model=self.model_html(result.engine),
            last_job=result.job.id,
            **self._idle_buttons(result),
            **self._applicability(result, shown, restored),
        )

    # -- display changes -------------------------------------------------------------------
    def render(self, result: Result | None, shown: dict | None, request: gr.Request, **display: Any):
        """A display change: the model re-exported from the kept scene, then the zip; a change that
        would leave no point to draw is refused and its controls are set back."""
        session = _session(request)
        if result is None:
            yield _pick(DISPLAY_OUTPUTS)
            return
        try:
            post, viz = display_config(result.settings, display)
        except ValueError as e:
            raise self.error(session, "Invalid setting", str(e)) from None
        before = dict((shown or {}).get("display") or {})
        kept = kept_points(result, post)
        if kept == 0:
            yield self._refuse(session, display, before)
            return
        t0 = time.perf_counter()
        try:
            glb = str(self.h.pipeline.export(result, post, viz, ("glb",))["glb"])
        except Exception as e:  # noqa: BLE001 - every failure reaches the page, typed by fail
            raise self.error(session, "Display update failed", self.h.fail(e, "Display update").message) from None
        status = status_text(result, export_s=time.perf_counter() - t0, kept=kept, post_cfg=post)
        new_shown = {**(shown or {}), "display": {k: display.get(k, before.get(k)) for k in PAGE_DISPLAY_KEYS}}
        yield _pick(
            DISPLAY_OUTPUTS,
            viewer=_viewer(glb, result),
            glb=gr.DownloadButton(value=glb, interactive=True),
            zip=gr.DownloadButton(label=_ZIP_BUSY, value=None, interactive=False),
            status=status,
            shown=new_shown,
        )
        files = self.h.package_files(result, **display)
        zip_btn = gr.DownloadButton(label=_ZIP_LABEL, value=str(files["zip"]), interactive=True)
        yield _pick(DISPLAY_OUTPUTS, zip=zip_btn, gis=_gis(files))

    def _refuse(self, session: str, display: Mapping[str, Any], before: Mapping[str, Any]) -> tuple:
        changed = [k for k in PAGE_DISPLAY_KEYS if k in display and k in before and display[k] != before[k]]
        what = ", ".join(f"{DISPLAY_LABELS.get(k, k)} {display[k]!r}" for k in changed) or "these settings"
        back = ", ".join(f"{DISPLAY_LABELS.get(k, k)} is back to {before[k]!r}" for k in changed)
        self._warn(session, f"Nothing to draw with {what}: no point would be left. {back}.".replace(". .", "."))
        return _pick(DISPLAY_OUTPUTS, **{k: before[k] for k in changed})

    # -- page load -------------------------------------------------------------------------
    def restore(self, job_id: str | None, request: gr.Request):
        """Page (re)load: the session's last result when its job is still on disk, or a plain
        sentence saying it is gone."""
        session = _session(request)
        if not job_id:
            yield _run(model=self.model_html())
            return
        with self._recent_lock:
            result = self._recent.get(job_id)
        if result is None or not result.job.scene_path.is_file():
            result = load_result(Path(self.h.cfg.jobs.output_root), job_id, self.h.cfg)
        if result is None:
            gone = (
                f"Your last result (job {job_id}) is no longer on this server: jobs are deleted after "
                f"{self.h.cfg.jobs.max_age_hours:g} h or when space runs short. Reconstruct again."
            )
            yield _run(model=self.model_html(), last_job=None, status=gone)
            return
        self.h.sessions.add(session, result.job.id)
        logger.info("session %s: restored job %s", session[:8], job_id)
        yield from self._show(session, result, None, None, restored=True)

    def unload(self, request: gr.Request) -> None:
        """Tab closed: stop its run, release its jobs."""
        self.board.cancel(_session(request))
        self.h.unload(request)
