"""Stage 2 of the alignment: the reference 'mst' initialisation, extended to known focals/poses.

1. :func:`mst_init`: a maximum spanning tree of the pairs (score = product of the mean
   confidences), walked from the best pair; each new image's points are registered into the tree
   frame by a weighted similarity; focal lengths come from the points (Weiszfeld); cameras the
   tree did not place get a pose by PnP-RANSAC.
2. :func:`initialize`: the optimiser's raw parameters from that: one similarity per pair
   (registering its view-1 points onto the tree), the world scale normalised (geometric mean of
   the pair scales = ``BASE_SCALE``) or fixed by the known poses, log-depths from the points.

Camera convention: OpenCV (x right, y down, z forward); poses are world_from_cam (4, 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import roma
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import minimum_spanning_tree

from config import AlignmentConfig
from core.alignment.inputs import Inputs
from core.alignment.params import BASE_SCALE, FOCAL_BREAK, RawParams, pose_to_params
from core.errors import AlignmentError
from core.geometry import (
    estimate_focal_weiszfeld,
    pixel_grid,
    register_points,
    signed_expm1,
    signed_log1p,
    similarity_between_poses,
    solve_pnp_ransac,
    transform_points,
)

__all__ = [
    "PNP_ITERS_INIT",
    "PNP_REPROJ_PX",
    "MstResult",
    "InitResult",
    "mst_init",
    "initialize",
    "estimate_focal",
    "check_focals",
    "pnp_pose",
    "similarity_matrix",
]

#: RANSAC iterations of the PnP in the 'mst' init (reference value).
PNP_ITERS_INIT = 10
#: RANSAC inlier threshold in pixels.
PNP_REPROJ_PX = 5.0


@dataclass
class MstResult:
    """What the spanning-tree stage found, in the init frame (before rescaling)."""

    pts3d: list[torch.Tensor]
    """N (H, W, 3) points in the init frame (best tree edge's view-1 camera), before rescaling."""
    edges: list[tuple[int, int]]
    """Tree edges in processing order."""
    focals: list[float | None]
    """N focal lengths (pixels); None only for an image that is never view 1 and failed PnP."""
    poses: torch.Tensor
    """(N, 4, 4) float32 world_from_cam in the init frame."""
    warnings: list[str] = field(default_factory=list)


@dataclass
class InitResult:
    """Starting point of the optimisation."""

    mst: MstResult
    raw: RawParams
    norm_pw_scale: bool
    """True when the pair scales are normalised (geometric mean BASE_SCALE): fewer than 2 known poses."""
    fixed_poses: tuple[int, ...]
    warnings: list[str]


# --------------------------------------------------------------------------------------------
# Small helpers (shared with the two-view path)
# --------------------------------------------------------------------------------------------


def estimate_focal(pts: torch.Tensor) -> float:
    """Focal length (pixels) of the camera that sees ``pts`` (H, W, 3) in its own frame."""
    return float(estimate_focal_weiszfeld(pts[None])[0])


def check_focals(focals: list[float | None], inp: Inputs) -> None:
    """Raise :class:`AlignmentError` naming the images whose focal estimate is 0 or not finite."""
    bad = [k for k, f in enumerate(focals) if f is not None and not (math.isfinite(f) and f > 0)]
    if bad:
        desc = ", ".join(f"{inp.label(k)}: {focals[k]}" for k in bad)
        raise AlignmentError(
            f"focal length estimate is 0 or not finite for image(s) {desc}; the predicted points do not look "
            "like a camera seen from the front (degenerate predictions). Set a known focal length to override."
        )


def pnp_pose(
    pts3d: torch.Tensor, mask: torch.Tensor, focal: float | None, iterations: int
) -> tuple[float, np.ndarray] | None:
    """(focal, world_from_cam (4, 4) float64) of the camera that sees ``pts3d`` (H, W, 3), by RANSAC PnP.

    mask (H, W) bool: pixels to use. focal None: try 21 focal lengths between S/2 and 3S
    (S = max(H, W)), keep the most inliers. None when fewer than 4 pixels or no solution.
    """
    h, w = pts3d.shape[:2]
    m = mask.cpu().numpy()
    if int(m.sum()) < 4:
        return None
    pts = pts3d.detach().cpu().numpy()[m]
    pix = pixel_grid(h, w).numpy()[m]
    pp = (w / 2, h / 2)
    candidates = [focal] if focal is not None else np.geomspace(max(h, w) / 2, max(h, w) * 3, 21).tolist()
    best: tuple[int, float, np.ndarray] | None = None
    for f in candidates:
        res = solve_pnp_ransac(pts, pix, f, pp, iterations=iterations, reproj_error=PNP_REPROJ_PX)
        if res is not None and (best is None or res[1] > best[0]):
            best = (res[1], f, res[0])
    if best is None:
        return None
    return best[1], best[2]


def similarity_matrix(scale: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """(4, 4) float32 matrix of x -> scale * rot @ x + trans."""
    m = torch.eye(4, device=rot.device, dtype=torch.float32)
    m[:3, :3] = rot * scale
    m[:3, 3] = trans.reshape(3)
    return m


# --------------------------------------------------------------------------------------------
# Stage 1: spanning tree
# --------------------------------------------------------------------------------------------


def mst_init(
    inp: Inputs, min_conf_thr: float, known_focals: list[float] | None, *, stale_focal: bool = True
) -> MstResult:
    """Reference 'mst' stage 1: spanning tree of the best pairs, focal estimates, PnP for the rest.

    stale_focal: reproduce the reference quirk (see FORMAT.md 6, step 2); False estimates a missing
    focal from the current tree edge, whose view 1 is the image itself.
    """
    scores, edge_of = _pair_scores(inp)
    todo = _tree_edges_by_score(scores, inp.n)
    focals: list[float | None] = list(known_focals) if known_focals is not None else [None] * inp.n
    pts3d, poses, tree_edges = _grow_tree(inp, todo, edge_of, focals, stale_focal)
    keys = list(scores)
    for idx in np.argsort([-scores[k] for k in keys]).tolist():
        i, j = keys[idx]
        if focals[i] is None:
            focals[i] = estimate_focal(inp.pred1[edge_of[(i, j)]])
    check_focals(focals, inp)
    warnings = _pnp_missing_poses(inp, pts3d, poses, focals, min_conf_thr)
    return MstResult(
        pts3d=pts3d,  # type: ignore[arg-type]
        edges=tree_edges,
        focals=focals,
        poses=torch.stack(poses),  # type: ignore[arg-type]
        warnings=warnings,
    )


def _pair_scores(inp: Inputs) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], int]]:
    """Per pair (i, j): score mean(conf1) * mean(conf2), and its edge index (the last one wins)."""
    scores: dict[tuple[int, int], float] = {}
    edge_of: dict[tuple[int, int], int] = {}
    for e, ij in enumerate(inp.edges):
        scores[ij] = float(inp.conf1[e].mean() * inp.conf2[e].mean())
        edge_of[ij] = e
    return scores, edge_of


