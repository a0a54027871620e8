"""The web page: upload photos, reconstruct, look at the 3D model, download it.

:func:`build_demo` builds the Gradio Blocks and never launches; ``main.py`` launches it with
:func:`launch_kwargs` (theme, CSS, the fullscreen script, upload limits, allowed paths: in
Gradio 6 these are ``launch()`` parameters, not ``Blocks()`` ones).

The handlers (one method per event, and the settings they read from the widgets) are in
:mod:`ui_handlers`; this module is the layout and the wiring. When a tab closes
(``demo.unload``) its jobs are released (and deleted if ``cfg.jobs.keep_session_jobs`` is
False); Gradio's own cache of served files is cleaned with ``delete_cache``.

Named API endpoints (``gradio_client``): ``/reconstruct`` (files + settings -> viewer GLB,
gallery, GLB download, status, engine status), ``/render`` (display settings -> viewer GLB, GLB
download, status), ``/package`` (display settings -> zip of every format), ``/realign``
(settings -> same as /reconstruct), ``/thumbnails`` (files + video settings -> previews: photos and
the frames kept from videos), ``/plan`` (files + settings -> the line shown before running: pair
count, memory estimate, video summaries). In the page, the zip is
made by a chained event after each run and display change. Reconstructions share one queue slot
per device (``cfg.ui.concurrency_limit``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from config import (
    OFFICIAL_CHECKPOINTS,
    AppConfig,
)
from core.inputs.preprocessing import IMAGE_EXTENSIONS
from core.inputs.video import VIDEO_EXTENSIONS
from pipeline import Pipeline
from ui_handlers import (
    _ZIP_LABEL,
    SessionJobs,
    UIHandlers,
    display_config,
    setting_widget,
    settings_to_config,
)
from ui_live import DISPLAY_LABELS, RUN_OUTPUTS, LivePage
from ui_uploads import EXAMPLE_DIR
from ui_wiring import wire_api, wire_page, wire_preview
from web_guard import RequestGuard

__all__ = [
    "build_demo",
    "launch_kwargs",
    "SessionJobs",
    "UIHandlers",
    "settings_to_config",
    "display_config",
    "ASSETS_DIR",
    "LivePage",
]

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"

ENGINE_CHOICES = [
    ("DUSt3R · neural, from 2 photos", "dust3r"),
    ("COLMAP · classical, no weights", "colmap"),
]
GRAPH_CHOICES = [
    ("auto · by count: complete up to 20 photos, a log window above and for video frames", "auto"),
    ("complete · every pair (best, N² pairs)", "complete"),
    ("sliding window · neighbours in order", "swin"),
    ("log window · neighbours at 1, 2, 4, ...", "logwin"),
    ("one reference · all pairs with one image", "oneref"),
]
IMAGE_SIZES = (512, 384, 320, 224)
#: The networks the DUSt3R engine offers (hub ids); the configured checkpoint is added when it is another.
MODEL_CHOICES = [
    ("DUSt3R 512 DPT · best DUSt3R", OFFICIAL_CHECKPOINTS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"]),
    ("DUSt3R 512 linear · faster head", OFFICIAL_CHECKPOINTS["DUSt3R_ViTLarge_BaseDecoder_512_linear"]),
    ("DUSt3R 224 linear · square 224 px input", OFFICIAL_CHECKPOINTS["DUSt3R_ViTLarge_BaseDecoder_224_linear"]),
    (
        "MASt3R 512 metric · metres, more accurate",
        OFFICIAL_CHECKPOINTS["MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"],
    ),
]

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
  <div class="step"><span>1</span><b>Add photos or a video</b> 2 or more overlapping views of one object or scene, a short clip moving around it, or try the example.</div>
  <div class="step"><span>2</span><b>Reconstruct</b> the card shows the stage and the time left; Cancel keeps the previous result.</div>
  <div class="step"><span>3</span><b>Explore &amp; download</b> drag to orbit, ⤢ for fullscreen (Esc exits); GLB or the full zip.</div>
</div>
"""


def _model_choices(cfg: AppConfig) -> list[tuple[str, str]]:
    """:data:`MODEL_CHOICES`, plus the configured checkpoint first when it is not one of them."""
    official = [value for _, value in MODEL_CHOICES]
    ckpt = cfg.model.checkpoint
    ckpt = OFFICIAL_CHECKPOINTS.get(ckpt, ckpt)
    return MODEL_CHOICES if ckpt in official else [(f"{Path(ckpt).name or ckpt} · configured", ckpt), *MODEL_CHOICES]


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


