"""Global alignment: pairwise DUSt3R predictions -> one consistent scene.

The stages, one module each:

1. :mod:`~core.alignment.inputs`: check the pair predictions, put them on the device, per-image
   confidence; parse known focals/poses.
2. Two views (both directions of the pair): :mod:`~core.alignment.pairviewer`, the reference
   ``PairViewer`` (no optimisation): a focal per image from its own point map, the second camera
   by PnP-RANSAC, depths from the predictions.
3. Three or more views, the reference ``PointCloudOptimizer`` (FORMAT.md section 6):
   :mod:`~core.alignment.init` (minimum-spanning-tree initialisation with PnP, known
   focals/poses) -> :mod:`~core.alignment.optimizer` (Adam on per-pixel log-depths, camera
   poses, focal lengths and one similarity per pair, in the layout of
   :mod:`~core.alignment.params`), minimising :mod:`~core.alignment.loss`: the
   confidence-weighted distance between each image's back-projected depth map and every pair
   prediction that shows the image.
4. Metric predictions (MASt3R, ``PairPredictions.metric``): :mod:`~core.alignment.metric` puts
   the scene back in metres (``Scene.units`` "m"); otherwise the scale is arbitrary ("unknown").
5. :func:`align` here assembles the :class:`Scene`.

Same parameterisation, loss, optimiser and schedules as the reference, so results match it to
float precision.

Conventions: ``world_from_cam`` 4x4 in OpenCV axes (x right, y down, z forward); focal lengths
and principal points in pixels of the network input; per-image confidence = elementwise max over
the pair outputs that show the image. N views, E pairs (edges), pixel (u, v) = (column, row).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from config import AlignmentConfig
from core.alignment.init import initialize
from core.alignment.inputs import Inputs, parse_known_focals, parse_known_poses, prepare_inputs
from core.alignment.metric import metric_scale, rescale_world
from core.alignment.optimizer import AlignmentCancelled, optimize_from_raw
from core.alignment.pairviewer import apply_known_poses, pair_viewer, two_view_pair_scales
from core.alignment.params import decode, pair_scales
from core.errors import AlignmentError
from core.geometry import depth_to_world_points
from core.types import PairPredictions, ProgressFn, Scene, tensor_to_rgb

__all__ = ["AlignmentError", "AlignmentCancelled", "align"]

logger = logging.getLogger(__name__)

#: Above this disagreement between the pairs' metric scales (relative), the scene gets a warning.
METRIC_SPREAD_WARN = 0.1


@dataclass
class _Solution:
    """What the two-view path or the optimiser found."""

    poses: torch.Tensor
    """(N, 4, 4) world_from_cam."""
    focals: torch.Tensor
    """(N,) pixels."""
    depths: list[torch.Tensor]
    """N (H, W) z-depth."""
    final_loss: float | None
    warnings: list[str]
    extra: dict
    scales: torch.Tensor | None
    """(E,) scale s_e mapping each pair's prediction into the world (:mod:`core.alignment.metric`);
    None when the predictions are not metric or known poses fixed the world scale."""


def align(
    preds: PairPredictions,
    cfg: AlignmentConfig,
    *,
    device: str | torch.device = "cpu",
    known_poses: dict[int, np.ndarray] | None = None,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Scene:
    """Align pairwise predictions into one scene (FORMAT.md section 6).

    preds: P pair outputs over N views (N == 2: PairViewer path, no optimisation; N >= 3: the
    point-cloud optimiser with 'mst' init). cfg: niter, schedule, lr, lr_min, min_conf_thr,
    shared_focal, known_focal (1 or N values, pixels of the network input; fixed), early stop.
    known_poses: {image index: (4, 4) world_from_cam, OpenCV axes}; those cameras stay fixed and
    fix the world frame (and, with two or more distinct centres, its scale).
    progress: called ``progress("align", done, niter)`` after every iteration.
    cancel: polled before every iteration; True raises :class:`AlignmentCancelled`.

    Returns a dense :class:`Scene`: depths (H, W) z-depth, pts3d (H, W, 3) world, conf = per-image
    max raw confidence, focals (N,), principal points (W/2, H/2), world_from_cam (N, 4, 4),
    final_loss (loss of the last iteration before its step; None for two views), diagnostics in
    ``extra``, units "m" when ``preds.metric`` (and no two known poses fix the scale; then
    ``extra`` also holds ``metres_per_unit``, the factor applied, and ``metric_scale_spread``),
    else "unknown". Raises :class:`AlignmentError` for degenerate input (non-finite values, focal
    estimate 0, disconnected pairs, diverging loss); recoverable problems go to ``Scene.warnings``.
    All computation is float32 whatever precision the predictions came in.
    """
    _check_cfg(cfg)
    t0 = time.perf_counter()
    dev = torch.device(device)
    inp = prepare_inputs(preds, dev)
    known_f = parse_known_focals(cfg, inp.n)
    known_p = parse_known_poses(known_poses, inp.n, dev)
    warnings = _low_confidence_warnings(inp, cfg.min_conf_thr)
    with torch.autocast(device_type=dev.type, enabled=False):
        if inp.n == 2 and (0, 1) in inp.edges and (1, 0) in inp.edges:
            solution = _solve_two_views(inp, cfg, known_f, known_p, metric=preds.metric)
        else:
            solution = _solve_optimizer(
                inp, cfg, known_f, known_p, metric=preds.metric, progress=progress, cancel=cancel
            )
    units = _to_metres(solution, known_p) if preds.metric else "unknown"
    solution.extra["seconds"] = time.perf_counter() - t0
    scene = _make_scene(preds, inp, solution, warnings + solution.warnings, units)
    logger.info(
        "aligned %d views (%s) in %.2f s, final loss %s, units %s",
        inp.n,
        solution.extra["method"],
        solution.extra["seconds"],
        solution.final_loss,
        units,
    )
    return scene


def _check_cfg(cfg: AlignmentConfig) -> None:
    if not isinstance(cfg, AlignmentConfig):
        raise TypeError(f"cfg must be an AlignmentConfig, got {type(cfg).__name__}")
    if cfg.init != "mst":
        raise ValueError(f"unknown init {cfg.init!r}; only 'mst' is implemented")
    if cfg.schedule not in ("linear", "cosine"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; expected 'linear' or 'cosine'")


def _low_confidence_warnings(inp: Inputs, min_conf_thr: float) -> list[str]:
    return [
        f"image {inp.label(k)}: no pixel has confidence above {min_conf_thr:g}; its points are unreliable"
        for k in range(inp.n)
        if not bool((inp.im_conf[k] > min_conf_thr).any())
    ]


def _solve_two_views(
    inp: Inputs, cfg: AlignmentConfig, known_f: list[float] | None, known_p: dict[int, torch.Tensor], *, metric: bool
) -> _Solution:
    poses, focals, depths, warnings, extra = pair_viewer(inp, cfg, known_f)
    if known_p:
        poses, depths = apply_known_poses(poses, depths, known_p)
    extra.update(method="pair_viewer", iterations=0, early_stopped=False, loss_history=[])
    # the world is the reference pair's own frame, unless two known poses rescaled it
    scales = two_view_pair_scales(inp, extra["reference_image"]) if metric and len(known_p) < 2 else None
    return _Solution(poses, focals, depths, None, warnings, extra, scales)


def _solve_optimizer(
    inp: Inputs,
    cfg: AlignmentConfig,
    known_f: list[float] | None,
    known_p: dict[int, torch.Tensor],
    *,
    metric: bool,
    progress: ProgressFn | None,
    cancel: Callable[[], bool] | None,
) -> _Solution:
    start = initialize(inp, cfg, known_f, known_p)
    opt = optimize_from_raw(
        inp,
        start.raw,
        cfg,
        norm_pw_scale=start.norm_pw_scale,
        fixed_poses=start.fixed_poses,
        fixed_focal=known_f is not None,
        shared_focal=cfg.shared_focal and known_f is None,
        progress=progress,
        cancel=cancel,
    )
    poses, focals, depths = decode(opt.raw, inp.shapes)
    for k, pose in known_p.items():
        poses[k] = pose
    extra = {
        "method": "optimizer",
        "iterations": opt.iterations,
        "early_stopped": opt.early_stopped,
        "loss_history": opt.loss_history,
        "init_loss": opt.init_loss,
        "mst_edges": [list(e) for e in start.mst.edges],
        "mst_focals": [None if f is None else float(f) for f in start.mst.focals],
    }
    scales = pair_scales(opt.raw.pw_poses, True) if metric and start.norm_pw_scale else None
    return _Solution(poses, focals, depths, opt.final_loss, list(start.warnings), extra, scales)


def _to_metres(sol: _Solution, known_p: dict[int, torch.Tensor]) -> str:
    """Rescale a solution of metric predictions to metres (in place); returns the scene's units.

    The factor is :func:`core.alignment.metric.metric_scale` of the pair scales; the world is
    scaled about the known camera (when one pose is known, it stays exactly there) or the origin.
    """
    if sol.scales is None:
        logger.info("metric predictions, but the known poses fix the scale: the scene is in their units")
        return "unknown"
    k, spread = metric_scale(sol.scales)
    if k != 1.0:
        centre = known_p[min(known_p)][:3, 3] if known_p else None
        sol.poses, sol.depths = rescale_world(sol.poses, sol.depths, k, centre)
    sol.extra.update(metres_per_unit=k, metric_scale_spread=spread)
    if spread > METRIC_SPREAD_WARN:
        sol.warnings.append(
            f"the metric scale is uncertain: the pairs' scales disagree by about {spread:.0%} (median); "
            "distances in metres may be off by as much"
        )
    return "m"


def _make_scene(preds: PairPredictions, inp: Inputs, sol: _Solution, warnings: list[str], units: str) -> Scene:
    """The Scene (CPU float32 arrays); raises :class:`AlignmentError` on any non-finite value."""
    poses, focals, depths, final_loss = sol.poses, sol.focals, sol.depths, sol.final_loss
    pps = torch.tensor([(w / 2, h / 2) for h, w in inp.shapes], dtype=torch.float32, device=inp.device)
    pts3d = [depth_to_world_points(d, focals[k], pps[k], poses[k]) for k, d in enumerate(depths)]
    bad = [
        inp.label(k)
        for k in range(inp.n)
        if not (
            torch.isfinite(poses[k]).all()
            and torch.isfinite(focals[k])
            and torch.isfinite(depths[k]).all()
            and torch.isfinite(pts3d[k]).all()
        )
    ]
    if bad or (final_loss is not None and not math.isfinite(final_loss)):
        raise AlignmentError(f"global alignment produced non-finite values for image(s) {', '.join(bad) or '-'}")
    if preds.images is not None:
        images = tuple(tensor_to_rgb(im) for im in preds.images)
    else:
        images = tuple(np.full((h, w, 3), 128, dtype=np.uint8) for h, w in inp.shapes)
    return Scene(
        images=images,
        world_from_cam=poses.detach().cpu().numpy().astype(np.float32),
        focals=focals.detach().cpu().numpy().astype(np.float32),
        principal_points=pps.cpu().numpy(),
        depths=tuple(d.detach().cpu().numpy().astype(np.float32) for d in depths),
        pts3d=tuple(p.detach().cpu().numpy().astype(np.float32) for p in pts3d),
        conf=tuple(c.detach().cpu().numpy().astype(np.float32) for c in inp.im_conf),
        final_loss=None if final_loss is None else float(final_loss),
        names=inp.names,
        engine="dust3r",
        warnings=tuple(warnings),
        extra=sol.extra,
        units=units,
    )
