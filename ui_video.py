"""Previews of uploaded videos: the frames a run would keep, as thumbnails (``/thumbnails``), and
the plan line before a run (``/plan``): images and video frames, scene graph, pairs, memory."""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from config import AppConfig
from core.inputs.plan import plan_run, video_options
from core.inputs.video import VideoError, VideoOptions, is_video, sample_video
from ui_uploads import file_paths as _file_paths
from ui_uploads import thumbnail as _thumbnail

__all__ = ["UploadPreviews", "VideoPreviews"]


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


class UploadPreviews:
    """The upload preview events of :class:`ui_handlers.UIHandlers` (a mixin: it uses ``cfg``,
    ``previews``, ``_thumb_slots`` and ``_settings``)."""

    cfg: AppConfig
    previews: VideoPreviews
    _thumb_slots: threading.BoundedSemaphore

    def _settings(self, settings: Mapping[str, Any]) -> tuple[str, AppConfig]:
        raise NotImplementedError

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

    def video_tiles(self, path: Path, **settings: Any) -> list[tuple[np.ndarray, str]]:
        """The upload tiles of a video: its kept frames (ValueError when it cannot be used)."""
        preview = self._video_preview(path, video_options(self._settings(settings)[1]), warn=False)
        if preview is None:
            raise ValueError(f"{path.name}: not a readable video")
        return list(preview.thumbs)
