"""Global alignment: pairwise DUSt3R predictions -> one consistent scene.

Two views use the reference ``PairViewer`` path (no optimisation): a focal per image from its
own point map, the second camera by PnP-RANSAC, depths from the predictions. Three or more views
use the reference ``PointCloudOptimizer`` (FORMAT.md section 6): a minimum-spanning-tree
initialisation, then Adam on per-pixel log-depths, camera poses, focal lengths and one
similarity per pair, minimising the confidence-weighted distance between each image's
back-projected depth map and every pair prediction that shows the image.

Same parameterisation, loss, optimiser and schedules as the reference, so results match it to
float precision. The loss is computed differently (and much faster): residuals live in each
camera's own frame (the norm is rotation invariant), predictions are stored once per image in a
planar (K, 3, pixels) layout, processed in cache-sized chunks on the CPU, and the gradients of
the per-pixel parts (residuals, back-projection) are written out by hand; only the small
pose/scale/focal parts go through autograd. ``_optimize_from_raw`` (private) runs the loop from
given raw parameters; ``AlignmentConfig.mst_stale_focal`` and the early stop are documented there
and in config.py.

Conventions: ``world_from_cam`` 4x4 in OpenCV axes (x right, y down, z forward); focal lengths
and principal points in pixels of the network input; per-image confidence = elementwise max over
the pair outputs that show the image. N views, E pairs (edges), pixel (u, v) = (column, row).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import roma
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from config import AlignmentConfig
from core.errors import AlignmentError
from core.geometry import (
    depth_to_world_points,
    estimate_focal_weiszfeld,
    pixel_grid,
    register_points,
    signed_expm1,
    signed_log1p,
    similarity_between_poses,
    solve_pnp_ransac,
    transform_points,
)
from core.types import PairPredictions, ProgressFn, Scene, tensor_to_rgb

__all__ = ["AlignmentError", "AlignmentCancelled", "align"]

logger = logging.getLogger(__name__)

#: Geometric mean of the pair scales when the world scale is free (reference ``base_scale``).
BASE_SCALE = 0.5
#: Focal lengths are optimised as FOCAL_BREAK * log(f) (reference ``focal_break``).
FOCAL_BREAK = 20.0
#: RANSAC iterations of the PnP in the 'mst' init and in the two-view path (reference values).
PNP_ITERS_INIT = 10
PNP_ITERS_PAIR = 100
#: RANSAC inlier threshold in pixels.
PNP_REPROJ_PX = 5.0
#: On the CPU the per-pixel loss is evaluated in chunks of about this many (side, pixel) pairs
#: so that the working set stays in cache.
_CPU_CHUNK_ELEMS = 1 << 17


class AlignmentCancelled(RuntimeError):
    """``cancel()`` returned True during the optimisation."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
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
        return len(self.shapes)

    def label(self, k: int) -> str:
        return f"{k} ({self.names[k]})"


def _prepare_inputs(preds: PairPredictions, device: torch.device) -> _Inputs:
    if not isinstance(preds, PairPredictions):
        raise TypeError(f"expected PairPredictions, got {type(preds).__name__}")
    n = preds.n_views
    names = tuple(preds.names) if preds.names is not None else tuple(f"image_{k}" for k in range(n))
    if n < 2:
        raise AlignmentError(f"global alignment needs at least 2 views, got {n}")
    edges = tuple((int(i), int(j)) for i, j in preds.pairs.tolist())
    if not edges:
        raise AlignmentError("no pairs to align")
    self_pairs = [e for e in edges if e[0] == e[1]]
    if self_pairs:
        raise AlignmentError(f"pairs must join two different views, got {self_pairs}")

    pred1, pred2, conf1, conf2 = [], [], [], []
    problems: list[str] = []
    for e, (i, j) in enumerate(edges):
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
        tensors = {k: v.to(device=device, dtype=torch.float32) for k, (v, _) in arrays.items()}
        for what, t in tensors.items():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                problems.append(f"pair ({i}, {j}) [{names[i]}, {names[j]}]: {bad} non-finite values in {what}")
        for what in ("conf_1", "conf_2"):
            low = float(tensors[what].nan_to_num(nan=1.0).min())
            if low < 1.0:
                problems.append(
                    f"pair ({i}, {j}) [{names[i]}, {names[j]}]: {what} has values below 1 (min {low:.4g}); "
                    "raw confidences are >= 1"
                )
        pred1.append(tensors["pts3d_1"])
        conf1.append(tensors["conf_1"])
        pred2.append(tensors["pts3d_2"])
        conf2.append(tensors["conf_2"])
    if problems:
        raise AlignmentError("invalid predictions: " + "; ".join(problems))

    seen = {k for e in edges for k in e}
    missing = [k for k in range(n) if k not in seen]
    if missing:
        raise AlignmentError(f"image(s) {', '.join(f'{k} ({names[k]})' for k in missing)} appear in no pair")
    adjacency = sp.coo_array((np.ones(len(edges)), ([i for i, _ in edges], [j for _, j in edges])), shape=(n, n))
    n_comp, labels = connected_components(adjacency, directed=False)
    if n_comp > 1:
        groups = [[names[k] for k in range(n) if labels[k] == c] for c in range(n_comp)]
        raise AlignmentError(f"the pair graph is not connected; separate groups of images: {groups}")

    im_conf = [torch.zeros(hw, device=device) for hw in preds.true_shapes]
    for e, (i, j) in enumerate(edges):
        im_conf[i] = torch.maximum(im_conf[i], conf1[e])
        im_conf[j] = torch.maximum(im_conf[j], conf2[e])
    return _Inputs(
        shapes=tuple((int(h), int(w)) for h, w in preds.true_shapes),
        edges=edges,
        pred1=tuple(pred1),
        pred2=tuple(pred2),
        conf1=tuple(conf1),
        conf2=tuple(conf2),
        im_conf=tuple(im_conf),
        names=names,
        device=device,
    )


