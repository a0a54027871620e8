"""MASt3R inference cost with and without the descriptor head, full-size architecture.

Builds ``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric`` (``model.DUSt3R`` with the official
architecture, random weights) and runs ``core.inference.run_inference`` on N random images of WxH
(default 2 images of 512x384, complete graph: 2 pairs) twice, in fresh subprocesses: descriptors
off (what the alignment needs: ``pts3d``, ``conf``) and on (``desc``, ``desc_conf`` too). Prints
the time of each, their ratio (measured in this one run), and the peak resident memory.

    python3 bench/bench_mast3r.py                    # 2 images 512x384, CPU
    python3 bench/bench_mast3r.py --images 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NAME = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"


def _worker(n: int, size: tuple[int, int], descriptors: bool, threads: int) -> dict:
    """One run in this process: build the network, run the pairs, return seconds and peak memory."""
    import torch

    import model as M
    from config import InferenceConfig
    from core.inputs.pairs import make_pairs
    from core.runtime import tune_cpu_allocator
    from core.types import InputImage

    if threads:
        torch.set_num_threads(threads)
    tune_cpu_allocator()
    torch.manual_seed(0)
    net = M.DUSt3R(M.OFFICIAL_CONFIGS[NAME])
    with torch.no_grad():
        for head in (net.downstream_head1, net.downstream_head2):
            head.dpt.head[-1].weight.mul_(0.1)  # keep exp depth / confidence finite
    net = net.eval().use_fast_layout()
    w, h = size
    views = [
        InputImage(
            tensor=torch.rand(1, 3, h, w) * 2 - 1,
            idx=k,
            name=f"img{k}",
            original_size=(w, h),
            resized_size=(w, h),
            crop_box=(0, 0, w, h),
        )
        for k in range(n)
    ]
    cfg = InferenceConfig(precision="fp32", descriptors=descriptors)
    pairs = make_pairs(n, cfg.scene_graph)
    t0 = time.perf_counter()
    preds = core_run(net, views, cfg, pairs)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "pairs": len(pairs), "peak_gb": peak / 2**30, "desc": preds.desc_1 is not None}


def core_run(net, views, cfg, pairs):
    import torch

    from core.inference import run_inference

    return run_inference(net, views, cfg, pairs=pairs, device=torch.device("cpu"), autocast_dtype=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="image count (default 2: 2 pairs)")
    parser.add_argument("--size", default="512x384", help="WxH (default 512x384)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--worker", choices=("off", "on"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.worker:
        print(json.dumps(_worker(args.images, size, args.worker == "on", args.threads)))
        return 0
    rows = {}
    for mode in ("off", "on"):
        cmd = [sys.executable, __file__, "--worker", mode, "--images", str(args.images), "--size", args.size]
        cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
    print(f"MASt3R 512 catmlp+dpt, {args.images} images {args.size}, {rows['off']['pairs']} pairs, fp32, CPU")
    print("| descriptors | s | s/pair | peak RSS GB |")
    print("|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['seconds']:.1f} | {r['seconds'] / r['pairs']:.1f} | {r['peak_gb']:.2f} |")
    print(f"ratio on/off: {rows['on']['seconds'] / rows['off']['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
