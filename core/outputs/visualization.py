"""What users look at: the GLB (mesh or point cloud with camera frustums) and per-view maps.

The only module that uses trimesh and matplotlib. Everything reads a :class:`core.types.Scene`
and keep masks (from :mod:`core.outputs.postprocessing`), never re-running the network or the alignment.

GLB frame: the scene is expressed in the FIRST camera's frame with OpenGL axes (x right, y up,
z backwards), i.e. ``glb_from_world = diag(1, -1, -1, 1) @ cam_from_world[0]``. glTF viewers
(three.js, the Gradio Model3D / Babylon viewer) put their default camera on +Z looking down -Z
with +Y up, so they open the model upright, looking at it the way the first photo did. All other
exports (PLY, OBJ, COLMAP, cameras.json, npz) stay in the scene's world frame. A georeferenced
scene (already in its local east-north-up frame, :mod:`core.outputs.georef`) is written in that
frame instead, with glTF's axes (x east, y up, z south: :data:`GLB_FROM_ENU`), so the ground is
level in any viewer and the GLB lines up with the other local-frame files.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import matplotlib
import numpy as np
import trimesh
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator
from PIL import Image
from trimesh.visual import TextureVisuals
from trimesh.visual.material import PBRMaterial

from config import VizConfig
from core.outputs.postprocessing import dense_maps, even_sample, gather_points, resolve_masks, transform_points
from core.types import Scene

__all__ = [
    "OPENGL_FROM_OPENCV",
    "CAMERA_COLORS",
    "glb_from_world",
    "GLB_FROM_ENU",
    "grid_faces",
    "scene_mesh",
    "scene_points",
    "scene_extent",
    "frustum_corners",
    "scene_to_glb",
    "write_obj",
    "depth_colormap",
    "render_view_maps",
    "unique_stems",
]

logger = logging.getLogger(__name__)

#: Flip from OpenCV camera axes (y down, z forward) to OpenGL/glTF ones (y up, z backward).
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
#: Frustum colours, cycled per view (RGB uint8).
CAMERA_COLORS = (
    (230, 25, 75),
    (60, 120, 216),
    (60, 180, 75),
    (245, 130, 48),
    (145, 30, 180),
    (70, 200, 200),
    (240, 50, 230),
    (128, 128, 0),
    (0, 128, 128),
    (128, 0, 0),
)
FRUSTUM_TEXTURE_SIZE = 256
"""Long side (pixels) of the images drawn on the frustums."""
FRUSTUM_LINE_WIDTH = 0.03
"""Frustum edge thickness as a fraction of the frustum depth."""
TRANSPARENT_ALPHA = 0.35
"""Opacity of frustums and their images when ``cam_transparent`` is on."""


# ----------------------------------------------------------------------------------------------
# geometry helpers (pure numpy)


#: (4, 4) local east-north-up -> glTF axes (x east, y up, z south).
GLB_FROM_ENU = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


def glb_from_world(scene: Scene, *, local_enu: bool = False) -> np.ndarray:
    """(4, 4) float64: world -> GLB frame (first camera, OpenGL axes; or, for a scene in its local
    east-north-up frame, ``local_enu``, :data:`GLB_FROM_ENU`). See the module docstring."""
    if local_enu:
        return GLB_FROM_ENU.copy()
    return OPENGL_FROM_OPENCV @ np.linalg.inv(scene.world_from_cam[0].astype(np.float64))


def _transform(mat: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) transform to (M, 3) points -> (M, 3) float64."""
    return transform_points(mat, np.asarray(pts).reshape(-1, 3))


