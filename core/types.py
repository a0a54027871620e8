"""Data handed between the pipeline stages.

Conventions used everywhere in this project:

- Cameras use OpenCV axes: x right, y down, z forward. Poses are ``world_from_cam`` 4x4
  (camera-to-world) matrices.
- Pixel coordinates are (u, v) = (column, row) with integer pixel centres (the reference's
  convention, no 0.5 offset). Intrinsics are in pixels of the processed image (the network
  input, or for the COLMAP engine the image stored in the scene) unless a field says otherwise.
- Dimension names: N views, P pairs, H, W image height and width.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from core.errors import PairsFileError

__all__ = [
    "ProgressFn",
    "InputImage",
    "PairPredictions",
    "SparsePoints",
    "Scene",
    "Engine",
    "tensor_to_rgb",
]

#: progress(stage, done, total): stage is a short name ("encode", "pairs", "align", ...).
ProgressFn = Callable[[str, int, int], None]


def tensor_to_rgb(img: torch.Tensor) -> np.ndarray:
    """Normalised network input -> uint8 RGB.

    img: (1, 3, H, W) or (3, H, W) float in [-1, 1]. Returns (H, W, 3) uint8.
    """
    if img.ndim == 4:
        img = img[0]
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"expected (1, 3, H, W) or (3, H, W), got {tuple(img.shape)}")
    u8 = ((img.detach().float().cpu() * 0.5 + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return u8.permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class InputImage:
    """One preprocessed view (reference ``load_images`` output plus where it came from)."""

    tensor: torch.Tensor
    """(1, 3, H, W) float32 in [-1, 1], H and W multiples of 16."""
    idx: int
    """Position in the input list."""
    name: str
    """File name of the upload (no folder)."""
    original_size: tuple[int, int]
    """(W, H) of the uploaded image after EXIF orientation."""
    resized_size: tuple[int, int]
    """(W, H) after the aspect-preserving resize, before the crop."""
    crop_box: tuple[int, int, int, int]
    """(left, top, right, bottom) of the crop in the resized image."""

    @property
    def true_shape(self) -> tuple[int, int]:
        """(H, W) of the network input."""
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the network input."""
        return tensor_to_rgb(self.tensor)

    def original_from_processed(self) -> np.ndarray:
        """(3, 3) float64 affine mapping processed pixel coordinates to original ones.

        PIL resizes with pixel centres at half-integers, so processed pixel u maps to
        ``(u + left + 0.5) / sx - 0.5`` in the original. Intrinsics rescale the same way:
        ``K_original = original_from_processed() @ K``.
        """
        sx = self.resized_size[0] / self.original_size[0]
        sy = self.resized_size[1] / self.original_size[1]
        left, top = self.crop_box[0], self.crop_box[1]
        ox, oy = (left + 0.5) / sx - 0.5, (top + 0.5) / sy - 0.5
        return np.array([[1 / sx, 0, ox], [0, 1 / sy, oy], [0, 0, 1]], dtype=np.float64)


