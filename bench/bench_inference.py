"""Pair-inference speed and memory: the reference's loop vs ``core.inference.run_inference``.

Builds the full DUSt3R_ViTLarge_BaseDecoder_512_dpt architecture (``model.DUSt3R`` with the
official config, random weights: PyTorch's default init, the heads' last convolution scaled by 0.1
so the exp depth / confidence outputs stay finite) and runs N random images of WxH (default 3 and
8 images of 512x384), complete scene graph, in three modes:

- ``reference`` (only with ``--reference-repo PATH``): the official code itself, run from a local
  clone of naver/dust3r (with its croco submodule checked out; nothing of it is part of this
  project): ``AsymmetricCroCo3DStereo`` with the same config and the same random weights (our
  state dict loads into it unchanged), then ``dust3r.inference.inference(make_pairs(...,
  symmetrize=True), model, device, batch_size=1)`` exactly as its demo calls it. Needs ``einops``.
  The table then also prints how far each of our modes is from the reference's outputs.
- ``baseline``: emulation of the official demo's loop: one pair at a time, batch 1, float32,
  ``model.forward(img_i, img_j)`` for every pair (so each image is encoded 2(N-1) times),
  outputs moved to the CPU after each pair. With ``--baseline-pairs K`` only the first K pairs
  run and the totals are extrapolated (per-pair mean x P), clearly marked.
- ``ours-fp32``: ``run_inference`` in float32 (each image encoded once, pairs batched).
- ``ours-bf16`` (CPU with native bf16) / ``ours-amp`` (CUDA: bf16 on compute capability >= 8,
  else fp16): the same under autocast, heads in float32.

Each mode runs in a fresh subprocess (so the peak memory of one does not hide another's): peak
resident memory (``ru_maxrss``) on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA. The
table also shows ``estimate_memory``'s prediction for our runs (weights included, same basis).
Timings: encoding = until every image is encoded (baseline: time inside ``model.encode``),
decode+heads = the rest, s/pair = total / pairs.

    python3 bench/bench_inference.py                                 # 3 and 8 images, 512x384, CPU/auto
    python3 bench/bench_inference.py --images 8 --baseline-pairs 4   # baseline extrapolated from 4 pairs
    python3 bench/bench_inference.py --device cuda --skip-baseline
    python3 bench/bench_inference.py --images 2 --size 128x96 --threads 2   # quick check
    python3 bench/bench_inference.py --images 3 --threads 2 --reference-repo /tmp/dust3r
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import InferenceConfig  # noqa: E402

MODES = ("reference", "baseline", "ours-fp32", "ours-amp")


def _build_model(device):
    import torch

    import model as M

    torch.manual_seed(0)
    with torch.device(device):
        net = M.DUSt3R(M.OFFICIAL_CONFIGS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"])
    with torch.no_grad():
        for head in (net.downstream_head1, net.downstream_head2):
            head.dpt.head[-1].weight.mul_(0.1)
    return net.eval().use_fast_layout()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _current_bytes(device) -> int:
    """Memory in use now: CUDA allocated, or the process's resident set (Linux; else the peak so far)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _peak_bytes(device)


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def _worker(args: argparse.Namespace) -> dict:
    """Run one mode in this process; returns the measurements."""
    import torch

    from core import runtime
    from core.inputs.pairs import make_pairs

    if args.threads:
        torch.set_num_threads(args.threads)
    device = runtime.resolve_device(args.device)
    w, h = args.size
    n = args.n
    net = _build_model(device)
    g = torch.Generator().manual_seed(1)
    tensors = [torch.rand(1, 3, h, w, generator=g) * 2 - 1 for _ in range(n)]
    pairs = make_pairs(n, "complete")
    encoded = _count_encodes(net, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {
        "mode": args.worker,
        "n_images": n,
        "pairs": len(pairs),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "size": f"{w}x{h}",
        "base": _current_bytes(device),
    }
    if args.worker == "reference":
        total, outputs = _reference_run(args.reference_repo, net, tensors, device, encoded, args.baseline_pairs)
        finite = all(bool(torch.isfinite(o).all()) for outs in outputs.values() for o in outs)
        result.update(_extrapolated(encoded, total, len(outputs), len(pairs)))
    elif args.worker == "baseline":
        outputs, finite, timing = _baseline_run(net, tensors, pairs, device, encoded, args.baseline_pairs)
        result.update(timing)
    else:
        run = _ours_run(args, net, tensors, pairs, device, encoded)
        if "skipped" in run:
            return {**result, **run}
        outputs, finite = run.pop("outputs"), run.pop("finite")
        result.update(run)
    result.update(t_decode=result["t_total"] - result["t_encode"], peak=_peak_bytes(device), finite=finite)
    if args.outputs_dir and outputs:
        _save_outputs(Path(args.outputs_dir) / f"{args.worker}-{n}.npz", outputs)
    return result


def _count_encodes(net, device) -> dict:
    """Wrap ``net.encode`` to count encoded images and the seconds spent encoding."""
    encoded = {"images": 0, "seconds": 0.0}
    original_encode = net.encode

    def counting_encode(img):
        _sync(device)
        t = time.perf_counter()
        out = original_encode(img)
        _sync(device)
        encoded["images"] += int(img.shape[0])
        encoded["seconds"] += time.perf_counter() - t
        return out

    net.encode = counting_encode
    return encoded


def _baseline_run(net, tensors, pairs, device, encoded: dict, baseline_pairs: int) -> tuple[dict, bool, dict]:
    """The official demo's loop: one pair at a time, both images encoded for every pair, fp32."""
    import torch

    run = pairs[:baseline_pairs] if baseline_pairs else pairs
    net.to(memory_format=torch.contiguous_format)  # the reference's weight layout
    finite = True
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i, j in run:
            pred1, pred2 = net(tensors[i].to(device), tensors[j].to(device))
            outs = [pred1["pts3d"].cpu(), pred1["conf"].cpu(), pred2["pts3d_in_other_view"].cpu(), pred2["conf"].cpu()]
            finite = finite and all(bool(torch.isfinite(o).all()) for o in outs)
    _sync(device)
    return {}, finite, _extrapolated(encoded, time.perf_counter() - t0, len(run), len(pairs))


def _ours_run(args, net, tensors, pairs, device, encoded: dict) -> dict:
    """``run_inference`` in fp32 or under autocast; returns timings, the estimate, outputs and finiteness."""
    import torch

    from core import runtime
    from core.inference import ModelDims, estimate_memory, resolve_batch_size, run_inference, view_cache_bytes
    from core.types import InputImage

    n, (w, h) = len(tensors), args.size
    dtype = None if args.worker == "ours-fp32" else runtime.select_autocast_dtype(device, "auto")
    if args.worker == "ours-amp" and dtype is None:
        return {"skipped": "no native bf16 on this CPU (autocast would be slow): mode skipped"}
    images = [
        InputImage(tensor=t, idx=k, name=f"random{k}", original_size=(w, h), resized_size=(w, h), crop_box=(0, 0, w, h))
        for k, t in enumerate(tensors)
    ]
    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "pairs" and done == 0:
            _sync(device)
            marks["encoded"] = time.perf_counter()

    cfg = InferenceConfig(
        batch_size=args.batch_size, view_cache_gb=args.view_cache_gb, tune_cpu_allocator=not args.no_allocator_tuning
    )
    est = estimate_memory(
        [(h, w)] * n,
        pairs,
        ModelDims.from_model(net),
        device=device,
        autocast_dtype=dtype,
        batch_size=resolve_batch_size(args.batch_size, device),
        view_cache_bytes=view_cache_bytes(cfg),
    )
    if device.type == "cpu" and cfg.tune_cpu_allocator:
        runtime.tune_cpu_allocator()  # what the entry points do (main.py, the DUSt3R engine)
    _sync(device)
    t0 = time.perf_counter()
    preds = run_inference(net, images, cfg, pairs=pairs, device=device, autocast_dtype=dtype, progress=progress)
    _sync(device)
    total = time.perf_counter() - t0
    fields = (preds.pts3d_1, preds.conf_1, preds.pts3d_2, preds.conf_2)
    return {
        "outputs": {(i, j): [f[p] for f in fields] for p, (i, j) in enumerate(preds.pairs.tolist())},
        "finite": all(bool(torch.isfinite(t).all()) for f in fields for t in f),
        "pairs_run": len(pairs),
        "encoder_passes": encoded["images"],
        "t_encode": marks["encoded"] - t0,
        "t_total": total,
        "autocast": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"),
        "estimate": est.bytes_peak,
    }


def _extrapolated(encoded: dict, seconds: float, pairs_run: int, pairs: int) -> dict:
    """Figures of a float32 loop that ran ``pairs_run`` of ``pairs`` pairs, scaled to all of them."""
    scale = pairs / pairs_run
    return {
        "pairs_run": pairs_run,
        "encoder_passes": round(encoded["images"] * scale),
        "t_encode": encoded["seconds"] * scale,
        "t_total": seconds * scale,
        "autocast": "fp32",
        "estimate": None,
    }


def _reference_run(repo: str, net, tensors: list, device, encoded: dict, limit: int) -> tuple[float, dict]:
    """The official demo's inference call on a copy of ``net``'s weights; returns (seconds, outputs).

    repo: a clone of naver/dust3r with croco checked out in ``croco/`` (imported from there at run
    time; not part of this project). encoded: counters updated by a wrapper of its ``_encode_image``.
    limit: run only the first ``limit`` pairs (0 = all).
    """
    import numpy as np

    sys.path.insert(0, str(Path(repo).resolve()))
    from dust3r.image_pairs import make_pairs as ref_make_pairs  # type: ignore[import-not-found]
    from dust3r.inference import inference as ref_inference  # type: ignore[import-not-found]
    from dust3r.model import AsymmetricCroCo3DStereo  # type: ignore[import-not-found]

    import model as M

    official = M.OFFICIAL_CONFIGS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"]  # _build_model's architecture
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in official.to_config().items()}
    ref = AsymmetricCroCo3DStereo(**config).to(device).eval()
    ref.load_state_dict(net.state_dict(), strict=True)
    original = ref._encode_image

    def counting(image, true_shape):
        _sync(device)
        t = time.perf_counter()
        out = original(image, true_shape)
        _sync(device)
        encoded["images"] += int(image.shape[0])
        encoded["seconds"] += time.perf_counter() - t
        return out

    ref._encode_image = counting
    views = [
        {"img": t, "true_shape": np.int32([t.shape[-2:]]), "idx": k, "instance": str(k)} for k, t in enumerate(tensors)
    ]
    pairs = ref_make_pairs(views, scene_graph="complete", prefilter=None, symmetrize=True)
    pairs = pairs[:limit] if limit else pairs
    _sync(device)
    t0 = time.perf_counter()
    out = ref_inference(pairs, ref, device, batch_size=1, verbose=False)
    _sync(device)
    total = time.perf_counter() - t0
    pred1, pred2 = out["pred1"], out["pred2"]
    outputs = {
        (int(i), int(j)): [pred1["pts3d"][p], pred1["conf"][p], pred2["pts3d_in_other_view"][p], pred2["conf"][p]]
        for p, (i, j) in enumerate(zip(out["view1"]["idx"], out["view2"]["idx"], strict=True))
    }
    return total, outputs


