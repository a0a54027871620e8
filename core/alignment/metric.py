"""Metric scale: put an aligned scene back in metres when the pair predictions were metric.

Why the aligned scene is not in metres. Each pair e = (i, j) predicts points P_e in camera i's
frame; MASt3R predicts them in metres. The optimiser explains the world points as

    X = s_e (R_e P_e + T_e)

(one similarity per pair, :mod:`core.alignment.loss`). R_e and T_e keep lengths, so a length of
L metres in pair e's prediction is s_e * L world units: pair e says one world unit is 1 / s_e
metres. The loss only fixes the scales up to one common factor (scaling the world and every s_e
by c scales the loss by c), so the optimiser pins their geometric mean to ``BASE_SCALE``
(:func:`core.alignment.params.pair_scales`); that is what throws the metric scale away.

Restoring it. Each pair gives an estimate m_e = 1 / s_e of metres per world unit, taken from the
optimised scales; they agree when the predictions agree and differ by each pair's metric error.
The factor is their median in log space,

    k = exp(median_e(-log s_e)),

robust to a minority of pairs with a wrong metric scale (little overlap, a bad prediction). (The
geometric mean would be no estimate at all: the normalisation makes it exactly 1 / BASE_SCALE
whatever the predictions say.) Multiplying every world coordinate and every depth by k puts the
scene in metres; rotations and focal lengths do not change, and the scaled scene minimises the
loss with the scales k * s_e, whose median is 1: the scene is in the predictions' own units.
The two-view path (no optimiser) has two such estimates: 1 for the reference pair, whose frame
is the world, and the other direction's scale, found by registering the points both directions
predict for the reference image (:func:`core.alignment.pairviewer.two_view_pair_scales`).

When known poses fix the scale (two or more), the world is in their units and is left alone.
"""

from __future__ import annotations

import math

import torch

__all__ = ["metric_scale", "rescale_world"]


def metric_scale(scales: torch.Tensor) -> tuple[float, float]:
    """Metres per world unit from the optimised pair scales s_e (E,) of metric predictions.

    Returns (k, spread): k = exp(median(-log s_e)) (the mean of the two middle values for an even
    E), spread = exp(median |log s_e - median log s|) - 1, the pairs' typical disagreement (0.02:
    about 2%).

    >>> k, spread = metric_scale(torch.tensor([0.5, 0.5, 0.4, 0.6, 5.0]))  # one pair far off
    >>> round(k, 6), round(spread, 6)
    (2.0, 0.2)
    """
    if scales.ndim != 1 or scales.numel() == 0:
        raise ValueError(f"expected (E,) pair scales with E >= 1, got shape {tuple(scales.shape)}")
    logs = scales.detach().double().log()
    if not bool(torch.isfinite(logs).all()):
        raise ValueError(f"pair scales must be finite and > 0, got {scales.tolist()}")
    mid = float(logs.quantile(0.5))
    mad = float((logs - mid).abs().quantile(0.5))
    return math.exp(-mid), math.expm1(mad)


def rescale_world(
    poses: torch.Tensor, depths: list[torch.Tensor], k: float, centre: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Scale the world by ``k`` about ``centre`` (3,) (default the origin).

    poses (N, 4, 4) world_from_cam, depths N (H, W) z-depth -> new poses (camera centres
    c + k (t - c), rotations kept) and depths * k. A camera at ``centre`` stays exactly there.
    """
    poses = poses.clone()
    t = poses[:, :3, 3]
    if centre is None:
        poses[:, :3, 3] = t * k
    else:
        poses[:, :3, 3] = centre + (t - centre) * k
    return poses, [d * k for d in depths]
