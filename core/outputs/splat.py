"""A folder that Gaussian-splatting / NeRF trainers read as it is (``splat-ready/``).

Layout (what the Inria 3DGS code, gsplat's ``simple_trainer.py`` and nerfstudio expect)::

    splat-ready/
      images/<stem>.png        the scene's images, undistorted where the camera had distortion
      sparse/0/cameras.bin     PINHOLE cameras (one shared camera when every view has the same one)
      sparse/0/images.bin      poses (cam_from_world, OpenCV axes) and each image's 2-D observations
      sparse/0/points3D.bin    at most ``max_points`` kept points with colours and tracks
      transforms.json          nerfstudio's format: camera-to-world in OpenGL axes, same world frame
      sparse_pc.ply            the same points (nerfstudio's ``ply_file_path`` for splatfacto's init)
      README.md                how to train splatfacto, gsplat and 3DGS on it

Images are the ones the scene's intrinsics describe (``scene.images``: the network input for DUSt3R,
the display-size image for COLMAP), written losslessly at exactly the size of their camera. For the
COLMAP engine, when its camera model has lens distortion (``scene.extra["cameras"]``), each image is
undistorted with pycolmap (COLMAP's own undistorter) and gets the undistorted PINHOLE camera.

Tracks: a point is observed in its source view and, for dense scenes, in every view where it projects
onto a kept pixel with a consistent depth (``COLMAP_DEPTH_TOL``); for sparse scenes in every view
where it projects inside the image in front of the camera. Each observation is the point's
projection through the final camera (so the reprojection errors are ~0; the COLMAP engine's own
keypoint positions are not kept). The COLMAP files are written directly in COLMAP's binary format
(vectorised, so a million points take a second), without rigs/frames files, which readers create
trivially. The world frame is the one of the other exports (the local metric frame when the scene is
georeferenced).
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from core.outputs.colmap_model import COLMAP_DEPTH_TOL, cam_from_world_qt, colmap_unavailable
from core.outputs.postprocessing import dense_maps, even_sample, gather_points, resolve_masks
from core.outputs.visualization import OPENGL_FROM_OPENCV, unique_stems
from core.types import Scene

try:  # optional: undistortion of the COLMAP engine's images
    import pycolmap
except ImportError:  # pragma: no cover - depends on the environment
    pycolmap = None  # type: ignore[assignment]

__all__ = ["SPLAT_DIR", "SplatCamera", "splat_cameras", "write_splat_ready"]

logger = logging.getLogger(__name__)

SPLAT_DIR = "splat-ready"
_PINHOLE_MODEL_ID = 1
_NO_DISTORTION = ("SIMPLE_PINHOLE", "PINHOLE")


@dataclass(frozen=True)
class SplatCamera:
    """One view's final image and PINHOLE camera, COLMAP pixel convention (pixel centres at +0.5)."""

    image: np.ndarray
    """(h, w, 3) uint8 RGB, exactly the camera's size."""
    params: tuple[float, float, float, float]
    """fx, fy, cx, cy."""
    undistorted: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """(w, h)."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    def project(self, pts_in_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 3) camera-frame points -> ((M, 2) COLMAP pixels, (M,) bool in front and inside the image)."""
        fx, fy, cx, cy = self.params
        z = pts_in_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([fx * pts_in_cam[:, 0] / z + cx, fy * pts_in_cam[:, 1] / z + cy], axis=1)
        w, h = self.size
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        return uv, ok


