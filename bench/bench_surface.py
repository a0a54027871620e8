"""Time TSDF fusion and surface re-export, and measure the fusion's peak memory.

For every (views, resolution) pair, a fresh subprocess builds a dense scene of an analytic sphere
seen from V cameras spread around it (exact depth maps, W x H, every view fully used), then times,
reusing that scene:

- fuse: :func:`fuse_tsdf` (watertight, the resolution along the longest side);
- extract: marching cubes + vertex colours (:func:`extract_surface`);
- write: surface.glb / .ply / .obj (:func:`write_surface`);
- re-export = fuse + extract + write: what a display-option change costs for the surface (wall
  time, and the process CPU time of all threads, which a busy machine inflates less).

Peak memory: the process's resident memory is sampled every 2 ms during the fusion, and during
extraction + writing; the table gives the peaks above the resident memory just before each (MB),
the fusion's next to the estimate of :func:`fusion_memory_bytes`. On CUDA (``--device cuda``) torch's peak allocation is given instead.

Usage: python3 bench/bench_surface.py [--views 3,8,32] [--res 128,256] [--width 512 --height 384]
       [--threads N] [--device cpu|cuda] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.outputs.surface import extract_surface, write_surface  # noqa: E402
from core.outputs.tsdf import SurfaceOptions, fuse_tsdf, fusion_memory_bytes  # noqa: E402
from tests.core.synthetic_shapes import Sphere, shape_scene, sphere_rig  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRss:
    """Samples the resident memory in a thread while active: ``peak`` MB."""

    def __enter__(self) -> _PeakRss:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def run_one(views: int, res: int, width: int, height: int, device: str, repeats: int) -> dict:
    """One configuration in this process -> a dict of timings (s) and memory (MB)."""
    scene, hits = shape_scene(Sphere(), sphere_rig(views, 3.5), height=height, width=width, focal=0.9 * width)
    opts = SurfaceOptions(resolution=res)
    fuse_s, extract_s, write_s, cpu_s = [], [], [], []
    peak_mb = extract_mb = 0.0
    volume = mesh = None
    for _ in range(repeats):
        base = _rss_mb()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0, c0 = time.perf_counter(), time.process_time()
        with _PeakRss() as rss:
            volume = fuse_tsdf(scene, hits, opts, device=device)
        fuse_s.append(time.perf_counter() - t0)
        if device.startswith("cuda"):
            peak_mb = max(peak_mb, torch.cuda.max_memory_allocated() / 2**20)
        else:
            peak_mb = max(peak_mb, rss.peak - base)
        base = _rss_mb()
        with _PeakRss() as rss:
            t0 = time.perf_counter()
            mesh = extract_surface(volume, scene, hits, device=device)
            extract_s.append(time.perf_counter() - t0)
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                write_surface(mesh, d)
                write_s.append(time.perf_counter() - t0)
        extract_mb = max(extract_mb, rss.peak - base)
        cpu_s.append(time.process_time() - c0)
    assert volume is not None and mesh is not None
    n_px = sum(h.size for h in hits)
    return {
        "views": views,
        "res": res,
        "grid": "x".join(map(str, volume.grid.shape)),
        "fuse": min(fuse_s),
        "extract": min(extract_s),
        "write": min(write_s),
        "reexport": min(fuse_s) + min(extract_s) + min(write_s),
        "cpu": min(cpu_s),
        "peak_mb": peak_mb,
        "extract_mb": extract_mb,
        "estimate_mb": fusion_memory_bytes(volume.grid, n_px, opts.chunk_voxels) / 2**20,
        "faces": len(mesh.faces),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", default="3,8,32", help="comma-separated view counts")
    ap.add_argument("--res", default="128,256", help="comma-separated resolutions (voxels along the longest side)")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(int(args.views), int(args.res), args.width, args.height, args.device, args.repeats)))
        return 0
    print(
        f"# {args.width}x{args.height} views, device {args.device}, torch threads "
        f"{args.threads or torch.get_num_threads()}, best of {args.repeats}"
    )
    print(
        f"{'views':>5} {'res':>4} {'grid':>12} {'fuse s':>7} {'extract s':>9} {'write s':>7} {'re-export s':>11} {'(cpu s)':>7} "
        f"{'fuse MB':>8} {'est. MB':>8} {'extract MB':>10} {'faces':>8}"
    )
    for views in (int(v) for v in args.views.split(",")):
        for res in (int(r) for r in args.res.split(",")):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"--views={views}",
                f"--res={res}",
                f"--width={args.width}",
                f"--height={args.height}",
                f"--threads={args.threads}",
                f"--device={args.device}",
                f"--repeats={args.repeats}",
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(
                f"{r['views']:>5} {r['res']:>4} {r['grid']:>12} {r['fuse']:>7.2f} {r['extract']:>9.2f} "
                f"{r['write']:>7.2f} {r['reexport']:>11.2f} {r['cpu']:>7.2f} {r['peak_mb']:>8.0f} {r['estimate_mb']:>8.0f} {r['extract_mb']:>10.0f} "
                f"{r['faces']:>8}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
