"""Time re-exporting an aligned scene with new display options (no network, no alignment).

Builds a synthetic 3-view 512x384 dense scene (ray-cast sphere + wall, with haze, occluders and
outliers planted) once, then times, reusing that scene:

- point_masks: confidence threshold + clean-up + statistical outlier removal (default
  PostprocessConfig), optionally + largest component;
- scene_to_glb as a mesh and as a point cloud (default VizConfig, cameras with images);
- the sum that a display-option change costs in the UI (masks + GLB);
- optionally (--full) every download format (export_scene with "all").

Usage: python3 bench/bench_export.py [--repeats 3] [--full] [--width 512 --height 384 --views 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import PostprocessConfig, VizConfig  # noqa: E402
from core.outputs.export import export_scene, parse_formats  # noqa: E402
from core.outputs.postprocessing import point_masks  # noqa: E402
from core.outputs.visualization import scene_to_glb  # noqa: E402
from tests.core.scene_factory import make_dense_scene  # noqa: E402


def _time(fn, repeats: int) -> tuple[float, float, float, object]:
    """(median wall s, min wall s, median process CPU s (all threads), last result)."""
    times, cpu, result = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), min(times), statistics.median(cpu), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also time export_scene with every format")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    syn = make_dense_scene(args.views, args.height, args.width, n_haze=2000, n_occluders=500, n_outliers=500)
    scene = syn.scene
    build = time.perf_counter() - t0
    n_px = sum(c.size for c in scene.conf)
    post = PostprocessConfig()
    post_lcc = dataclasses.replace(post, largest_component=True)
    viz_mesh = VizConfig()
    viz_points = VizConfig(view_mode="pointcloud")
    rows: list[tuple[str, float, float, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        mask_t = _time(lambda: point_masks(scene, post), args.repeats)
        masks = mask_t[3]
        kept = sum(int(m.sum()) for m in masks)
        rows.append(("point_masks (default)", *mask_t[:3], f"{kept}/{n_px} points kept"))
        rows.append(
            ("point_masks (+largest component)", *_time(lambda: point_masks(scene, post_lcc), args.repeats)[:3], "")
        )
        mesh_t = _time(lambda: scene_to_glb(scene, masks, viz_mesh, out / "mesh.glb"), args.repeats)
        rows.append(("scene_to_glb mesh", *mesh_t[:3], f"{mesh_t[3].stat().st_size / 1e6:.1f} MB"))
        pts_t = _time(lambda: scene_to_glb(scene, masks, viz_points, out / "points.glb"), args.repeats)
        rows.append(("scene_to_glb point cloud", *pts_t[:3], f"{pts_t[3].stat().st_size / 1e6:.1f} MB"))
        for label, t in (("mesh", mesh_t), ("points", pts_t)):
            rows.append(
                (
                    f"re-export = masks + GLB {label}",
                    mask_t[0] + t[0],
                    mask_t[1] + t[1],
                    mask_t[2] + t[2],
                    "target: well under 1 s",
                )
            )
        if args.full:
            full_t = _time(
                lambda: export_scene(scene, masks, out / "all", parse_formats("all"), post_cfg=post, viz_cfg=viz_mesh),
                1,
            )
            rows.append(
                (
                    "export_scene all formats (+zip)",
                    *full_t[:3],
                    f"zip {full_t[3].written['zip'].stat().st_size / 1e6:.1f} MB",
                )
            )

    print(
        f"scene: {args.views} views x {args.width}x{args.height} = {n_px} pixels (built in {build:.2f} s), "
        f"repeats={args.repeats}"
    )
    print(f"{'step':<36} {'median s':>9} {'min s':>9} {'cpu s':>7}  note")
    print("-" * 88)
    for name, med_s, min_s, cpu_s, note in rows:
        print(f"{name:<36} {med_s:>9.3f} {min_s:>9.3f} {cpu_s:>7.3f}  {note}")
    print("(wall seconds; cpu = process CPU time summed over threads; the KD-tree queries use all cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