def _known_focals(cfg: AlignmentConfig, n: int) -> list[float] | None:
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


def _known_poses(known: dict[int, np.ndarray] | None, n: int, device: torch.device) -> dict[int, torch.Tensor]:
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


# --------------------------------------------------------------------------------------------
# 'mst' initialisation
# --------------------------------------------------------------------------------------------


@dataclass
class _MstResult:
    pts3d: list[torch.Tensor]
    """N (H, W, 3) points in the init frame (best tree edge's view-1 camera), before rescaling."""
    edges: list[tuple[int, int]]
    """Tree edges in processing order."""
    focals: list[float | None]
    """N focal lengths (pixels); None only for an image that is never view 1 and failed PnP."""
    poses: torch.Tensor
    """(N, 4, 4) float32 world_from_cam in the init frame."""
    warnings: list[str] = field(default_factory=list)


def _estimate_focal(pts: torch.Tensor) -> float:
    return float(estimate_focal_weiszfeld(pts[None])[0])


def _check_focals(focals: list[float | None], inp: _Inputs) -> None:
    bad = [k for k, f in enumerate(focals) if f is not None and not (math.isfinite(f) and f > 0)]
    if bad:
        desc = ", ".join(f"{inp.label(k)}: {focals[k]}" for k in bad)
        raise AlignmentError(
            f"focal length estimate is 0 or not finite for image(s) {desc}; the predicted points do not look "
            "like a camera seen from the front (degenerate predictions). Set a known focal length to override."
        )


