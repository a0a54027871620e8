"""Which points of an aligned scene are shown and exported.

Everything here reads a :class:`core.types.Scene` and returns new arrays (never edits the scene),
so changing a filter never re-runs the network or the alignment.

Dense scenes (DUSt3R: per-view depth, point and confidence maps) get per-view (H, W) bool masks
from :func:`point_masks`, in this order:

1. confidence: a pixel is kept when its RAW confidence is strictly above ``min_conf_thr``. Raw
   confidence is the network's ``1 + exp(x)``, so it is always > 1; a threshold <= 1 keeps every
   pixel. The default 3.0 is the reference's own mask threshold (``im_conf > 3``, used by its
   alignment init): it keeps textured objects (confidence typically 5-100) and drops the
   low-confidence haze around silhouettes and in the sky (typically 1-2). (The original demo
   passed the slider through ``log`` first and compared ~1.1 with raw confidences, which kept
   nearly everything.) With ``clean_depth`` the threshold is applied to the confidences returned
   by :func:`clean_pointcloud`, in which dropped points have confidence 0.
2. optional sky mask (:func:`sky_mask`), per view.
3. statistical outlier removal (:func:`statistical_outlier_mask`): for each kept pixel, the mean
   distance to its k nearest kept points of the same view, in units of its pixel footprint
   (depth / focal); pixels above mean + outlier_std * std (over all views) are dropped. Per view
   and footprint-scaled so that far surfaces and regions seen by fewer views (sampled more
   sparsely) survive while isolated points (flying pixels, stray depth) do not.
4. optional largest connected object (:func:`largest_component_mask`): points closer than
   ``component_radius`` median nearest-neighbour distances are linked; the biggest group wins.

Steps 3 and 4 run on at most ``filter_max_points`` kept pixels, taken on a regular pixel grid
(every s-th row and column); every other kept pixel follows the nearest sample of its grid cell
when it lies close enough to it. That keeps a 3 x 512 x 384 scene well under a second.

Sparse scenes (COLMAP engine) have no confidence or depth maps; :func:`sparse_mask` applies
steps 3 and 4 to ``scene.sparse.xyz`` (unscaled, one group).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from config import PostprocessConfig
from core.types import Scene

__all__ = [
    "PointSet",
    "dense_maps",
    "clean_pointcloud",
    "confidence_masks",
    "sky_mask",
    "even_sample",
    "transform_points",
    "statistical_outlier_mask",
    "largest_component_mask",
    "point_masks",
    "sparse_mask",
    "resolve_masks",
    "gather_points",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointSet:
    """Kept points of a scene, flattened (M points), world frame."""

    xyz: np.ndarray
    """(M, 3) float32 world coordinates."""
    rgb: np.ndarray
    """(M, 3) uint8 colours."""
    conf: np.ndarray | None
    """(M,) float32 raw confidence (dense scenes), None for sparse scenes."""
    view: np.ndarray
    """(M,) int32 source view of each point (-1 for sparse points)."""
    rows: np.ndarray
    """(M,) int32 pixel row in the source view (-1 for sparse points)."""
    cols: np.ndarray
    """(M,) int32 pixel column in the source view (-1 for sparse points)."""

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def dense_maps(
    scene: Scene, what: str
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(pts3d, depths, conf) of a dense scene; ValueError naming ``what`` for a sparse one."""
    if scene.pts3d is None or scene.depths is None or scene.conf is None:
        raise ValueError(
            f"{what} needs a dense scene (depth, point and confidence maps); the {scene.engine!r} "
            "scene has none (sparse points only)"
        )
    return scene.pts3d, scene.depths, scene.conf


