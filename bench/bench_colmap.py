"""COLMAP engine on a calibrated dataset: registration, accuracy and time per stage.

The dataset folder holds ``images/`` and ``cameras_gt.json`` (``cameras``: one entry per image
with ``image``, ``K`` and ``R_world_to_cam``; see shared/datasets/herzjesu_p8/README.md). The
engine runs exactly as the app runs it (a fresh job folder, CPU only), then the script reports
registered images, points, mean reprojection error, seconds per stage, and, against the ground
truth, the median relative rotation error over all pairs of registered images (angle of
``R_i R_j^T`` estimated vs true) and the median focal length error.

    python3 bench/bench_colmap.py ../shared/datasets/herzjesu_p8
    python3 bench/bench_colmap.py ../shared/datasets/herzjesu_p8 --images 0003,0004,0005
    python3 bench/bench_colmap.py ../shared/datasets/herzjesu_p8 --mapper incremental
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import AppConfig, ColmapConfig  # noqa: E402
from core.engines.colmap import ColmapEngine, relative_rotation_errors_deg  # noqa: E402


def _load_gt(path: Path) -> dict[str, dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    cameras = data.get("cameras") if isinstance(data, dict) else None
    if not isinstance(cameras, list):
        raise SystemExit(f"{path}: expected a 'cameras' list")
    return {str(c["image"]): c for c in cameras}


def _select(image_dir: Path, wanted: str | None) -> list[Path]:
    files = sorted(p for p in image_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not wanted:
        return files
    out = []
    for token in (t.strip() for t in wanted.split(",") if t.strip()):
        match = [p for p in files if token in (p.name, p.stem)]
        if not match:
            raise SystemExit(f"--images: no file named {token!r} in {image_dir}")
        out.extend(match)
    return out


def run(dataset: Path, images: str | None, cfg: AppConfig, job_dir: Path) -> dict:
    """Run the engine once -> a dict of the reported figures."""
    paths = _select(dataset / "images", images)
    gt = _load_gt(dataset / "cameras_gt.json")
    stage_done: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        stage_done[stage] = time.perf_counter()

    t0 = time.perf_counter()
    scene = ColmapEngine().reconstruct(paths, cfg, job_dir, progress)
    wall = time.perf_counter() - t0
    est = np.linalg.inv(scene.world_from_cam.astype(np.float64))[:, :3, :3]  # (N, 3, 3) cam_from_world
    missing = [n for n in scene.names if n not in gt]
    if missing:
        raise SystemExit(f"cameras_gt.json has no entry for {missing}")
    true = np.array([gt[n]["R_world_to_cam"] for n in scene.names], np.float64)
    rot_err = relative_rotation_errors_deg(est, true)
    k_orig = scene.original_from_processed @ scene.intrinsics()  # (N, 3, 3) in dataset image pixels
    f_true = np.array([0.5 * (gt[n]["K"][0][0] + gt[n]["K"][1][1]) for n in scene.names])
    f_err = np.abs(0.5 * (k_orig[:, 0, 0] + k_orig[:, 1, 1]) / f_true - 1)
    ex = scene.extra
    return {
        "images": len(paths),
        "registered": ex["n_registered"],
        "points": ex["n_points"],
        "reproj_px": ex["mean_reproj_error_px"],
        "track_len": ex["mean_track_length"],
        "matcher": ex["matcher"],
        "mapper": ex["mapper"],
        "rot_err_median_deg": float(np.median(rot_err)),
        "rot_err_max_deg": float(rot_err.max()),
        "focal_err_median_pct": float(np.median(f_err) * 100),
        "seconds": ex["seconds"],
        "wall": wall,
        "warnings": list(scene.warnings),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="folder with images/ and cameras_gt.json")
    parser.add_argument("--images", help="comma-separated subset (file names or stems), e.g. 0003,0004,0005")
    parser.add_argument("--mapper", choices=["global", "incremental"], default="global")
    parser.add_argument("--matcher", choices=["auto", "exhaustive", "sequential"], default="auto")
    parser.add_argument(
        "--camera-model",
        default="SIMPLE_RADIAL",
        choices=["SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE"],
    )
    parser.add_argument("--max-image-size", type=int, default=ColmapConfig.max_image_size)
    parser.add_argument("--threads", type=int, default=0, help="0 = every available core")
    parser.add_argument("--job-dir", type=Path, help="keep COLMAP's files here (default: a temporary folder)")
    parser.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        import pycolmap

        pycolmap.logging.minloglevel = 2  # COLMAP's glog: errors only
    cfg = AppConfig(
        colmap=ColmapConfig(
            mapper=args.mapper,
            matcher=args.matcher,
            camera_model=args.camera_model,
            max_image_size=args.max_image_size,
            num_threads=args.threads,
        )
    )
    if args.job_dir is not None:
        args.job_dir.mkdir(parents=True, exist_ok=True)
        res = run(args.dataset, args.images, cfg, args.job_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_colmap_") as tmp:
            res = run(args.dataset, args.images, cfg, Path(tmp))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    s = res["seconds"]
    rows = [
        ("dataset", f"{args.dataset.name} ({args.images or 'all images'})"),
        ("matcher / mapper", f"{res['matcher']} / {res['mapper']} ({args.camera_model})"),
        ("registered", f"{res['registered']} / {res['images']}"),
        ("3D points", f"{res['points']} (mean track length {res['track_len']:.2f})"),
        ("mean reprojection error", f"{res['reproj_px']:.3f} px"),
        (
            "relative rotation error",
            f"median {res['rot_err_median_deg']:.3f} deg, max {res['rot_err_max_deg']:.3f} deg",
        ),
        ("focal length error", f"median {res['focal_err_median_pct']:.2f} %"),
        ("time: features", f"{s['features']:.2f} s"),
        ("time: matching", f"{s['matching']:.2f} s"),
        ("time: mapping", f"{s['mapping']:.2f} s"),
        ("time: total (engine)", f"{res['wall']:.2f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for w in res["warnings"]:
        print(f"warning: {w}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
