"""Before a run: how videos are sampled, which scene graph ``auto`` means, and what the run will cost.

- :func:`video_options`: :class:`config.VideoConfig` -> :class:`core.inputs.video.VideoOptions`,
  with the ``max_frames = 0`` (auto) default resolved by :func:`auto_max_frames`: the image limit
  (``ui.max_images``), lowered while the memory estimate of a run on that many frames (sequence
  graph, the largest network input ``image_size`` gives) does not fit in the free memory.
- :func:`resolve_scene_graph`: ``auto`` -> :func:`core.inputs.video.sequence_scene_graph` when
  every image is a video frame (in time order, videos one after another), else ``complete``.
- :func:`plan_run`: the pair count and the memory estimate of a run, shown before running.

Memory estimates use :class:`core.inference.memory.ModelDims` defaults (the official ViT-Large
512 DPT network, the largest head) since the network is not loaded yet; the run checks its real
estimate again before inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from config import AppConfig, InferenceConfig, PreprocessConfig, apply_settings
from core.errors import InsufficientMemoryError
from core.inference.memory import (
    MemoryEstimate,
    ModelDims,
    available_memory,
    check_memory,
    estimate_memory,
    resolve_batch_size,
    view_cache_bytes,
)
from core.inputs.pairs import default_scene_graph, make_pairs
from core.inputs.preprocessing import plan_resize_crop
from core.inputs.video import VideoOptions, sequence_scene_graph
from core.runtime import resolve_device, select_autocast_dtype

__all__ = [
    "RunPlan",
    "auto_max_frames",
    "network_hw",
    "plan_run",
    "resolve_scene_graph",
    "video_options",
    "with_scene_graph",
]

logger = logging.getLogger(__name__)

_GB = 1024**3
#: (W, H) standing for an unknown frame: 4:3, the largest network input of a given image_size.
_LARGEST_ASPECT = (4000, 3000)


def network_hw(size: tuple[int, int], pre: PreprocessConfig) -> tuple[int, int]:
    """(H, W) of the network input made from an image of ``size`` = (W, H) pixels.

    >>> network_hw((1920, 1080), PreprocessConfig(image_size=512))
    (288, 512)
    """
    _, (left, top, right, bottom) = plan_resize_crop(size, pre)
    return bottom - top, right - left


def resolve_scene_graph(inference: InferenceConfig, n_images: int, *, all_video_frames: bool) -> str:
    """The scene graph a run on ``n_images`` uses: the configured one, or for ``auto`` the sequence
    graph when every image is a video frame, else the count-based default
    (:func:`core.inputs.pairs.default_scene_graph`: complete up to 20 images, a log window above).

    >>> resolve_scene_graph(InferenceConfig(), 12, all_video_frames=True)
    'logwin-3-noncyclic'
    >>> resolve_scene_graph(InferenceConfig(), 12, all_video_frames=False)
    'complete'
    """
    if inference.graph != "auto":
        return inference.scene_graph
    return sequence_scene_graph(max(n_images, 1)) if all_video_frames else default_scene_graph(n_images)


def with_scene_graph(cfg: AppConfig, scene_graph: str) -> AppConfig:
    """``cfg`` with its scene graph set to ``scene_graph`` (a name such as ``logwin-3-noncyclic``)."""
    return cfg if cfg.inference.scene_graph == scene_graph else apply_settings(cfg, {"scene_graph": scene_graph})


def _device_and_dtype(cfg: AppConfig) -> tuple[torch.device, torch.dtype | None]:
    device = resolve_device(cfg.model.device)
    return device, select_autocast_dtype(device, cfg.inference.precision)


def _estimate(cfg: AppConfig, hw: Sequence[tuple[int, int]], scene_graph: str) -> MemoryEstimate:
    """Memory estimate of pair inference on views of network sizes ``hw`` (a single view is duplicated)."""
    device, dtype = _device_and_dtype(cfg)
    sources = [0, 0] if len(hw) == 1 else None  # a single image's copy reuses its encoding
    hw = list(hw) * 2 if len(hw) == 1 else list(hw)
    return estimate_memory(
        hw,
        make_pairs(len(hw), scene_graph),
        ModelDims(),
        device=device,
        autocast_dtype=dtype,
        batch_size=resolve_batch_size(cfg.inference.batch_size, device),
        view_cache_bytes=view_cache_bytes(cfg.inference),
        sources=sources,
    )


def _fits(est: MemoryEstimate, cfg: AppConfig, scene_graph: str, free: int | None) -> str | None:
    """None when ``est`` fits the memory guard, else its message."""
    try:
        check_memory(est, scene_graph, memory_fraction=cfg.inference.memory_fraction, available=free)
    except InsufficientMemoryError as e:
        return str(e)
    return None


def auto_max_frames(cfg: AppConfig, *, engine: str | None = None) -> int:
    """Frames kept from one video when ``video.max_frames`` is 0 (auto): ``ui.max_images``, lowered
    (down to 2) while a DUSt3R run on that many frames with the sequence graph would not fit."""
    cap = cfg.ui.max_images
    if (engine or cfg.engine) != "dust3r":
        return cap
    device, _ = _device_and_dtype(cfg)
    free = available_memory(device)
    if free is None:
        return cap
    hw = network_hw(_LARGEST_ASPECT, cfg.preprocess)
    for n in range(cap, 1, -1):
        graph = sequence_scene_graph(n)
        if _fits(_estimate(cfg, [hw] * n, graph), cfg, graph, free) is None:
            if n < cap:
                logger.info("video frames capped at %d (of %d) so that the run fits in memory", n, cap)
            return n
    return 2


def video_options(cfg: AppConfig, *, engine: str | None = None) -> VideoOptions:
    """The sampling options of ``cfg.video`` (``max_frames`` 0 -> :func:`auto_max_frames`)."""
    v = cfg.video
    return VideoOptions(
        fps=v.fps,
        target_frames=v.target_frames or None,
        max_frames=v.max_frames or auto_max_frames(cfg, engine=engine),
        sharpest=v.sharpest,
        skip_static=v.skip_static,
        max_duration_s=v.max_duration_s,
        max_decode_s=v.max_decode_s,
    )


@dataclass(frozen=True)
class RunPlan:
    """What a run on some images will do, known before running."""

    n_images: int
    """Images of the run (video frames included)."""
    n_video_frames: int
    """How many of them are video frames."""
    engine: str
    """Engine name."""
    scene_graph: str
    """The scene graph the run uses (``auto`` resolved)."""
    graph_is_auto: bool
    """The configured graph was ``auto``."""
    n_pairs: int
    """Pairs through the network (DUSt3R; 0 for other engines)."""
    memory: MemoryEstimate | None
    """Pair-inference estimate (DUSt3R only)."""
    free_bytes: int | None
    """Free memory of the device (None: unknown)."""
    too_large: str | None
    """The memory guard's message when the run would not fit, else None."""

    def describe(self) -> str:
        """One line: ``12 video frames · scene graph logwin-3-noncyclic (auto) · 70 pairs · memory about
        1.9 GB of 12.0 GB free on cpu``."""
        photos = self.n_images - self.n_video_frames
        what = [f"{n} {w}{'s' if n != 1 else ''}" for n, w in ((photos, "photo"), (self.n_video_frames, "video frame"))]
        parts = [" + ".join(w for w, n in zip(what, (photos, self.n_video_frames), strict=True) if n) or "no images"]
        if self.engine != "dust3r" or self.memory is None:
            return " · ".join([*parts, f"{self.engine} (no pair inference)"])
        parts.append(f"scene graph {self.scene_graph}" + (" (auto)" if self.graph_is_auto else ""))
        parts.append(f"{self.n_pairs} pairs")
        free = f" of {self.free_bytes / _GB:.1f} GB free" if self.free_bytes is not None else ""
        parts.append(f"memory about {self.memory.gb_peak:.1f} GB{free} on {self.memory.device}")
        return " · ".join(parts)


