"""Video files -> input images: frames sampled by time, the sharpest of each interval, static ones skipped.

PyAV (FFmpeg) decodes and gives each frame's real presentation time, so a variable-frame-rate
phone video is sampled by time, not by frame number. The video is cut into intervals of
``1 / fps`` seconds from its first frame (``duration / target_frames`` with a target count),
widened to ``duration / max_frames`` when there would be more than ``max_frames``, so the kept
frames always span the whole video. One frame per interval is taken:

- ``sharpest``: the largest variance of the Laplacian of the grey frame (on a copy halved until
  at most :data:`ANALYSIS_SIDE` pixels long), so a motion-blurred frame loses to a sharp one; otherwise
  the interval's first frame.
- ``skip_static``: dropped when it barely differs from the previous KEPT frame (mean absolute
  difference of :data:`THUMBNAIL_SIDE`-pixel grey thumbnails, 0..1, below ``static_threshold``):
  a camera standing still gives one frame, a slow drift is kept once it has moved enough.

The display matrix (rotation metadata) is honoured, so a portrait phone video comes out upright
(flips in the matrix are ignored). Kept frames are written as ``<stem>_t<seconds>s.jpg``
(``clip_t012.40s.jpg``); :class:`VideoFrames` describes them and the video for the job manifest.
Fixable failures (unreadable file, no video stream, no decodable frame, too long, too slow to
decode) raise :class:`VideoError`, an :class:`~core.errors.ImageLoadError` (exit code 3), whose
one-line message starts with the file name.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.errors import ImageLoadError, SettingsError

try:
    import av

    AV_AVAILABLE = True
except ImportError:  # optional: only video inputs need it
    av = None  # type: ignore[assignment]
    AV_AVAILABLE = False

__all__ = [
    "ANALYSIS_SIDE",
    "AV_AVAILABLE",
    "THUMBNAIL_SIDE",
    "VIDEO_EXTENSIONS",
    "KeptFrame",
    "VideoError",
    "VideoFrames",
    "VideoInfo",
    "VideoOptions",
    "expand_inputs",
    "frame_difference",
    "frame_file_name",
    "is_video",
    "sample_video",
    "sequence_scene_graph",
    "sharpness",
]

logger = logging.getLogger(__name__)

#: File extensions treated as videos (lower case); everything else is an image.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")

#: Largest long side (pixels) of the grey copy on which sharpness is measured (halved until it fits).
ANALYSIS_SIDE = 640
#: Largest long side (pixels) of the grey thumbnails compared to detect static frames.
THUMBNAIL_SIDE = 64

# 8-bit formats whose first plane is the luma (grey) image: read directly, no conversion.
_LUMA8_FORMATS = frozenset(
    "yuv420p yuvj420p yuva420p yuv422p yuvj422p yuv444p yuvj444p yuv440p yuv411p nv12 nv21 gray".split()
)
_EPS = 1e-6  # relative slack for frames exactly on an interval boundary


class VideoError(ImageLoadError):
    """A video that cannot be used (unreadable, no video stream or frames, too long); message starts with its name."""

    title = "Bad video"


@dataclass(frozen=True)
class VideoOptions:
    """How frames are sampled from videos (see the module docs)."""

    fps: float = 1.0
    """Frames per second of video to keep (one per interval of 1/fps s); ignored with target_frames."""
    target_frames: int | None = None
    """Keep about this many frames, evenly spread over the video (None: use fps)."""
    max_frames: int = 32
    """Most frames kept from one video; intervals widen to respect it."""
    sharpest: bool = True
    """Take the sharpest frame of each interval (variance of the Laplacian), not the first."""
    skip_static: bool = True
    """Skip a frame that barely differs from the previous kept one."""
    static_threshold: float = 0.01
    """Mean absolute grey difference (0..1, on 64-pixel thumbnails) below which a frame is static."""
    max_duration_s: float = 1200.0
    """Longest video accepted (seconds of video)."""
    max_decode_s: float = 300.0
    """Longest time decoding one video may take (seconds of wall clock)."""
    jpeg_quality: int = 95
    """Quality of the written frames (1..100)."""

    def __post_init__(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise SettingsError(msg)

        check(math.isfinite(self.fps) and 0 < self.fps <= 60, f"fps must be in (0, 60], got {self.fps}")
        tf = self.target_frames
        check(tf is None or (isinstance(tf, int) and tf >= 1), f"target_frames must be None or >= 1, got {tf}")
        check(
            isinstance(self.max_frames, int) and self.max_frames >= 1, f"max_frames must be >= 1, got {self.max_frames}"
        )
        check(0 <= self.static_threshold <= 1, f"static_threshold must be in [0, 1], got {self.static_threshold}")
        check(self.max_duration_s > 0, f"max_duration_s must be > 0, got {self.max_duration_s}")
        check(self.max_decode_s > 0, f"max_decode_s must be > 0, got {self.max_decode_s}")
        check(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class KeptFrame:
    """One frame taken from a video and written as an image."""

    path: Path
    """The JPEG written (upright, full resolution)."""
    time_s: float
    """Presentation time in seconds from the video's first frame."""
    frame_index: int
    """Position of the frame in decoding output order (0 = first frame)."""
    sharpness: float
    """Variance of the Laplacian of its grey image (see :func:`sharpness`); larger is sharper."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video, and what decoding found."""

    name: str
    """File name of the video."""
    duration_s: float
    """Length in seconds."""
    fps: float
    """Average frame rate (frames per second)."""
    rotation: int
    """Clockwise turn applied to the stored frames to show them upright (0, 90, 180 or 270; a
    portrait phone video says 90)."""
    codec: str
    """Decoder name (h264, hevc, vp9...)."""
    width: int
    """Upright frame width in pixels."""
    height: int
    """Upright frame height in pixels."""
    n_decoded: int
    """Frames decoded."""