def clean_pointcloud(scene: Scene, tol: float = 0.001) -> tuple[np.ndarray, ...]:
    """Confidences after dropping points that lie in front of another view's surface.

    For every ordered pair of views (i, j), i != j, in order: each world point of view i is
    projected into view j (pixel rounded to the nearest integer, half to even); if it lands inside
    view j, in front of the camera, with z-depth < (1 - tol) * depth_j at that pixel, and its
    current confidence is lower than view j's current confidence there, its confidence becomes
    min(conf, 0). The updates are sequential (later pairs see earlier changes), as in the
    reference (FORMAT.md section 6). The scene is not modified.

    Returns N (H, W) float32 arrays (new per-view raw confidences; dropped points have 0).
    Raises ValueError for a sparse scene or tol outside [0, 1).
    """
    pts3d, depths, confs = dense_maps(scene, "clean_pointcloud")
    if not 0.0 <= tol < 1.0:
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    n = scene.n_views
    res = [np.array(c, dtype=np.float32, copy=True) for c in confs]
    cam_from_world = np.linalg.inv(scene.world_from_cam.astype(np.float64))  # (N, 4, 4)
    intr = scene.intrinsics()
    flat_pts = [p.reshape(-1, 3) for p in pts3d]
    for i in range(n):
        conf_i = res[i].reshape(-1)  # view into res[i]
        for j in range(n):
            if i == j:
                continue
            h, w = res[j].shape
            p = transform_points(cam_from_world[j], flat_pts[i])  # (HW, 3) in cam j
            z = p[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                u = np.rint(intr[j, 0, 0] * p[:, 0] / z + intr[j, 0, 2])
                v = np.rint(intr[j, 1, 1] * p[:, 1] / z + intr[j, 1, 2])
            inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)  # NaN compares False
            idx = np.flatnonzero(inside)
            zf = z[idx]
            u, v = u[idx].astype(np.int64), v[idx].astype(np.int64)
            dj = depths[j][v, u]
            bad = (zf < (1.0 - tol) * dj) & (conf_i[idx] < res[j][v, u])
            hit = idx[bad]
            conf_i[hit] = np.minimum(conf_i[hit], 0.0)
    return tuple(res)


def confidence_masks(conf: tuple[np.ndarray, ...], min_conf_thr: float) -> tuple[np.ndarray, ...]:
    """N (H, W) bool: raw confidence strictly above ``min_conf_thr`` (NaN -> False)."""
    if min_conf_thr < 0:
        raise ValueError(f"min_conf_thr must be >= 0, got {min_conf_thr}")
    return tuple(np.asarray(c) > min_conf_thr for c in conf)


