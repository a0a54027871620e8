"""The page's events: the named API endpoints on a hidden button (:func:`wire_api`), the page's
own live events (:func:`wire_page`) and the upload previews (:func:`wire_preview`).
``comps`` maps the names of :data:`ui_live.RUN_OUTPUTS` (and the page's other parts) to components."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui_handlers import VIDEO_KEYS, UIHandlers
from ui_live import DISPLAY_OUTPUTS, RUN_OUTPUTS, LivePage

__all__ = ["wire_api", "wire_page", "wire_preview"]

_PREVIEW_KEYS = (*VIDEO_KEYS, "engine", "image_size")
_PLAN_KEYS = (*_PREVIEW_KEYS, "scene_graph", "window_size", "cyclic", "ref_image")


def wire_preview(live: LivePage, handlers: UIHandlers, comps: dict[str, Any], run_inputs: dict[str, Any]) -> None:
    """Uploads and settings -> the upload tiles (a video: its kept frames) and the run card's
    estimate -> the plan line (graph, pairs, memory, videos) under the tiles. Private events; the
    ``/thumbnails`` and ``/plan`` endpoints are on the API button (:func:`wire_api`).

    Video settings, the engine and the image size re-sample the videos (cached per file and
    options); the scene-graph settings only redo the plan line.
    """
    files, plan_md = comps["files"], comps["plan"]
    plan_inputs = {k: run_inputs[k] for k in _PLAN_KEYS}
    common = dict(queue=False, show_progress="minimal", trigger_mode="always_last", api_visibility="private")
    gr.on(
        [files.change]
        + [run_inputs[k].input for k in ("sharpest", "skip_static", "engine", "image_size")]
        + [run_inputs[k].change for k in ("fps", "max_frames")],  # typed numbers fire no release
        live.uploads,
        inputs=[files],
        inputs_kwargs=run_inputs,
        outputs=[comps["thumbs"], comps["upload_note"], comps["progress"]],
        **common,
    ).then(handlers.plan, inputs=[files], inputs_kwargs=plan_inputs, outputs=plan_md, **common)
    gr.on(
        [run_inputs[k].input for k in ("scene_graph", "cyclic")]
        + [run_inputs[k].release for k in ("window_size", "ref_image")],
        handlers.plan,
        inputs=[files],
        inputs_kwargs=plan_inputs,
        outputs=plan_md,
        **common,
    )


def wire_api(
    hooks: gr.Button,
    handlers: UIHandlers,
    comps: dict[str, Any],
    run_inputs: dict[str, Any],
    display_inputs: dict[str, Any],
    concurrency_limit: int,
) -> None:
    """The named API endpoints (``gradio_client``), on a hidden button: the same handlers as the
    page, returning their final outputs (no live progress)."""
    files = comps["files"]
    preview_inputs = {k: run_inputs[k] for k in _PREVIEW_KEYS}
    hooks.click(
        handlers.thumbnails,
        inputs=[files],
        inputs_kwargs=preview_inputs,
        outputs=comps["api_thumbs"],
        api_name="thumbnails",
        queue=False,
    ).success(
        handlers.plan,
        inputs=[files],
        inputs_kwargs={k: run_inputs[k] for k in _PLAN_KEYS},
        outputs=comps["plan"],
        api_name="plan",
        queue=False,
    )
    outputs = [comps[n] for n in ("result", "viewer", "gallery", "glb", "status", "model")]
    for fn, first, name in (
        (handlers.reconstruct, comps["files"], "reconstruct"),
        (handlers.realign, comps["result"], "realign"),
    ):
        hooks.click(
            fn,
            inputs=[first],
            inputs_kwargs={**run_inputs, **display_inputs},
            outputs=outputs,
            api_name=name,
            concurrency_limit=concurrency_limit,
            concurrency_id="device",
        )
    for fn, outs, name in (
        (handlers.api_render, [comps["viewer"], comps["glb"], comps["status"]], "render"),
        (handlers.api_package, [comps["zip"]], "package"),
    ):
        hooks.click(
            fn,
            inputs=[comps["result"]],
            inputs_kwargs=display_inputs,
            outputs=outs,
            api_name=name,
            concurrency_limit=4,
            concurrency_id="display",
        )


#: The events that apply a display widget's change (default: every input): sliders when released,
#: the known-distance text on Enter or when it loses focus.
_DISPLAY_EVENTS: dict[str, tuple[str, ...]] = {
    "min_conf_thr": ("release",),
    "cam_size": ("release",),
    "scale_from": ("submit", "blur"),
}


def wire_page(
    live: LivePage,
    comps: dict[str, Any],
    run_inputs: dict[str, Any],
    display_inputs: dict[str, Any],
    concurrency_limit: int,
) -> None:
    """The page's own events (private: not part of the API)."""
    files, run_status = comps["files"], comps["progress"]
    run_outputs = [comps[n] for n in RUN_OUTPUTS]
    run_events = dict(
        outputs=run_outputs,
        concurrency_limit=concurrency_limit,
        concurrency_id="device",
        show_progress="hidden",
        show_progress_on=[run_status],
        api_visibility="private",
    )
    run_args = dict(
        inputs=[files, comps["result"], comps["shown"]], inputs_kwargs={**run_inputs, **display_inputs}, **run_events
    )
    comps["run_btn"].click(live.run, api_name="page_run", **run_args)
    comps["example_btn"].click(
        live.example, outputs=[files, comps["engine"]], queue=False, api_visibility="private"
    ).then(live.run, api_name="page_example_run", **run_args)
    comps["realign_btn"].click(
        live.realign,
        inputs=[comps["result"], comps["shown"]],
        inputs_kwargs={**run_inputs, **display_inputs},
        api_name="page_realign",
        **run_events,
    )
    comps["cancel_btn"].click(live.cancel, outputs=comps["cancel_btn"], queue=False, api_visibility="private")
    display_triggers = [
        getattr(widget, event)
        for name, widget in display_inputs.items()
        for event in _DISPLAY_EVENTS.get(name, ("input",))
    ]
    gr.on(
        display_triggers,
        live.render,
        inputs=[comps["result"], comps["shown"]],
        inputs_kwargs=display_inputs,
        outputs=[comps[n] for n in DISPLAY_OUTPUTS],
        api_name="page_render",
        trigger_mode="always_last",
        concurrency_limit=4,
        concurrency_id="display",
        show_progress="minimal",
        show_progress_on=[comps["status"]],
        api_visibility="private",
    )
