"""Stage 1 of the alignment: check the pair predictions and put them on the working device.

Also the user's known focal lengths and known poses, validated and converted. N views, E pairs
(edges); each pair (i, j) holds view-1 points (image i) and view-2 points (image j), both in
camera i's frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from config import AlignmentConfig
from core.errors import AlignmentError
from core.types import PairPredictions

__all__ = ["Inputs", "prepare_inputs", "parse_known_focals", "parse_known_poses"]


@dataclass(frozen=True)
class Inputs:
    """Validated predictions on the working device, float32."""

    shapes: tuple[tuple[int, int], ...]
    """N (H, W)."""
    edges: tuple[tuple[int, int], ...]
    """E (view-1 index, view-2 index), inference order."""
    pred1: tuple[torch.Tensor, ...]
    """E (H_i, W_i, 3) view-1 points in view i's frame."""
    pred2: tuple[torch.Tensor, ...]
    """E (H_j, W_j, 3) view-2 points in view i's frame."""
    conf1: tuple[torch.Tensor, ...]
    """E (H_i, W_i) raw confidences (>= 1)."""
    conf2: tuple[torch.Tensor, ...]
    """E (H_j, W_j)."""
    im_conf: tuple[torch.Tensor, ...]
    """N (H, W) per-image confidence: max over the pair outputs showing the image."""
    names: tuple[str, ...]
    device: torch.device

    @property
    def n(self) -> int:
        """Number of views N."""
        return len(self.shapes)

    def label(self, k: int) -> str:
        """``"k (name)"`` for messages."""
        return f"{k} ({self.names[k]})"


def prepare_inputs(preds: PairPredictions, device: torch.device) -> Inputs:
    """Validate ``preds`` and copy them to ``device`` as float32.

    Raises :class:`AlignmentError` for fewer than 2 views, no pairs, a pair joining a view to
    itself, shapes that disagree with ``true_shapes``, non-finite values, confidences below 1, an
    image in no pair, or a pair graph in several pieces.
    """
    if not isinstance(preds, PairPredictions):
        raise TypeError(f"expected PairPredictions, got {type(preds).__name__}")
    n = preds.n_views
    names = tuple(preds.names) if preds.names is not None else tuple(f"image_{k}" for k in range(n))
    edges = _checked_edges(preds, n)
    per_edge: list[dict[str, torch.Tensor]] = []
    problems: list[str] = []
    for e, (i, j) in enumerate(edges):
        tensors = _pair_tensors(preds, e, i, j, device)
        problems += _pair_problems(tensors, f"pair ({i}, {j}) [{names[i]}, {names[j]}]")
        per_edge.append(tensors)
    if problems:
        raise AlignmentError("invalid predictions: " + "; ".join(problems))
    _check_connected(edges, n, names)
    conf1 = tuple(t["conf_1"] for t in per_edge)
    conf2 = tuple(t["conf_2"] for t in per_edge)
    return Inputs(
        shapes=tuple((int(h), int(w)) for h, w in preds.true_shapes),
        edges=edges,
        pred1=tuple(t["pts3d_1"] for t in per_edge),
        pred2=tuple(t["pts3d_2"] for t in per_edge),
        conf1=conf1,
        conf2=conf2,
        im_conf=_image_confidences(preds.true_shapes, edges, conf1, conf2, device),
        names=names,
        device=device,
    )


def _checked_edges(preds: PairPredictions, n: int) -> tuple[tuple[int, int], ...]:
    if n < 2:
        raise AlignmentError(f"global alignment needs at least 2 views, got {n}")
    edges = tuple((int(i), int(j)) for i, j in preds.pairs.tolist())
    if not edges:
        raise AlignmentError("no pairs to align")
    self_pairs = [e for e in edges if e[0] == e[1]]
    if self_pairs:
        raise AlignmentError(f"pairs must join two different views, got {self_pairs}")
    return edges


