"""Stage 3b of the alignment: the reference Adam loop, its learning-rate schedule and early stop.

:func:`optimize_from_raw` runs ``cfg.niter`` Adam steps (betas (0.9, 0.9)) on the raw
parameters (:mod:`core.alignment.params`) minimising :func:`core.alignment.loss.evaluate`, with
the reference's linear or cosine schedule, so results match it to float precision.

Early stop (``AlignmentConfig.early_stop``, off by default for parity): when the mean loss over
the last ``early_stop_patience`` iterations improved on the window before by less than
``early_stop_tol`` per iteration (relative), the schedule is cut short: the learning rate decays
linearly from its current value to ``lr_min`` over ``early_stop_anneal`` more iterations (the
loss of a run is mostly Adam noise that shrinks with the learning rate, so a short annealing
tail settles it nearly as well as the full schedule), then the loop stops.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from config import AlignmentConfig
from core.alignment.inputs import Inputs, prepare_inputs
from core.alignment.loss import Problem, evaluate
from core.alignment.params import RawParams, flat_depth
from core.errors import AlignmentError, Cancelled
from core.types import PairPredictions, ProgressFn

__all__ = ["AlignmentCancelled", "OptimResult", "optimize_from_raw", "lr_at", "plateaued"]

logger = logging.getLogger(__name__)


class AlignmentCancelled(Cancelled):
    """``cancel()`` returned True during the optimisation."""


@dataclass
class OptimResult:
    """Outcome of :func:`optimize_from_raw`."""

    raw: RawParams
    """Final parameters."""
    loss_history: list[float]
    """Loss before each step (reference semantics)."""
    lr_history: list[float]
    """Learning rate of each step."""
    iterations: int
    early_stopped: bool
    final_loss: float
    """Loss before the last step (``init_loss`` when no step ran)."""
    init_loss: float
    """Loss at the starting parameters."""


def lr_at(cfg: AlignmentConfig, it: int) -> float:
    """Learning rate of iteration ``it`` of ``cfg.niter`` (reference linear or cosine schedule)."""
    t = it / cfg.niter
    if cfg.schedule == "cosine":
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(t * math.pi)) / 2
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.lr_min - cfg.lr) * t
    raise ValueError(f"unknown schedule {cfg.schedule!r}; expected 'linear' or 'cosine'")


def plateaued(history: list[float], window: int, tol: float) -> bool:
    """True when mean(last window) improved on mean(window before) by < tol per iteration (relative)."""
    recent = sum(history[-window:]) / window
    before = sum(history[-2 * window : -window]) / window
    return (before - recent) < tol * window * before


class _Schedule:
    """The learning rate per iteration and the loop's length, with the early-stop tail."""

    def __init__(self, cfg: AlignmentConfig) -> None:
        self.cfg = cfg
        self.n_total = cfg.niter
        self.tail_start: int | None = None
        self.tail_lr0 = cfg.lr

    def lr(self, it: int) -> float:
        if self.tail_start is None:
            return lr_at(self.cfg, it)
        return self.tail_lr0 + (self.cfg.lr_min - self.tail_lr0) * (it - self.tail_start) / (
            self.n_total - self.tail_start
        )

    def progress_done(self, it: int) -> int:
        """Iterations done as shown on the progress bar (the tail is stretched so it ends at niter)."""
        if self.tail_start is None:
            return it
        frac = (it - self.tail_start) / (self.n_total - self.tail_start)
        return self.tail_start + round(frac * (self.cfg.niter - self.tail_start))

    def after_step(self, history: list[float], it: int, lr: float) -> None:
        """Start the annealing tail when the loss has plateaued (early stop on, not started yet)."""
        cfg = self.cfg
        patience, anneal = cfg.early_stop_patience, cfg.early_stop_anneal
        if (
            cfg.early_stop
            and self.tail_start is None
            and it >= 2 * patience
            and it + anneal < cfg.niter
            and plateaued(history, patience, cfg.early_stop_tol)
        ):
            self.tail_start, self.tail_lr0, self.n_total = it, lr, it + anneal
            logger.debug("early stop: loss plateaued at iteration %d, annealing until %d", it, self.n_total)


@dataclass
class _Variables:
    """The optimised tensors (leaves) and the gradient mask of the fixed poses."""

    logd: torch.Tensor
    """(total,) flat log-depths."""
    im_poses: torch.Tensor
    """(N, 7)."""
    pw_poses: torch.Tensor
    """(E, 8)."""
    focal_param: torch.Tensor
    """(N, 1), or (1, 1) for a shared focal."""
    pose_mask: torch.Tensor | None
    """(N, 1): 0 for fixed poses; None when no pose or every pose is fixed."""