def _pnp_pose(
    pts3d: torch.Tensor, mask: torch.Tensor, focal: float | None, iterations: int
) -> tuple[float, np.ndarray] | None:
    """Pose (world_from_cam, float64) of the camera that sees ``pts3d`` (H, W, 3), by RANSAC PnP.

    focal None: try 21 focal lengths between S/2 and 3S (S = max(H, W)), keep the most inliers.
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


def _mst_init(
    inp: _Inputs, min_conf_thr: float, known_focals: list[float] | None, *, stale_focal: bool = True
) -> _MstResult:
    """Reference 'mst' stage 1: spanning tree of the best pairs, focal estimates, PnP for the rest.

    stale_focal: reproduce the reference quirk (see FORMAT.md 6, step 2); False estimates a missing
    focal from the current tree edge, whose view 1 is the image itself.
    """
    n = inp.n
    dev = inp.device
    scores: dict[tuple[int, int], float] = {}
    edge_of: dict[tuple[int, int], int] = {}
    for e, ij in enumerate(inp.edges):
        scores[ij] = float(inp.conf1[e].mean() * inp.conf2[e].mean())
        edge_of[ij] = e
    graph = sp.dok_array((n, n))
    for ij, s in scores.items():
        graph[ij] = -s
    tree = minimum_spanning_tree(graph).tocoo()
    todo = sorted(zip((-tree.data).tolist(), tree.row.tolist(), tree.col.tolist(), strict=True))

    pts3d: list[torch.Tensor | None] = [None] * n
    poses: list[torch.Tensor | None] = [None] * n
    focals: list[float | None] = list(known_focals) if known_focals is not None else [None] * n
    warnings: list[str] = []

    _, i, j = todo.pop()
    last = edge_of[(i, j)]
    pts3d[i] = inp.pred1[last].clone()
    pts3d[j] = inp.pred2[last].clone()
    done = {i, j}
    poses[i] = torch.eye(4, device=dev)
    if focals[i] is None:
        focals[i] = _estimate_focal(inp.pred1[last])
    tree_edges = [(i, j)]
    while todo:
        score, i, j = todo.pop()
        if focals[i] is None:
            # Reference quirk, kept for parity by default: the estimate comes from the view-1
            # points of the previously processed edge, which may show another image.
            focals[i] = _estimate_focal(inp.pred1[last if stale_focal else edge_of[(i, j)]])
        if i in done or j in done:
            e = edge_of[(i, j)]
            last = e
            if i in done:
                s, rot, trans = register_points(inp.pred1[e], pts3d[i], inp.conf1[e])
                pts3d[j] = transform_points(_srt(s, rot, trans), inp.pred2[e])
                done.add(j)
            else:
                s, rot, trans = register_points(inp.pred2[e], pts3d[j], inp.conf2[e])
                pts3d[i] = transform_points(_srt(s, rot, trans), inp.pred1[e])
                done.add(i)
            tree_edges.append((i, j))
            if poses[i] is None:
                poses[i] = _srt(torch.ones((), device=dev), rot, trans)
        else:
            todo.insert(0, (score, i, j))

    keys = list(scores)
    for idx in np.argsort([-scores[k] for k in keys]).tolist():
        i, j = keys[idx]
        if focals[i] is None:
            focals[i] = _estimate_focal(inp.pred1[edge_of[(i, j)]])
    _check_focals(focals, inp)

    for i in range(n):
        if poses[i] is not None:
            continue
        mask = inp.im_conf[i] > min_conf_thr
        res = _pnp_pose(pts3d[i], mask, focals[i], PNP_ITERS_INIT)
        if res is None:
            warnings.append(
                f"image {inp.label(i)}: initial pose not found by PnP ({int(mask.sum())} pixels with confidence "
                f"> {min_conf_thr:g}); started from the identity"
            )
            poses[i] = torch.eye(4, device=dev)
        else:
            focals[i] = float(res[0])
            poses[i] = torch.from_numpy(res[1]).float().to(dev)
    return _MstResult(
        pts3d=pts3d,  # type: ignore[arg-type]
        edges=tree_edges,
        focals=focals,
        poses=torch.stack(poses),  # type: ignore[arg-type]
        warnings=warnings,
    )


def _srt(scale: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    m = torch.eye(4, device=rot.device, dtype=torch.float32)
    m[:3, :3] = rot * scale
    m[:3, 3] = trans.reshape(3)
    return m


# --------------------------------------------------------------------------------------------
# Raw parameters (reference layout) and their initialisation
# --------------------------------------------------------------------------------------------


@dataclass
class _RawParams:
    """Optimised parameters in the reference's layout (``init_raw_*`` / ``raw_*`` fixture keys)."""

    im_depthmaps: torch.Tensor
    """(N, max_area) log-depth per pixel (row-major), zero-padded."""
    im_poses: torch.Tensor
    """(N, 7) world_from_cam: quaternion XYZW (unnormalised) + signed-log1p translation."""
    im_focals: torch.Tensor
    """(N, 1) FOCAL_BREAK * log(focal)."""
    pw_poses: torch.Tensor
    """(E, 8) per pair: quaternion XYZW, signed-log1p(T / s), log s."""

    def clone(self) -> _RawParams:
        return _RawParams(
            *(t.detach().clone() for t in (self.im_depthmaps, self.im_poses, self.im_focals, self.pw_poses))
        )

    def to(self, device: torch.device) -> _RawParams:
        return _RawParams(
            *(
                t.detach().to(device=device, dtype=torch.float32)
                for t in (self.im_depthmaps, self.im_poses, self.im_focals, self.pw_poses)
            )
        )


@dataclass
class _InitResult:
    mst: _MstResult
    raw: _RawParams
    norm_pw_scale: bool
    """True when the pair scales are normalised (geometric mean BASE_SCALE): fewer than 2 known poses."""
    fixed_poses: tuple[int, ...]
    warnings: list[str]


def _pose_to_params(poses: torch.Tensor) -> torch.Tensor:
    """(K, 4, 4) rigid -> (K, 7) pose parameters."""
    return torch.cat((roma.rotmat_to_unitquat(poses[:, :3, :3]), signed_log1p(poses[:, :3, 3])), dim=-1)