def plan_run(cfg: AppConfig, sizes: Sequence[tuple[int, int]], *, n_video_frames: int = 0) -> RunPlan:
    """The plan of a run of ``cfg.engine`` on images of pixel sizes ``sizes`` ((W, H) each, in run
    order; the last ``n_video_frames`` or all of them may be video frames: only the count matters).

    Raises ValueError for an empty ``sizes`` or a graph that does not fit the image count
    (``oneref-9`` on 3 images).
    """
    n = len(sizes)
    if n == 0:
        raise ValueError("plan_run needs at least one image size")
    graph = resolve_scene_graph(cfg.inference, n, all_video_frames=n_video_frames == n)
    common = dict(n_images=n, n_video_frames=n_video_frames, engine=cfg.engine, scene_graph=graph)
    if cfg.engine != "dust3r":
        return RunPlan(**common, graph_is_auto=False, n_pairs=0, memory=None, free_bytes=None, too_large=None)
    est = _estimate(cfg, [network_hw(s, cfg.preprocess) for s in sizes], graph)
    free = available_memory(est.device)
    return RunPlan(
        **common,
        graph_is_auto=cfg.inference.graph == "auto",
        n_pairs=est.pairs,
        memory=est,
        free_bytes=free,
        too_large=_fits(est, cfg, graph, free) if free is not None else None,
    )
