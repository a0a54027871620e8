"""Checkpoint loading speed and memory: the full 512_dpt network in both official formats.

Builds DUSt3R_ViTLarge_BaseDecoder_512_dpt with random weights, saves it the way Naver's files are
written (a folder with config.json + model.safetensors, alias tensors dropped and recorded in the
file metadata; and an original-style .pth {'model': state_dict, 'args': Namespace(model=...)}),
then loads each with ``model.load_model`` in a fresh subprocess and reports the load time and the
peak resident memory (ru_maxrss) of that process. Needs about 5 GB of free disk and RAM.

    python3 bench/bench_load.py                # both formats, temporary folder
    python3 bench/bench_load.py --repeat 3     # three fresh processes per format
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONSTRUCTOR_512_DPT = (
    "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12)"
)


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status in MiB (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Linux: VmHWM, which starts afresh at exec. ru_maxrss is not used there: after fork+exec it
    inherits the parent's high-water mark (the parent held the whole model while writing it).
    Elsewhere: ru_maxrss (KiB on Linux/BSD, bytes on macOS).
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def child_load(source: str) -> None:
    """Load one checkpoint, then read every weight once; print a JSON line with the figures."""
    import torch

    import model as M

    rss_import = _proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    net = M.load_model(source, "cpu")
    load_s = time.perf_counter() - t0
    rss_loaded = _proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    with torch.no_grad():  # what the first forward pays: every weight paged in once
        checksum = [float(p.sum()) for p in net.parameters()]
    touch_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "load_s": load_s,
                "touch_s": touch_s,
                "peak_rss_mb": peak_rss_mb(),
                "rss_after_import_mb": rss_import,
                "rss_after_load_mb": rss_loaded,
                "anon_mb": _proc_status_mb("RssAnon"),
                "file_mb": _proc_status_mb("RssFile"),
                "n_params": sum(p.numel() for p in net.parameters()),
                "checksum": checksum,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


def write_checkpoints(folder: Path, seed: int) -> dict[str, Path]:
    """Random-weight 512_dpt in both formats; returns {format: path}."""
    import torch
    from safetensors.torch import save_model

    import model as M

    torch.manual_seed(seed)
    with torch.device("meta"):
        net = M.DUSt3R.from_config(M.OFFICIAL_CONFIGS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"])
    net = net.to_empty(device="cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02)
    hub = folder / "hub_format"
    hub.mkdir()
    (hub / "config.json").write_text(
        json.dumps(M.OFFICIAL_CONFIGS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"].to_config(), sort_keys=True, indent=2)
    )  # bare Infinity
    save_model(net, str(hub / "model.safetensors"))  # drops alias tensors, records them in metadata
    pth = folder / "checkpoint.pth"
    torch.save({"model": net.state_dict(), "args": argparse.Namespace(model=CONSTRUCTOR_512_DPT)}, pth)
    return {"safetensors (folder)": hub, "pth": pth}


def run_child(flag: str, arg: Path) -> str:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), flag, str(arg)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{flag} {arg} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else list(path.iterdir())
    return sum(f.stat().st_size for f in files) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="fresh processes per format (default 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the checkpoints (default: temp)")
    parser.add_argument("--seed", type=int, default=0, help="random-weight seed")
    parser.add_argument("--child-load", help=argparse.SUPPRESS)
    parser.add_argument("--child-write", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_load:
        child_load(args.child_load)
        return 0
    if args.child_write:
        paths = write_checkpoints(Path(args.child_write), args.seed)
        print(json.dumps({k: str(v) for k, v in paths.items()}))
        return 0
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="dust3r_bench_load_") as tmp:
        t0 = time.perf_counter()
        sources = {k: Path(v) for k, v in json.loads(run_child("--child-write", Path(tmp))).items()}
        print(f"wrote random-weight 512_dpt in both formats in {time.perf_counter() - t0:.1f} s ({tmp})")
        rows, checksums = [], {}
        for name, path in sources.items():
            for _ in range(args.repeat):
                r = json.loads(run_child("--child-load", path))
                checksums[name] = r["checksum"]
                rows.append((name, size_mb(path), r))
        print(
            f"\nload_model(..., 'cpu') in a fresh process each (page cache warm: files just written); "
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, torch threads {rows[0][2]['torch_threads']}"
        )
        header = (
            f"{'format':<22}{'file MiB':>9}{'load s':>8}{'read-all s':>11}{'RSS import':>11}"
            f"{'RSS loaded':>11}{'peak RSS':>10}{'anon':>7}{'file':>7}"
        )
        print(header)
        print("-" * len(header))
        for name, mb, r in rows:
            print(
                f"{name:<22}{mb:>9.0f}{r['load_s']:>8.2f}{r['touch_s']:>11.2f}{r['rss_after_import_mb']:>11.0f}"
                f"{r['rss_after_load_mb']:>11.0f}{r['peak_rss_mb']:>10.0f}{r['anon_mb']:>7.0f}{r['file_mb']:>7.0f}"
            )
        print(
            "MiB. load s = load_model (weights memory-mapped, paged in on first use); read-all s = reading every "
            "weight once afterwards (what the first forward pays); peak RSS = VmHWM after read-all; anon/file = "
            "private vs file-backed (page-cache, shared, reclaimable) resident memory at the end."
        )
        params = {r["n_params"] for _, _, r in rows}
        same = len({json.dumps(c) for c in checksums.values()}) == 1
        print(f"parameters: {sorted(params)}; both formats give identical weights: {same}")
        return 0 if same and params == {571_171_208} else 1


if __name__ == "__main__":
    raise SystemExit(main())
