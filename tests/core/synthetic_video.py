"""Synthetic videos for tests: every frame carries its index as a visible binary code.

The code is a strip of :data:`CODE_BITS` black/white blocks along the top edge of the upright
frame (most significant bit on the left, white = 1), on a mid-grey strip; below it each frame has
its own random texture (or a given image). :func:`read_code` reads the index back from a decoded
(and JPEG-compressed) frame, so a test can tell exactly which frames a sampler kept, and that
they are upright (the strip is only found along the top edge).

Videos are written with PyAV (:func:`write_video`): constant frame rate, or explicit timestamps
for variable-frame-rate files, and an optional display-matrix rotation as phones write it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

__all__ = ["CODE_BITS", "CODE_HEIGHT", "coded_frame", "read_code", "write_video"]

CODE_BITS = 10
CODE_HEIGHT = 12
"""Height in pixels of the code strip."""

_CODECS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".m4v": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx",
    ".avi": "mpeg4",
}


def _texture(seed: int, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 random blobs (sharp, distinct for every seed)."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 4), max(2, width // 4), 3)).astype(np.float32)
    tex = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
    return (tex * 255).astype(np.uint8)


def coded_frame(
    index: int,
    width: int = 128,
    height: int = 96,
    *,
    seed: int | None = None,
    blur_sigma: float = 0.0,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """(height, width, 3) uint8 upright RGB frame showing ``index`` as a code strip on top.

    seed: texture seed (default: the index, so consecutive frames differ a lot); background:
    an image to use instead of the texture; blur_sigma: Gaussian blur of the picture below the
    strip (a motion-blurred frame; the code stays readable).
    """
    if not 0 <= index < 2**CODE_BITS:
        raise ValueError(f"index must be in 0..{2**CODE_BITS - 1}, got {index}")
    img = background.copy() if background is not None else _texture(index if seed is None else seed, height, width)
    if blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
    block = width // (CODE_BITS + 2)
    img[:CODE_HEIGHT] = 128
    for bit in range(CODE_BITS):
        x = (bit + 1) * block
        img[:CODE_HEIGHT, x : x + block] = 255 * (index >> (CODE_BITS - 1 - bit) & 1)
    return img


def read_code(image: np.ndarray) -> int:
    """Index shown by a frame made with :func:`coded_frame` ((H, W, 3) or (H, W) uint8, upright).

    Raises ValueError when the top strip holds no clean code (e.g. the frame is rotated).
    """
    gray = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float64)
    block = gray.shape[1] // (CODE_BITS + 2)
    value = 0
    for bit in range(CODE_BITS):
        x = (bit + 1) * block
        level = gray[2 : CODE_HEIGHT - 2, x + 2 : x + block - 2].mean()
        if 60 < level < 196:
            raise ValueError(f"no code in the top strip (block {bit} has level {level:.0f})")
        value = value << 1 | int(level >= 128)
    return value


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    fps: float = 10.0,
    times_s: Sequence[float] | None = None,
    rotation_ccw: int = 0,
    codec: str | None = None,
    quality: int = 16,
    faststart: bool = False,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Encode upright RGB frames ((H, W, 3) uint8, even sizes) into a video file.

    times_s: presentation time of each frame (variable frame rate); default k / fps.
    rotation_ccw: display-matrix angle as FFmpeg reports it (-90 is a portrait phone video): the
    stored pictures are the upright ones turned so that the player's turn restores them.
    codec: default from the extension (H.264 in mp4/mov/m4v/mkv, VP8 in webm, MPEG-4 in avi).
    faststart: MP4/MOV index before the frames (a cut file still plays up to the cut).
    pix_fmt: stored pixel format (``yuv420p10le``: 10-bit, as phones record HDR).
    """
    path = Path(path)
    codec = codec or _CODECS[path.suffix.lower()]
    turns = round(-rotation_ccw / 90) % 4  # np.rot90 turns counter-clockwise: undo the display turn
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else None) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.pix_fmt = pix_fmt
        # Encoder clock: 1 ms ticks for explicit times, else one tick per frame (AVI's only clock).
        tick = Fraction(1, 1000) if times_s is not None else 1 / Fraction(fps).limit_denominator(1000)
        stream.codec_context.time_base = tick  # the muxer picks the stream's own
        if codec == "libx264":
            stream.options = {"crf": str(quality), "preset": "veryfast"}
        elif codec in ("libvpx", "mpeg4"):
            stream.bit_rate = 4_000_000
        if rotation_ccw:
            stream.set_display_rotation(rotation_ccw)
        for k, rgb in enumerate(frames):
            stored = np.ascontiguousarray(np.rot90(rgb, turns))
            if k == 0:
                stream.height, stream.width = stored.shape[:2]
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = round(times_s[k] / tick) if times_s is not None else k
            frame.time_base = tick
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