def _tree_edges_by_score(scores: dict[tuple[int, int], float], n: int) -> list[tuple[float, int, int]]:
    """Maximum spanning tree edges as (score, i, j), ascending (the best is popped first)."""
    graph = sp.dok_array((n, n))
    for ij, s in scores.items():
        graph[ij] = -s
    tree = minimum_spanning_tree(graph).tocoo()
    return sorted(zip((-tree.data).tolist(), tree.row.tolist(), tree.col.tolist(), strict=True))


def _grow_tree(
    inp: Inputs,
    todo: list[tuple[float, int, int]],
    edge_of: dict[tuple[int, int], int],
    focals: list[float | None],
    stale_focal: bool,
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None], list[tuple[int, int]]]:
    """Walk the tree from its best edge, registering each new image's points into the tree frame.

    Fills ``focals`` in place (images met as view 1). Returns N points (H, W, 3) in the frame of
    the best edge's view-1 camera, N world_from_cam poses (None where the tree gave none) and the
    tree edges in processing order.
    """
    dev = inp.device
    pts3d: list[torch.Tensor | None] = [None] * inp.n
    poses: list[torch.Tensor | None] = [None] * inp.n
    _, i, j = todo.pop()
    last = edge_of[(i, j)]
    pts3d[i] = inp.pred1[last].clone()
    pts3d[j] = inp.pred2[last].clone()
    done = {i, j}
    poses[i] = torch.eye(4, device=dev)
    if focals[i] is None:
        focals[i] = estimate_focal(inp.pred1[last])
    tree_edges = [(i, j)]
    while todo:
        score, i, j = todo.pop()
        if focals[i] is None:
            # Reference quirk, kept for parity by default: the estimate comes from the view-1
            # points of the previously processed edge, which may show another image.
            focals[i] = estimate_focal(inp.pred1[last if stale_focal else edge_of[(i, j)]])
        if i not in done and j not in done:
            todo.insert(0, (score, i, j))
            continue
        e = edge_of[(i, j)]
        last = e
        if i in done:
            s, rot, trans = register_points(inp.pred1[e], pts3d[i], inp.conf1[e])
            pts3d[j] = transform_points(similarity_matrix(s, rot, trans), inp.pred2[e])
            done.add(j)
        else:
            s, rot, trans = register_points(inp.pred2[e], pts3d[j], inp.conf2[e])
            pts3d[i] = transform_points(similarity_matrix(s, rot, trans), inp.pred1[e])
            done.add(i)
        tree_edges.append((i, j))
        if poses[i] is None:
            poses[i] = similarity_matrix(torch.ones((), device=dev), rot, trans)
    return pts3d, poses, tree_edges


