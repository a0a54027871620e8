"""Engines: image files -> aligned :class:`core.types.Scene`, side by side behind one protocol.

Every engine has a ``name``, ``availability()`` (None when usable now, else what is missing and how to
provide it, never touching the network) and ``reconstruct(image_paths, cfg, job_dir, progress)``.
The registry :func:`make_engines` holds one per name of ``config.ENGINES``; adding an engine is one
module here and one line in the registry (plus its name in ``config.ENGINES``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from config import AppConfig, ModelConfig
from core.types import ProgressFn, Scene

__all__ = ["Engine", "make_engines"]


class Engine(Protocol):
    """A reconstruction engine: the pipeline, UI and exports never branch on which one."""

    name: str
    """Short id used by ``--engine`` and the page's selector (a name of ``config.ENGINES``)."""

    def availability(self) -> str | None:
        """None when usable now, else a sentence saying what is missing and how to provide it."""
        ...

    def reconstruct(self, image_paths: list[Path], cfg: AppConfig, job_dir: Path, progress: ProgressFn) -> Scene:
        """Image files (in the user's order) -> aligned Scene, writing working files below ``job_dir``."""
        ...


def make_engines(cfg: AppConfig, *, load_model: Callable[[ModelConfig], object]) -> dict[str, Engine]:
    """The engine registry: name -> engine. ``load_model(model_cfg)`` gives the DUSt3R network
    (injected, so the library never imports the top-level model module); ``cfg.model`` is the
    DUSt3R engine's default model."""
    from core.engines.colmap import ColmapEngine
    from core.engines.dust3r import Dust3rEngine

    return {
        "dust3r": Dust3rEngine(load_model, cfg.model),
        "colmap": ColmapEngine(),
    }