def _initialize(
    inp: _Inputs, cfg: AlignmentConfig, known_focals: list[float] | None, known_poses: dict[int, torch.Tensor]
) -> _InitResult:
    """Reference 'mst' init (both stages), extended to known poses.

    Known poses: with two or more (distinct centres), the init frame is mapped onto them by the
    similarity that best fits the known cameras, and the pair scales are left free (the known
    poses fix the scale), as the reference does. With one, the usual scale normalisation is kept
    and the frame is then moved rigidly so that camera lands exactly on its known pose.
    """
    mst = _mst_init(inp, cfg.min_conf_thr, known_focals, stale_focal=cfg.mst_stale_focal)
    dev = inp.device
    poses = mst.poses.clone()
    pts3d = [p.clone() for p in mst.pts3d]
    norm_pw_scale = True
    anchor: int | None = None
    if known_poses:
        idx = sorted(known_poses)
        target = torch.stack([known_poses[k] for k in idx])
        sim = similarity_between_poses(poses[idx], target) if len(idx) >= 2 else None
        if sim is not None:
            s, rot, trans = sim
            trf = _srt(s, rot, trans)
            poses = trf @ poses
            poses[:, :3, :3] /= s
            pts3d = [transform_points(trf, p) for p in pts3d]
            norm_pw_scale = False
        else:
            anchor = idx[0]

    pw = torch.zeros((len(inp.edges), 8), device=dev)
    for e, (i, _) in enumerate(inp.edges):
        s, rot, trans = register_points(inp.pred1[e], pts3d[i], inp.conf1[e])
        pw[e, :4] = roma.rotmat_to_unitquat(rot)
        pw[e, 4:7] = signed_log1p(trans / s)
        pw[e, 7] = torch.log(s)
    s_factor = torch.exp(math.log(BASE_SCALE) - pw[:, 7].mean()) if norm_pw_scale else torch.ones((), device=dev)
    poses[:, :3, 3] *= s_factor
    pts3d = [p * s_factor for p in pts3d]

    if anchor is not None:
        g = known_poses[anchor] @ torch.linalg.inv(poses[anchor])  # rigid
        poses = g @ poses
        pts3d = [transform_points(g, p) for p in pts3d]
        s_eff = torch.exp(pw[:, 7]) * s_factor  # (E,)
        q = pw[:, :4] / pw[:, :4].norm(dim=-1, keepdim=True)
        rot_e = g[:3, :3] @ roma.unitquat_to_rotmat(q)
        t_e = signed_expm1(pw[:, 4:7]) @ g[:3, :3].T + g[:3, 3] / s_eff[:, None]
        pw[:, :4] = roma.rotmat_to_unitquat(rot_e)
        pw[:, 4:7] = signed_log1p(t_e)

    max_area = max(h * w for h, w in inp.shapes)
    logd = torch.zeros((inp.n, max_area), device=dev)
    for i, p in enumerate(pts3d):
        depth = transform_points(torch.linalg.inv(poses[i]), p)[..., 2].reshape(-1)
        logd[i, : depth.numel()] = depth.log().nan_to_num(nan=0.0, neginf=0.0)
    for k, pose in known_poses.items():
        poses[k] = pose
    focals = torch.tensor(
        [f if f is not None else max(inp.shapes[k]) for k, f in enumerate(mst.focals)], dtype=torch.float64
    )
    raw = _RawParams(
        im_depthmaps=logd,
        im_poses=_pose_to_params(poses),
        im_focals=(FOCAL_BREAK * torch.log(focals)).float().reshape(-1, 1).to(dev),
        pw_poses=pw,
    )
    return _InitResult(
        mst=mst,
        raw=raw,
        norm_pw_scale=norm_pw_scale,
        fixed_poses=tuple(sorted(known_poses)),
        warnings=list(mst.warnings),
    )


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


@dataclass
class _Group:
    """The pair outputs that show one image (its "sides"), stored planar and chunked."""

    image: int
    sides: slice
    """Range of this group's sides in the global side order."""
    offset: int
    """First pixel of the image in the flat pixel layout."""
    chunks: list[tuple[int, int, torch.Tensor, torch.Tensor]]
    """(a0, a1, P (K, 3, a1 - a0) points in the pair frame, w (K, a1 - a0) loss weights)."""


