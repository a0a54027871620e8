"""Video input: sampling by time, sharpest frame, static frames, rotation, limits, errors.

Every synthetic video shows each frame's index as a binary code (tests/core/synthetic_video.py),
read back from the written JPEGs, so each test knows exactly which frames were kept.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

from core.errors import EXIT_INPUT, ImageLoadError, SettingsError, exit_code_for  # noqa: E402
from core.inputs.pairs import count_pairs, make_pairs  # noqa: E402
from core.inputs.video import (  # noqa: E402
    VIDEO_EXTENSIONS,
    VideoError,
    VideoFrames,
    VideoOptions,
    expand_inputs,
    frame_difference,
    frame_file_name,
    is_video,
    sample_video,
    sequence_scene_graph,
    sharpness,
)
from tests.core.synthetic_video import coded_frame, read_code, write_video  # noqa: E402

EXACT = VideoOptions(sharpest=False, skip_static=False)
"""The first frame of every interval, nothing skipped."""


def _codes(result: VideoFrames) -> list[int]:
    return [read_code(np.asarray(Image.open(f.path))) for f in result.frames]


def _coded_video(path: Path, n: int, fps: float = 10.0, **kwargs) -> Path:
    return write_video(path, [coded_frame(i) for i in range(n)], fps=fps, **kwargs)


def test_names_and_extensions() -> None:
    assert frame_file_name("clip", 12.4) == "clip_t012.40s.jpg"
    assert frame_file_name("clip", 0.0) == "clip_t000.00s.jpg"
    assert frame_file_name("walk", 1234.567) == "walk_t1234.57s.jpg"
    assert set(VIDEO_EXTENSIONS) == {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi"}
    assert is_video("a/clip.MP4") and is_video(Path("x.webm")) and not is_video("photo.jpg")
    assert issubclass(VideoError, ImageLoadError) and exit_code_for(VideoError("x")) == EXIT_INPUT == 3


def test_one_fps_picks_the_first_frame_of_every_second(tmp_path: Path) -> None:
    video = _coded_video(tmp_path / "clip.mp4", 50)  # 5 s at 10 fps
    result = sample_video(video, tmp_path / "frames", EXACT)

    assert _codes(result) == [0, 10, 20, 30, 40]
    assert [f.path.name for f in result.frames] == [f"clip_t{k:03d}.00s.jpg" for k in range(5)]
    assert [f.frame_index for f in result.frames] == [0, 10, 20, 30, 40]
    np.testing.assert_allclose([f.time_s for f in result.frames], [0, 1, 2, 3, 4], atol=1e-6)
    info = result.info
    assert (info.name, info.codec, info.rotation, info.width, info.height) == ("clip.mp4", "h264", 0, 128, 96)
    assert info.duration_s == pytest.approx(5.0) and info.fps == pytest.approx(10.0) and info.n_decoded == 50
    assert result.interval_s == 1.0 and result.n_static_skipped == 0 and result.warnings == ()

    manifest = json.loads(json.dumps(result.to_manifest()))  # JSON-ready
    assert manifest["video"] == "clip.mp4" and manifest["duration_s"] == pytest.approx(5.0)
    assert manifest["fps"] == pytest.approx(10.0) and manifest["rotation"] == 0 and manifest["codec"] == "h264"
    assert [f["time_s"] for f in manifest["frames"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert manifest["frames"][2]["file"] == "clip_t002.00s.jpg" and manifest["frames"][2]["sharpness"] > 0
    assert manifest["sampling"]["fps"] == 1.0 and manifest["sampling"]["sharpest"] is False
    assert "kept 5 of 50 frames" in result.summary()


def test_two_fps_and_defaults(tmp_path: Path) -> None:
    video = _coded_video(tmp_path / "clip.mp4", 30)  # 3 s
    assert _codes(sample_video(video, tmp_path / "a", VideoOptions(fps=2, sharpest=False, skip_static=False))) == [
        0,
        5,
        10,
        15,
        20,
        25,
    ]
    # Defaults (sharpest on, static skip on): one frame per second, each inside its second.
    result = sample_video(video, tmp_path / "b")
    assert [c // 10 for c in _codes(result)] == [0, 1, 2]
    assert all(k <= f.time_s < k + 1 for k, f in enumerate(result.frames))


def test_variable_frame_rate_is_sampled_by_time_not_by_frame_number(tmp_path: Path) -> None:
    # 2 s at 30 fps (frames 0..59), then 3 s at 5 fps (frames 60..74): 75 frames over 5 s.
    times = [k / 30 for k in range(60)] + [2 + k / 5 for k in range(15)]
    video = _coded_video(tmp_path / "vfr.mp4", len(times), times_s=times)
    result = sample_video(video, tmp_path / "frames", EXACT)

    assert _codes(result) == [0, 30, 60, 65, 70]  # by frame number at 15 fps: 0, 15, 30, 45, 60
    np.testing.assert_allclose([f.time_s for f in result.frames], [0, 1, 2, 3, 4], atol=2e-3)
    assert result.info.fps == pytest.approx(74 / 4.8, rel=1e-3)  # first to last frame
    assert 4.8 < result.info.duration_s <= 5.0 + 1e-6  # at least the last frame (headers can say less)
    # The sharpest pick of each interval is still a frame of that second.
    sharp = sample_video(video, tmp_path / "sharp", VideoOptions(skip_static=False))
    for k, (code, frame) in enumerate(zip(_codes(sharp), sharp.frames, strict=True)):
        assert k <= times[code] < k + 1 and frame.time_s == pytest.approx(times[code], abs=2e-3)


@pytest.mark.parametrize(("rotation_ccw", "clockwise"), [(-90, 90), (90, 270), (180, 180)])
def test_rotated_video_comes_out_upright(tmp_path: Path, rotation_ccw: int, clockwise: int) -> None:
    # -90 is what a phone held upright writes: the stored pictures are landscape and turn 90 clockwise.
    frames = [coded_frame(i, width=96, height=128) for i in range(20)]  # upright portrait
    video = write_video(tmp_path / "phone.mov", frames, fps=10, rotation_ccw=rotation_ccw)
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stored = (stream.codec_context.width, stream.codec_context.height)
    assert stored == ((128, 96) if clockwise != 180 else (96, 128))

    result = sample_video(video, tmp_path / "frames", EXACT)
    assert result.info.rotation == clockwise and (result.info.width, result.info.height) == (96, 128)
    assert _codes(result) == [0, 10]  # the code strip is read along the top edge: upright
    assert all(Image.open(f.path).size == (96, 128) for f in result.frames)


def test_max_frames_is_honoured_and_spread_over_the_whole_video(tmp_path: Path) -> None:
    video = _coded_video(tmp_path / "long.mp4", 100)  # 10 s at 10 fps
    capped = sample_video(video, tmp_path / "a", VideoOptions(fps=2, max_frames=5, sharpest=False, skip_static=False))
    assert _codes(capped) == [0, 20, 40, 60, 80] and capped.interval_s == pytest.approx(2.0)
    # A target count spreads evenly, and is capped too.
    target = VideoOptions(target_frames=4, sharpest=False, skip_static=False)
    assert _codes(sample_video(video, tmp_path / "b", target)) == [0, 25, 50, 75]
    over = VideoOptions(target_frames=50, max_frames=5, skip_static=False)
    assert len(sample_video(video, tmp_path / "c", over).frames) == 5
    # With the default sharpest pick the cap holds as well.
    assert len(sample_video(video, tmp_path / "d", VideoOptions(fps=10, max_frames=7)).frames) <= 7


def test_blurred_frames_lose_to_the_sharp_one_of_their_interval(tmp_path: Path) -> None:
    # In every second only frame 10k + 3 is sharp; the others are motion-blurred.
    frames = [coded_frame(i, blur_sigma=0 if i % 10 == 3 else 2.5) for i in range(30)]
    video = write_video(tmp_path / "shaky.mp4", frames, fps=10)

    sharp = sample_video(video, tmp_path / "a", VideoOptions(skip_static=False))
    assert _codes(sharp) == [3, 13, 23]
    first = sample_video(video, tmp_path / "b", EXACT)
    assert _codes(first) == [0, 10, 20]
    assert min(f.sharpness for f in sharp.frames) > 2 * max(f.sharpness for f in first.frames)


def test_a_run_of_identical_frames_is_collapsed(tmp_path: Path) -> None:
    # 6 s at 10 fps; frames 10..39 are one frame repeated (the camera stood still for 3 s).
    frames = [coded_frame(10 if 10 <= i < 40 else i) for i in range(60)]
    video = write_video(tmp_path / "pause.mp4", frames, fps=10)

    kept = sample_video(video, tmp_path / "a", VideoOptions(sharpest=False))
    assert _codes(kept) == [0, 10, 40, 50] and kept.n_static_skipped == 2
    everything = sample_video(video, tmp_path / "b", EXACT)
    assert _codes(everything) == [0, 10, 10, 10, 40, 50] and everything.n_static_skipped == 0
    # A threshold of 0 keeps them all; the default sharpest pick collapses the run too.
    assert len(sample_video(video, tmp_path / "c", VideoOptions(sharpest=False, static_threshold=0)).frames) == 6
    assert [c // 10 for c in _codes(sample_video(video, tmp_path / "d"))] == [0, 1, 4, 5]


def test_a_video_that_never_changes_keeps_one_frame_and_warns(tmp_path: Path) -> None:
    video = write_video(tmp_path / "still.mp4", [coded_frame(7)] * 30, fps=10)
    result = sample_video(video, tmp_path / "frames")
    assert _codes(result) == [7] and result.n_static_skipped == 2
    assert len(result.warnings) == 1 and "only one frame" in result.warnings[0]


@pytest.mark.parametrize(
    ("suffix", "codec"), [(".mov", "h264"), (".m4v", "h264"), (".mkv", "h264"), (".webm", "vp8"), (".avi", "mpeg4")]
)
def test_container_formats(tmp_path: Path, suffix: str, codec: str) -> None:
    video = _coded_video(tmp_path / f"clip{suffix}", 30)
    result = sample_video(video, tmp_path / "frames", EXACT)
    assert _codes(result) == [0, 10, 20]
    assert result.info.codec == codec and result.info.duration_s == pytest.approx(3.0, abs=0.11)


def test_ten_bit_video(tmp_path: Path) -> None:
    frames = [coded_frame(i, blur_sigma=0 if i % 10 == 3 else 2.5) for i in range(20)]
    video = write_video(tmp_path / "hdr.mp4", frames, fps=10, pix_fmt="yuv420p10le")
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    assert _codes(sample_video(video, tmp_path / "a", EXACT)) == [0, 10]
    assert _codes(sample_video(video, tmp_path / "b", VideoOptions(skip_static=False))) == [3, 13]


def test_expand_inputs_keeps_order_and_separates_videos_with_one_name(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _coded_video(tmp_path / "a" / "clip.mp4", 20)
    second = _coded_video(tmp_path / "b" / "clip.mp4", 20, fps=5)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(coded_frame(99)).save(photo)
    out = tmp_path / "frames"
    images, videos = expand_inputs([photo, first, str(photo), second], out, EXACT)

    assert [p.name for p in images] == [
        "photo.jpg",
        "clip_t000.00s.jpg",
        "clip_t001.00s.jpg",
        "photo.jpg",
        "clip-2_t000.00s.jpg",
        "clip-2_t001.00s.jpg",
        "clip-2_t002.00s.jpg",
        "clip-2_t003.00s.jpg",
    ]
    assert images[0] == photo and all(p.parent == out for p in images if p.name.startswith("clip"))
    assert [v.info.name for v in videos] == ["clip.mp4", "clip.mp4"] and [len(v.frames) for v in videos] == [2, 4]
    assert expand_inputs([photo], out) == ([photo], [])


def test_progress_reports_seconds_of_video(tmp_path: Path) -> None:
    video = _coded_video(tmp_path / "clip.mp4", 50)
    calls: list[tuple[int, int]] = []
    sample_video(video, tmp_path / "frames", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5)]

    class Stop(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        sample_video(video, tmp_path / "other", progress=cancel)


def test_bad_videos_raise_named_one_line_errors(tmp_path: Path) -> None:
    def error(path: Path, options: VideoOptions = EXACT) -> str:
        """The message of the VideoError sampling raises; one line, naming the file."""
        with pytest.raises(VideoError) as info:
            sample_video(path, tmp_path / "frames", options)
        assert info.value.filename == str(path) and "\n" not in str(info.value)
        return str(info.value)

    assert error(tmp_path / "missing.mp4") == "missing.mp4: file not found"
    (tmp_path / "notes.mp4").write_text("not a video")
    assert error(tmp_path / "notes.mp4").startswith("notes.mp4: not a readable video (")

    with av.open(str(tmp_path / "voice.mp4"), "w") as container:  # sound only
        stream = container.add_stream("aac", rate=16000)
        for k in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert error(tmp_path / "voice.mp4") == "voice.mp4: the file has no video stream"

    # A video whose every frame is garbage: the container is fine, no frame decodes.
    data = bytearray(_coded_video(tmp_path / "good.mp4", 20).read_bytes())
    start = data.find(b"mdat")
    size = int.from_bytes(data[start - 4 : start], "big")
    data[start + 4 : start - 4 + size] = bytes(size - 8)
    (tmp_path / "zeros.mp4").write_bytes(bytes(data))
    assert error(tmp_path / "zeros.mp4").startswith("zeros.mp4: the video has no decodable frames")

    long = tmp_path / "good.mp4"
    assert error(long, VideoOptions(max_duration_s=1)) == "good.mp4: the video is 2 s long; the limit is 1 s"
    message = error(long, VideoOptions(max_decode_s=1e-9))
    assert message.startswith("good.mp4: decoding took longer than the 1e-09 s limit")


def test_a_few_corrupt_packets_are_skipped_with_a_warning(tmp_path: Path) -> None:
    data = bytearray(_coded_video(tmp_path / "good.mp4", 50).read_bytes())
    start = data.find(b"mdat")
    data[start + len(data) // 3 : start + len(data) // 3 + 4000] = bytes(4000)
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    result = sample_video(tmp_path / "damaged.mp4", tmp_path / "frames", EXACT)
    assert len(result.frames) >= 4 and result.info.n_decoded < 50
    assert any("damaged video" in w and "unreadable packet" in w for w in result.warnings)


def test_a_truncated_upload_keeps_the_frames_before_the_cut(tmp_path: Path) -> None:
    video = _coded_video(tmp_path / "full.mp4", 50, faststart=True)  # index first, as phones and web exports do
    data = video.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    result = sample_video(tmp_path / "cut.mp4", tmp_path / "frames", EXACT)
    assert _codes(result) == [10 * k for k in range(len(result.frames))] and 1 <= len(result.frames) < 5
    assert any("stops at" in w for w in result.warnings)


def test_options_are_validated() -> None:
    for kwargs, match in [
        ({"fps": 0}, r"fps must be in \(0, 60\], got 0"),
        ({"fps": float("nan")}, "fps must be"),
        ({"target_frames": 0}, "target_frames must be None or >= 1, got 0"),
        ({"max_frames": 0}, "max_frames must be >= 1, got 0"),
        ({"static_threshold": 2.0}, r"static_threshold must be in \[0, 1\], got 2.0"),
        ({"max_decode_s": 0}, "max_decode_s must be > 0"),
        ({"max_duration_s": -1}, "max_duration_s must be > 0"),
        ({"jpeg_quality": 0}, "jpeg_quality must be in 1..100"),
    ]:
        with pytest.raises(SettingsError, match=match):
            VideoOptions(**kwargs)


def test_sharpness_and_difference_measures() -> None:
    sharp = coded_frame(5)[..., 0]
    blurred = coded_frame(5, blur_sigma=3)[..., 0]
    assert sharpness(sharp) > 3 * sharpness(blurred) > 0
    assert sharpness(np.full((20, 20), 77, np.uint8)) == 0
    assert frame_difference(sharp, sharp) == 0
    assert frame_difference(np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)) == 1
    assert frame_difference(sharp, sharp[:10]) == 1  # different shapes
    with pytest.raises(ValueError, match="expected a"):
        sharpness(coded_frame(1))


def test_sequence_scene_graph_is_a_window_over_time() -> None:
    assert [sequence_scene_graph(n) for n in (1, 2, 3, 8, 9, 16, 17, 32, 200)] == [
        "logwin-2-noncyclic",
        "logwin-2-noncyclic",
        "logwin-2-noncyclic",
        "logwin-2-noncyclic",
        "logwin-3-noncyclic",
        "logwin-3-noncyclic",
        "logwin-4-noncyclic",
        "logwin-4-noncyclic",
        "logwin-4-noncyclic",
    ]
    assert sequence_scene_graph(40, cyclic=True) == "logwin-4"
    assert sequence_scene_graph(200, max_octaves=6) == "logwin-6-noncyclic"
    # Every frame is paired with its next neighbour and the one 8 frames later, not with all others.
    pairs = make_pairs(32, sequence_scene_graph(32), symmetrize=False)
    undirected = {tuple(sorted(p)) for p in pairs}
    assert {(i, i + 1) for i in range(31)} <= undirected and {(i, i + 8) for i in range(24)} <= undirected
    assert max(b - a for a, b in undirected) == 8
    assert count_pairs(32, sequence_scene_graph(32)) == 2 * (4 * 32 - 15) < count_pairs(32, "complete") / 2
    assert count_pairs(3, sequence_scene_graph(3)) == count_pairs(3, "complete")
    for n in range(2, 40):
        assert len(make_pairs(n, sequence_scene_graph(n))) <= 8 * n
    with pytest.raises(ValueError, match="n_frames must be an int >= 1, got 0"):
        sequence_scene_graph(0)


def test_kept_frames_are_full_resolution_rgb_jpegs(tmp_path: Path) -> None:
    video = write_video(tmp_path / "wide.mp4", [coded_frame(i, width=320, height=180) for i in range(10)], fps=10)
    result = sample_video(video, tmp_path / "frames", VideoOptions(jpeg_quality=80))
    with Image.open(result.frames[0].path) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (320, 180)
    assert math.isclose(result.info.duration_s, 1.0)


def test_fly_through_video_registers_with_colmap(tmp_path: Path) -> None:
    # A camera gliding on an arc around a textured box: 16 frames over 2 s, sampled at 4 fps.
    from config import AppConfig, ColmapConfig
    from core.engines.colmap import ColmapEngine
    from tests.core.synthetic_render import BoxScene, intrinsics, orbit_poses, render

    scene, K = BoxScene.random(0), intrinsics(320, 240, 260.0)
    frames = [render(scene, pose, K, 320, 240, supersample=1) for pose in orbit_poses(16)]
    video = write_video(tmp_path / "orbit.mp4", frames, fps=8)
    images, videos = expand_inputs([video], tmp_path / "frames", VideoOptions(fps=4))
    assert len(images) == 8 and videos[0].n_static_skipped == 0

    cfg = AppConfig(colmap=ColmapConfig(num_threads=2, dense=False))  # registration is the point here
    result = ColmapEngine().reconstruct(images, cfg, tmp_path / "job", lambda *a: None)
    assert result.extra["n_registered"] >= math.ceil(0.8 * len(images))
    assert set(result.names) == {p.name for p in images}


class _Unseekable(io.RawIOBase):
    """A write-only stream: muxers cannot go back to write the duration (a live recording)."""

    def __init__(self, file) -> None:
        self.file = file

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self.file.write(data)


def test_a_recording_without_duration_in_its_header_is_measured_from_its_packets(tmp_path: Path) -> None:
    # What a browser's MediaRecorder gives: a WebM whose header says nothing about its length.
    with open(tmp_path / "recorded.webm", "wb") as f, av.open(_Unseekable(f), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(50):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(coded_frame(i), format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(str(tmp_path / "recorded.webm")) as container:
        assert container.duration is None and container.streams.video[0].duration is None

    options = VideoOptions(target_frames=5, sharpest=False, skip_static=False)
    result = sample_video(tmp_path / "recorded.webm", tmp_path / "frames", options)
    assert _codes(result) == [0, 10, 20, 30, 40] and result.info.duration_s == pytest.approx(5.0)
