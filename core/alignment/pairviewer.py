"""The two-view case: the reference ``PairViewer`` (no optimisation).

With both directions of the one pair, each image gets a focal length from its own point map,
the better-scored direction's view-1 camera is the world frame, the other camera comes from
PnP-RANSAC on the points it sees, and depths come straight from the predictions.
"""

from __future__ import annotations

import math

import torch

from config import AlignmentConfig
from core.alignment.init import check_focals, estimate_focal, pnp_pose, similarity_matrix
from core.alignment.inputs import Inputs
from core.geometry import register_points, similarity_between_poses, transform_points

__all__ = ["PNP_ITERS_PAIR", "pair_viewer", "apply_known_poses", "two_view_pair_scales"]

#: RANSAC iterations of the PnP in the two-view path (reference value).
PNP_ITERS_PAIR = 100


def pair_viewer(
    inp: Inputs, cfg: AlignmentConfig, known_focals: list[float] | None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[str], dict]:
    """Reference PairViewer on the pairs (0, 1) and (1, 0).

    Returns world_from_cam (2, 4, 4), focals (2,) pixels, 2 depth maps (H, W), warnings, and
    ``extra`` {"reference_image": index of the world camera, "pair_scores": [score(0, 1), score(1, 0)]}.
    """
    edge_of: dict[tuple[int, int], int] = {}
    for e, ij in enumerate(inp.edges):
        edge_of.setdefault(ij, e)
    e01, e10 = edge_of[(0, 1)], edge_of[(1, 0)]
    scores, focals, rel = [], [], []
    for i, e in ((0, e01), (1, e10)):
        scores.append(float(inp.conf1[e].mean() * inp.conf2[e].mean()))
        focals.append(known_focals[i] if known_focals is not None else estimate_focal(inp.pred1[e]))
    if cfg.shared_focal and known_focals is None:
        focals = [math.sqrt(focals[0] * focals[1])] * 2
    check_focals(focals, inp)
    for i, e in ((0, e10), (1, e01)):  # image i's points as seen in the pair whose view 1 is the other image
        res = pnp_pose(inp.pred2[e], inp.im_conf[i] > cfg.min_conf_thr, focals[i], PNP_ITERS_PAIR)
        rel.append(None if res is None else torch.from_numpy(res[1]).float().to(inp.device))
    ref = 0 if scores[0] > scores[1] else 1
    other = 1 - ref
    warnings: list[str] = []
    if rel[other] is None:
        n_conf = int((inp.im_conf[other] > cfg.min_conf_thr).sum())
        warnings.append(
            f"image {inp.label(other)}: relative pose not found by PnP ({n_conf} pixels with confidence > "
            f"{cfg.min_conf_thr:g}); placed at the reference camera"
        )
        rel[other] = torch.eye(4, device=inp.device)
    e_ref = e01 if ref == 0 else e10
    poses = torch.eye(4, device=inp.device).repeat(2, 1, 1)
    poses[other] = rel[other]
    depths = [torch.empty(0)] * 2
    depths[ref] = inp.pred1[e_ref][..., 2].clone()
    depths[other] = transform_points(torch.linalg.inv(rel[other]), inp.pred2[e_ref])[..., 2]
    extra = {"reference_image": ref, "pair_scores": scores}
    return poses, torch.tensor(focals, dtype=torch.float32, device=inp.device), depths, warnings, extra


def two_view_pair_scales(inp: Inputs, ref: int) -> torch.Tensor:
    """(2,) scale s_e of each direction's prediction in the two-view world (:mod:`core.alignment.metric`).

    The world is the frame of the pair whose view 1 is image ``ref``, so that pair's scale is 1.
    The other direction sees image ``ref`` as its view 2; registering those points onto the
    reference pair's view-1 points (confidence-weighted similarity) gives its scale.
    """
    edge_of: dict[tuple[int, int], int] = {}
    for e, ij in enumerate(inp.edges):
        edge_of.setdefault(ij, e)
    e_ref, e_oth = edge_of[(ref, 1 - ref)], edge_of[(1 - ref, ref)]
    weights = inp.conf1[e_ref] * inp.conf2[e_oth]
    s, _, _ = register_points(inp.pred2[e_oth], inp.pred1[e_ref], weights)
    return torch.stack((torch.ones((), device=s.device), s.reshape(()).float()))


def apply_known_poses(
    poses: torch.Tensor, depths: list[torch.Tensor], known: dict[int, torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Move (and with 2 known poses, scale) the two-view result onto the known poses.

    poses (2, 4, 4) world_from_cam, depths 2 (H, W), known {index: (4, 4)} -> the same, moved.
    """
    idx = sorted(known)
    target = torch.stack([known[k] for k in idx])
    sim = similarity_between_poses(poses[idx], target) if len(idx) == 2 else None
    if sim is not None:
        s, rot, trans = sim
        trf = similarity_matrix(s, rot, trans)
        poses = trf @ poses
        poses[:, :3, :3] /= s
        depths = [d * s for d in depths]
    else:
        g = known[idx[0]] @ torch.linalg.inv(poses[idx[0]])
        poses = g @ poses
    poses = poses.clone()
    for k in idx:
        poses[k] = known[k]
    return poses, depths