def _make_variables(
    raw: RawParams, prob: Problem, *, fixed_poses: tuple[int, ...], fixed_focal: bool, shared_focal: bool
) -> _Variables:
    n = prob.n
    logd = flat_depth(raw.im_depthmaps, prob.areas).clone().requires_grad_(True)
    im_poses = raw.im_poses.clone().requires_grad_(len(fixed_poses) < n)
    pw_poses = raw.pw_poses.clone().requires_grad_(True)
    focal_init = raw.im_focals.mean(0, keepdim=True) if shared_focal else raw.im_focals
    focal_param = focal_init.clone().requires_grad_(not fixed_focal)
    pose_mask = None
    if 0 < len(fixed_poses) < n:
        pose_mask = torch.ones((n, 1), device=prob.device)
        pose_mask[list(fixed_poses)] = 0
    return _Variables(logd, im_poses, pw_poses, focal_param, pose_mask)


def _check_raw(raw: RawParams, prob: Problem) -> None:
    n = prob.n
    if raw.im_poses.shape != (n, 7) or raw.im_focals.shape != (n, 1) or raw.pw_poses.shape != (prob.n_edges, 8):
        raise ValueError(
            f"raw parameters do not match the predictions: im_poses {tuple(raw.im_poses.shape)}, im_focals "
            f"{tuple(raw.im_focals.shape)}, pw_poses {tuple(raw.pw_poses.shape)} for {n} images, {prob.n_edges} pairs"
        )


def optimize_from_raw(
    preds: PairPredictions | Inputs,
    raw: RawParams,
    cfg: AlignmentConfig,
    *,
    device: str | torch.device = "cpu",
    norm_pw_scale: bool = True,
    fixed_poses: tuple[int, ...] = (),
    fixed_focal: bool = False,
    shared_focal: bool = False,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    problem: Problem | None = None,
) -> OptimResult:
    """The reference optimisation loop started from given raw parameters.

    Runs ``cfg.niter`` Adam steps (betas (0.9, 0.9)) with the ``cfg.schedule`` learning rate;
    ``loss_history[n]`` is the loss before step n (reference semantics). Fixed poses/focals keep
    their values exactly; ``shared_focal`` optimises the mean of the focal parameters as one value.
    norm_pw_scale: the pair scales are normalised (geometric mean ``BASE_SCALE``).
    progress: ``progress("align", done, cfg.niter)`` after every step. cancel: polled before
    every step; True raises :class:`AlignmentCancelled`. problem: a prebuilt :class:`Problem`.
    """
    inp = preds if isinstance(preds, Inputs) else prepare_inputs(preds, torch.device(device))
    prob = problem if problem is not None else Problem(inp)
    raw = raw.to(inp.device)
    _check_raw(raw, prob)
    var = _make_variables(raw, prob, fixed_poses=fixed_poses, fixed_focal=fixed_focal, shared_focal=shared_focal)

    def loss_at(with_grad: bool) -> torch.Tensor:
        return evaluate(
            prob,
            var.logd,
            var.im_poses,
            var.pw_poses,
            var.focal_param,
            norm_pw_scale=norm_pw_scale,
            shared_focal=shared_focal,
            with_grad=with_grad,
        )

    params = [p for p in (var.pw_poses, var.logd, var.im_poses, var.focal_param) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.9))
    init_loss = float(loss_at(False))
    sched = _Schedule(cfg)
    history: list[float] = []
    lrs: list[float] = []
    it = 0
    while it < sched.n_total:
        if cancel is not None and cancel():
            raise AlignmentCancelled(f"alignment cancelled at iteration {it}/{sched.n_total}")
        lr = sched.lr(it)
        loss_f = _step(optimizer, lr, loss_at, var)
        if not math.isfinite(loss_f):
            raise AlignmentError(f"global alignment diverged: loss is {loss_f} at iteration {it}")
        history.append(loss_f)
        lrs.append(lr)
        it += 1
        if progress is not None:
            progress("align", sched.progress_done(it), cfg.niter)
        sched.after_step(history, it, lr)
    return OptimResult(
        raw=_final_params(raw, var, prob, shared_focal),
        loss_history=history,
        lr_history=lrs,
        iterations=len(history),
        early_stopped=sched.tail_start is not None,
        final_loss=history[-1] if history else init_loss,
        init_loss=init_loss,
    )


def _step(
    optimizer: torch.optim.Optimizer, lr: float, loss_at: Callable[[bool], torch.Tensor], var: _Variables
) -> float:
    """One Adam step at learning rate ``lr``; returns the loss before it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss = loss_at(True)
    if var.pose_mask is not None and var.im_poses.grad is not None:
        var.im_poses.grad.mul_(var.pose_mask)
    optimizer.step()
    return float(loss)


def _final_params(raw: RawParams, var: _Variables, prob: Problem, shared_focal: bool) -> RawParams:
    """The optimised variables back in the raw layout (padding of ``raw.im_depthmaps`` kept)."""
    out_depth = raw.im_depthmaps.clone()
    flat = var.logd.detach()
    for i, a in enumerate(prob.areas):
        out_depth[i, :a] = flat[prob.offsets[i] : prob.offsets[i] + a]
    n = prob.n
    focal_out = var.focal_param.detach().expand(n, 1).clone() if shared_focal else var.focal_param.detach().clone()
    return RawParams(out_depth, var.im_poses.detach().clone(), focal_out, var.pw_poses.detach().clone())
