"""Synthetic DUSt3R pair predictions with known cameras (alignment tests and bench_alignment.py).

Recipe of the reference's synth_ga.npz: smooth depth maps, 3-10 degree rotations, 0.3
translations, a random scale per pair in [0.5, 2], relative noise, confidences 1 + exp(N(1.2, 0.6)).
With ``metric=True`` and scales near 1 they stand for MASt3R's metric predictions.
"""

from __future__ import annotations

import numpy as np
import roma
import torch

from core.types import PairPredictions

__all__ = ["make_scene"]


def make_scene(
    sizes: list[tuple[int, int]],
    *,
    seed: int = 0,
    noise: float = 0.003,
    focals: list[float] | None = None,
    focal_bias: list[float] | None = None,
    pair_scale: tuple[float, float] = (0.5, 2.0),
    metric: bool = False,
    pairs: list[tuple[int, int]] | None = None,
) -> tuple[PairPredictions, dict]:
    """Consistent pair predictions (complete symmetric graph, or ``pairs``) for cameras with known poses/focals.

    Recipe of synth_ga.npz: smooth depth maps, ~3-10 degree rotations, 0.3 translations, a random
    scale per pair in [0.5, 2], ``noise`` relative noise, confidences 1 + exp(N(1.2, 0.6)).
    focal_bias[i] != 1: every pair whose view 1 is image i is predicted as if camera i had a focal
    focal_bias[i] times the true one (x and y of that pair's points divided by the bias).
    pair_scale: range of the random scale per pair; metric predictions of this scene (which is in
    metres: depths about 2 m, cameras up to 0.3 m apart) have scales near 1, e.g. (0.98, 1.02)
    with ``metric=True`` (the flag is passed to :class:`PairPredictions`). The same seed draws the
    same random numbers whatever the range. pairs: these (i, j) pairs instead of the complete
    symmetric graph (e.g. ``core.inputs.pairs.make_pairs(n, "swin-2")``).
    """
    rng = np.random.default_rng(seed)
    n = len(sizes)
    cams, pts_cam, fs, depths = [], [], [], []
    for k, (h, w) in enumerate(sizes):
        v, u = np.mgrid[:h, :w].astype(np.float64)
        pose = np.eye(4)
        rv = rng.normal(size=3)
        rv *= np.deg2rad(rng.uniform(3, 10)) / np.linalg.norm(rv)
        pose[:3, :3] = roma.rotvec_to_rotmat(torch.from_numpy(rv)).numpy()
        pose[:3, 3] = rng.uniform(-0.3, 0.3, size=3)
        f = focals[k] if focals is not None else rng.uniform(0.9, 1.4) * max(h, w)
        a, b, c = rng.uniform(0.5, 2.0, size=3)
        depth = 2.0 + 0.3 * np.sin(a * u / w * 2 * np.pi + c) * np.cos(b * v / h * 2 * np.pi) + 0.5 * v / h
        cams.append(pose)
        fs.append(f)
        depths.append(depth)
        pts_cam.append(np.stack(((u - w / 2) / f * depth, (v - h / 2) / f * depth, depth), -1))
    if pairs is None:
        pairs = [(i, j) for i in range(n) for j in range(i)]
        pairs += [(j, i) for i, j in pairs]
    p1, p2, c1, c2 = [], [], [], []
    for i, j in pairs:
        scale = rng.uniform(*pair_scale)
        i_from_j = np.linalg.inv(cams[i]) @ cams[j]
        a = pts_cam[i] * scale
        b = (pts_cam[j] @ i_from_j[:3, :3].T + i_from_j[:3, 3]) * scale
        if focal_bias is not None:
            squeeze = np.array([1 / focal_bias[i], 1 / focal_bias[i], 1.0])
            a, b = a * squeeze, b * squeeze
        a = a * (1 + noise * rng.normal(size=a.shape))
        b = b * (1 + noise * rng.normal(size=b.shape))
        p1.append(torch.from_numpy(a.astype(np.float32)))
        p2.append(torch.from_numpy(b.astype(np.float32)))
        c1.append(torch.from_numpy((1 + np.exp(rng.normal(1.2, 0.6, size=sizes[i]))).astype(np.float32)))
        c2.append(torch.from_numpy((1 + np.exp(rng.normal(1.2, 0.6, size=sizes[j]))).astype(np.float32)))
    preds = PairPredictions(
        pairs=torch.tensor(pairs, dtype=torch.int64),
        pts3d_1=tuple(p1),
        conf_1=tuple(c1),
        pts3d_2=tuple(p2),
        conf_2=tuple(c2),
        true_shapes=tuple(sizes),
        metric=metric,
    )
    return preds, {"world_from_cam": np.stack(cams), "focals": np.array(fs), "depths": depths}