@dataclass(frozen=True)
class PairPredictions:
    """Network output for every pair of a scene graph (what global alignment consumes).

    Per pair p = (i, j) (view-1 index, view-2 index), both point maps are in view i's camera
    frame. Tensors are on the CPU, float32, or float16 when inference stored them compactly
    (``InferenceConfig.pair_storage`` fp16; consumers cast with ``.float()``); with ``disk`` they
    are float32 views of memory-mapped files (:mod:`core.inference.storage`).
    """

    pairs: torch.Tensor
    """(P, 2) int64 view indices, in inference order."""
    pts3d_1: tuple[torch.Tensor, ...]
    """P tensors (H_i, W_i, 3): view-1 points in view-1's frame."""
    conf_1: tuple[torch.Tensor, ...]
    """P tensors (H_i, W_i): view-1 confidence (>= 1)."""
    pts3d_2: tuple[torch.Tensor, ...]
    """P tensors (H_j, W_j, 3): view-2 points in view-1's frame."""
    conf_2: tuple[torch.Tensor, ...]
    """P tensors (H_j, W_j): view-2 confidence (>= 1)."""
    true_shapes: tuple[tuple[int, int], ...]
    """N (H, W) per view."""
    images: tuple[torch.Tensor, ...] | None = None
    """N normalised inputs (1, 3, H, W) in [-1, 1], or None when not kept."""
    names: tuple[str, ...] | None = None
    """N file names, or None."""
    original_sizes: tuple[tuple[int, int], ...] = ()
    """N (W, H) of the uploaded images (defaults to the processed sizes)."""
    original_from_processed: np.ndarray | None = None
    """(N, 3, 3) float64 affine processed pixel -> original pixel (defaults to identity)."""
    desc_1: tuple[torch.Tensor, ...] | None = None
    """MASt3R descriptors, when asked for (``InferenceConfig.descriptors``), else None: P tensors
    (H_i, W_i, D) unit vectors of view 1, in its own pixel grid."""
    desc_conf_1: tuple[torch.Tensor, ...] | None = None
    """P tensors (H_i, W_i): confidence of ``desc_1`` (> 0), or None."""
    desc_2: tuple[torch.Tensor, ...] | None = None
    """P tensors (H_j, W_j, D): view-2 descriptors in view 2's own pixel grid, or None."""
    desc_conf_2: tuple[torch.Tensor, ...] | None = None
    """P tensors (H_j, W_j): confidence of ``desc_2``, or None."""
    metric: bool = False
    """True when the point maps are in metres (MASt3R); DUSt3R's are up to scale."""

    @property
    def n_views(self) -> int:
        return len(self.true_shapes)

    @property
    def has_descriptors(self) -> bool:
        return self.desc_1 is not None

    def __post_init__(self) -> None:
        p = int(self.pairs.shape[0]) if self.pairs.ndim == 2 else -1
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2:
            raise ValueError(f"pairs must be (P, 2), got {tuple(self.pairs.shape)}")
        lens = {len(self.pts3d_1), len(self.conf_1), len(self.pts3d_2), len(self.conf_2)}
        if lens != {p}:
            raise ValueError(f"expected {p} predictions per output, got lengths {sorted(lens)}")
        n = len(self.true_shapes)
        if p and (int(self.pairs.min()) < 0 or int(self.pairs.max()) >= n):
            raise ValueError(f"pair indices must be in 0..{n - 1}, got {self.pairs.tolist()}")
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"expected {n} images, got {len(self.images)}")
        if self.names is not None and len(self.names) != n:
            raise ValueError(f"expected {n} names, got {len(self.names)}")
        if not self.original_sizes:
            object.__setattr__(self, "original_sizes", tuple((w, h) for h, w in self.true_shapes))
        maps = np.tile(np.eye(3), (n, 1, 1)) if self.original_from_processed is None else self.original_from_processed
        object.__setattr__(self, "original_from_processed", np.asarray(maps, dtype=np.float64))
        if len(self.original_sizes) != n or self.original_from_processed.shape != (n, 3, 3):
            raise ValueError(
                f"expected {n} original sizes and ({n}, 3, 3) maps, got {len(self.original_sizes)} and "
                f"{self.original_from_processed.shape}"
            )
        descs = [self.desc_1, self.desc_conf_1, self.desc_2, self.desc_conf_2]
        if any(d is not None for d in descs) and {-1 if d is None else len(d) for d in descs} != {p}:
            raise ValueError(f"desc_1, desc_conf_1, desc_2, desc_conf_2 must all be None or hold {p} tensors each")

    def nbytes(self) -> int:
        """Bytes of the per-pair outputs (points, confidences, descriptors) as stored."""
        fields = (self.pts3d_1, self.conf_1, self.pts3d_2, self.conf_2)
        fields += tuple(f for f in (self.desc_1, self.desc_conf_1, self.desc_2, self.desc_conf_2) if f is not None)
        return sum(t.numel() * t.element_size() for ts in fields for t in ts)

    def view_info(self) -> dict:
        """The views' ``names`` (when known), ``original_sizes`` and ``original_from_processed``, as
        :class:`Scene` fields: ``dataclasses.replace(scene, **preds.view_info())``."""
        info = {"original_sizes": self.original_sizes, "original_from_processed": self.original_from_processed}
        return info if self.names is None else {**info, "names": tuple(self.names)}

    def save_npz(self, path: str | Path, *, batch_size: int = 1) -> None:
        """Write the reference fixture key layout (``tiny_*_inference.npz``).

        Keys: ``pairs`` (P, 2) int64, ``n_images`` and ``batch_size`` (0-d int64); per view k ``true_shape_k`` (1, 2) int32 and, when images
        are kept, ``img_k`` (1, 3, H, W) float32; per pair p ``pair{p}_pred1_pts3d``,
        ``pair{p}_pred1_conf``, ``pair{p}_pred2_pts3d_in_other_view``, ``pair{p}_pred2_conf``.
        With descriptors (MASt3R fixture layout) ``pair{p}_pred{1,2}_desc``, ``pair{p}_pred{1,2}_desc_conf``.
        Extensions: ``name_k`` (0-d str) when names are known; ``original_size_k`` (2,) int64 (W, H)
        and ``original_from_processed_k`` (3, 3) float64 where they differ from the defaults
        (processed size, identity), so a file without them reads back the same; ``metric`` (0-d bool
        True) for metric predictions.
        """
        arrays: dict[str, np.ndarray] = {
            "pairs": self.pairs.numpy().astype(np.int64),
            "n_images": np.array(self.n_views, dtype=np.int64),
            "batch_size": np.array(batch_size, dtype=np.int64),
        }
        for k, (h, w) in enumerate(self.true_shapes):
            arrays[f"true_shape_{k}"] = np.array([[h, w]], dtype=np.int32)
            if self.images is not None:
                arrays[f"img_{k}"] = self.images[k].numpy().astype(np.float32)
            if self.names is not None:
                arrays[f"name_{k}"] = np.array(self.names[k])
            if self.original_sizes[k] != (w, h):
                arrays[f"original_size_{k}"] = np.array(self.original_sizes[k], dtype=np.int64)
            if not np.array_equal(self.original_from_processed[k], np.eye(3)):
                arrays[f"original_from_processed_{k}"] = self.original_from_processed[k]
        if self.metric:  # absent = not metric, so DUSt3R files keep the reference's exact key set
            arrays["metric"] = np.array(True)
        _write_npz(Path(path), [*arrays.items(), *self._pair_arrays()])

    def _pair_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """(key, float32 array) per pair output, made one at a time (float16 or memory-mapped
        outputs are converted or read just before they are written)."""
        for p in range(len(self.pts3d_1)):
            yield f"pair{p}_pred1_pts3d", self.pts3d_1[p].float().numpy()
            yield f"pair{p}_pred1_conf", self.conf_1[p].float().numpy()
            yield f"pair{p}_pred2_pts3d_in_other_view", self.pts3d_2[p].float().numpy()
            yield f"pair{p}_pred2_conf", self.conf_2[p].float().numpy()
        if self.has_descriptors:
            for key, field_name in _DESC_KEYS.items():
                for p, t in enumerate(getattr(self, field_name)):
                    yield f"pair{p}_{key}", t.float().numpy()

    @classmethod
    def load_npz(cls, path: str | Path) -> PairPredictions:
        """Read a file written by :meth:`save_npz` or a reference ``*_inference.npz``.

        Images (``img_k``), names and the original-size extensions are optional (defaults: see the
        fields). Raises ValueError naming what is missing or malformed.
        """
        path = Path(path)
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise PairsFileError(f"{path.name}: not a readable .npz file ({e})") from e
        with data:
            keys = set(data.files)
            if "pairs" not in keys:
                raise PairsFileError(f"{path.name}: no 'pairs' array; not a pair-predictions file")
            pairs = torch.from_numpy(np.asarray(data["pairs"]).astype(np.int64))
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise PairsFileError(f"{path.name}: 'pairs' must be (P, 2), got {tuple(pairs.shape)}")
            n = 0
            while f"true_shape_{n}" in keys or f"img_{n}" in keys:
                n += 1
            if "n_images" in keys:
                n = max(n, int(data["n_images"]))
            elif n == 0 and pairs.numel():
                n = int(pairs.max()) + 1
            names_out = []
            fields: dict[str, list[torch.Tensor]] = {"p1": [], "c1": [], "p2": [], "c2": []}
            suffixes = {"p1": "pred1_pts3d", "c1": "pred1_conf", "p2": "pred2_pts3d_in_other_view", "c2": "pred2_conf"}
            for p in range(pairs.shape[0]):
                for short, suffix in suffixes.items():
                    key = f"pair{p}_{suffix}"
                    if key not in keys:
                        raise PairsFileError(f"{path.name}: missing array '{key}'")
                    fields[short].append(torch.from_numpy(np.asarray(data[key], dtype=np.float32)))
            shapes: list[tuple[int, int]] = []
            images: list[torch.Tensor] = []
            sizes: dict[int, tuple[int, int]] = {}
            maps: dict[int, np.ndarray] = {}
            for k in range(n):
                if f"true_shape_{k}" in keys:
                    h, w = (int(v) for v in np.asarray(data[f"true_shape_{k}"]).reshape(-1)[:2])
                else:
                    h, w = _shape_from_pairs(k, pairs, fields["p1"], fields["p2"], path.name)
                shapes.append((h, w))
                if f"img_{k}" in keys:
                    images.append(torch.from_numpy(np.asarray(data[f"img_{k}"], dtype=np.float32)))
                if f"name_{k}" in keys:
                    names_out.append(str(data[f"name_{k}"]))
                if f"original_size_{k}" in keys:
                    ow, oh = (int(v) for v in np.asarray(data[f"original_size_{k}"]).reshape(-1)[:2])
                    sizes[k] = (ow, oh)
                if f"original_from_processed_{k}" in keys:
                    maps[k] = np.asarray(data[f"original_from_processed_{k}"], dtype=np.float64).reshape(3, 3)
            descriptors = _load_descriptors(data, keys, pairs.shape[0])
            metric = bool(data["metric"]) if "metric" in keys else False
        return cls(
            pairs=pairs,
            pts3d_1=tuple(fields["p1"]),
            conf_1=tuple(fields["c1"]),
            pts3d_2=tuple(fields["p2"]),
            conf_2=tuple(fields["c2"]),
            true_shapes=tuple(shapes),
            images=tuple(images) if len(images) == n and n else None,
            names=tuple(names_out) if len(names_out) == n and n else None,
            original_sizes=tuple(sizes.get(k, (w, h)) for k, (h, w) in enumerate(shapes)),
            original_from_processed=np.stack([maps.get(k, np.eye(3)) for k in range(n)]) if n else None,
            **descriptors,
            metric=metric,
        )