def _pnp_missing_poses(
    inp: Inputs,
    pts3d: list[torch.Tensor | None],
    poses: list[torch.Tensor | None],
    focals: list[float | None],
    min_conf_thr: float,
) -> list[str]:
    """Fill the missing ``poses`` (and their ``focals``) in place by PnP; identity where it fails."""
    warnings = []
    for i in range(inp.n):
        if poses[i] is not None:
            continue
        mask = inp.im_conf[i] > min_conf_thr
        res = pnp_pose(pts3d[i], mask, focals[i], PNP_ITERS_INIT)
        if res is None:
            warnings.append(
                f"image {inp.label(i)}: initial pose not found by PnP ({int(mask.sum())} pixels with confidence "
                f"> {min_conf_thr:g}); started from the identity"
            )
            poses[i] = torch.eye(4, device=inp.device)
        else:
            focals[i] = float(res[0])
            poses[i] = torch.from_numpy(res[1]).float().to(inp.device)
    return warnings


# --------------------------------------------------------------------------------------------
# Stage 2: raw parameters
# --------------------------------------------------------------------------------------------


def initialize(
    inp: Inputs, cfg: AlignmentConfig, known_focals: list[float] | None, known_poses: dict[int, torch.Tensor]
) -> InitResult:
    """Reference 'mst' init (both stages), extended to known poses.

    Known poses: with two or more (distinct centres), the init frame is mapped onto them by the
    similarity that best fits the known cameras, and the pair scales are left free (the known
    poses fix the scale), as the reference does. With one, the usual scale normalisation is kept
    and the frame is then moved rigidly so that camera lands exactly on its known pose.
    """
    mst = mst_init(inp, cfg.min_conf_thr, known_focals, stale_focal=cfg.mst_stale_focal)
    poses, pts3d, norm_pw_scale, anchor = _fit_known_poses(mst, known_poses)
    pw = _pair_similarities(inp, pts3d)
    s_factor = torch.exp(math.log(BASE_SCALE) - pw[:, 7].mean()) if norm_pw_scale else torch.ones((), device=inp.device)
    poses[:, :3, 3] *= s_factor
    pts3d = [p * s_factor for p in pts3d]
    if anchor is not None:
        poses, pts3d = _move_onto_anchor(poses, pts3d, pw, s_factor, known_poses[anchor], anchor)
    logd = _log_depths(inp, poses, pts3d)
    for k, pose in known_poses.items():
        poses[k] = pose
    focals = torch.tensor(
        [f if f is not None else max(inp.shapes[k]) for k, f in enumerate(mst.focals)], dtype=torch.float64
    )
    raw = RawParams(
        im_depthmaps=logd,
        im_poses=pose_to_params(poses),
        im_focals=(FOCAL_BREAK * torch.log(focals)).float().reshape(-1, 1).to(inp.device),
        pw_poses=pw,
    )
    return InitResult(
        mst=mst,
        raw=raw,
        norm_pw_scale=norm_pw_scale,
        fixed_poses=tuple(sorted(known_poses)),
        warnings=list(mst.warnings),
    )


