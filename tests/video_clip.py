"""A short test video for the app-level tests: the camera pans across a fixture photo.

2.0 s at 10 fps, 128x96 pixels (H.264 in MP4 with PyAV): ``--fps 2`` keeps 4 frames, one per
0.5 s interval, each shifted by ~16 pixels from the previous kept one (never static).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tests.core.synthetic_video import write_video

__all__ = ["pan_clip"]


def pan_clip(fixtures_dir: Path, path: Path, *, seconds: float = 2.0, fps: float = 10.0) -> Path:
    """Write the panning clip to ``path`` (extension picks the container) and return it."""
    photo = np.asarray(Image.open(fixtures_dir / "images" / "img0.png").convert("RGB"))
    big = cv2.resize(photo, (192, 144), interpolation=cv2.INTER_CUBIC)  # (144, 192, 3)
    n = round(seconds * fps)
    xs = np.linspace(0, 64, n).round().astype(int)
    return write_video(path, [np.ascontiguousarray(big[24:120, x : x + 128]) for x in xs], fps=fps)