_SCRIPTS = ("fullscreen.js", "page.js", "viewer.js")
"""Scripts put in the page's <head>: fullscreen viewer, slider keys, the viewer's camera."""
_LAST_JOB_KEY = "dust3r-studio-last-job"


def _browser_secret(output_root: Path) -> str:
    """The key that encrypts the last job id kept in the browser, stable across restarts of this
    output folder (so a reload after a restart still finds the job)."""
    path = Path(output_root) / ".page-secret"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        secret = secrets.token_urlsafe(24)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret + "\n", encoding="utf-8")
        return secret


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
    """Keyword arguments for ``demo.launch()``: server, theme, CSS, scripts, limits, served paths.

    ``allowed_paths`` lets Gradio copy results from the output folder into its cache (that copy is
    what is served); :class:`web_guard.RequestGuard` refuses foreign origins, direct requests for
    files below the output folder and uploads over ``cfg.ui.max_request_mb``.
    """
    output_root = Path(cfg.jobs.output_root).resolve()
    output_root.mkdir(parents=True, exist_ok=True)
    script = "\n".join(_read_asset(name) for name in _SCRIPTS)
    guard = Middleware(
        RequestGuard,
        output_root=output_root,
        max_request_bytes=int(cfg.ui.max_request_mb * 1024 * 1024),
        allowed_origins=cfg.ui.allowed_origins,
    )
    return {
        "app_kwargs": {"middleware": [guard]},
        "server_name": cfg.ui.host,
        "server_port": cfg.ui.port,
        "share": cfg.ui.share,
        "theme": _theme(),
        "css_paths": [ASSETS_DIR / "style.css"],
        "head": f"<script>{script}</script>" if script else None,
        "allowed_paths": [str(output_root), str(EXAMPLE_DIR)],
        "max_file_size": int(cfg.ui.max_upload_mb * 1024 * 1024),
        "footer_links": ["api"],
        "show_error": True,
    }


def _video_widgets(cfg: AppConfig) -> dict[str, Any]:
    """The "Video" accordion's widgets (inside the open context), by setting name."""
    fps = setting_widget(cfg, "fps", "Frames per second of video", minimum=0.1, maximum=10, step=0.1)
    max_frames = setting_widget(
        cfg, "max_frames", "Maximum frames per video (0 = auto)", minimum=0, maximum=cfg.ui.max_images, step=1
    )
    with gr.Row():
        sharpest = setting_widget(cfg, "sharpest", "Sharpest frame of each interval", info=None)
        skip_static = setting_widget(cfg, "skip_static", "Skip still frames", info=None)
    return dict(fps=fps, max_frames=max_frames, sharpest=sharpest, skip_static=skip_static)