def _fit_known_poses(
    mst: MstResult, known_poses: dict[int, torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], bool, int | None]:
    """Copies of the tree's poses and points, mapped onto two or more known poses by a similarity.

    Returns (poses (N, 4, 4), points, norm_pw_scale, anchor): norm_pw_scale False when the known
    poses fixed the scale; anchor = the one known pose to move onto rigidly later, else None.
    """
    poses = mst.poses.clone()
    pts3d = [p.clone() for p in mst.pts3d]
    if not known_poses:
        return poses, pts3d, True, None
    idx = sorted(known_poses)
    target = torch.stack([known_poses[k] for k in idx])
    sim = similarity_between_poses(poses[idx], target) if len(idx) >= 2 else None
    if sim is None:
        return poses, pts3d, True, idx[0]
    s, rot, trans = sim
    trf = similarity_matrix(s, rot, trans)
    poses = trf @ poses
    poses[:, :3, :3] /= s
    pts3d = [transform_points(trf, p) for p in pts3d]
    return poses, pts3d, False, None


def _pair_similarities(inp: Inputs, pts3d: list[torch.Tensor]) -> torch.Tensor:
    """(E, 8) per pair: the similarity registering its view-1 points onto ``pts3d``, as raw parameters."""
    pw = torch.zeros((len(inp.edges), 8), device=inp.device)
    for e, (i, _) in enumerate(inp.edges):
        s, rot, trans = register_points(inp.pred1[e], pts3d[i], inp.conf1[e])
        pw[e, :4] = roma.rotmat_to_unitquat(rot)
        pw[e, 4:7] = signed_log1p(trans / s)
        pw[e, 7] = torch.log(s)
    return pw


def _move_onto_anchor(
    poses: torch.Tensor,
    pts3d: list[torch.Tensor],
    pw: torch.Tensor,
    s_factor: torch.Tensor,
    anchor_pose: torch.Tensor,
    anchor: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Move the scene rigidly so camera ``anchor`` lands on its known pose; updates ``pw`` in place."""
    g = anchor_pose @ torch.linalg.inv(poses[anchor])  # rigid
    poses = g @ poses
    pts3d = [transform_points(g, p) for p in pts3d]
    s_eff = torch.exp(pw[:, 7]) * s_factor  # (E,)
    q = pw[:, :4] / pw[:, :4].norm(dim=-1, keepdim=True)
    rot_e = g[:3, :3] @ roma.unitquat_to_rotmat(q)
    t_e = signed_expm1(pw[:, 4:7]) @ g[:3, :3].T + g[:3, 3] / s_eff[:, None]
    pw[:, :4] = roma.rotmat_to_unitquat(rot_e)
    pw[:, 4:7] = signed_log1p(t_e)
    return poses, pts3d


def _log_depths(inp: Inputs, poses: torch.Tensor, pts3d: list[torch.Tensor]) -> torch.Tensor:
    """(N, max_area) log z-depth of each image's points in its camera, zero-padded (0 where not finite)."""
    max_area = max(h * w for h, w in inp.shapes)
    logd = torch.zeros((inp.n, max_area), device=inp.device)
    for i, p in enumerate(pts3d):
        depth = transform_points(torch.linalg.inv(poses[i]), p)[..., 2].reshape(-1)
        logd[i, : depth.numel()] = depth.log().nan_to_num(nan=0.0, neginf=0.0)
    return logd