def sky_mask(image: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Heuristic sky segmentation of one view.

    image: (H, W, 3) uint8 RGB; depth: (H, W) z-depth. A pixel is sky when it is bright and
    either blue-dominant or nearly colourless, locally flat (low texture), farther than the view's
    median depth, and part of a region touching the top image row; the flat regions then grow into
    adjacent bright/blue far pixels (their borders are not flat). Returns (H, W) bool.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != depth.shape:
        raise ValueError(f"expected image (H, W, 3) and depth (H, W), got {image.shape} and {depth.shape}")
    rgb = image.astype(np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(-1)
    sat = np.where(value > 0, (value - rgb.min(-1)) / np.maximum(value, 1e-6), 0.0)
    blue = (b > r + 0.05) & (b >= g - 0.02) & (value > 0.45)
    white = (sat < 0.2) & (value > 0.7)
    grey = rgb.mean(-1)
    gy, gx = np.gradient(ndimage.uniform_filter(grey, 3))
    flat = ndimage.uniform_filter(np.hypot(gx, gy), 5) < 0.02
    finite = np.isfinite(depth)
    far = finite & (depth > np.median(depth[finite])) if finite.any() else np.zeros_like(finite)
    sky_like = (blue | white) & far
    seeds = ndimage.binary_opening(sky_like & flat, structure=np.ones((3, 3), bool))
    labels, _ = ndimage.label(seeds, structure=np.ones((3, 3), bool))
    top = np.unique(labels[0][labels[0] > 0])
    seeds = np.isin(labels, top)
    # grow the flat seeds into the adjacent sky-coloured far pixels (region borders are not flat)
    return ndimage.binary_propagation(seeds, structure=np.ones((3, 3), bool), mask=sky_like)


def even_sample(m: int, max_count: int) -> np.ndarray:
    """Deterministic, evenly spaced, strictly increasing indices into 0..m-1: all of them when
    m <= max_count, else floor(i * m / max_count) for i < max_count. (K,) int64."""
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    if m <= max_count:
        return np.arange(m)
    return (np.arange(max_count, dtype=np.int64) * m) // max_count


def transform_points(mat: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) or (3, 4) rigid/affine transform to (M, 3) points -> (M, 3) float64.

    Written column by column: for skinny (M, 3) arrays this is much faster than a BLAS matmul.
    """
    mat = np.asarray(mat, np.float64)
    x, y, z = (np.asarray(pts[:, i], np.float64) for i in range(3))
    return np.stack([mat[r, 0] * x + mat[r, 1] * y + mat[r, 2] * z + mat[r, 3] for r in range(3)], axis=1)


def _sor_fit(
    points: np.ndarray, k: int, std_ratio: float, scale: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, float, dict[int, tuple[np.ndarray, cKDTree]]]:
    """Exact SOR on the given points: (keep (M,), threshold, {group: (member indices, tree)})."""
    keep = np.ones(len(points), bool)
    stats, parts, trees = [], [], {}
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if len(members) <= k:
            continue
        tree = cKDTree(points[members])
        dist, _ = tree.query(points[members], k=k + 1, workers=-1)
        stats.append(dist[:, 1:].mean(1) / scale[members])
        parts.append(members)
        trees[int(g)] = (members, tree)
    if not stats:
        return keep, np.inf, trees
    stat = np.concatenate(stats)
    thr = float(stat.mean() + std_ratio * stat.std())
    keep[np.concatenate(parts)] = stat <= thr
    return keep, thr, trees


def _check_sor_args(m: int, k: int, std_ratio: float, scale, groups) -> tuple[np.ndarray, np.ndarray]:
    if k < 1 or std_ratio <= 0:
        raise ValueError(f"need k >= 1 and std_ratio > 0, got k={k}, std_ratio={std_ratio}")
    scale = np.ones(m) if scale is None else np.asarray(scale, dtype=np.float64)
    groups = np.zeros(m, np.int64) if groups is None else np.asarray(groups)
    if scale.shape != (m,) or groups.shape != (m,):
        raise ValueError(f"scale and groups must be ({m},), got {scale.shape} and {groups.shape}")
    if not (scale > 0).all():
        raise ValueError("scale must be > 0 everywhere")
    return scale, groups


def statistical_outlier_mask(
    points: np.ndarray,
    k: int = 16,
    std_ratio: float = 2.0,
    *,
    scale: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    max_points: int = 60_000,
) -> np.ndarray:
    """Statistical outlier removal. points: (M, 3) world. Returns (M,) bool, True = keep.

    For each point, d = mean distance to its k nearest other points of the same group, divided by
    the point's ``scale``; points with d > mean(d) + std_ratio * std(d) (statistics over all
    points) are outliers.

    scale: (M,) > 0, the expected point spacing at each point (for pixel-grid points, the pixel
      footprint depth / focal), so that far or oblique surfaces, which are sampled more sparsely,
      are not mistaken for outliers; None = 1.
    groups: (M,) int, neighbours are searched within a group only (one group per view); None =
      one group.
    max_points: above this, d is computed on an even sample (per group, proportional), and every
      other point keeps the verdict of its nearest sample provided its own scaled distance to it
      is within the threshold (otherwise it is isolated and dropped).
    Groups with at most k points are kept.
    """
    points = _check_points(points)
    m = len(points)
    scale, groups = _check_sor_args(m, k, std_ratio, scale, groups)
    parts = [np.zeros(0, np.int64)]
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        parts.append(members[even_sample(len(members), max(k + 1, round(max_points * len(members) / m)))])
    sample = np.concatenate(parts)
    keep_s, thr, trees = _sor_fit(points[sample], k, std_ratio, scale[sample], groups[sample])
    if len(sample) == m:
        keep = np.ones(m, bool)
        keep[sample] = keep_s
        return keep
    keep = np.ones(m, bool)
    for g, (members_s, tree) in trees.items():
        members = np.flatnonzero(groups == g)
        d1, nearest = tree.query(points[members], k=1, workers=-1)
        keep[members] = keep_s[members_s][nearest] & (d1 / scale[members] <= thr)
    return keep


def _lcc_fit(points: np.ndarray, radius_factor: float) -> tuple[np.ndarray, float, cKDTree]:
    """Exact largest component: (keep (M,), link radius, tree)."""
    tree = cKDTree(points)
    m = len(points)
    if m <= 2:
        return np.ones(m, bool), np.inf, tree
    nn, _ = tree.query(points, k=2, workers=-1)
    positive = nn[:, 1][nn[:, 1] > 0]
    if positive.size == 0:  # all points coincide
        return np.ones(m, bool), np.inf, tree
    radius = radius_factor * float(np.median(positive))
    pairs = tree.query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    return labels == np.bincount(labels).argmax(), radius, tree


def largest_component_mask(points: np.ndarray, radius_factor: float = 8.0, *, max_points: int = 60_000) -> np.ndarray:
    """Keep the largest connected object. points: (M, 3) world. Returns (M,) bool.

    Graph: points closer than r = radius_factor * median nearest-neighbour distance are linked
    (cKDTree radius pairs, scipy connected components); the component with the most points
    wins. With more than ``max_points`` points the graph is built on an even sample and every
    other point follows its nearest sample if it lies within r of it.
    """
    points = _check_points(points)
    if radius_factor <= 0:
        raise ValueError(f"radius_factor must be > 0, got {radius_factor}")
    m = len(points)
    sample = even_sample(m, max_points)
    keep_s, radius, tree = _lcc_fit(points[sample], radius_factor)
    if len(sample) == m:
        return keep_s
    d1, nearest = tree.query(points, k=1, workers=-1)
    return keep_s[nearest] & (d1 <= radius)


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"expected points (M, 3), got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points contain NaN or inf; mask them out first")
    return points


def _grid_stride(masks: list[np.ndarray], max_points: int) -> int:
    """Smallest pixel stride s such that the kept pixels on the s-grid number at most max_points."""
    stride = 1
    while sum(int(m[::stride, ::stride].sum()) for m in masks) > max_points:
        stride += 1
    return stride


def _grid_propagate(
    pts: np.ndarray, mask: np.ndarray, samples: np.ndarray, verdict: np.ndarray, limit: np.ndarray | float, stride: int
) -> np.ndarray:
    """Spread per-sample verdicts of one view to all its kept pixels.

    pts (H, W, 3) world; mask (H, W) kept pixels; samples (H, W) bool, eligible samples (only on
    the stride grid); verdict: (S,) bool per eligible sample (row-major order); limit: (H, W) or
    scalar distance. A pixel takes the verdict of the nearest (3-D) eligible sample among the four
    grid corners of its cell (the nearest eligible sample of the view when none is eligible) and
    is dropped when it lies farther than ``limit`` from it. Returns the new (H, W) mask.
    """
    out = np.zeros_like(mask)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return out
    grid_ok = samples[::stride, ::stride]
    gh, gw = grid_ok.shape
    good = np.zeros(grid_ok.shape, bool)
    good[grid_ok] = verdict
    ok_flat, good_flat = grid_ok.ravel(), good.ravel()
    grid_xyz = [np.ascontiguousarray(pts[::stride, ::stride, c], np.float32).ravel() for c in range(3)]
    pix_xyz = [pts[rows, cols, c].astype(np.float32) for c in range(3)]
    gr0, gc0 = rows // stride, cols // stride
    best_d2 = np.full(rows.size, np.inf, np.float32)
    best_ok = np.zeros(rows.size, bool)
    for dr in (0, 1):
        gr = np.minimum(gr0 + dr, gh - 1) * gw
        for dc in (0, 1):
            gi = gr + np.minimum(gc0 + dc, gw - 1)
            d2 = sum((pix_xyz[c] - grid_xyz[c][gi]) ** 2 for c in range(3))
            better = ok_flat[gi] & (d2 < best_d2)
            best_d2[better] = d2[better]
            best_ok[better] = good_flat[gi[better]]
    best_d = np.sqrt(best_d2)
    orphan = ~np.isfinite(best_d)
    if orphan.any() and grid_ok.any():
        tree = cKDTree(pts[::stride, ::stride][grid_ok])
        d1, nearest = tree.query(pts[rows[orphan], cols[orphan]], k=1, workers=-1)
        best_d[orphan] = d1
        best_ok[orphan] = verdict[nearest]
    lim = limit[rows, cols] if isinstance(limit, np.ndarray) else limit
    out[rows, cols] = best_ok & (best_d <= lim)
    return out


def _dense_filter_3d(
    pts3d: tuple[np.ndarray, ...],
    depths: tuple[np.ndarray, ...],
    focals: np.ndarray,
    masks: list[np.ndarray],
    cfg: PostprocessConfig,
) -> list[np.ndarray]:
    """Statistical outlier removal (per view, footprint-scaled) then the largest component, on the
    kept pixels sampled on a regular pixel grid (at most ``cfg.filter_max_points``), spread back to
    every kept pixel by :func:`_grid_propagate`."""
    stride = _grid_stride(masks, cfg.filter_max_points)
    samples = []
    for m in masks:
        s = np.zeros_like(m)
        s[::stride, ::stride] = m[::stride, ::stride]
        samples.append(s)
    if cfg.outlier_removal:
        pts = np.concatenate([p[s] for p, s in zip(pts3d, samples, strict=True)]).astype(np.float64)
        footprint = [
            np.maximum(np.abs(d) / float(f), 1e-12) for d, f in zip(depths, focals, strict=True)
        ]  # depth / focal
        scale = np.concatenate([fp[s] for fp, s in zip(footprint, samples, strict=True)])
        groups = np.concatenate([np.full(int(s.sum()), k) for k, s in enumerate(samples)])
        keep, thr, _ = _sor_fit(pts, cfg.outlier_neighbors, cfg.outlier_std, scale, groups)
        start = 0
        for k, s in enumerate(samples):
            cnt = int(s.sum())
            verdict = keep[start : start + cnt]
            start += cnt
            masks[k] = _grid_propagate(pts3d[k], masks[k], s, verdict, thr * footprint[k], stride)
            s[s] = verdict  # drop the outlier samples
    if cfg.largest_component:
        pts = np.concatenate([p[s] for p, s in zip(pts3d, samples, strict=True)]).astype(np.float64)
        if len(pts):
            keep, radius, _ = _lcc_fit(pts, cfg.component_radius)
            start = 0
            for k, s in enumerate(samples):
                cnt = int(s.sum())
                masks[k] = _grid_propagate(pts3d[k], masks[k], s, keep[start : start + cnt], radius, stride)
                start += cnt
    return masks


def point_masks(scene: Scene, cfg: PostprocessConfig) -> tuple[np.ndarray, ...]:
    """Per-view keep masks of a dense scene: N (H, W) bool (see the module docstring for the steps).

    With more than ``cfg.filter_max_points`` kept pixels, the outlier and component filters run
    on the kept pixels of a regular pixel grid (every s-th row and column, s as small as fits) and
    every other pixel follows the nearest sample of its grid cell, if close enough (within the
    outlier threshold, resp. the link radius). Raises ValueError for a sparse scene (use
    :func:`sparse_mask`).
    """
    pts3d, depths, confs = dense_maps(scene, "point_masks")
    conf = clean_pointcloud(scene) if cfg.clean_depth else confs
    masks = [m & np.isfinite(p).all(-1) for m, p in zip(confidence_masks(conf, cfg.min_conf_thr), pts3d, strict=True)]
    if cfg.mask_sky:
        masks = [m & ~sky_mask(img, d) for m, img, d in zip(masks, scene.images, depths, strict=True)]
    if (cfg.outlier_removal or cfg.largest_component) and any(m.any() for m in masks):
        masks = _dense_filter_3d(pts3d, depths, scene.focals, masks, cfg)
    logger.debug("point_masks kept %d of %d pixels", sum(int(m.sum()) for m in masks), sum(m.size for m in masks))
    return tuple(masks)


def _filter_3d(points: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    keep = np.ones(len(points), bool)
    if cfg.outlier_removal:
        keep &= statistical_outlier_mask(
            points, cfg.outlier_neighbors, cfg.outlier_std, max_points=cfg.filter_max_points
        )
    if cfg.largest_component and keep.any():
        sub = largest_component_mask(points[keep], cfg.component_radius, max_points=cfg.filter_max_points)
        keep[np.flatnonzero(keep)[~sub]] = False
    return keep


def sparse_mask(scene: Scene, cfg: PostprocessConfig) -> np.ndarray:
    """Keep mask of a sparse scene's points: (M,) bool.

    Non-finite points are dropped; then statistical outlier removal and the largest-object
    filter as configured. There is no confidence, depth or image grid, so ``min_conf_thr``,
    ``clean_depth`` and ``mask_sky`` do not apply. Raises ValueError when the scene has no
    sparse points.
    """
    if scene.sparse is None:
        raise ValueError(f"sparse_mask needs a scene with sparse points; the {scene.engine!r} scene has none")
    xyz = np.asarray(scene.sparse.xyz)
    finite = np.isfinite(xyz).all(1)
    keep = finite.copy()
    if finite.any():
        keep[finite] = _filter_3d(xyz[finite], cfg)
    return keep


def resolve_masks(scene: Scene, masks: tuple[np.ndarray, ...] | list[np.ndarray] | np.ndarray | None):
    """Validate keep masks against a scene; None means "every finite point".

    Dense scenes: N (H, W) bool arrays (output of :func:`point_masks`). Sparse scenes: one (M,)
    bool array (output of :func:`sparse_mask`). Returns the masks as bool arrays (copies are not
    made). Raises ValueError on a shape mismatch.
    """
    if scene.pts3d is not None:
        if masks is None:
            return tuple(np.isfinite(p).all(-1) for p in scene.pts3d)
        if len(masks) != scene.n_views:
            raise ValueError(f"expected {scene.n_views} masks, got {len(masks)}")
        out = []
        for k, (m, p) in enumerate(zip(masks, scene.pts3d, strict=True)):
            m = np.asarray(m)
            if m.shape != p.shape[:2]:
                raise ValueError(f"mask {k} must be {p.shape[:2]}, got {m.shape}")
            out.append(m.astype(bool, copy=False) & np.isfinite(p).all(-1))
        return tuple(out)
    if scene.sparse is None:
        raise ValueError("scene has neither dense maps nor sparse points")
    finite = np.isfinite(scene.sparse.xyz).all(1)
    if masks is None:
        return finite
    m = np.asarray(masks)
    if m.shape != finite.shape:
        raise ValueError(f"sparse mask must be {finite.shape}, got {m.shape}")
    return m.astype(bool, copy=False) & finite


def gather_points(scene: Scene, masks=None) -> PointSet:
    """The kept points of a scene as a flat :class:`PointSet` (world frame).

    masks: as accepted by :func:`resolve_masks`. Dense points are ordered view by view, row-major.
    """
    masks = resolve_masks(scene, masks)
    if scene.pts3d is not None:
        pts3d, _, confs = dense_maps(scene, "gather_points")
        xyz, rgb, conf, view, rows, cols = [], [], [], [], [], []
        for k, m in enumerate(masks):
            r, c = np.nonzero(m)
            xyz.append(pts3d[k][r, c])
            rgb.append(scene.images[k][r, c])
            conf.append(confs[k][r, c])
            view.append(np.full(len(r), k, np.int32))
            rows.append(r.astype(np.int32))
            cols.append(c.astype(np.int32))
        return PointSet(
            xyz=np.concatenate(xyz).astype(np.float32),
            rgb=np.concatenate(rgb).astype(np.uint8),
            conf=np.concatenate(conf).astype(np.float32),
            view=np.concatenate(view),
            rows=np.concatenate(rows),
            cols=np.concatenate(cols),
        )
    if scene.sparse is None:
        raise ValueError("scene has neither dense maps nor sparse points")
    sel = np.flatnonzero(masks)
    neg = np.full(len(sel), -1, np.int32)
    return PointSet(
        xyz=scene.sparse.xyz[sel].astype(np.float32),
        rgb=scene.sparse.rgb[sel].astype(np.uint8),
        conf=None,
        view=neg,
        rows=neg.copy(),
        cols=neg.copy(),
    )