def _write_npz(path: Path, items: Iterable[tuple[str, np.ndarray]]) -> None:
    """``np.savez`` (same file: uncompressed zip of ``.npy`` members, ``.npz`` appended when missing)
    from an iterable, so only one array needs to exist at a time."""
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, array in items:
            with zf.open(key + ".npy", mode="w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


#: npz key suffix -> PairPredictions field, for the optional MASt3R descriptors.
_DESC_KEYS = {
    "pred1_desc": "desc_1",
    "pred1_desc_conf": "desc_conf_1",
    "pred2_desc": "desc_2",
    "pred2_desc_conf": "desc_conf_2",
}


def _load_descriptors(data: Any, keys: set[str], n_pairs: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """The descriptor fields of a pair-predictions npz when every pair has all four, else {}."""
    if not n_pairs or any(f"pair{p}_{key}" not in keys for p in range(n_pairs) for key in _DESC_KEYS):
        return {}
    return {
        name: tuple(torch.from_numpy(np.asarray(data[f"pair{p}_{key}"], dtype=np.float32)) for p in range(n_pairs))
        for key, name in _DESC_KEYS.items()
    }


def _shape_from_pairs(k: int, pairs: torch.Tensor, p1: list, p2: list, fname: str) -> tuple[int, int]:
    for p, (i, j) in enumerate(pairs.tolist()):
        if i == k:
            return int(p1[p].shape[0]), int(p1[p].shape[1])
        if j == k:
            return int(p2[p].shape[0]), int(p2[p].shape[1])
    raise PairsFileError(f"{fname}: view {k} appears in no pair")


@dataclass(frozen=True)
class SparsePoints:
    """A sparse coloured point cloud (classical SfM output), world frame."""

    xyz: np.ndarray
    """(M, 3) float32 world coordinates."""
    rgb: np.ndarray
    """(M, 3) uint8 colours."""
    track_length: np.ndarray
    """(M,) int32 number of images observing each point."""
    reproj_error: np.ndarray
    """(M,) float32 mean reprojection error in pixels."""


@dataclass(frozen=True)
class Scene:
    """An aligned reconstruction: what post-processing, visualisation and exports read.

    Numpy arrays on the CPU, one entry per view (N views). Dense engines (DUSt3R) fill
    ``depths``/``pts3d``/``conf``; sparse engines (COLMAP) leave them None and fill ``sparse``.
    """

    images: tuple[np.ndarray, ...]
    """N (H, W, 3) uint8 RGB of the processed images (grey when unknown)."""
    world_from_cam: np.ndarray
    """(N, 4, 4) float32 camera-to-world, OpenCV axes."""
    focals: np.ndarray
    """(N,) float32 focal length in pixels of ``images[k]``."""
    principal_points: np.ndarray
    """(N, 2) float32 (cx, cy) in pixels of ``images[k]``."""
    depths: tuple[np.ndarray, ...] | None = None
    """N (H, W) float32 z-depth in the camera frame."""
    pts3d: tuple[np.ndarray, ...] | None = None
    """N (H, W, 3) float32 world points per pixel."""
    conf: tuple[np.ndarray, ...] | None = None
    """N (H, W) float32 raw confidence (>= 1): max over the pairs that show the view."""
    sparse: SparsePoints | None = None
    """Sparse points (COLMAP engine)."""
    final_loss: float | None = None
    """Global-alignment loss at the last iteration (None when not optimised)."""
    names: tuple[str, ...] = ()
    """N image names (defaults to image_k)."""
    original_sizes: tuple[tuple[int, int], ...] = ()
    """N (W, H) of the uploaded images (defaults to the processed sizes)."""
    original_from_processed: np.ndarray | None = None
    """(N, 3, 3) affine processed pixel -> original pixel (defaults to identity)."""
    engine: str = "dust3r"
    """Engine that produced the scene."""
    warnings: tuple[str, ...] = ()
    """Human-readable warnings (images that did not register, low confidence, ...)."""
    extra: dict = field(default_factory=dict)
    """Engine diagnostics (loss history, iterations run, ...), JSON-serialisable."""
    units: str = "unknown"
    """Unit of world coordinates and depths: "m" (metres) or "unknown" (up to scale)."""
    gps: np.ndarray | None = None
    """(N, 3) float64 GPS position of each view's photo from its EXIF: latitude and longitude in degrees
    (WGS 84), altitude in metres (as the EXIF states it, usually above mean sea level); NaN where the
    photo has none (altitude alone may be NaN). None when not read (:mod:`core.inputs.exif_gps`)."""

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.gps is not None:
            object.__setattr__(self, "gps", np.asarray(self.gps, dtype=np.float64))
            if self.gps.shape != (n, 3):
                raise ValueError(f"gps must be ({n}, 3) (lat, lon, alt), got {self.gps.shape}")
        if self.world_from_cam.shape != (n, 4, 4):
            raise ValueError(f"world_from_cam must be ({n}, 4, 4), got {self.world_from_cam.shape}")
        if self.focals.shape != (n,) or self.principal_points.shape != (n, 2):
            raise ValueError(
                f"focals must be ({n},) and principal_points ({n}, 2), got "
                f"{self.focals.shape} and {self.principal_points.shape}"
            )
        if self.units not in ("m", "unknown"):
            raise ValueError(f"units must be 'm' or 'unknown', got {self.units!r}")
        if not self.names:
            object.__setattr__(self, "names", tuple(f"image_{k}" for k in range(n)))
        if not self.original_sizes:
            object.__setattr__(self, "original_sizes", tuple((im.shape[1], im.shape[0]) for im in self.images))
        if self.original_from_processed is None:
            object.__setattr__(self, "original_from_processed", np.tile(np.eye(3), (n, 1, 1)))
        if len(self.names) != n or len(self.original_sizes) != n:
            raise ValueError(
                f"expected {n} names and original sizes, got {len(self.names)}, {len(self.original_sizes)}"
            )

    @property
    def n_views(self) -> int:
        return len(self.images)

    @property
    def is_dense(self) -> bool:
        return self.pts3d is not None

    def intrinsics(self) -> np.ndarray:
        """(N, 3, 3) float64 K in pixels of ``images[k]``."""
        k = np.zeros((self.n_views, 3, 3))
        k[:, 0, 0] = k[:, 1, 1] = self.focals
        k[:, :2, 2] = self.principal_points
        k[:, 2, 2] = 1
        return k


class Engine(Protocol):
    """A reconstruction engine: the pipeline, UI and exports never branch on which one."""

    name: str
    """Short id used by ``--engine`` and the UI selector."""

    def availability(self) -> str | None:
        """None when usable now, else a sentence saying what is missing and how to provide it."""
        ...

    def reconstruct(self, image_paths: list[Path], cfg: object, job_dir: Path, progress: ProgressFn) -> Scene:
        """Image files (sorted as the user gave them) -> aligned Scene. ``cfg`` is the AppConfig."""
        ...
