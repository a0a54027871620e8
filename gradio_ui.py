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
    VIDEO_KEYS,
    SessionJobs,
    UIHandlers,
    display_config,
    setting_widget,
    settings_to_config,
)
from web_guard import RequestGuard

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

ENGINE_CHOICES = [
    ("DUSt3R · neural, works from 2 photos", "dust3r"),
    ("COLMAP · classical SfM, no weights needed", "colmap"),
]
GRAPH_CHOICES = [
    ("auto · complete for photos, a log window over time for video frames", "auto"),
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
  <div class="step"><span>1</span><b>Add photos or a video</b> 2 or more overlapping views of one object or scene, or a short clip moving around it.</div>
  <div class="step"><span>2</span><b>Reconstruct</b> defaults work; the first DUSt3R run loads the network.</div>
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
    script = _read_asset("fullscreen.js")
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
        "allowed_paths": [str(output_root)],
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


def _wire_preview(handlers: UIHandlers, files, thumbs, plan_md, run_inputs: Mapping[str, Any]) -> None:
    """Uploads and settings -> thumbnails (``/thumbnails``) -> the line before running (``/plan``).

    Video settings, the engine and the image size re-sample the videos (cached per file and
    options); the scene-graph settings only redo the plan line.
    """
    preview_keys = (*VIDEO_KEYS, "engine", "image_size")
    preview_inputs = {k: run_inputs[k] for k in preview_keys}
    plan_inputs = {k: run_inputs[k] for k in (*preview_keys, "scene_graph", "window_size", "cyclic", "ref_image")}
    common = dict(queue=False, show_progress="minimal", trigger_mode="always_last")

    def preview_then_plan(triggers: list, public: bool) -> None:
        names = dict(api_visibility="public") if public else dict(api_visibility="private")
        gr.on(
            triggers,
            handlers.thumbnails,
            inputs=[files],
            inputs_kwargs=preview_inputs,
            outputs=thumbs,
            **({"api_name": "thumbnails"} if public else {}),
            **names,
            **common,
        ).success(
            handlers.plan,
            inputs=[files],
            inputs_kwargs=plan_inputs,
            outputs=plan_md,
            **({"api_name": "plan"} if public else {}),
            **names,
            **common,
        )

    preview_then_plan([files.change], public=True)
    preview_then_plan(
        [run_inputs[k].input for k in ("sharpest", "skip_static", "engine", "image_size")]
        + [run_inputs[k].change for k in ("fps", "max_frames")],  # typed numbers fire no release
        public=False,
    )
    gr.on(
        [run_inputs[k].input for k in ("scene_graph", "cyclic")]
        + [run_inputs[k].release for k in ("window_size", "ref_image")],
        handlers.plan,
        inputs=[files],
        inputs_kwargs=plan_inputs,
        outputs=plan_md,
        api_visibility="private",
        **common,
    )


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
        # the session's result: its job is protected from cleanup for as long as this state lives
        result_state = gr.State(None, time_to_live=max_age_s, delete_callback=handlers.release_result)
        gr.HTML(_HEADER)
        gr.HTML(_HOWTO)
        gr.Markdown(notice, visible=bool(notice), elem_id="notice")

        with gr.Row(equal_height=False, elem_id="main-row"):
            # ---------------- left: inputs and settings ----------------
            with gr.Column(scale=4, min_width=340, elem_id="left-panel"):
                with gr.Column(scale=0, elem_id="photos-panel"):
                    gr.Markdown("### Photos & videos", elem_classes="panel-title")
                    files = gr.File(
                        file_count="multiple",
                        file_types=[*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS],
                        label="Drop photos or videos here",
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
                    model_md = gr.Markdown(handlers.model_status_md(), elem_id="model-status")
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
                    dense = setting_widget(cfg, "dense", "Dense stereo (full model, depth maps)")
                    mvs_size = setting_widget(
                        cfg, "mvs_size", "Dense working size (long side, px)", maximum=2048, step=32
                    )
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
                status = gr.Markdown("Upload photos or a video and press **Reconstruct**.", elem_id="status")
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
                            choices=[
                                ("Mesh", "mesh"), ("Point cloud", "pointcloud"), ("Surface", "surface"),
                                ("Voxels", "voxels"),
                            ],
                            info="Surface: one fused surface (TSDF); voxels: an N³ grid. Both need dense depth.",
                        )  # fmt: skip
                        with gr.Column():
                            show_cameras = setting_widget(cfg, "show_cameras", "Show cameras", info=None)
                            cam_transparent = setting_widget(cfg, "cam_transparent", "Transparent cameras", info=None)
                            cam_image = setting_widget(cfg, "cam_image", "Photos on cameras", info=None)
                    with gr.Row():
                        clean_depth = setting_widget(cfg, "clean_depth", "Clean-up")
                        outlier_removal = setting_widget(cfg, "outlier_removal", "Remove outliers")
                        largest_component = setting_widget(cfg, "largest_component", "Main object only")
                        mask_sky = setting_widget(cfg, "mask_sky", "Remove sky", info=None)
                    with gr.Row():
                        surface_res = setting_widget(cfg, "surface_res", "Surface resolution", step=16)
                        watertight = setting_widget(cfg, "watertight", "Watertight")
                        voxel_res = setting_widget(cfg, "voxel_res", "Voxel grid N", step=8)
                gallery = gr.Gallery(
                    label="Views · RGB, depth, confidence", columns=3, height=300, object_fit="contain", elem_id="views"
                )

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

        _wire_preview(handlers, files, thumbs, plan_md, run_inputs)
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
            surface_res.release,
            watertight.input,
            voxel_res.release,
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