def _save_outputs(path: Path, outputs: dict) -> None:
    import numpy as np

    arrays = {f"{i}_{j}_{k}": t.float().numpy() for (i, j), outs in outputs.items() for k, t in enumerate(outs)}
    np.savez(path, **arrays)


def _max_deviation(path_a: Path, path_b: Path) -> tuple[float, float] | None:
    """Largest |a - b| / max|b| over the pairs both ran, for the point maps and the confidences."""
    import numpy as np

    if not (path_a.exists() and path_b.exists()):
        return None
    a, b = np.load(path_a), np.load(path_b)
    common = sorted(set(a.files) & set(b.files))
    pts = [k for k in common if k.endswith(("_0", "_2"))]
    conf = [k for k in common if k.endswith(("_1", "_3"))]
    if not pts or not conf:
        return None

    def rel(keys):
        return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in keys)

    return rel(pts), rel(conf)


def _run_mode(mode: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--n",
        str(n),
        "--device",
        args.device,
        "--size",
        f"{args.size[0]}x{args.size[1]}",
        "--batch-size",
        str(args.batch_size),
        "--baseline-pairs",
        str(args.baseline_pairs or 0),
        "--view-cache-gb",
        str(args.view_cache_gb),
    ]
    if args.reference_repo:
        cmd += ["--reference-repo", args.reference_repo, "--outputs-dir", args.outputs_dir]
    if args.no_allocator_tuning:
        cmd.append("--no-allocator-tuning")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {
            "mode": mode,
            "n_images": n,
            "skipped": f"failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(r: dict, baseline: dict | None) -> str:
    if "skipped" in r:
        return f"{r['mode']:<10} {r['n_images']:>3}  {r['skipped']}"
    gb = 1024**3
    extrap = "*" if r["pairs_run"] < r["pairs"] else " "
    est = f"{r['estimate'] / gb:6.2f}" if r.get("estimate") else "     -"
    speed = ""
    if baseline and "skipped" not in baseline and r is not baseline:
        speed = f"{baseline['t_total'] / r['t_total']:5.1f}x"
    return (
        f"{r['mode']:<10} {r['n_images']:>3} {r['pairs']:>5} {r['autocast']:>6} {r['encoder_passes']:>6}{extrap}"
        f" {r['t_encode']:8.2f}{extrap} {r['t_decode']:8.2f}{extrap} {r['t_total']:8.2f}{extrap}"
        f" {r['t_total'] / r['pairs']:7.3f}{extrap} {r['base'] / gb:7.2f} {r['peak'] / gb:7.2f} {est} {speed:>6}"
        f"{'' if r['finite'] else '  NON-FINITE OUTPUTS'}"
    )


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 512x384, got {text!r}") from e
    if w % 16 or h % 16 or w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"width and height must be positive multiples of 16, got {text!r}")
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--images", default="3,8", help="comma list of image counts (default 3,8)")
    parser.add_argument("--size", type=_parse_size, default=(512, 384), help="WxH of the inputs (default 512x384)")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="our batch size (default 0 = auto: 8 on CUDA, 1 on CPU)"
    )
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the reference-style loop")
    parser.add_argument(
        "--baseline-pairs",
        type=int,
        default=0,
        help="run only the first K pairs of the baseline and extrapolate (0 = all pairs)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--view-cache-gb",
        type=float,
        default=InferenceConfig.view_cache_gb,
        help=f"our per-view head cache (default {InferenceConfig.view_cache_gb}; 0 = off)",
    )
    parser.add_argument(
        "--no-allocator-tuning", action="store_true", help="ours without core.runtime's CPU allocator tuning"
    )
    parser.add_argument(
        "--reference-repo",
        help="a local clone of naver/dust3r (croco checked out inside): also time the official code itself",
    )
    parser.add_argument("--outputs-dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    try:
        counts = [int(v) for v in args.images.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--images must be a comma list of integers, got {args.images!r}")
    if not counts or min(counts) < 2:
        parser.error(f"--images needs counts >= 2, got {args.images!r}")
    if args.reference_repo and not (Path(args.reference_repo) / "dust3r" / "inference.py").is_file():
        parser.error(
            f"--reference-repo {args.reference_repo!r} is not a clone of naver/dust3r (no dust3r/inference.py)"
        )
    modes = [
        m for m in MODES if not (args.skip_baseline and m == "baseline") and (m != "reference" or args.reference_repo)
    ]
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        args.outputs_dir = tmp
        _table(args, counts, modes)
    return 0


def _table(args: argparse.Namespace, counts: list[int], modes: list[str]) -> None:
    w, h = args.size
    print(
        f"pair inference, DUSt3R 512_dpt architecture (random weights), {w}x{h} inputs, complete graph, "
        f"device {args.device}, our batch size {args.batch_size}, view cache {args.view_cache_gb} GB, "
        f"CPU allocator tuning {'off' if args.no_allocator_tuning else 'on'}"
    )
    print(
        "baseline = emulation of the official demo's loop (one pair at a time, batch 1, fp32, both images "
        "encoded for every pair)"
    )
    print(
        f"{'mode':<10} {'N':>3} {'pairs':>5} {'prec':>6} {'enc#':>7} {'encode s':>9} {'dec+hd s':>9} "
        f"{'total s':>9} {'s/pair':>8} {'base GB':>7} {'peak GB':>7} {'est GB':>6} {'speed':>6}"
    )
    for n in counts:
        base = None  # the reference when it runs, else the baseline
        for mode in modes:
            r = _run_mode(mode, n, args)
            if mode in ("reference", "baseline") and base is None and "skipped" not in r:
                base = r
            print(_row(r, base), flush=True)
        if args.reference_repo:
            for mode in modes[1:]:
                dev = _max_deviation(
                    Path(args.outputs_dir) / f"{mode}-{n}.npz", Path(args.outputs_dir) / f"reference-{n}.npz"
                )
                if dev is not None:
                    print(
                        f"  {mode} vs reference outputs (the pairs both ran): max |diff| / max |ref|: "
                        f"pts3d {dev[0]:.2e}, conf {dev[1]:.2e}"
                    )
    if args.baseline_pairs:
        print(f"* reference/baseline extrapolated from its first {args.baseline_pairs} pairs (per-pair mean x pairs)")
    print(
        "enc# = images through the encoder; base = memory in use after building the model (RSS on CPU, "
        "allocated on CUDA); peak = max RSS of the process (CPU: weights, Python and libraries included) or "
        "max CUDA memory allocated; est = estimate_memory's peak for our run (weights + run); speed = "
        "reference (else baseline) total / this total"
    )
    print(f"threads: {args.threads or 'torch default'}; timings are wall-clock seconds of one run (no warm-up)")


if __name__ == "__main__":
    sys.exit(main())