def grid_faces(valid: np.ndarray, depth: np.ndarray, max_jump: float) -> np.ndarray:
    """Triangles of a pixel grid. Returns (F, 3) int64 flat pixel indices (row * W + col).

    valid: (H, W) bool; depth: (H, W) z-depth in the view's camera. Each 2x2 block of pixels gives
    up to two triangles, (top-left, bottom-left, top-right) and (top-right, bottom-left,
    bottom-right), wound to face the camera; a triangle is kept only when its three pixels are
    valid, have positive depth and max(depth) / min(depth) - 1 <= max_jump (no faces across depth
    discontinuities).
    """
    if valid.shape != depth.shape or valid.ndim != 2:
        raise ValueError(f"valid and depth must be the same (H, W), got {valid.shape} and {depth.shape}")
    h, w = valid.shape
    if h < 2 or w < 2:
        return np.zeros((0, 3), np.int64)
    idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
    depth = np.asarray(depth, np.float32)
    with np.errstate(invalid="ignore"):
        ok = valid & np.isfinite(depth) & (depth > 0)
    d = np.where(ok, depth, np.float32(np.nan))
    corners = {
        "tl": (idx[:-1, :-1], d[:-1, :-1], ok[:-1, :-1]),
        "tr": (idx[:-1, 1:], d[:-1, 1:], ok[:-1, 1:]),
        "bl": (idx[1:, :-1], d[1:, :-1], ok[1:, :-1]),
        "br": (idx[1:, 1:], d[1:, 1:], ok[1:, 1:]),
    }
    faces = []
    for a, b, c in (("tl", "bl", "tr"), ("tr", "bl", "br")):
        (ia, da, oa), (ib, db, ob), (ic, dc, oc) = corners[a], corners[b], corners[c]
        keep = oa & ob & oc
        with np.errstate(invalid="ignore"):
            dmax = np.fmax(np.fmax(da, db), dc)
            dmin = np.fmin(np.fmin(da, db), dc)
            keep &= dmax <= np.float32(1.0 + max_jump) * dmin
        faces.append(np.stack([ia[keep], ib[keep], ic[keep]], -1))
    return np.concatenate(faces)


def _mesh_stride(masks: tuple[np.ndarray, ...], max_vertices: int) -> int:
    stride = 1
    while sum(int(m[::stride, ::stride].sum()) for m in masks) > max_vertices:
        stride += 1
    return stride