class _Problem:
    """Constant data of the multi-view loss, and its value and gradient.

    Loss (reference): sum over pairs e = (i, j) and pixels of log(conf) * |X_img - s_e (R_e P + T_e)|,
    the view-1 sides divided by sum_e H_i W_i and the view-2 sides by sum_e H_j W_j. X_img is the
    image's back-projected depth in world coordinates. Evaluated per side k (one pair output
    showing image g) in camera g's frame: |M_k P + b_k - X_cam| with
    M_k = s_e R_g^T R_e and b_k = R_g^T (s_e T_e - t_g).
    """

    def __init__(self, inp: _Inputs) -> None:
        dev = inp.device
        self.n = inp.n
        self.n_edges = len(inp.edges)
        self.shapes = inp.shapes
        self.areas = [h * w for h, w in inp.shapes]
        self.offsets = np.concatenate(([0], np.cumsum(self.areas))).tolist()
        self.total = int(self.offsets[-1])
        uvc = []
        for h, w in inp.shapes:
            grid = pixel_grid(h, w, device=dev) - torch.tensor((w / 2, h / 2), device=dev)
            uvc.append(grid.reshape(-1, 2).T)
        self.uvc = torch.cat(uvc, dim=1).contiguous()  # (2, total)
        area_i = float(sum(self.areas[i] for i, _ in inp.edges))
        area_j = float(sum(self.areas[j] for _, j in inp.edges))

        side_edge: list[int] = []
        side_img: list[int] = []
        self.groups: list[_Group] = []
        for g in range(self.n):
            pts, wts = [], []
            start = len(side_edge)
            for e, (i, j) in enumerate(inp.edges):
                if i == g:
                    pts.append(inp.pred1[e])
                    wts.append(inp.conf1[e].log() / area_i)
                elif j == g:
                    pts.append(inp.pred2[e])
                    wts.append(inp.conf2[e].log() / area_j)
                else:
                    continue
                side_edge.append(e)
                side_img.append(g)
            k = len(pts)
            area = self.areas[g]
            planar = torch.stack([p.reshape(area, 3).T for p in pts])  # (K, 3, A)
            weights = torch.stack([w.reshape(area) for w in wts])  # (K, A)
            chunk = area if dev.type != "cpu" else max(1024, _CPU_CHUNK_ELEMS // k)
            chunks = [
                (
                    a0,
                    min(a0 + chunk, area),
                    planar[:, :, a0 : a0 + chunk].contiguous(),
                    weights[:, a0 : a0 + chunk].contiguous(),
                )
                for a0 in range(0, area, chunk)
            ]
            self.groups.append(
                _Group(image=g, sides=slice(start, len(side_edge)), offset=self.offsets[g], chunks=chunks)
            )
        self.side_edge = torch.tensor(side_edge, device=dev)
        self.side_img = torch.tensor(side_img, device=dev)
        self.device = dev

    # -- differentiable small part ------------------------------------------------------------
    def side_transforms(
        self, im_poses: torch.Tensor, pw_poses: torch.Tensor, norm_pw_scale: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per side: M (S, 3, 3) and b (S, 3) mapping pair points into the image's camera frame."""
        q_img = im_poses[:, :4] / im_poses[:, :4].norm(dim=-1, keepdim=True)
        rot_img = roma.unitquat_to_rotmat(q_img)  # (N, 3, 3)
        t_img = signed_expm1(im_poses[:, 4:7])  # (N, 3)
        q_e = pw_poses[:, :4] / pw_poses[:, :4].norm(dim=-1, keepdim=True)
        rot_e = roma.unitquat_to_rotmat(q_e)  # (E, 3, 3)
        t_e = signed_expm1(pw_poses[:, 4:7])  # (E, 3)
        scale = pw_poses[:, 7].exp()
        if norm_pw_scale:
            scale = scale * (math.log(BASE_SCALE) - pw_poses[:, 7].mean()).exp()
        rt_img = rot_img.transpose(1, 2)[self.side_img]  # (S, 3, 3) cam_from_world rotation
        s_side = scale[self.side_edge]
        m = s_side[:, None, None] * (rt_img @ rot_e[self.side_edge])
        b = (rt_img @ (s_side[:, None] * t_e[self.side_edge] - t_img[self.side_img])[..., None])[..., 0]
        return m, b

    @torch.no_grad()
    def cam_points(self, depth: torch.Tensor, inv_focals: torch.Tensor) -> torch.Tensor:
        """depth (total,) flat depths, inv_focals (N,) 1/f -> X (3, total) in each camera's frame."""
        x = torch.empty((3, self.total), device=self.device)
        for k in range(self.n):
            sl = slice(self.offsets[k], self.offsets[k + 1])
            torch.mul(self.uvc[:, sl], depth[sl], out=x[:2, sl]).mul_(inv_focals[k])
        x[2] = depth
        return x

    @torch.no_grad()
    def cam_points_backward(
        self, g_neg: torch.Tensor, depth: torch.Tensor, inv_focals: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of :meth:`cam_points` given g_neg = -dL/dX (3, total).

        Returns dL/dlog(depth) (total,) and dL/d(1/f) (N,).
        """
        g_logd = torch.empty_like(depth)
        g_inv_f = torch.empty_like(inv_focals)
        for k in range(self.n):
            sl = slice(self.offsets[k], self.offsets[k + 1])
            radial = g_neg[0, sl] * self.uvc[0, sl]
            radial.addcmul_(g_neg[1, sl], self.uvc[1, sl])  # -dL/dX_xy . (u - cx, v - cy)
            g_inv_f[k] = -torch.dot(radial, depth[sl])
            # dL/dd = (dL/dX_xy . uvc) / f + dL/dX_z; dL/dlog d = d * dL/dd
            torch.mul(radial, inv_focals[k], out=g_logd[sl]).add_(g_neg[2, sl]).mul_(depth[sl]).neg_()
        return g_logd, g_inv_f

    # -- per-pixel part, hand-written gradient ------------------------------------------------
    @torch.no_grad()
    def residual_loss(
        self, m: torch.Tensor, b: torch.Tensor, x: torch.Tensor, *, with_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """sum_k sum_pix w |M_k P + b_k - X| and its gradients w.r.t. M (S,3,3), b (S,3) and -X (3,total)."""
        loss = torch.zeros((), device=self.device)
        gm = torch.zeros_like(m) if with_grad else None
        gb = torch.zeros_like(b) if with_grad else None
        gx = torch.empty_like(x) if with_grad else None
        for grp in self.groups:
            mg = m[grp.sides]
            bg = b[grp.sides, :, None]
            for a0, a1, pts, w in grp.chunks:
                o0, o1 = grp.offset + a0, grp.offset + a1
                q = torch.baddbmm(bg, mg, pts)  # (K, 3, C)
                q.sub_(x[:, o0:o1])
                dist = q[:, 0] * q[:, 0]
                dist.addcmul_(q[:, 1], q[:, 1]).addcmul_(q[:, 2], q[:, 2]).sqrt_()  # (K, C)
                loss += torch.dot(w.reshape(-1), dist.reshape(-1))
                if with_grad:
                    dist.clamp_min_(1e-30)
                    torch.div(w, dist, out=dist)
                    q.mul_(dist[:, None])  # dL/dq
                    gm[grp.sides] += torch.bmm(q, pts.transpose(1, 2))
                    gb[grp.sides] += q.sum(-1)
                    torch.sum(q, 0, out=gx[:, o0:o1])
        return loss, gm, gb, gx


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


@dataclass
class _OptimResult:
    raw: _RawParams
    loss_history: list[float]
    lr_history: list[float]
    iterations: int
    early_stopped: bool
    final_loss: float
    init_loss: float


def _evaluate(
    prob: _Problem,
    logd: torch.Tensor,
    im_poses: torch.Tensor,
    pw_poses: torch.Tensor,
    focal_param: torch.Tensor,
    *,
    norm_pw_scale: bool,
    shared_focal: bool,
    with_grad: bool,
) -> torch.Tensor:
    """Loss at the given parameters; with_grad: also accumulate d loss / d param into ``.grad``.

    logd (total,) flat log-depths, im_poses (N, 7), pw_poses (E, 8), focal_param (N or 1, 1) =
    FOCAL_BREAK * log f. Returns the loss as a 0-d tensor.
    """
    with torch.set_grad_enabled(with_grad):
        m, b = prob.side_transforms(im_poses, pw_poses, norm_pw_scale)
        inv_f = (focal_param / -FOCAL_BREAK).exp().reshape(-1)
        if shared_focal:
            inv_f = inv_f.expand(prob.n)
    depth = logd.detach().exp()
    x = prob.cam_points(depth, inv_f.detach())
    loss, gm, gb, g_neg_x = prob.residual_loss(m.detach(), b.detach(), x, with_grad=with_grad)
    if with_grad:
        g_logd, g_inv_f = prob.cam_points_backward(g_neg_x, depth, inv_f.detach())
        if logd.requires_grad:
            logd.grad = g_logd if logd.grad is None else logd.grad + g_logd
        outs = [(t, g) for t, g in ((m, gm), (b, gb), (inv_f, g_inv_f)) if t.requires_grad]
        if outs:
            torch.autograd.backward([t for t, _ in outs], [g for _, g in outs])
    return loss


def _lr_at(cfg: AlignmentConfig, it: int) -> float:
    t = it / cfg.niter
    if cfg.schedule == "cosine":
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(t * math.pi)) / 2
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.lr_min - cfg.lr) * t
    raise ValueError(f"unknown schedule {cfg.schedule!r}; expected 'linear' or 'cosine'")


def _plateaued(history: list[float], window: int, tol: float) -> bool:
    """True when mean(last window) improved on mean(window before) by < tol per iteration (relative)."""
    recent = sum(history[-window:]) / window
    before = sum(history[-2 * window : -window]) / window
    return (before - recent) < tol * window * before


def _flat_depth(raw_depth: torch.Tensor, areas: list[int]) -> torch.Tensor:
    return torch.cat([raw_depth[i, :a] for i, a in enumerate(areas)])


def _optimize_from_raw(
    preds: PairPredictions | _Inputs,
    raw: _RawParams,
    cfg: AlignmentConfig,
    *,
    device: str | torch.device = "cpu",
    norm_pw_scale: bool = True,
    fixed_poses: tuple[int, ...] = (),
    fixed_focal: bool = False,
    shared_focal: bool = False,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    problem: _Problem | None = None,
) -> _OptimResult:
    """The reference optimisation loop started from given raw parameters (private, for tests).

    Runs ``cfg.niter`` Adam steps (betas (0.9, 0.9)) with the ``cfg.schedule`` learning rate;
    ``loss_history[n]`` is the loss before step n (reference semantics). Fixed poses/focals keep
    their values exactly; ``shared_focal`` optimises the mean of the focal parameters as one value.
    """
    inp = preds if isinstance(preds, _Inputs) else _prepare_inputs(preds, torch.device(device))
    dev = inp.device
    prob = problem if problem is not None else _Problem(inp)
    raw = raw.to(dev)
    n = inp.n
    if raw.im_poses.shape != (n, 7) or raw.im_focals.shape != (n, 1) or raw.pw_poses.shape != (prob.n_edges, 8):
        raise ValueError(
            f"raw parameters do not match the predictions: im_poses {tuple(raw.im_poses.shape)}, im_focals "
            f"{tuple(raw.im_focals.shape)}, pw_poses {tuple(raw.pw_poses.shape)} for {n} images, {prob.n_edges} pairs"
        )

    logd = _flat_depth(raw.im_depthmaps, prob.areas).clone().requires_grad_(True)
    im_poses = raw.im_poses.clone().requires_grad_(len(fixed_poses) < n)
    pw_poses = raw.pw_poses.clone().requires_grad_(True)
    focal_init = raw.im_focals.mean(0, keepdim=True) if shared_focal else raw.im_focals
    focal_param = focal_init.clone().requires_grad_(not fixed_focal)
    pose_mask = None
    if 0 < len(fixed_poses) < n:
        pose_mask = torch.ones((n, 1), device=dev)
        pose_mask[list(fixed_poses)] = 0

    def evaluate(with_grad: bool) -> torch.Tensor:
        return _evaluate(
            prob,
            logd,
            im_poses,
            pw_poses,
            focal_param,
            norm_pw_scale=norm_pw_scale,
            shared_focal=shared_focal,
            with_grad=with_grad,
        )

    params = [p for p in (pw_poses, logd, im_poses, focal_param) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.9))
    init_loss = float(evaluate(False))
    history: list[float] = []
    lrs: list[float] = []
    # Early stop: when the mean loss over the last `patience` iterations improved on the window
    # before by less than `tol` per iteration (relative), the schedule is cut short: the learning
    # rate decays linearly from its current value to lr_min over `early_stop_anneal` more
    # iterations (the loss of a run is mostly Adam noise that shrinks with the learning rate, so a
    # short annealing tail settles it nearly as well as the full schedule), then the loop stops.
    patience = cfg.early_stop_patience
    anneal = cfg.early_stop_anneal
    n_total = cfg.niter
    tail_start: int | None = None
    tail_lr0 = cfg.lr
    it = 0
    while it < n_total:
        if cancel is not None and cancel():
            raise AlignmentCancelled(f"alignment cancelled at iteration {it}/{n_total}")
        if tail_start is None:
            lr = _lr_at(cfg, it)
        else:
            lr = tail_lr0 + (cfg.lr_min - tail_lr0) * (it - tail_start) / (n_total - tail_start)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = evaluate(True)
        if pose_mask is not None and im_poses.grad is not None:
            im_poses.grad.mul_(pose_mask)
        optimizer.step()
        loss_f = float(loss)
        if not math.isfinite(loss_f):
            raise AlignmentError(f"global alignment diverged: loss is {loss_f} at iteration {it}")
        history.append(loss_f)
        lrs.append(lr)
        it += 1
        if progress is not None:
            if tail_start is None:
                progress("align", it, cfg.niter)
            else:  # stretch the tail so the bar still ends at niter
                frac = (it - tail_start) / (n_total - tail_start)
                progress("align", tail_start + round(frac * (cfg.niter - tail_start)), cfg.niter)
        if (
            cfg.early_stop
            and tail_start is None
            and it >= 2 * patience
            and it + anneal < cfg.niter
            and _plateaued(history, patience, cfg.early_stop_tol)
        ):
            tail_start, tail_lr0, n_total = it, lr, it + anneal
            logger.debug("early stop: loss plateaued at iteration %d, annealing until %d", it, n_total)

    out_depth = raw.im_depthmaps.clone()
    flat = logd.detach()
    for i, a in enumerate(prob.areas):
        out_depth[i, :a] = flat[prob.offsets[i] : prob.offsets[i] + a]
    focal_out = focal_param.detach().expand(n, 1).clone() if shared_focal else focal_param.detach().clone()
    return _OptimResult(
        raw=_RawParams(out_depth, im_poses.detach().clone(), focal_out, pw_poses.detach().clone()),
        loss_history=history,
        lr_history=lrs,
        iterations=len(history),
        early_stopped=tail_start is not None,
        final_loss=history[-1] if history else init_loss,
        init_loss=init_loss,
    )


def _decode(
    raw: _RawParams, shapes: tuple[tuple[int, int], ...]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Raw parameters -> world_from_cam (N, 4, 4), focals (N,), N depth maps (H, W)."""
    q = raw.im_poses[:, :4] / raw.im_poses[:, :4].norm(dim=-1, keepdim=True)
    poses = torch.eye(4, device=raw.im_poses.device).repeat(len(shapes), 1, 1)
    poses[:, :3, :3] = roma.unitquat_to_rotmat(q)
    poses[:, :3, 3] = signed_expm1(raw.im_poses[:, 4:7])
    focals = (raw.im_focals[:, 0] / FOCAL_BREAK).exp()
    depths = [raw.im_depthmaps[i, : h * w].exp().reshape(h, w) for i, (h, w) in enumerate(shapes)]
    return poses, focals, depths


# --------------------------------------------------------------------------------------------
# Two views
# --------------------------------------------------------------------------------------------


def _pair_viewer(
    inp: _Inputs, cfg: AlignmentConfig, known_focals: list[float] | None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[str], dict]:
    """Reference PairViewer: returns world_from_cam (2, 4, 4), focals (2,), depths, warnings, extra."""
    edge_of: dict[tuple[int, int], int] = {}
    for e, ij in enumerate(inp.edges):
        edge_of.setdefault(ij, e)
    e01, e10 = edge_of[(0, 1)], edge_of[(1, 0)]
    scores, focals, rel = [], [], []
    for i, e in ((0, e01), (1, e10)):
        scores.append(float(inp.conf1[e].mean() * inp.conf2[e].mean()))
        focals.append(known_focals[i] if known_focals is not None else _estimate_focal(inp.pred1[e]))
    if cfg.shared_focal and known_focals is None:
        focals = [math.sqrt(focals[0] * focals[1])] * 2
    _check_focals(focals, inp)
    for i, e in ((0, e10), (1, e01)):  # image i's points as seen in the pair whose view 1 is the other image
        res = _pnp_pose(inp.pred2[e], inp.im_conf[i] > cfg.min_conf_thr, focals[i], PNP_ITERS_PAIR)
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


def _apply_known_poses_2view(
    poses: torch.Tensor, depths: list[torch.Tensor], known: dict[int, torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Move (and with 2 known poses, scale) the two-view result onto the known poses."""
    idx = sorted(known)
    target = torch.stack([known[k] for k in idx])
    sim = similarity_between_poses(poses[idx], target) if len(idx) == 2 else None
    if sim is not None:
        s, rot, trans = sim
        trf = _srt(s, rot, trans)
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


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


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
    ``extra``. Raises :class:`AlignmentError` for degenerate input (non-finite values, focal
    estimate 0, disconnected pairs, diverging loss); recoverable problems go to ``Scene.warnings``.
    All computation is float32 whatever precision the predictions came in.
    """
    if not isinstance(cfg, AlignmentConfig):
        raise TypeError(f"cfg must be an AlignmentConfig, got {type(cfg).__name__}")
    if cfg.init != "mst":
        raise ValueError(f"unknown init {cfg.init!r}; only 'mst' is implemented")
    if cfg.schedule not in ("linear", "cosine"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; expected 'linear' or 'cosine'")
    t0 = time.perf_counter()
    dev = torch.device(device)
    inp = _prepare_inputs(preds, dev)
    known_f = _known_focals(cfg, inp.n)
    known_p = _known_poses(known_poses, inp.n, dev)
    warnings: list[str] = []
    for k in range(inp.n):
        if not bool((inp.im_conf[k] > cfg.min_conf_thr).any()):
            warnings.append(
                f"image {inp.label(k)}: no pixel has confidence above {cfg.min_conf_thr:g}; its points are unreliable"
            )

    with torch.autocast(device_type=dev.type, enabled=False):
        if inp.n == 2 and (0, 1) in inp.edges and (1, 0) in inp.edges:
            poses, focals, depths, pv_warn, extra = _pair_viewer(inp, cfg, known_f)
            warnings += pv_warn
            if known_p:
                poses, depths = _apply_known_poses_2view(poses, depths, known_p)
            extra.update(method="pair_viewer", iterations=0, early_stopped=False, loss_history=[])
            final_loss = None
        else:
            init = _initialize(inp, cfg, known_f, known_p)
            warnings += init.warnings
            opt = _optimize_from_raw(
                inp,
                init.raw,
                cfg,
                norm_pw_scale=init.norm_pw_scale,
                fixed_poses=init.fixed_poses,
                fixed_focal=known_f is not None,
                shared_focal=cfg.shared_focal and known_f is None,
                progress=progress,
                cancel=cancel,
            )
            poses, focals, depths = _decode(opt.raw, inp.shapes)
            for k, pose in known_p.items():
                poses[k] = pose
            final_loss = opt.final_loss
            extra = {
                "method": "optimizer",
                "iterations": opt.iterations,
                "early_stopped": opt.early_stopped,
                "loss_history": opt.loss_history,
                "init_loss": opt.init_loss,
                "mst_edges": [list(e) for e in init.mst.edges],
                "mst_focals": [None if f is None else float(f) for f in init.mst.focals],
            }
    extra["seconds"] = time.perf_counter() - t0
    scene = _make_scene(preds, inp, poses, focals, depths, final_loss, warnings, extra)
    logger.info("aligned %d views (%s) in %.2f s, final loss %s", inp.n, extra["method"], extra["seconds"], final_loss)
    return scene


def _make_scene(
    preds: PairPredictions,
    inp: _Inputs,
    poses: torch.Tensor,
    focals: torch.Tensor,
    depths: list[torch.Tensor],
    final_loss: float | None,
    warnings: list[str],
    extra: dict,
) -> Scene:
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
        extra=extra,
    )