def _distorted_camera(scene: Scene, k: int):
    """The COLMAP engine's camera of view k (rescaled to ``scene.images[k]``) when it has lens
    distortion and pycolmap is installed, else None."""
    cams = (scene.extra or {}).get("cameras")
    if pycolmap is None or scene.engine != "colmap" or not isinstance(cams, list) or len(cams) != scene.n_views:
        return None
    info = cams[k]
    if not isinstance(info, dict) or info.get("model") in _NO_DISTORTION or "params" not in info:
        return None
    try:
        cam = pycolmap.Camera(
            model=str(info["model"]), width=int(info["width"]), height=int(info["height"]), params=info["params"]
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        logger.warning("splat-ready: cannot rebuild the camera of %s (%s); using its pinhole part", scene.names[k], e)
        return None
    extra = np.asarray(cam.params, np.float64)[cam.extra_params_idxs()] if cam.extra_params_idxs() else []
    if not np.any(np.abs(extra) > 0):
        return None
    h, w = scene.images[k].shape[:2]
    cam.rescale(int(w), int(h))
    return cam


def splat_cameras(scene: Scene) -> list[SplatCamera]:
    """Each view's image and PINHOLE camera (undistorted for COLMAP-engine cameras with distortion)."""
    out = []
    for k in range(scene.n_views):
        cam = _distorted_camera(scene, k)
        if cam is not None:
            bitmap, pinhole = pycolmap.undistort_image(
                pycolmap.UndistortCameraOptions(),
                pycolmap.Bitmap.from_array(np.ascontiguousarray(scene.images[k])),
                cam,
            )
            img = np.asarray(bitmap.to_array(), np.uint8).reshape(pinhole.height, pinhole.width, -1)[..., :3]
            fx, fy, cx, cy = (float(v) for v in pinhole.params)
            out.append(SplatCamera(np.ascontiguousarray(img), (fx, fy, cx, cy), undistorted=True))
            continue
        f = float(scene.focals[k])
        cx, cy = (float(v) + 0.5 for v in scene.principal_points[k])  # COLMAP: pixel centres at +0.5
        out.append(SplatCamera(np.asarray(scene.images[k], np.uint8), (f, f, cx, cy)))
    return out


def _camera_ids(cams: list[SplatCamera]) -> tuple[list[tuple], list[int]]:
    """Distinct (w, h, fx, fy, cx, cy) and the 1-based camera id of each view (shared where identical)."""
    distinct: list[tuple] = []
    ids = []
    for cam in cams:
        key = (*cam.size, *(round(v, 6) for v in cam.params))
        if key not in distinct:
            distinct.append(key)
        ids.append(distinct.index(key) + 1)
    return distinct, ids


def _points(scene: Scene, masks, max_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """((M, 3) float64 xyz, (M, 3) uint8 rgb, (M,) int64 source view or -1) of the kept points, at most max_points."""
    pts = gather_points(scene, masks)
    ok = np.flatnonzero(np.isfinite(pts.xyz).all(axis=1))
    sel = ok[even_sample(len(ok), max_points)]
    return pts.xyz[sel].astype(np.float64), pts.rgb[sel], pts.view[sel].astype(np.int64)


def _observations(
    scene: Scene, masks, cams: list[SplatCamera], poses: list[np.ndarray], xyz: np.ndarray, view: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per view: ((K,) int64 point indices, increasing; (K, 2) float64 COLMAP pixels) it observes."""
    depths = dense_maps(scene, "splat-ready tracks")[1] if scene.pts3d is not None else None
    out = []
    for j, cam in enumerate(cams):
        p = xyz @ poses[j][:3, :3].T + poses[j][:3, 3]
        uv, ok = cam.project(p)
        if depths is not None and not cam.undistorted:
            idx = np.flatnonzero(ok)
            h, w = depths[j].shape
            u = np.clip(np.rint(uv[idx, 0] - 0.5).astype(np.int64), 0, w - 1)
            v = np.clip(np.rint(uv[idx, 1] - 0.5).astype(np.int64), 0, h - 1)
            dj = depths[j][v, u]
            good = masks[j][v, u] & (np.abs(p[idx, 2] - dj) <= COLMAP_DEPTH_TOL * np.abs(dj))
            ok = np.zeros(len(xyz), bool)
            ok[idx[good]] = True
            ok |= (view == j) & cam.project(p)[1]
        sel = np.flatnonzero(ok)
        out.append((sel, uv[sel]))
    return out


# ----------------------------------------------------------------------------------------------
# COLMAP binary files (https://colmap.github.io/format.html#binary-file-format)


def _write_cameras_bin(path: Path, cameras: list[tuple]) -> None:
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(cameras)))
        for cid, (w, h, *params) in enumerate(cameras, start=1):
            fh.write(struct.pack("<iiQQ4d", cid, _PINHOLE_MODEL_ID, w, h, *params))


def _write_images_bin(path: Path, names: list[str], camera_ids: list[int], poses_qt, obs, point_ids) -> None:
    """poses_qt: per image (q (4,), t (3,)); obs: per image (point indices, (K, 2) xy); point_ids: (M,) ids."""
    rec = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(names)))
        for j, name in enumerate(names):
            q, t = poses_qt[j]
            fh.write(struct.pack("<i4d3di", j + 1, *q, *t, camera_ids[j]))
            fh.write(name.encode("utf-8") + b"\x00")
            idx, xy = obs[j]
            arr = np.zeros(len(idx), rec)
            arr["x"], arr["y"], arr["id"] = xy[:, 0], xy[:, 1], point_ids[idx]
            fh.write(struct.pack("<Q", len(idx)))
            fh.write(arr.tobytes())


def _tracks(obs, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T,) point index, image id, 2-D point index of every observation, sorted by point then image."""
    point = np.concatenate([np.zeros(0, np.int64), *(o[0] for o in obs)])
    image = np.concatenate([np.zeros(0, np.int64), *(np.full(len(o[0]), j + 1) for j, o in enumerate(obs))])
    p2d = np.concatenate([np.zeros(0, np.int64), *(np.arange(len(o[0])) for o in obs)])
    order = np.lexsort((image, point))
    return point[order], image[order], p2d[order]


def _write_points_bin(path: Path, xyz: np.ndarray, rgb: np.ndarray, obs) -> np.ndarray:
    """points3D.bin with point ids grouped by track length (fixed-size records per group, written
    vectorised). Returns (M,) int64 the id given to each point."""
    m = len(xyz)
    point, image, p2d = _tracks(obs, m)
    length = np.bincount(point, minlength=m)
    order = np.argsort(length, kind="stable")  # id order: by track length
    ids = np.empty(m, np.int64)
    ids[order] = np.arange(1, m + 1)
    starts = np.r_[0, np.cumsum(length)]
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", m))
        for n_obs in np.unique(length):
            members = order[length[order] == n_obs]
            rec = np.dtype(
                [("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("err", "<f8"), ("n", "<u8")]
                + [("track", "<i4", (int(n_obs), 2))] * bool(n_obs)
            )
            arr = np.zeros(len(members), rec)
            arr["id"], arr["xyz"], arr["rgb"], arr["n"] = ids[members], xyz[members], rgb[members], n_obs
            if n_obs:
                sel = starts[members][:, None] + np.arange(n_obs)  # (G, n_obs) observation indices
                arr["track"] = np.stack([image[sel], p2d[sel]], axis=-1)
            fh.write(arr.tobytes())
    return ids


# ----------------------------------------------------------------------------------------------


def _write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    arr = np.zeros(len(xyz), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    arr["x"], arr["y"], arr["z"] = xyz.T
    arr["r"], arr["g"], arr["b"] = rgb.T
    head = "ply\nformat binary_little_endian 1.0\nelement vertex {}\nproperty float x\nproperty float y\n"
    head += "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    with path.open("wb") as fh:
        fh.write(head.format(len(arr)).encode("ascii"))
        fh.write(arr.tobytes())


def _transforms(cams: list[SplatCamera], files: list[str], poses_qt) -> dict:
    """nerfstudio's transforms.json: OpenGL camera-to-world, shared intrinsics at the top when shared."""
    distinct, _ = _camera_ids(cams)
    frames = []
    for j, (cam, name) in enumerate(zip(cams, files, strict=True)):
        q, t = poses_qt[j]
        rot_cw = Rotation.from_quat(np.r_[q[1:], q[0]]).as_matrix()
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = rot_cw.T, -rot_cw.T @ t
        frame = {"file_path": f"images/{name}", "transform_matrix": (c2w @ OPENGL_FROM_OPENCV).tolist()}
        if len(distinct) > 1:
            frame.update(_intrinsics(cam))
        frame["colmap_im_id"] = j + 1
        frames.append(frame)
    doc = {"camera_model": "OPENCV", **(_intrinsics(cams[0]) if len(distinct) == 1 else {})}
    doc.update(
        k1=0.0,
        k2=0.0,
        p1=0.0,
        p2=0.0,
        frames=frames,
        applied_transform=np.eye(4)[:3].tolist(),
        ply_file_path="sparse_pc.ply",
    )
    return doc


def _intrinsics(cam: SplatCamera) -> dict:
    fx, fy, cx, cy = cam.params
    w, h = cam.size
    return {"w": w, "h": h, "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy}


_README = """# Splat-ready dataset

Images in `images/` (exactly the size their camera describes{undist}), a COLMAP model with PINHOLE
cameras in `sparse/0/` ({n_cams} camera(s), {n_images} images, {n_points} points with colours and tracks),
and nerfstudio's `transforms.json` (OpenGL camera axes, the same world frame) with `sparse_pc.ply`.
Units: {units}.

Train with nerfstudio's splatfacto (reads transforms.json and sparse_pc.ply):

    ns-train splatfacto --data .

With gsplat's simple trainer (reads images/ and sparse/0; run from a gsplat checkout):

    python examples/simple_trainer.py default --data_dir /path/to/splat-ready --data_factor 1 --result_dir results

With the original 3D Gaussian Splatting code (graphdeco-inria/gaussian-splatting):

    python train.py -s /path/to/splat-ready
"""


def write_splat_ready(scene: Scene, masks, out_dir: Path, *, max_points: int, units: str = "unknown") -> Path:
    """Write the splat-ready folder (see the module docstring) as ``out_dir`` (replaced if it exists).

    masks: the scene's keep masks; max_points: most points in the model (even subsample), >= 1.
    units: what one world unit is (``metre`` when georeferenced or scaled), stated in the README.
    Returns ``out_dir``. Raises ValueError for duplicate image names or max_points < 1.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if (why := colmap_unavailable()) is not None:
        raise RuntimeError(why)
    masks = resolve_masks(scene, masks)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "images").mkdir(parents=True)
    (out_dir / "sparse" / "0").mkdir(parents=True)
    cams = splat_cameras(scene)
    files = [f"{stem}.png" for stem in unique_stems(scene.names)]
    for cam, name in zip(cams, files, strict=True):
        Image.fromarray(cam.image).save(out_dir / "images" / name)
    poses_qt = [cam_from_world_qt(scene.world_from_cam[k]) for k in range(scene.n_views)]
    poses = []
    for q, t in poses_qt:
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = Rotation.from_quat(np.r_[q[1:], q[0]]).as_matrix(), t
        poses.append(pose)
    xyz, rgb, view = _points(scene, masks, max_points)
    obs = _observations(scene, masks, cams, poses, xyz, view)
    distinct, camera_ids = _camera_ids(cams)
    sparse = out_dir / "sparse" / "0"
    _write_cameras_bin(sparse / "cameras.bin", distinct)
    point_ids = _write_points_bin(sparse / "points3D.bin", xyz, rgb, obs)
    _write_images_bin(sparse / "images.bin", files, camera_ids, poses_qt, obs, point_ids)
    _write_ply(out_dir / "sparse_pc.ply", xyz, rgb)
    (out_dir / "transforms.json").write_text(json.dumps(_transforms(cams, files, poses_qt), indent=2))
    undist = ", undistorted by COLMAP" if any(c.undistorted for c in cams) else ""
    readme = _README.format(undist=undist, n_cams=len(distinct), n_images=scene.n_views, n_points=len(xyz), units=units)
    (out_dir / "README.md").write_text(readme)
    return out_dir