def build_demo(cfg: AppConfig, pipeline: Pipeline) -> gr.Blocks:
    """The page (never launched here; see :func:`launch_kwargs`)."""
    handlers = UIHandlers(cfg, pipeline)
    live = LivePage(handlers)
    avail = handlers.availability()
    engine0, notice = _default_engine(avail)
    max_age_s = int(cfg.jobs.max_age_hours * 3600)
    sizes = sorted({*IMAGE_SIZES, cfg.preprocess.image_size}, reverse=True)
    ui = cfg.ui

    with gr.Blocks(
        title="DUSt3R Studio", analytics_enabled=False, fill_width=True, delete_cache=(ui.cache_clean_s, max_age_s)
    ) as demo:
        # the session's result: its job is protected from cleanup for as long as this state lives
        result_state = gr.State(None, time_to_live=max_age_s, delete_callback=handlers.release_result)
        shown_state = gr.State(None)
        last_job = gr.BrowserState(None, storage_key=_LAST_JOB_KEY, secret=_browser_secret(cfg.jobs.output_root))
        gr.HTML(_HEADER)
        gr.HTML(_HOWTO)
        gr.Markdown(notice, visible=bool(notice), elem_id="notice")

        with gr.Row(equal_height=False, elem_id="main-row"):
            # ---------------- left: inputs, the run card, settings ----------------
            with gr.Column(scale=4, min_width=340, elem_id="left-panel"):
                with gr.Column(scale=0, elem_id="photos-panel"):
                    with gr.Row(elem_id="photos-head"):
                        gr.Markdown("### Photos & videos", elem_classes="panel-title")
                        example_btn = gr.Button("▶ Try the example scene", size="sm", elem_id="example-btn")
                    files = gr.File(
                        file_count="multiple",
                        file_types=[*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS],
                        label="Drop photos or videos here",
                        show_label=False,
                        height=120,
                        elem_id="upload",
                    )
                    thumbs = gr.HTML("", visible=False, elem_id="thumbs")
                    api_thumbs = gr.Gallery(label="Uploaded", visible=False, elem_id="api-thumbs")
                    upload_note = gr.Markdown("", visible=False, elem_id="upload-note")
                    plan_md = gr.Markdown("", elem_id="plan")
                with gr.Accordion("Video", open=False, elem_id="video-settings"):
                    video = _video_widgets(cfg)
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
                    model_md = gr.HTML(live.model_html(engine0), elem_id="model-status")
                with gr.Column(scale=0, elem_id="run-card"):
                    with gr.Row(elem_id="run-row"):
                        run_btn = gr.Button("Reconstruct", variant="primary", size="lg", elem_id="run-btn", scale=3)
                        cancel_btn = gr.Button("Cancel", variant="stop", visible=False, elem_id="cancel-btn", scale=1)
                    run_status = gr.HTML(
                        "<div class='plan'>Add photos (or try the example) to see how long a run takes here.</div>",
                        elem_id="run-status",
                    )
                with gr.Accordion("Network input", open=False, visible=engine0 == "dust3r") as acc_input:
                    checkpoint = gr.Dropdown(
                        _model_choices(cfg),
                        value=OFFICIAL_CHECKPOINTS.get(cfg.model.checkpoint, cfg.model.checkpoint),
                        label="Network",
                        info="Loaded on its first run, then kept. MASt3R gives metric scale (metres).",
                        elem_id="checkpoint",
                    )
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
                with gr.Accordion(
                    "Global alignment", open=False, visible=engine0 == "dust3r", elem_id="global-alignment"
                ) as acc_align:
                    niter = setting_widget(cfg, "niter", "Iterations", maximum=ui.max_niter, step=10, elem_id="niter")
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
                with gr.Accordion(
                    "COLMAP", open=False, visible=engine0 == "colmap", elem_id="colmap-settings"
                ) as acc_colmap:
                    matcher = setting_widget(cfg, "matcher", "Feature matching")
                    mapper = setting_widget(cfg, "mapper", "Mapping")
                    dense = setting_widget(cfg, "dense", "Dense stereo (full model, depth maps)")
                    mvs_size = setting_widget(
                        cfg, "mvs_size", "Dense working size (long side, px)", maximum=2048, step=32, elem_id="mvs-size"
                    )

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
                status = gr.Markdown("Upload photos or a video and press **Reconstruct**.", elem_id="status")
                with gr.Row(elem_id="downloads"):
                    glb_btn = gr.DownloadButton(
                        "Download GLB", value=None, interactive=False, variant="primary", elem_id="download-glb"
                    )
                    zip_btn = gr.DownloadButton(_ZIP_LABEL, value=None, interactive=False, elem_id="download-zip")
                    realign_btn = gr.Button(
                        "Re-align (no network)", visible=engine0 == "dust3r", interactive=False, elem_id="realign-btn"
                    )
                gis_files = gr.File(
                    label="GIS files · LAZ/LAS point cloud, DSM/DTM/ortho GeoTIFFs, georef.json (open in QGIS)",
                    file_count="multiple",
                    interactive=False,
                    visible=False,
                    elem_id="gis-files",
                )
                with gr.Accordion("Display · updates the model without re-running", open=True, elem_id="display"):
                    display_note = gr.Markdown("", visible=False, elem_id="display-note")
                    labels = DISPLAY_LABELS
                    with gr.Row():
                        min_conf_thr = setting_widget(
                            cfg,
                            "min_conf_thr",
                            labels["min_conf_thr"],
                            minimum=1.0,
                            maximum=ui.max_conf_thr,
                            elem_id="min-conf-thr",
                        )
                        cam_size = setting_widget(
                            cfg,
                            "cam_size",
                            labels["cam_size"],
                            minimum=0.001,
                            maximum=ui.max_cam_size,
                            step=0.001,
                            elem_id="cam-size",
                        )
                    with gr.Row():
                        view_mode = setting_widget(
                            cfg,
                            "view_mode",
                            labels["view_mode"],
                            choices=[
                                ("Mesh", "mesh"), ("Point cloud", "pointcloud"), ("Surface", "surface"),
                                ("Voxels", "voxels"),
                            ],
                            info="Surface: one fused surface (TSDF); voxels: an N³ grid. Both need dense depth.",
                            elem_id="view-mode",
                        )  # fmt: skip
                        with gr.Column():
                            show_cameras = setting_widget(
                                cfg, "show_cameras", labels["show_cameras"], info=None, elem_id="show-cameras"
                            )
                            cam_transparent = setting_widget(
                                cfg, "cam_transparent", labels["cam_transparent"], info=None
                            )
                            cam_image = setting_widget(cfg, "cam_image", labels["cam_image"], info=None)
                    with gr.Row():
                        clean_depth = setting_widget(cfg, "clean_depth", labels["clean_depth"])
                        outlier_removal = setting_widget(cfg, "outlier_removal", labels["outlier_removal"])
                        largest_component = setting_widget(cfg, "largest_component", labels["largest_component"])
                        mask_sky = setting_widget(cfg, "mask_sky", labels["mask_sky"], info=None)
                    with gr.Row():
                        surface_res = setting_widget(cfg, "surface_res", labels["surface_res"], step=16)
                        watertight = setting_widget(cfg, "watertight", labels["watertight"])
                        voxel_res = setting_widget(cfg, "voxel_res", labels["voxel_res"], step=8)
                    scale_from = setting_widget(
                        cfg,
                        "scale_from",
                        labels["scale_from"],
                        placeholder="photoA.jpg, photoB.jpg, 2.5 (two photos and the metres between their cameras)",
                        info="Without GPS: the distance between two cameras makes the outputs metric (Enter applies).",
                        elem_id="scale-from",
                    )
                gallery = gr.Gallery(
                    label="Views · RGB, depth, confidence",
                    columns=3,
                    height="auto",
                    object_fit="contain",
                    elem_id="views",
                )
                api_hooks = gr.Button("api", visible=False, elem_id="api-hooks")

        run_inputs = dict(
            engine=engine,
            checkpoint=checkpoint,
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
            dense=dense,
            mvs_size=mvs_size,
            **video,
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
            surface_res=surface_res,
            watertight=watertight,
            voxel_res=voxel_res,
            scale_from=scale_from,
        )
        comps: dict[str, Any] = dict(
            result=result_state,
            shown=shown_state,
            last_job=last_job,
            viewer=viewer,
            gallery=gallery,
            glb=glb_btn,
            zip=zip_btn,
            gis=gis_files,
            status=status,
            model=model_md,
            progress=run_status,
            run_btn=run_btn,
            cancel_btn=cancel_btn,
            realign_btn=realign_btn,
            display_note=display_note,
            files=files,
            thumbs=thumbs,
            api_thumbs=api_thumbs,
            upload_note=upload_note,
            plan=plan_md,
            engine=engine,
            checkpoint=checkpoint,
            example_btn=example_btn,
            **display_inputs,
        )
        wire_api(api_hooks, handlers, comps, run_inputs, display_inputs, ui.concurrency_limit)
        wire_page(live, comps, run_inputs, display_inputs, ui.concurrency_limit)
        wire_preview(live, handlers, comps, run_inputs)
        engine.change(
            handlers.engine_visibility,
            inputs=engine,
            outputs=[acc_input, acc_pairs, acc_align, acc_colmap, realign_btn],
            queue=False,
            api_visibility="private",
        )
        gr.on(
            [engine.change, checkpoint.change],
            live.model_html,
            inputs=[engine, checkpoint],
            outputs=model_md,
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
        plan_triggers = [
            engine.change,
            checkpoint.change,
            image_size.change,
            scene_graph.change,
            window_size.release,
            cyclic.change,
            niter.release,
            early_stop.change,
        ]
        gr.on(
            plan_triggers,
            live.plan,
            inputs=[files],
            inputs_kwargs=run_inputs,
            outputs=run_status,
            queue=False,
            api_visibility="private",
        )
        demo.load(live.restore, inputs=[last_job], outputs=[comps[n] for n in RUN_OUTPUTS], api_visibility="private")
        demo.unload(live.unload)
    demo.queue(max_size=ui.queue_size, default_concurrency_limit=ui.concurrency_limit)
    return demo
