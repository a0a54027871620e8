"""Dense step of the COLMAP engine on real photo sets: agreement with COLMAP's points, coverage, time.

Each dataset folder holds ``images/`` (see shared/datasets/*/README.md). The engine runs exactly as
the app runs it (a fresh job folder, dense on, CPU unless ``--device``), then the script reports
per dataset:

- the median relative difference ``|d_dense / z - 1|`` between the dense depth and the depth z of
  COLMAP's own triangulated points, over every (image, point) observation that lands on a kept
  dense pixel (nearest pixel) -- the two estimates are independent: the dense depth comes from
  photo-consistency and multi-view agreement, the point from triangulated SIFT matches;
- the fraction of pixels with a kept depth (mean over views, and per view);
- the dense step's wall time (total and per view) and its CPU time, with the load average
  around it, since a busy machine stretches the wall time.

    python3 bench/bench_mvs.py ../shared/datasets/herzjesu_p8 ../shared/datasets/buddha
    python3 bench/bench_mvs.py ../shared/datasets/herzjesu_p8 --mvs-size 960 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.allocator import tune_cpu_allocator  # noqa: E402

from config import AppConfig, ColmapConfig, ModelConfig  # noqa: E402
from core.engines.colmap import STAGE_DENSE, ColmapEngine  # noqa: E402
from core.types import Scene  # noqa: E402


def _images(image_dir: Path, wanted: str | None) -> list[Path]:
    files = sorted(p for p in image_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not wanted:
        return files
    tokens = [t.strip() for t in wanted.split(",") if t.strip()]
    out = [p for t in tokens for p in files if t in (p.name, p.stem)]
    if len(out) != len(tokens):
        raise SystemExit(f"--images: some of {tokens} are not in {image_dir}")
    return out


def depth_agreement(scene: Scene) -> tuple[np.ndarray, int]:
    """Relative differences |d_dense / z - 1| at COLMAP's observations on kept pixels, and the
    number of observations that landed inside the images."""
    import pycolmap

    model = pycolmap.Reconstruction(scene.extra["model_dir"])
    by_name = {im.name: im for im in model.images.values()}
    K = scene.intrinsics()
    rel, n_obs = [], 0
    for k, cam in enumerate(scene.extra["cameras"]):
        image = by_name[cam["colmap_name"]]
        xyz = np.array([model.points3D[p.point3D_id].xyz for p in image.points2D if p.has_point3D()]).reshape(-1, 3)
        cam_from_world = np.linalg.inv(scene.world_from_cam[k].astype(np.float64))
        in_cam = xyz @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]  # (M, 3)
        uv = np.rint(in_cam[:, :2] / in_cam[:, 2:] * K[k, 0, 0] + K[k, :2, 2]).astype(np.int64)
        h, w = scene.depths[k].shape
        ok = (in_cam[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        n_obs += int(ok.sum())
        u, v, z = uv[ok, 0], uv[ok, 1], in_cam[ok, 2]
        kept = scene.conf[k][v, u] > 1
        rel.append(np.abs(scene.depths[k][v, u][kept] / z[kept] - 1))
    return np.concatenate(rel) if rel else np.zeros(0), n_obs


def run(dataset: Path, images: str | None, cfg: AppConfig, job_dir: Path) -> dict:
    """Run the engine once on one dataset -> a dict of the reported figures."""
    paths = _images(dataset / "images", images)
    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == STAGE_DENSE and "cpu0" not in marks:
            marks["cpu0"], marks["load0"] = time.process_time(), os.getloadavg()[0]

    t0 = time.perf_counter()
    scene = ColmapEngine().reconstruct(paths, cfg, job_dir, progress)
    wall = time.perf_counter() - t0
    cpu_dense = time.process_time() - marks["cpu0"]
    dense = scene.extra["dense"]
    rel, n_obs = depth_agreement(scene)
    per_view = dense["seconds_per_view"]
    return {
        "dataset": dataset.name,
        "images": len(paths),
        "registered": scene.n_views,
        "sparse_points": int(scene.extra["n_points"]),
        "working_size": dense["working_size"],
        "median_rel_diff": float(np.median(rel)) if rel.size else float("nan"),
        "p90_rel_diff": float(np.percentile(rel, 90)) if rel.size else float("nan"),
        "compared_points": int(rel.size),
        "points_on_kept_pixels": rel.size / max(n_obs, 1),
        "kept_fraction": dense["mean_kept_fraction"],
        "kept_fraction_per_view": dense["kept_fraction"],
        "dense_seconds": scene.extra["seconds"]["dense"],
        "dense_cpu_seconds": cpu_dense,
        "seconds_per_view": float(np.mean(list(per_view.values()))),
        "seconds_per_view_each": per_view,
        "load_average": [marks["load0"], os.getloadavg()[0]],
        "seconds": scene.extra["seconds"],
        "engine_wall": wall,
        "device": dense["device"],
        "warnings": list(scene.warnings),
    }


def _print(res: dict) -> None:
    rows = [
        ("dataset", f"{res['dataset']}: {res['registered']}/{res['images']} registered, {res['sparse_points']} points"),
        ("working size", "x".join(str(v) for v in res["working_size"]) + f" on {res['device']}"),
        (
            "depth vs COLMAP points",
            f"median {100 * res['median_rel_diff']:.3f} %, 90th percentile {100 * res['p90_rel_diff']:.3f} % "
            f"({res['compared_points']} observations; "
            f"{100 * res['points_on_kept_pixels']:.1f} % of them on kept pixels)",
        ),
        ("kept pixels", f"{100 * res['kept_fraction']:.1f} % (mean over views)"),
        ("per view kept", ", ".join(f"{k} {100 * v:.0f}%" for k, v in res["kept_fraction_per_view"].items())),
        (
            "dense step",
            f"{res['dense_seconds']:.1f} s wall, {res['dense_cpu_seconds']:.1f} s CPU, "
            f"{res['seconds_per_view']:.2f} s per view (load average {res['load_average'][0]:.1f} -> "
            f"{res['load_average'][1]:.1f})",
        ),
        ("COLMAP stages", ", ".join(f"{k} {v:.1f} s" for k, v in res["seconds"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for w in res["warnings"]:
        print(f"warning: {w}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", type=Path, nargs="+", help="folders with images/")
    parser.add_argument("--images", help="comma-separated subset (file names or stems), the same for every dataset")
    parser.add_argument("--mvs-size", type=int, default=ColmapConfig.mvs_size, help="working long side (pixels)")
    parser.add_argument("--mapper", choices=["global", "incremental"], default="global")
    parser.add_argument("--threads", type=int, default=0, help="COLMAP threads, 0 = every available core")
    parser.add_argument("--device", default="cpu", help="dense step device (cpu, cuda, auto)")
    parser.add_argument("--no-allocator-tuning", action="store_true", help="skip core.allocator (the app tunes it)")
    parser.add_argument("--job-dir", type=Path, help="keep the COLMAP work folders here (default: temporary)")
    parser.add_argument("--verbose", action="store_true", help="log the engine (and COLMAP)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    import pycolmap

    if not args.verbose:
        pycolmap.logging.minloglevel = 2  # COLMAP's glog: errors only
    if not args.no_allocator_tuning:
        tune_cpu_allocator()
    cfg = AppConfig(
        model=ModelConfig(device=args.device),
        colmap=ColmapConfig(mapper=args.mapper, num_threads=args.threads, mvs_size=args.mvs_size, dense=True),
    )
    results = []
    for dataset in args.datasets:
        if args.job_dir is not None:
            job = args.job_dir / dataset.name
            job.mkdir(parents=True, exist_ok=True)
            results.append(run(dataset, args.images, cfg, job))
        else:
            with tempfile.TemporaryDirectory(prefix="bench_mvs_") as tmp:
                results.append(run(dataset, args.images, cfg, Path(tmp)))
        if not args.json:
            _print(results[-1])
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