@dataclass(frozen=True)
class VideoFrames:
    """The frames kept from one video and how they were chosen."""

    info: VideoInfo
    frames: tuple[KeptFrame, ...]
    """In time order."""
    interval_s: float
    """Length of the sampling intervals (one candidate frame per interval)."""
    n_static_skipped: int
    """Interval picks dropped because they barely differed from the previous kept frame."""
    decode_s: float
    """Wall-clock seconds spent decoding and selecting."""
    options: VideoOptions = field(default_factory=VideoOptions)
    warnings: tuple[str, ...] = ()
    """Degraded results the user should hear about (a truncated file, frames left out)."""

    @property
    def paths(self) -> list[Path]:
        """The kept frames' files, in time order."""
        return [f.path for f in self.frames]

    def summary(self) -> str:
        """One line for logs and the page: ``clip.mp4: 12.0 s h264 1920x1080 at 30.00 fps, rotation 90;
        kept 12 of 360 frames (3 static skipped) in 2.10 s``."""
        i = self.info
        return (
            f"{i.name}: {i.duration_s:.1f} s {i.codec} {i.width}x{i.height} at {i.fps:.2f} fps, rotation {i.rotation}; "
            f"kept {len(self.frames)} of {i.n_decoded} frames ({self.n_static_skipped} static skipped) "
            f"in {self.decode_s:.2f} s"
        )

    def to_manifest(self) -> dict:
        """JSON-ready description for the job manifest.

        Keys: ``video`` (file name), ``duration_s``, ``fps``, ``rotation``, ``codec``, ``width``,
        ``height``, ``n_decoded``, ``interval_s``, ``n_static_skipped``, ``decode_s``,
        ``sampling`` (the options), ``warnings``, and ``frames``: one ``{"file", "time_s",
        "frame_index", "sharpness"}`` per kept frame.
        """
        info = asdict(self.info)
        info["video"] = info.pop("name")
        frames = [
            {"file": f.path.name, "time_s": round(f.time_s, 4), "frame_index": f.frame_index, "sharpness": f.sharpness}
            for f in self.frames
        ]
        return {
            **info,
            "interval_s": self.interval_s,
            "n_static_skipped": self.n_static_skipped,
            "decode_s": round(self.decode_s, 3),
            "sampling": asdict(self.options),
            "warnings": list(self.warnings),
            "frames": frames,
        }