def scene_mesh(
    scene: Scene, masks=None, *, depth_jump: float = 0.05, max_vertices: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangle mesh of a dense scene built from every view's pixel grid (world frame).

    masks: N (H, W) keep masks (None = every finite point). When more than ``max_vertices``
    pixels are kept, every view's grid is subsampled with the smallest common stride that fits.
    Only vertices used by a face are returned. Returns vertices (V, 3) float32 world, faces
    (F, 3) int64, colours (V, 3) uint8. ValueError for a sparse scene.
    """
    pts3d, depths, _ = dense_maps(scene, "a mesh")
    masks = resolve_masks(scene, masks)
    stride = 1 if max_vertices is None else _mesh_stride(masks, max_vertices)
    verts, faces, cols = [], [], []
    offset = 0
    for k, m in enumerate(masks):
        sl = (slice(None, None, stride), slice(None, None, stride))
        f = grid_faces(m[sl], depths[k][sl], depth_jump)
        used = np.zeros(m[sl].size, bool)
        used[f.ravel()] = True
        remap = np.cumsum(used, dtype=np.int64) - 1 + offset  # flat pixel index -> vertex index
        idx = np.flatnonzero(used)
        verts.append(pts3d[k][sl].reshape(-1, 3)[idx])
        cols.append(scene.images[k][sl].reshape(-1, 3)[idx])
        faces.append(remap[f])
        offset += len(idx)
    if stride > 1:
        logger.info("mesh subsampled with stride %d to stay under %s vertices", stride, max_vertices)
    return (
        np.concatenate(verts).astype(np.float32, copy=False),
        np.concatenate(faces),
        np.concatenate(cols).astype(np.uint8, copy=False),
    )


def scene_points(scene: Scene, masks=None, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Kept points and colours (world frame), evenly subsampled to at most ``max_points``.

    Returns xyz (M, 3) float32 and rgb (M, 3) uint8. Works for dense and sparse scenes.
    """
    pts = gather_points(scene, masks)
    sel = even_sample(len(pts), max_points) if max_points is not None else np.arange(len(pts))
    return pts.xyz[sel], pts.rgb[sel]


def scene_extent(scene: Scene, points: np.ndarray | None = None) -> float:
    """Size of the scene: length of the 2nd-98th percentile box diagonal of ``points`` (M, 3),
    or of the camera centres when there are too few points; 1.0 for a degenerate scene."""
    for cand in (points, scene.world_from_cam[:, :3, 3]):
        if cand is None or len(cand) < 2:
            continue
        cand = np.asarray(cand)[even_sample(len(cand), 100_000)]
        lo, hi = np.percentile(cand.astype(np.float64), [2, 98], axis=0)
        ext = float(np.linalg.norm(hi - lo))
        if np.isfinite(ext) and ext > 1e-9:
            return ext
    return 1.0


def frustum_corners(scene: Scene, k: int, depth: float) -> np.ndarray:
    """(4, 3) float64 world points: the image corners of view k pushed to z-depth ``depth``.

    Order: top-left, top-right, bottom-right, bottom-left of the image (pixel edges, i.e. centres
    +-0.5).
    """
    h, w = scene.images[k].shape[:2]
    f = float(scene.focals[k])
    cx, cy = (float(v) for v in scene.principal_points[k])
    uv = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    in_cam = np.c_[(uv[:, 0] - cx) / f * depth, (uv[:, 1] - cy) / f * depth, np.full(4, depth)]
    return _transform(scene.world_from_cam[k].astype(np.float64), in_cam)


def _ribbons(a: np.ndarray, b: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Thin double ribbons (a '+' cross-section) along segments a -> b, both (S, 3).

    Returns vertices (8S, 3) and faces (4S, 3)."""
    d = b - a
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    helper = np.where(np.abs(d[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    n1 = np.cross(d, helper)
    n1 /= np.maximum(np.linalg.norm(n1, axis=1, keepdims=True), 1e-12)
    n2 = np.cross(d, n1)
    verts, faces = [], []
    for s in range(len(a)):
        for n in (n1[s], n2[s]):
            base = len(verts)
            off = n * width / 2
            verts.extend([a[s] - off, a[s] + off, b[s] + off, b[s] - off])
            faces.extend([[base, base + 1, base + 2], [base, base + 2, base + 3]])
    return np.array(verts), np.array(faces, np.int64)


def _material(
    rgb: tuple[int, int, int] = (255, 255, 255), alpha: float = 1.0, texture: Image.Image | None = None
) -> PBRMaterial:
    return PBRMaterial(
        baseColorFactor=[rgb[0] / 255, rgb[1] / 255, rgb[2] / 255, alpha],
        baseColorTexture=texture,
        metallicFactor=0.0,
        roughnessFactor=1.0,
        doubleSided=True,
        alphaMode="BLEND" if alpha < 1.0 else "OPAQUE",
    )


def _camera_geometry(
    scene: Scene, k: int, size: float, cfg: VizConfig, to_glb: np.ndarray
) -> list[tuple[str, trimesh.Trimesh]]:
    """Frustum (edges as thin ribbons) and optional image quad of view k, in the GLB frame."""
    apex = _transform(to_glb, scene.world_from_cam[k, :3, 3].astype(np.float64)[None])[0]
    corners = _transform(to_glb, frustum_corners(scene, k, size))
    a = np.concatenate([np.repeat(apex[None], 4, 0), corners])
    b = np.concatenate([corners, np.roll(corners, -1, axis=0)])
    verts, faces = _ribbons(a, b, FRUSTUM_LINE_WIDTH * size)
    alpha = TRANSPARENT_ALPHA if cfg.cam_transparent else 1.0
    color = CAMERA_COLORS[k % len(CAMERA_COLORS)]
    frustum = trimesh.Trimesh(verts, faces, process=False, validate=False)
    frustum.visual = TextureVisuals(material=_material(color, alpha))
    out = [(f"camera_{k}", frustum)]
    if cfg.cam_image:
        img = Image.fromarray(scene.images[k])
        img.thumbnail((FRUSTUM_TEXTURE_SIZE, FRUSTUM_TEXTURE_SIZE))
        # corners: TL, TR, BR, BL; trimesh uv origin is the image's bottom-left
        uv = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
        quad = trimesh.Trimesh(corners, np.array([[0, 3, 1], [1, 3, 2]]), process=False, validate=False)
        quad.visual = TextureVisuals(uv=uv, material=_material(alpha=alpha, texture=img))
        out.append((f"camera_{k}_image", quad))
    return out


def _mark_unlit(tree: dict) -> None:
    """glTF tree hook (trimesh's ``tree_postprocessor``): add KHR_materials_unlit to every
    material (photo colours are already lit). Edits ``tree`` in place."""
    for mat in tree.get("materials", []):
        mat.setdefault("extensions", {})["KHR_materials_unlit"] = {}
    if tree.get("materials"):
        used = tree.setdefault("extensionsUsed", [])
        if "KHR_materials_unlit" not in used:
            used.append("KHR_materials_unlit")


def scene_to_glb(
    scene: Scene,
    masks,
    cfg: VizConfig,
    path: Path,
    *,
    geometry: trimesh.Trimesh | None = None,
    local_enu: bool = False,
) -> Path:
    """Write the scene as a GLB and return ``path``.

    masks: dense scenes N (H, W) bool, sparse scenes (M,) bool, None = every finite point.
    Content: a vertex-coloured triangle mesh built from the pixel grids (dense scenes, unless
    ``cfg.as_pointcloud``; sparse scenes, and dense ones where no two neighbouring pixels are
    kept, give points), at most ``cfg.max_points``
    vertices/points (deterministic even subsampling), plus, when ``cfg.show_cameras``, one
    frustum per view whose depth is ``cfg.cam_size`` times the scene extent, optionally with the
    image on it (``cam_image``) and semi-transparent (``cam_transparent``). Node/geometry names:
    ``mesh`` or ``points``, ``camera_<k>``, ``camera_<k>_image``. Frame: see the module docstring.
    geometry: a mesh in the world frame drawn instead of the views (the fused surface or voxels;
    node ``surface``), with the cameras as usual. local_enu: the scene is in a local east-north-up
    frame (georeferenced): the GLB keeps that frame (:func:`glb_from_world`).
    Materials are double-sided and unlit (KHR_materials_unlit).

    Raises ValueError when there is nothing to draw (no point kept and cameras hidden).
    """
    path = Path(path)
    masks = resolve_masks(scene, masks)
    to_glb = glb_from_world(scene, local_enu=local_enu)
    geoms: list[tuple[str, trimesh.Trimesh | trimesh.PointCloud]] = []
    as_points = cfg.as_pointcloud or scene.pts3d is None
    world_pts = np.zeros((0, 3), np.float32)
    if geometry is not None:
        world_pts, as_points = np.asarray(geometry.vertices), False
        shown = geometry.copy()
        shown.apply_transform(to_glb)
        geoms.append(("surface", shown))
    elif not as_points:
        verts, faces, cols = scene_mesh(scene, masks, depth_jump=cfg.mesh_depth_jump, max_vertices=cfg.max_points)
        world_pts = verts
        if len(faces):
            mesh = trimesh.Trimesh(_transform(to_glb, verts), faces, process=False, validate=False)
            mesh.visual = TextureVisuals(material=_material())
            mesh.visual.vertex_attributes["color"] = np.c_[cols, np.full(len(cols), 255, np.uint8)]
            geoms.append(("mesh", mesh))
        elif any(m.any() for m in masks):
            logger.info("no two neighbouring pixels were kept: drawing the kept points instead of a mesh")
            as_points = True
    elif scene.pts3d is None and not cfg.as_pointcloud:
        logger.info("the %r scene has no depth maps: drawing its sparse points instead of a mesh", scene.engine)
    if as_points:
        world_pts, cols = scene_points(scene, masks, cfg.max_points)
        if len(world_pts):
            geoms.append(("points", trimesh.PointCloud(_transform(to_glb, world_pts), colors=cols)))
    if cfg.show_cameras:
        size = cfg.cam_size * scene_extent(scene, world_pts if len(world_pts) >= 2 else None)
        for k in range(scene.n_views):
            geoms.extend(_camera_geometry(scene, k, size, cfg, to_glb))
    if not geoms:
        raise ValueError(
            "nothing to draw: no point passed the filters and cameras are hidden; "
            "lower the confidence threshold or show the cameras"
        )
    tscene = trimesh.Scene()
    for name, geom in geoms:
        tscene.add_geometry(geom, geom_name=name, node_name=name)
    data = trimesh.exchange.gltf.export_glb(tscene, tree_postprocessor=_mark_unlit)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    logger.debug("wrote %s (%d bytes, %d geometries)", path, len(data), len(geoms))
    return path


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> Path:
    """Write a triangle mesh as Wavefront OBJ with per-vertex colours (``v x y z r g b``, 0-1).

    vertices (V, 3) float, faces (F, 3) int (0-based), colors (V, 3) uint8.
    """
    vertices, faces, colors = np.asarray(vertices), np.asarray(faces), np.asarray(colors)
    if (
        vertices.ndim != 2
        or vertices.shape[1] != 3
        or colors.shape != vertices.shape
        or faces.ndim != 2
        or faces.shape[1] != 3
    ):
        raise ValueError(
            f"expected vertices (V, 3), colors (V, 3), faces (F, 3), got {vertices.shape}, {colors.shape}, {faces.shape}"
        )
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=False, validate=False)
    text = trimesh.exchange.obj.export_obj(
        mesh,
        include_normals=False,
        include_color=True,
        include_texture=False,
        digits=6,
        header="dust3r-studio mesh, world frame (OpenCV axes)",
    )
    path = Path(path)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------
# 2-D maps


def _cmap(name: str):
    try:
        return matplotlib.colormaps[name]
    except KeyError as e:
        raise ValueError(f"unknown matplotlib colormap {name!r}") from e


def depth_colormap(depth: np.ndarray, vmin: float, vmax: float, cmap: str = "turbo") -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 colours, linear between vmin and vmax (clipped);
    NaN/inf -> black."""
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 2:
        raise ValueError(f"expected (H, W), got {depth.shape}")
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmax > vmin):
        raise ValueError(f"need finite vmin < vmax, got {vmin}, {vmax}")
    norm = np.clip((depth - vmin) / (vmax - vmin), 0, 1)
    rgb = (_cmap(cmap)(np.nan_to_num(norm))[..., :3] * 255).round().astype(np.uint8)
    rgb[~np.isfinite(depth)] = 0
    return rgb


def unique_stems(names: tuple[str, ...] | list[str]) -> list[str]:
    """File-system-safe, unique stems for image names ("a b.jpg" -> "a_b"; repeats get _<k>)."""
    out: list[str] = []
    seen: set[str] = set()
    for k, name in enumerate(names):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or f"image_{k}"
        if stem in seen:
            stem = f"{stem}_{k}"
        seen.add(stem)
        out.append(stem)
    return out


_MAP_FONT = 12
"""Colour-bar tick size (points) of the gallery maps; label one less, title two more."""


def _save_map(
    values: np.ndarray, path: Path, *, cmap: str, norm, label: str, title: str, marker: float | None = None
) -> None:
    """One map with a colourbar, drawn with a pyplot-free Figure (Agg). Text is sized to stay
    readable when the page shows the map as a gallery tile (about half size): few, plain ticks."""
    h, w = values.shape
    height_in = max(h, 320) / 100
    fig = Figure(figsize=(height_in * w / h * 1.28, height_in), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.02, 0.76, 0.88))
    im = ax.imshow(np.ma.masked_invalid(values), cmap=_cmap(cmap), norm=norm, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=_MAP_FONT + 2)
    cax = fig.add_axes((0.80, 0.06, 0.04, 0.8))
    cbar = fig.colorbar(im, cax=cax)
    if isinstance(norm, LogNorm):
        cbar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=5))
        cbar.ax.yaxis.set_minor_locator(NullLocator())
    else:
        cbar.ax.yaxis.set_major_locator(MaxNLocator(4))
    cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    cbar.set_label(label, fontsize=_MAP_FONT - 1)
    cbar.ax.tick_params(labelsize=_MAP_FONT)
    if marker is not None and norm.vmin <= marker <= norm.vmax:
        cbar.ax.axhline(marker, color="white", linewidth=1.5)
        cbar.ax.axhline(marker, color="black", linewidth=0.6, linestyle="--")
    fig.savefig(path, format="png")


