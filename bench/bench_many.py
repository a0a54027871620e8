"""Many images: time and peak memory per stage, in one process and on Ray workers.

Two cases, each on synthetic orbit photos (``tests/core/synthetic_render.py``: a textured box seen
from an arc, rendered once into the output folder) preprocessed at 224 px:

- ``tiny``: 100 images, the tiny test network (``tests/fixtures/tiny_linear``), scene graph ``auto``
  (100 images: ``logwin-5``, 1000 pairs). Also the pair storage layouts (memory, fp16, disk) in one
  process, and the global alignment of 100 views on nested pair sets (``swin-1``, ``swin-2``,
  ``auto``) to show that its memory and time grow linearly with the pair count. The alignment runs
  on consistent synthetic predictions of those pairs (``tests/core/synthetic_pairs.py``, 224x224,
  known focal): the random tiny network's predictions are not a scene (confidences up to 1e22,
  depths over 1e19), and the alignment's work and memory depend only on the pairs and sizes.
- ``full``: 30 images, the full-size architecture ``DUSt3R_ViTLarge_BaseDecoder_224_linear`` with
  random weights (built and saved once by this script: PyTorch's default init, the heads' last
  layer scaled by 0.1 so exp depth/confidence stay finite), a window graph (default ``swin-2``).

Each run is a fresh subprocess (so one run's peak does not hide another's); a sampler thread reads
the resident memory (anonymous + shared, without file-backed pages such as memory-mapped weights or
``disk`` pair storage) every 20 ms and keeps the peak per stage (``start`` = loading the network or
starting the Ray workers, ``encode``, ``pairs``; alignment: ``make`` the predictions, ``align``).
Ray runs also give each worker's peak resident set (``ru_maxrss``, file pages included). Inference modes: ``single`` (this
process, ``--threads`` threads) and ``ray-N`` (N Ray CPU workers on a local Ray started by the run,
the machine's cores shared between them).

    python3 bench/bench_many.py                                   # both cases (long on a small CPU)
    python3 bench/bench_many.py --case tiny
    python3 bench/bench_many.py --case full --full-images 12 --full-graph swin-1-noncyclic
    python3 bench/bench_many.py --case tiny --tiny-images 20 --niter 20   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL_ARCH = "DUSt3R_ViTLarge_BaseDecoder_224_linear"
_MB = 1024**2


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    """Resident anonymous + shared memory (MB): what the process needs in RAM. File-backed pages
    (memory-mapped weights, ``disk`` pair storage) are left out: the OS can drop them at will."""
    total = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssShmem:")):
                total += int(line.split()[1])
    return total / 1024


class StageMeter:
    """Progress callback that times stages and keeps the peak resident memory seen during each."""

    def __init__(self) -> None:
        self.stage = "start"
        self.since = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak[self.stage] = max(self.peak.get(self.stage, 0.0), _rss_mb())

    def __call__(self, stage: str, done: int = 0, total: int = 0) -> None:
        if stage != self.stage:
            now = time.perf_counter()
            self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + now - self.since
            self.peak[self.stage] = max(self.peak.get(self.stage, 0.0), _rss_mb())
            self.stage, self.since = stage, now

    def finish(self) -> dict:
        self("done")
        self._stop.set()
        self._thread.join()
        return {"seconds": {k: round(v, 2) for k, v in self.seconds.items()}, "peak_mb": self.peak}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def make_images(folder: Path, n: int) -> list[Path]:
    """n synthetic orbit views (4:3, 298x224) in ``folder``, rendered once."""
    from PIL import Image

    from tests.core.synthetic_render import render_orbit

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"view_{k:03d}.png" for k in range(n)]
    if not all(p.is_file() for p in paths):
        for p, view in zip(
            paths, render_orbit(n, width=298, height=224, azimuth_range_deg=(-150.0, 150.0)), strict=True
        ):
            Image.fromarray(view.image).save(p)
    return paths


def full_checkpoint(folder: Path) -> Path:
    """The full-size 224_linear architecture with random weights, saved once (config.json + safetensors)."""
    import torch
    from safetensors.torch import save_model

    import model as M

    out = folder / "random_224_linear"
    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    arch = M.OFFICIAL_CONFIGS[FULL_ARCH]
    net = M.DUSt3R(arch).eval()
    with torch.no_grad():
        for head in (net.downstream_head1, net.downstream_head2):
            for p in head.parameters():
                p.mul_(0.1)
    (out / "config.json").write_text(json.dumps(arch.to_config(), sort_keys=True, indent=2))
    save_model(net, str(out / "model.safetensors"))
    return out


# --------------------------------------------------------------------------------------------
# Child runs
# --------------------------------------------------------------------------------------------


def child_infer(spec: dict) -> dict:
    """One inference run (spec: images, checkpoint, graph, mode, workers, storage, threads)."""
    import torch

    from config import InferenceConfig, ModelConfig, PreprocessConfig
    from core.inputs.pairs import make_pairs, resolve_scene_graph
    from core.inputs.preprocessing import load_views

    torch.set_num_threads(spec["threads"])
    views = load_views([Path(p) for p in spec["images"]], PreprocessConfig(image_size=224))
    graph = resolve_scene_graph(len(views), spec["graph"])
    pairs = make_pairs(len(views), graph)
    cfg = InferenceConfig(precision="fp32", pair_storage=spec["storage"], workers=spec["workers"])
    model_cfg = ModelConfig(checkpoint=spec["checkpoint"], device="cpu")
    meter = StageMeter()
    extra: dict = {}
    if spec["mode"] == "single":
        import model as M
        from core.inference import run_inference

        net = M.get_model(model_cfg)
        meter("encode", 0, len(views))
        preds = run_inference(net, views, cfg, pairs=pairs, device=torch.device("cpu"), autocast_dtype=None,
                              progress=meter, storage_dir=Path(spec["tmp"]))  # fmt: skip
    else:
        import model as M
        from core.inference.distributed import RayPairPool

        pool = RayPairPool(M.get_model, model_cfg, workers=spec["workers"], precision="fp32")
        meter("encode", 0, len(views))
        preds = pool.run(views, cfg, pairs=pairs, progress=meter, storage_dir=Path(spec["tmp"]))
        extra["worker_peak_mb"] = [c["peak_mb"] for c in pool.counts()]
    result = meter.finish()
    return {**result, **extra, "pairs": len(pairs), "graph": graph, "stored_mb": preds.nbytes() / _MB}


def child_align(spec: dict) -> dict:
    """Synthetic predictions of a scene graph's pairs, then the global alignment (spec: n, graph,
    size, niter, threads)."""
    import torch

    from config import AlignmentConfig
    from core.alignment import align
    from core.inputs.pairs import make_pairs, resolve_scene_graph
    from tests.core.synthetic_pairs import make_scene

    torch.set_num_threads(spec["threads"])
    n, size = spec["n"], spec["size"]
    meter = StageMeter()
    meter("make")
    pairs = make_pairs(n, resolve_scene_graph(n, spec["graph"]))
    preds, truth = make_scene([(size, size)] * n, pairs=pairs, focals=[float(size)] * n)
    rss_made = _rss_mb()
    meter("align")
    cfg = AlignmentConfig(niter=spec["niter"], known_focal=(float(size),))
    align(preds, cfg, device=torch.device("cpu"), progress=lambda s, d, t: None)
    result = meter.finish()
    result["align_increment_mb"] = result["peak_mb"]["align"] - rss_made
    return {**result, "pairs": len(pairs), "graph": spec["graph"]}


def run_child(kind: str, spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), f"--child-{kind}", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Cases and tables
# --------------------------------------------------------------------------------------------


def _infer_row(case: str, mode: str, r: dict) -> str:
    s, pk = r["seconds"], r["peak_mb"]
    workers = r.get("worker_peak_mb")
    wk = "" if not workers else " + ".join(f"{w:.0f}" for w in workers)
    return (
        f"| {case} | {mode} | {r['pairs']} ({r['graph']}) | {s.get('start', 0):.1f} | {s.get('encode', 0):.1f} | "
        f"{s.get('pairs', 0):.1f} | {pk.get('start', 0):.0f} | {pk.get('encode', 0):.0f} | {pk.get('pairs', 0):.0f} | "
        f"{wk or '-'} | {r['stored_mb']:.0f} |"
    )


def run_case(name: str, images: list[Path], ckpt: Path, graph: str, args, out: Path) -> list[str]:
    rows = []
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    base = {"images": [str(p) for p in images], "checkpoint": str(ckpt), "graph": graph, "threads": args.threads,
            "tmp": str(tmp), "storage": "memory", "workers": 0}  # fmt: skip
    modes = [("single", {"mode": "single"}), (f"ray-{args.workers}", {"mode": "ray", "workers": args.workers})]
    if name == "tiny":
        modes += [(f"single, {s}", {"mode": "single", "storage": s}) for s in ("fp16", "disk")]
    for label, extra in modes:
        print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
        r = run_child("infer", {**base, **extra})
        rows.append(_infer_row(name, label, r))
        print(rows[-1], file=sys.stderr, flush=True)
    align_rows = []
    for g in ("swin-1", "swin-2", graph) if name == "tiny" and args.niter else ():
        print(f"[{name}] align {g} ...", file=sys.stderr, flush=True)
        spec = {"n": len(images), "graph": g, "size": 224, "niter": args.niter, "threads": args.threads}
        r = run_child("align", spec)
        s, pk = r["seconds"], r["peak_mb"]
        align_rows.append(
            f"| {name} | {r['pairs']} ({g}) | {s['make']:.1f} | {s['align']:.1f} | {1000 * s['align'] / r['pairs']:.1f} | "
            f"{pk['make']:.0f} | {pk['align']:.0f} | {r['align_increment_mb']:.0f} | "
            f"{r['align_increment_mb'] / r['pairs']:.2f} |"
        )
        print(align_rows[-1], file=sys.stderr, flush=True)
    return rows + ["", *align_rows]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("--child-"):
        result = (child_infer if argv[0] == "--child-infer" else child_align)(json.loads(argv[1]))
        print(json.dumps(result))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=("tiny", "full", "all"), default="all")
    p.add_argument("--tiny-images", type=int, default=100)
    p.add_argument("--tiny-graph", default="auto")
    p.add_argument("--full-images", type=int, default=30)
    p.add_argument("--full-graph", default="swin-2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of a single-process run")
    p.add_argument("--niter", type=int, default=100, help="alignment iterations (tiny case; 0 = skip)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "many")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    if args.case in ("tiny", "all"):
        images = make_images(args.out / "images", args.tiny_images)
        lines += run_case("tiny", images, ROOT / "tests" / "fixtures" / "tiny_linear", args.tiny_graph, args, args.out)
    if args.case in ("full", "all"):
        images = make_images(args.out / "images", args.full_images)
        lines += run_case("full", images, full_checkpoint(args.out), args.full_graph, args, args.out)
    print("| case | mode | pairs (graph) | start s | encode s | pairs s | start MB | encode MB | pairs MB "
          "| Ray workers' peak MB | stored MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(r for r in lines if r.count("|") >= 12))
    print(
        "\n| case | pairs (graph) | make s | align s | ms per pair | make MB | align MB | alignment's own MB | MB per pair |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(r for r in lines if r and r.count("|") < 12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