def _pair_tensors(preds: PairPredictions, e: int, i: int, j: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pair e's four outputs (shape-checked) as float32 on ``device``, keyed like the npz."""
    arrays = {
        "pts3d_1": (preds.pts3d_1[e], preds.true_shapes[i] + (3,)),
        "conf_1": (preds.conf_1[e], preds.true_shapes[i]),
        "pts3d_2": (preds.pts3d_2[e], preds.true_shapes[j] + (3,)),
        "conf_2": (preds.conf_2[e], preds.true_shapes[j]),
    }
    for what, (arr, shape) in arrays.items():
        if tuple(arr.shape) != tuple(shape):
            raise AlignmentError(
                f"pair {e} ({i}, {j}): {what} has shape {tuple(arr.shape)}, expected {tuple(shape)} "
                f"from the image sizes"
            )
    return {k: v.to(device=device, dtype=torch.float32) for k, (v, _) in arrays.items()}


def _pair_problems(tensors: dict[str, torch.Tensor], where: str) -> list[str]:
    """Non-finite values and confidences below 1 in one pair's outputs, as messages."""
    problems = []
    for what, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            problems.append(f"{where}: {bad} non-finite values in {what}")
    for what in ("conf_1", "conf_2"):
        low = float(tensors[what].nan_to_num(nan=1.0).min())
        if low < 1.0:
            problems.append(f"{where}: {what} has values below 1 (min {low:.4g}); raw confidences are >= 1")
    return problems


def _check_connected(edges: tuple[tuple[int, int], ...], n: int, names: tuple[str, ...]) -> None:
    """Every image in some pair, and the pair graph in one piece."""
    seen = {k for e in edges for k in e}
    missing = [k for k in range(n) if k not in seen]
    if missing:
        raise AlignmentError(f"image(s) {', '.join(f'{k} ({names[k]})' for k in missing)} appear in no pair")
    adjacency = sp.coo_array((np.ones(len(edges)), ([i for i, _ in edges], [j for _, j in edges])), shape=(n, n))
    n_comp, labels = connected_components(adjacency, directed=False)
    if n_comp > 1:
        groups = [[names[k] for k in range(n) if labels[k] == c] for c in range(n_comp)]
        raise AlignmentError(f"the pair graph is not connected; separate groups of images: {groups}")


def _image_confidences(
    shapes: tuple[tuple[int, int], ...],
    edges: tuple[tuple[int, int], ...],
    conf1: tuple[torch.Tensor, ...],
    conf2: tuple[torch.Tensor, ...],
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """N (H, W): per image, the elementwise max of the confidences of the pair outputs showing it."""
    im_conf = [torch.zeros(hw, device=device) for hw in shapes]
    for e, (i, j) in enumerate(edges):
        im_conf[i] = torch.maximum(im_conf[i], conf1[e])
        im_conf[j] = torch.maximum(im_conf[j], conf2[e])
    return tuple(im_conf)


def parse_known_focals(cfg: AlignmentConfig, n: int) -> list[float] | None:
    """``cfg.known_focal`` as N focal lengths in pixels (one value is used for every image), or None."""
    if cfg.known_focal is None:
        return None
    vals = [float(f) for f in cfg.known_focal]
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ValueError(f"known_focal must hold 1 or {n} values (one per image), got {len(vals)}: {cfg.known_focal}")
    if not all(math.isfinite(f) and f > 0 for f in vals):
        raise ValueError(f"known focal lengths must be finite and > 0, got {cfg.known_focal}")
    return vals


def parse_known_poses(known: dict[int, np.ndarray] | None, n: int, device: torch.device) -> dict[int, torch.Tensor]:
    """{image index: (4, 4) world_from_cam} (numpy or torch) -> float32 tensors on ``device``.

    Raises ValueError for an index outside 0..N-1 or a matrix that is not a finite rigid transform.
    """
    if not known:
        return {}
    if not isinstance(known, dict):
        raise TypeError(f"known_poses must be a dict {{image index: 4x4 world_from_cam}}, got {type(known).__name__}")
    out: dict[int, torch.Tensor] = {}
    for k, pose in known.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < n:
            raise ValueError(f"known_poses keys must be image indices in 0..{n - 1}, got {k!r}")
        m = np.asarray(pose.detach().cpu() if isinstance(pose, torch.Tensor) else pose, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise ValueError(f"known pose of image {k} must be a finite 4x4 matrix, got shape {m.shape}: {m.tolist()}")
        rot = m[:3, :3]
        ortho_err = float(np.abs(rot.T @ rot - np.eye(3)).max())
        if ortho_err > 1e-3 or np.linalg.det(rot) <= 0 or not np.allclose(m[3], (0, 0, 0, 1), atol=1e-6):
            raise ValueError(
                f"known pose of image {k} is not a rigid world_from_cam transform "
                f"(|R^T R - I| = {ortho_err:.2g}, det = {np.linalg.det(rot):.4g}, last row {m[3].tolist()})"
            )
        out[int(k)] = torch.from_numpy(m).float().to(device)
    return out