def is_video(path: str | Path) -> bool:
    """True when the file name ends with one of :data:`VIDEO_EXTENSIONS` (any letter case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def frame_file_name(stem: str, time_s: float) -> str:
    """Name of a kept frame: ``frame_file_name("clip", 12.4) == "clip_t012.40s.jpg"``."""
    return f"{stem}_t{time_s:06.2f}s.jpg"


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian (3x3, 4-neighbour) of a grey image: larger is sharper.

    gray: (H, W) uint8. Only comparable between images of the same size.
    """
    if gray.ndim != 2:
        raise ValueError(f"expected a (H, W) grey image, got {gray.shape=}")
    _, std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))
    return float(std[0, 0] ** 2)


def frame_difference(thumb_a: np.ndarray, thumb_b: np.ndarray) -> float:
    """Mean absolute difference of two grey thumbnails, in 0..1 (0 = identical).

    thumb_a, thumb_b: (h, w) uint8 of the same shape (frames of one video). Different shapes
    (never within one video) count as completely different (1.0).
    """
    if thumb_a.shape != thumb_b.shape:
        return 1.0
    return float(cv2.absdiff(thumb_a, thumb_b).mean() / 255.0)


def _halved(gray: np.ndarray, side: int) -> np.ndarray:
    """(H, W) uint8 averaged over 2x2 blocks (edge row/column dropped when odd) until the long
    side is at most ``side``: exact halvings take OpenCV's fast path."""
    while max(gray.shape) > side and min(gray.shape) >= 2:
        h, w = gray.shape[0] // 2, gray.shape[1] // 2
        gray = cv2.resize(gray[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray)


def _analysis_gray(frame: av.VideoFrame) -> np.ndarray:
    """(h, w) uint8 grey copy of a stored (not yet rotated) frame, halved until the long side is at
    most ANALYSIS_SIDE (1920x1080 -> 480x270)."""
    if frame.format.name in _LUMA8_FORMATS:
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width]
        return _halved(luma, ANALYSIS_SIDE)
    f = 2 ** max(0, math.ceil(math.log2(max(frame.width, frame.height) / ANALYSIS_SIDE)))  # as many halvings
    gray = frame.reformat(width=frame.width // f, height=frame.height // f, format="gray", interpolation="AREA")
    return gray.to_ndarray()


def _clockwise_turns(frame: av.VideoFrame) -> int:
    """Quarter turns clockwise (0..3) that make the frame upright, from its display matrix (an
    angle that is not a multiple of 90 degrees is rounded to the nearest quarter turn).

    PyAV's ``frame.rotation`` is FFmpeg's ``av_display_rotation_get``: the counter-clockwise
    angle the matrix applies (-90 for a portrait phone video, which must turn 90 clockwise).
    """
    return round(-frame.rotation / 90) % 4


def _upright_image(frame: av.VideoFrame, turns: int) -> Image.Image:
    """The frame as an upright RGB PIL image (``turns`` quarter turns clockwise)."""
    img = frame.to_image()  # RGB
    transposes = {1: Image.Transpose.ROTATE_270, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_90}
    return img.transpose(transposes[turns]) if turns else img


@dataclass
class _Candidate:
    """The best frame of the current interval so far."""

    frame: av.VideoFrame
    time_s: float
    index: int
    sharpness: float
    gray: np.ndarray


@dataclass
class _Selection:
    """Mutable state of one video's selection (local to one :func:`sample_video` call)."""

    path: Path
    out_dir: Path
    stem: str
    options: VideoOptions
    kept: list[KeptFrame] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    last_thumb: np.ndarray | None = None
    n_static: int = 0
    turns: int = 0
    upright_size: tuple[int, int] = (0, 0)
    names: set[str] = field(default_factory=set)
    n_corrupt: int = 0
    last_error: str = ""
    complete: bool = True
    last_time: float = 0.0

    def keep(self, cand: _Candidate) -> None:
        """Write the interval's pick unless it is static; remember it as the last kept frame."""
        thumb = _halved(cand.gray, THUMBNAIL_SIDE)
        opts = self.options
        previous = self.last_thumb if opts.skip_static else None
        if previous is not None and frame_difference(thumb, previous) < opts.static_threshold:
            self.n_static += 1
            return
        img = _upright_image(cand.frame, self.turns)
        self.upright_size = img.size
        name, k = frame_file_name(self.stem, cand.time_s), 2
        while name in self.names:  # two picks less than 5 ms apart
            name, k = frame_file_name(self.stem, cand.time_s)[: -len(".jpg")] + f"-{k}.jpg", k + 1
        self.names.add(name)
        out = self.out_dir / name
        img.save(out, quality=opts.jpeg_quality)
        self.kept.append(KeptFrame(out, cand.time_s, cand.index, cand.sharpness))
        self.last_thumb = thumb


def _open_video(path: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open a container and its first video stream, or raise VideoError naming the problem."""
    if not AV_AVAILABLE:
        raise VideoError(f"{path.name}: video input needs PyAV; install it with `pip install av`", filename=str(path))
    if not path.is_file():
        raise VideoError(f"{path.name}: file not found", filename=str(path))
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise VideoError(f"{path.name}: not a readable video ({e})", filename=str(path)) from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path.name}: the file has no video stream", filename=str(path))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
    return container, stream


def _stream_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """Length in seconds from the stream's or the container's header; None when neither says."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _scan_duration(path: Path) -> float | None:
    """Length in seconds from the packets' timestamps (demuxing only, no decoding)."""
    lo, hi = math.inf, -math.inf
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                if packet.pts is not None:
                    lo, hi = min(lo, packet.pts), max(hi, packet.pts + (packet.duration or 0))
        except av.FFmpegError:
            pass  # damaged: what was read so far
    return float((hi - lo) * stream.time_base) if math.isfinite(lo) and stream.time_base else None


def _frame_times(frames: Iterable[av.VideoFrame], fallback_fps: float) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """Yield (index, seconds from the first frame, frame); a frame without a timestamp gets the
    previous one's plus a frame period."""
    t0: float | None = None
    rel = -1.0 / fallback_fps
    for index, frame in enumerate(frames):
        t = frame.time
        if t0 is None:
            t0 = 0.0 if t is None else t
        rel = rel + 1.0 / fallback_fps if t is None else t - t0
        yield index, rel, frame


@dataclass(frozen=True)
class _Plan:
    """How one video is cut into intervals."""

    interval_s: float
    n_intervals: int | None
    """Intervals the header's duration gives (None when unknown)."""
    deadline: float
    """time.monotonic() value after which decoding stops with an error."""
    on_interval: Callable[[float], None] | None
    """Called with the time (s) of each interval's first frame."""


def _make_plan(path: Path, duration_s: float | None, options: VideoOptions, start: float, progress) -> _Plan:
    """Intervals of 1/fps s (or duration/target_frames), widened to respect max_frames; checks
    the duration against the limit."""
    if duration_s is not None and duration_s > options.max_duration_s:
        raise VideoError(
            f"{path.name}: the video is {duration_s:.0f} s long; the limit is {options.max_duration_s:g} s",
            filename=str(path),
        )
    if options.target_frames is not None and duration_s:
        interval = duration_s / options.target_frames
    else:
        interval = 1.0 / options.fps
    n_intervals = math.ceil(duration_s / interval - _EPS) if duration_s else None
    if n_intervals is not None and n_intervals > options.max_frames:
        interval, n_intervals = duration_s / options.max_frames, options.max_frames
    total = math.ceil(duration_s or 0)
    on_interval = (lambda t: progress(min(int(t), total), total)) if progress is not None else None
    return _Plan(interval, n_intervals, start + options.max_decode_s, on_interval)


def _interval_of(t: float, plan: _Plan) -> int:
    """Interval index of a frame; frames up to half an interval past the header's duration (often
    short by a frame) join the last interval."""
    k = math.floor(t / plan.interval_s + _EPS)
    n = plan.n_intervals
    return n - 1 if n is not None and k >= n and t < (n + 0.5) * plan.interval_s else k


def _decoded_frames(container, stream, sel: _Selection) -> Iterator[av.VideoFrame]:
    """Decode packet by packet: a corrupt packet is skipped (and counted), a damaged container ends
    the stream early (a truncated upload still gives the frames before the damage)."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as e:
            sel.n_corrupt, sel.last_error, sel.complete = sel.n_corrupt + 1, str(e), False
            return
        try:
            yield from packet.decode()
        except av.FFmpegError as e:
            sel.n_corrupt, sel.last_error = sel.n_corrupt + 1, str(e)


def _decode_and_select(container, stream, sel: _Selection, plan: _Plan) -> int:
    """Run the decoder over the whole stream, keeping one frame per interval; returns frames decoded."""
    opts = sel.options
    rate = float(stream.average_rate or stream.guessed_rate or 30)
    best: _Candidate | None = None
    current, n_decoded = -1, 0
    for index, t, frame in _frame_times(_decoded_frames(container, stream, sel), rate):
        n_decoded, sel.last_time = index + 1, t
        if time.monotonic() > plan.deadline:
            raise VideoError(
                f"{sel.path.name}: decoding took longer than the {opts.max_decode_s:g} s limit "
                f"(reached {t:.1f} s of video); use a shorter video",
                filename=str(sel.path),
            )
        k = _interval_of(t, plan)
        if k != current:
            if best is not None:
                sel.keep(best)
                best = None
                if len(sel.kept) >= opts.max_frames:  # only when the header's duration was wrong
                    sel.warnings.append(f"{sel.path.name}: stopped at {t:.1f} s after {opts.max_frames} frames")
                    sel.complete = False
                    break
            current = k
            if plan.on_interval is not None:
                plan.on_interval(t)
        if best is not None and not opts.sharpest:
            continue  # the interval's first frame is taken; the others need no look
        gray = _analysis_gray(frame)
        score = sharpness(gray)
        if best is None or score > best.sharpness:
            best = _Candidate(frame, t, index, score, gray)
            sel.turns = _clockwise_turns(frame)
    if best is not None:
        sel.keep(best)
    if sel.n_corrupt and n_decoded:
        sel.warnings.append(f"{sel.path.name}: damaged video, {sel.n_corrupt} unreadable packet(s) ({sel.last_error})")
    if n_decoded and plan.n_intervals and sel.last_time < (plan.n_intervals - 1.5) * plan.interval_s:
        sel.warnings.append(f"{sel.path.name}: the video stops at {sel.last_time:.1f} s, before its announced end")
    return n_decoded


def sample_video(
    path: str | Path,
    out_dir: str | Path,
    options: VideoOptions | None = None,
    *,
    stem: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VideoFrames:
    """Decode a video and write its kept frames as upright JPEGs into ``out_dir``.

    path: the video file. out_dir: created if missing; frames are named
    ``<stem>_t<time>s.jpg`` (stem: the video's file stem unless given). progress: called as
    ``progress(seconds_decoded, total_seconds)`` (whole seconds of video) at each new interval;
    an exception it raises (e.g. a cancellation) stops decoding and propagates.
    Returns the kept frames (time order) and the video's description. Raises VideoError for an
    unreadable file, a file with no video stream or no decodable frame, a video longer than
    ``max_duration_s`` or slower to decode than ``max_decode_s``.
    """
    options = options or VideoOptions()
    path, out_dir = Path(path), Path(out_dir)
    start = time.monotonic()
    container, stream = _open_video(path)
    with container:
        duration = _stream_duration(container, stream)
        if duration is None:
            duration = _scan_duration(path)
        plan = _make_plan(path, duration, options, start, progress)
        out_dir.mkdir(parents=True, exist_ok=True)
        sel = _Selection(path, out_dir, stem or path.stem, options)
        n_decoded = _decode_and_select(container, stream, sel, plan)
        codec = stream.codec_context.name
        avg_rate = stream.average_rate
    if n_decoded == 0 or not sel.kept:
        detail = f" ({sel.last_error})" if sel.last_error else ""
        raise VideoError(f"{path.name}: the video has no decodable frames{detail}", filename=str(path))
    # Average rate between the first and the last frame (true for variable rates too); headers can be off.
    span = sel.last_time if sel.complete and not sel.n_corrupt else 0.0
    fps = (n_decoded - 1) / span if n_decoded > 1 and span > 0 else float(avg_rate or 0)
    duration = max(duration or 0.0, sel.last_time + (1 / fps if fps > 0 else 0.0))
    if options.skip_static and len(sel.kept) == 1 and n_decoded > 1:
        sel.warnings.append(f"{path.name}: every sampled frame looks the same; only one frame was kept")
    width, height = sel.upright_size
    info = VideoInfo(path.name, float(duration), fps, sel.turns * 90, codec, width, height, n_decoded)
    result = VideoFrames(
        info, tuple(sel.kept), plan.interval_s, sel.n_static, time.monotonic() - start, options, tuple(sel.warnings)
    )
    logger.info("%s", result.summary())
    for w in result.warnings:
        logger.warning("%s", w)
    return result


def expand_inputs(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    options: VideoOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Path], list[VideoFrames]]:
    """Photos and videos -> image files, in the given order (each video replaced by its frames).

    Photos are returned as they are (not copied or checked here). Each video's frames are
    written into ``out_dir``; two videos with the same stem get ``<stem>-2`` etc. Returns
    (image paths, one :class:`VideoFrames` per video in input order).
    """
    images: list[Path] = []
    videos: list[VideoFrames] = []
    stems: set[str] = set()
    for p in paths:
        p = Path(p)
        if not is_video(p):
            images.append(p)
            continue
        stem, k = p.stem, 2
        while stem.lower() in stems:
            stem, k = f"{p.stem}-{k}", k + 1
        stems.add(stem.lower())
        frames = sample_video(p, out_dir, options, stem=stem, progress=progress)
        images.extend(frames.paths)
        videos.append(frames)
    return images, videos


def sequence_scene_graph(n_frames: int, *, cyclic: bool = False, max_octaves: int = 4) -> str:
    """Default scene graph for ``n_frames`` images in time order (frames of one video).

    A ``logwin`` window: each frame is paired with the frames 1, 2, 4, ..., 2^(K-1) steps away, so
    neighbours in time are dense and a few longer reaches tie distant parts of the sequence
    together against drift. K grows with the sequence (2 up to 8 frames, 3 up to 16, 4 beyond,
    at most ``max_octaves``): about 2 K n pairs (symmetrized) instead of the complete graph's
    n (n - 1). Not cyclic unless asked (a video rarely ends where it started).

    >>> sequence_scene_graph(3), sequence_scene_graph(12), sequence_scene_graph(40)
    ('logwin-2-noncyclic', 'logwin-3-noncyclic', 'logwin-4-noncyclic')
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames must be an int >= 1, got {n_frames!r}")
    if max_octaves < 1:
        raise ValueError(f"max_octaves must be >= 1, got {max_octaves}")
    octaves = min(max_octaves, max(2, math.ceil(math.log2(max(n_frames, 2))) - 1))
    return f"logwin-{octaves}" + ("" if cyclic else "-noncyclic")
