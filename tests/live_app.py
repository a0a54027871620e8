"""A live web app with the tiny DUSt3R fixture model on a free loopback port (API and browser tests)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio_ui
import pipeline
from tests.conftest import tiny_config


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_tiny_app(fixtures_dir: Path, jobs_root: Path, *, niter: int, **ui: int) -> Iterator[str]:
    """Start the app (tiny_linear model, 64 px inputs, fp32) and yield its URL; closed on exit.
    ``ui`` overrides UIConfig fields (``max_images=4``)."""
    cfg = tiny_config(jobs_root, niter=niter, port=free_port(), **ui)
    demo = gradio_ui.build_demo(cfg, pipeline.Pipeline(cfg))
    demo.launch(prevent_thread_lock=True, quiet=True, **gradio_ui.launch_kwargs(cfg))
    try:
        yield demo.local_url
    finally:
        demo.close()
