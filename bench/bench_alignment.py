"""Global-alignment benchmark on synthetic pair predictions.

Builds geometrically consistent pair predictions for N views of H x W (default 512x384, like the
network's output for 4:3 photos): smooth depth maps, random cameras (3-10 deg, 0.3 translation; tests/core/synthetic_pairs.py),
focal in [0.9, 1.4] * max(H, W), one random scale per pair in [0.5, 2], 0.3% relative noise,
confidences 1 + exp(N(1.2, 0.6)) (the recipe of tests/fixtures/synth_ga.npz). Complete
symmetric pair graph, 'mst' init, then ``--iters`` Adam iterations with the linear schedule.

Rows (all start from the same initial parameters, same Adam settings):
  baseline-loop     BASELINE emulating the reference's structure (written here, not the
                    reference code): world point maps for all images, then a Python loop over the
                    pairs: transform each pair's predictions by its pose, L1-of-Euclidean distance
                    to the gathered image points, log-confidence weights, autograd backward.
  baseline-stacked  BASELINE emulating the reference PointCloudOptimizer.forward: the same loss on
                    zero-padded stacked (E, max_area, 3) tensors gathered by pair index.
  ours              core.alignment.optimizer's loop (per-camera-frame residuals, chunked,
                    hand-written per-pixel gradient).
  ours+early-stop   the same with cfg.early_stop=True (--es-tol/--es-patience/--es-anneal).

Usage: python3 bench/bench_alignment.py [--views 3 8] [--iters 300] [--size 512x384]
       [--threads N] [--skip-baseline] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import roma
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import AlignmentConfig  # noqa: E402
from core.alignment.init import initialize  # noqa: E402
from core.alignment.inputs import Inputs, prepare_inputs  # noqa: E402
from core.alignment.optimizer import lr_at, optimize_from_raw  # noqa: E402
from core.alignment.params import BASE_SCALE, FOCAL_BREAK, RawParams  # noqa: E402
from core.geometry import signed_expm1  # noqa: E402
from tests.core.synthetic_pairs import make_scene  # noqa: E402

# ----------------------------------------------------------------------------------------------
# BASELINE: emulates the reference's structure (autograd through every per-pixel op).
# ----------------------------------------------------------------------------------------------


def _decode_poses(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = p[:, :4] / p[:, :4].norm(dim=-1, keepdim=True)
    return roma.unitquat_to_rotmat(q), signed_expm1(p[:, 4:7])


def run_baseline(inp: Inputs, raw: RawParams, cfg: AlignmentConfig, *, stacked: bool) -> tuple[float, float]:
    """Reference-style optimisation of the same loss; returns (seconds, final loss)."""
    shapes = inp.shapes
    areas = [h_ * w_ for h_, w_ in shapes]
    max_area = max(areas)
    edges = inp.edges
    ei = torch.tensor([i for i, _ in edges])
    ej = torch.tensor([j for _, j in edges])
    area_i = float(sum(areas[i] for i, _ in edges))
    area_j = float(sum(areas[j] for _, j in edges))

    def pad(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, *t.shape[2:])
        return torch.cat((t, t.new_zeros((max_area - len(t),) + t.shape[1:])))

    grid = torch.stack(
        [
            pad(torch.stack(torch.meshgrid(torch.arange(w_), torch.arange(h_), indexing="xy"), -1).float())
            for h_, w_ in shapes
        ]
    )  # (N, A, 2)
    pp = torch.tensor([(w_ / 2, h_ / 2) for h_, w_ in shapes])
    pred_i = [p.reshape(-1, 3) for p in inp.pred1]
    pred_j = [p.reshape(-1, 3) for p in inp.pred2]
    w_i = [c.log().reshape(-1) for c in inp.conf1]
    w_j = [c.log().reshape(-1) for c in inp.conf2]
    if stacked:
        s_pred_i = torch.stack([pad(p) for p in inp.pred1])
        s_pred_j = torch.stack([pad(p) for p in inp.pred2])
        s_w_i = torch.stack([pad(c.log()) for c in inp.conf1])
        s_w_j = torch.stack([pad(c.log()) for c in inp.conf2])

    depth = raw.im_depthmaps.clone().requires_grad_(True)
    im_poses = raw.im_poses.clone().requires_grad_(True)
    focals = raw.im_focals.clone().requires_grad_(True)
    pw = raw.pw_poses.clone().requires_grad_(True)
    opt = torch.optim.Adam([pw, depth, im_poses, focals], lr=cfg.lr, betas=(0.9, 0.9))

    def forward() -> torch.Tensor:
        rot_e, t_e = _decode_poses(pw)
        scale = pw[:, 7].exp() * (math.log(BASE_SCALE) - pw[:, 7].mean()).exp()
        rot_e = rot_e * scale[:, None, None]
        t_e = t_e * scale[:, None]
        rot_i, t_i = _decode_poses(im_poses)
        f = (focals / FOCAL_BREAK).exp()  # (N, 1)
        d = depth.exp()[..., None]
        cam = torch.cat((d * (grid - pp[:, None]) / f[:, :, None], d), -1)  # (N, A, 3)
        world = torch.einsum("nij,naj->nai", rot_i, cam) + t_i[:, None]
        if stacked:
            ai = torch.einsum("eij,eaj->eai", rot_e, s_pred_i) + t_e[:, None]
            aj = torch.einsum("eij,eaj->eai", rot_e, s_pred_j) + t_e[:, None]
            li = ((world[ei] - ai).norm(dim=-1) * s_w_i).sum() / area_i
            lj = ((world[ej] - aj).norm(dim=-1) * s_w_j).sum() / area_j
            return li + lj
        loss = 0
        for e, (i, j) in enumerate(edges):
            ai = pred_i[e] @ rot_e[e].T + t_e[e]
            aj = pred_j[e] @ rot_e[e].T + t_e[e]
            loss = loss + ((world[i, : areas[i]] - ai).norm(dim=-1) * w_i[e]).sum() / area_i
            loss = loss + ((world[j, : areas[j]] - aj).norm(dim=-1) * w_j[e]).sum() / area_j
        return loss

    t0 = time.perf_counter()
    loss_f = float("nan")
    for it in range(cfg.niter):
        lr = lr_at(cfg, it)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = forward()
        loss.backward()
        opt.step()
        loss_f = float(loss.detach())
    return time.perf_counter() - t0, loss_f


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, nargs="+", default=[3, 8], help="numbers of views to run")
    ap.add_argument("--iters", type=int, default=300, help="Adam iterations")
    ap.add_argument("--size", default="512x384", help="WxH of every view")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--skip-baseline", action="store_true", help="only run ours")
    ap.add_argument("--baseline", choices=["loop", "stacked", "both"], default="both", help="which baseline rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--es-tol", type=float, default=AlignmentConfig().early_stop_tol, help="early_stop_tol for the early-stop row"
    )
    ap.add_argument("--es-patience", type=int, default=30, help="early_stop_patience for the early-stop row")
    ap.add_argument("--es-anneal", type=int, default=60, help="early_stop_anneal for the early-stop row")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(x) for x in args.size.lower().split("x"))
    cfg = AlignmentConfig(niter=args.iters, schedule="linear", lr=0.01, lr_min=1e-6)
    cfg_es = dataclasses.replace(
        cfg,
        early_stop=True,
        early_stop_tol=args.es_tol,
        early_stop_patience=args.es_patience,
        early_stop_anneal=args.es_anneal,
    )
    print(
        f"# global alignment, {w}x{h}, {args.iters} iterations, linear schedule, torch threads "
        f"{torch.get_num_threads()}; early stop: tol {args.es_tol:g}, patience {args.es_patience}, "
        f"anneal {args.es_anneal}"
    )
    print(f"{'views':>5} {'pairs':>5} {'method':<17} {'seconds':>8} {'iters':>5} {'final loss':>12} {'vs ours':>8}")
    for n in args.views:
        preds, _ = make_scene([(h, w)] * n, seed=args.seed)
        inp = prepare_inputs(preds, torch.device("cpu"))
        t0 = time.perf_counter()
        init = initialize(inp, cfg, None, {})
        t_init = time.perf_counter() - t0
        rows = []
        t0 = time.perf_counter()
        res = optimize_from_raw(inp, init.raw, cfg)
        t_ours = time.perf_counter() - t0
        rows.append(("ours", t_ours, res.iterations, res.final_loss))
        t0 = time.perf_counter()
        res_es = optimize_from_raw(inp, init.raw, cfg_es)
        rows.append(("ours+early-stop", time.perf_counter() - t0, res_es.iterations, res_es.final_loss))
        if not args.skip_baseline:
            kinds = ["loop", "stacked"] if args.baseline == "both" else [args.baseline]
            for kind in kinds:
                secs, loss = run_baseline(inp, init.raw, cfg, stacked=kind == "stacked")
                rows.append((f"baseline-{kind}", secs, args.iters, loss))
        for name, secs, iters, loss in rows:
            print(f"{n:>5} {len(inp.edges):>5} {name:<17} {secs:8.2f} {iters:>5} {loss:12.6g} {secs / t_ours:8.2f}x")
        print(f"{n:>5} {len(inp.edges):>5} {'(mst init, once)':<17} {t_init:8.2f}")
        for name, secs, _, loss in rows:
            if name.startswith("baseline"):
                print(
                    f"#   ours / {name}: time ratio {t_ours / secs:.3f}, loss rel. diff "
                    f"{abs(res.final_loss - loss) / abs(loss):.2e}"
                )
        print(
            f"#   early stop: {res_es.iterations} iterations, loss {res_es.final_loss:.6g} "
            f"({(res_es.final_loss - res.final_loss) / res.final_loss:+.3%} vs full run)"
        )


if __name__ == "__main__":
    main()