def render_view_maps(
    scene: Scene, cfg: VizConfig, out_dir: Path, *, conf_threshold: float | None = None
) -> list[tuple[Path, str]]:
    """Per-view PNGs for the gallery: the RGB input, the depth map and the confidence map.

    Depth uses ``cfg.depth_cmap`` on a linear scale shared by all views (1st-99th percentile of
    every finite depth); confidence uses ``cfg.conf_cmap`` on a log scale shared by all views
    (1 to the largest confidence), with a colourbar each, and a dashed mark at
    ``conf_threshold`` when given. Files: ``<stem>_rgb.png``, ``<stem>_depthmap.png``,
    ``<stem>_confmap.png``. Sparse scenes have no depth or confidence maps: only the RGB images
    are written (logged). Returns [(path, caption)] in view order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(scene.names)
    dense = scene.depths is not None and scene.conf is not None
    if dense:
        _, depths, confs = dense_maps(scene, "depth maps")
        all_d = np.concatenate([d[np.isfinite(d)].ravel() for d in depths])
        dmin, dmax = np.percentile(all_d, [1, 99]) if all_d.size else (0.0, 1.0)
        if not dmax > dmin:
            dmax = dmin + 1e-6
        d_norm = Normalize(vmin=float(dmin), vmax=float(dmax))
        cmax = max(
            float(np.nanmax(np.where(np.isfinite(c), c, np.nan))) if np.isfinite(c).any() else 1.0 for c in confs
        )
        c_norm = LogNorm(vmin=1.0, vmax=max(cmax, 1.0 + 1e-3))
        _cmap(cfg.depth_cmap), _cmap(cfg.conf_cmap)  # fail early on a bad name
    else:
        logger.info("the %r scene is sparse: no depth or confidence maps to draw", scene.engine)
    out: list[tuple[Path, str]] = []
    for k, stem in enumerate(stems):
        name = scene.names[k]
        h, w = scene.images[k].shape[:2]
        p = out_dir / f"{stem}_rgb.png"
        Image.fromarray(scene.images[k]).save(p)
        out.append((p, f"{name}: input ({w}x{h})"))
        if not dense:
            continue
        p = out_dir / f"{stem}_depthmap.png"
        _save_map(depths[k], p, cmap=cfg.depth_cmap, norm=d_norm, label="depth (scene units)", title=f"{name}: depth")
        out.append((p, f"{name}: depth ({dmin:.3g} to {dmax:.3g}, same scale for all views)"))
        c = np.where(confs[k] > 0, confs[k], np.nan)  # cleaned points (confidence 0) shown blank
        p = out_dir / f"{stem}_confmap.png"
        _save_map(
            c,
            p,
            cmap=cfg.conf_cmap,
            norm=c_norm,
            label="confidence (raw, log scale)",
            title=f"{name}: confidence",
            marker=conf_threshold,
        )
        cap = f"{name}: confidence (1 to {cmax:.3g}, log scale, same for all views)"
        if conf_threshold is not None:
            cap += f"; dashed line = threshold {conf_threshold:g}"
        out.append((p, cap))
    return out
