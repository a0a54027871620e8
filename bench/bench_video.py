"""Video input: decode and frame-selection time for a long HD video.

Generates (once, into a temporary folder unless --video or --keep is given) a synthetic 60 s
1080p 30 fps H.264 video of a camera panning over a textured surface, then times:

- ``decode``: PyAV decoding every frame and nothing else (the floor);
- ``sample_video`` with the default options (1 fps, sharpest pick, static skip, at most 32
  frames) and with the sharpest pick off (the first frame of each interval), which includes
  writing the kept JPEGs.

Wall seconds and CPU seconds (all threads) are both given: on a busy machine the CPU figures
are the steadier ones.

    python3 bench/bench_video.py
    python3 bench/bench_video.py --seconds 20 --keep /tmp/bench_video   # reuse the video next time
    python3 bench/bench_video.py --video my_clip.mp4 --fps 2 --max-frames 60
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.inputs.video import VideoOptions, sample_video  # noqa: E402


def make_video(path: Path, seconds: float, width: int, height: int, rate: int) -> Path:
    """A camera panning 4 px per frame over a random multi-scale texture (H.264, yuv420p)."""
    n = round(seconds * rate)
    rng = np.random.default_rng(0)
    tex_w = width + 4 * n
    coarse = cv2.resize(rng.random((height // 16, tex_w // 16, 3), np.float32), (tex_w, height), cv2.INTER_CUBIC)
    fine = rng.random((height, tex_w, 3), np.float32)
    texture = (np.clip(0.8 * coarse + 0.2 * fine, 0, 1) * 255).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(rate))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, 4 * k : 4 * k + width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decode_only(path: Path) -> tuple[int, float, float]:
    """(frames, wall seconds, CPU seconds of all threads) to decode every frame as sample_video does."""
    start, cpu = time.perf_counter(), time.process_time()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = sum(1 for _ in container.decode(stream))
    return n, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, help="an existing video instead of the synthetic one")
    ap.add_argument("--keep", type=Path, help="folder for the synthetic video (reused when present)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", default="1920x1080", help="WxH of the synthetic video")
    ap.add_argument("--rate", type=int, default=30, help="frame rate of the synthetic video")
    ap.add_argument("--fps", type=float, default=1.0, help="sampling rate (frames kept per second)")
    ap.add_argument("--max-frames", type=int, default=32)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        video = args.video
        if video is None:
            folder = args.keep or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            w, h = (int(v) for v in args.size.lower().split("x"))
            video = folder / f"pan_{args.seconds:g}s_{w}x{h}_{args.rate}fps.mp4"
            if not video.is_file():
                start = time.perf_counter()
                make_video(video, args.seconds, w, h, args.rate)
                print(f"generated {video} in {time.perf_counter() - start:.1f} s ({video.stat().st_size / 1e6:.1f} MB)")
        n, decode_s, decode_cpu = decode_only(video)
        report = {
            "video": str(video),
            "frames": n,
            "decode_s": round(decode_s, 2),
            "decode_cpu_s": round(decode_cpu, 2),
        }
        base = VideoOptions(fps=args.fps, max_frames=args.max_frames)
        for label, options in (
            ("default", base),
            ("first_of_interval", VideoOptions(**{**vars(base), "sharpest": False})),
        ):
            cpu = time.process_time()
            result = sample_video(video, Path(tmp) / label, options)
            cpu = time.process_time() - cpu
            report[label] = {
                "seconds": round(result.decode_s, 2),
                "cpu_s": round(cpu, 2),
                "selection_overhead_cpu_s": round(cpu - decode_cpu, 2),
                "kept": len(result.frames),
                "static_skipped": result.n_static_skipped,
                "interval_s": round(result.interval_s, 3),
                "selection_overhead_s": round(result.decode_s - decode_s, 2),
            }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
