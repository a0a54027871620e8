"""Where pair predictions wait for the global alignment: RAM (float32 or float16) or disk.

The outputs of pair inference grow with the pair count (about 6.3 MB per pair at 512x384 in
float32: pts3d + conf of both views), and they all wait for the alignment. :class:`PairStore`
receives them batch by batch, as the network (or a Ray worker) produces them, in one of three
layouts (``InferenceConfig.pair_storage``):

- ``memory``: one float32 CPU tensor per output, exactly what the network produced (the default
  for small jobs and the reference's numbers).
- ``fp16``: float16 CPU tensors, half the RAM. Values are clamped to float16's range (+-65504)
  and keep about 3 significant digits (relative error <= 2^-11); confidences of a trained network
  stay far below the clamp. The alignment casts them back to float32.
- ``disk``: float32, exact, in one memory-mapped file per output kind (``pts3d_1.f32``, ...) in a
  folder of the job; every pair's tensor is a view into its file, so the RAM holds only the pages
  the OS keeps cached (on the CPU the alignment reads the same mapped tensors, without a copy).
  The files are unlinked right after they are mapped (POSIX), so nothing is left behind: the space
  is returned when the last tensor is freed.

``auto`` (:func:`resolve_storage`) keeps ``memory`` while the float32 outputs take at most a
quarter of the free RAM (the alignment needs room too), else ``disk`` when there is a folder,
else ``fp16``. :func:`output_bytes` gives the size of each layout, which the memory estimate uses
(:func:`core.inference.memory.estimate_memory` ``storage``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from core.errors import InsufficientMemoryError, SettingsError

__all__ = [
    "STORAGE_KINDS",
    "StorageKind",
    "PairStore",
    "bytes_per_value",
    "output_bytes",
    "resolve_storage",
    "check_disk",
]

logger = logging.getLogger(__name__)

StorageKind = Literal["memory", "fp16", "disk"]
#: Resolved layouts (``auto`` resolves to one of them).
STORAGE_KINDS: tuple[StorageKind, ...] = ("memory", "fp16", "disk")

_F16_MAX = float(torch.finfo(torch.float16).max)
_AUTO_RAM_SHARE = 0.25
_GB = 1024**3

#: Output key -> (view side of the pair it belongs to, field name in PairPredictions).
OUTPUT_FIELDS: dict[str, tuple[int, str]] = {
    "p1": (1, "pts3d_1"),
    "c1": (1, "conf_1"),
    "p2": (2, "pts3d_2"),
    "c2": (2, "conf_2"),
    "d1": (1, "desc_1"),
    "dc1": (1, "desc_conf_1"),
    "d2": (2, "desc_2"),
    "dc2": (2, "desc_conf_2"),
}


def bytes_per_value(kind: str) -> int:
    """Bytes per stored value: 4 (memory, disk) or 2 (fp16)."""
    if kind not in STORAGE_KINDS:
        raise ValueError(f"storage must be one of {STORAGE_KINDS}, got {kind!r}")
    return 2 if kind == "fp16" else 4


def output_bytes(shapes: Sequence[tuple[int, int]], pairs: Sequence[tuple[int, int]], kind: str = "memory") -> int:
    """Bytes of the alignment's inputs (pts3d + conf of both views, 4 values per pixel) of ``pairs``
    on views of sizes ``shapes`` (H, W), in layout ``kind`` (descriptors not counted)."""
    pixels = sum(shapes[i][0] * shapes[i][1] + shapes[j][0] * shapes[j][1] for i, j in pairs)
    return pixels * 4 * bytes_per_value(kind)


def resolve_storage(requested: str, fp32_bytes: int, *, folder: Path | None, available: int | None) -> StorageKind:
    """``InferenceConfig.pair_storage`` -> the layout to use.

    ``auto``: ``memory`` when ``fp32_bytes`` <= a quarter of ``available`` RAM (or when it is
    unknown), else ``disk`` with a folder, else ``fp16``. ``disk`` without a folder raises
    SettingsError.
    """
    if requested == "auto":
        if available is None or fp32_bytes <= _AUTO_RAM_SHARE * available:
            return "memory"
        kind: StorageKind = "disk" if folder is not None else "fp16"
        logger.info(
            "pair predictions (%.2f GB in float32) exceed a quarter of the free RAM (%.2f GB): stored as %s",
            fp32_bytes / _GB,
            available / _GB,
            kind,
        )
        return kind
    if requested not in STORAGE_KINDS:
        raise SettingsError(f"pair_storage must be auto, memory, fp16 or disk, got {requested!r}")
    if requested == "disk" and folder is None:
        raise SettingsError("pair_storage 'disk' needs a folder for the files (the job folder); none was given")
    return requested  # type: ignore[return-value]


def check_disk(needed: int, folder: Path) -> None:
    """Raise InsufficientMemoryError when ``folder``'s file system has less than ``needed`` bytes free."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InsufficientMemoryError(
            f"not enough disk space for the pair predictions: {needed / _GB:.1f} GB needed in {folder}, "
            f"{free / _GB:.1f} GB free; use pair_storage fp16, a sparser scene graph or a smaller image size"
        )


class PairStore:
    """The per-pair outputs of one run, in one layout, filled as batches arrive.

    shapes: N (H, W) per view; pairs: P (i, j); kind: ``memory``, ``fp16`` or ``disk``; folder:
    where ``disk`` maps its files (a fresh sub-folder is made and removed again).
    :meth:`put` stores one pair's output (any order, each (key, pair) once); :meth:`fields` returns
    the PairPredictions fields once every pair is in.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, int]],
        pairs: Sequence[tuple[int, int]],
        kind: StorageKind,
        *,
        folder: Path | None = None,
    ) -> None:
        bytes_per_value(kind)
        if kind == "disk" and folder is None:
            raise ValueError("disk storage needs a folder")
        self.kind = kind
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.pairs = [(int(i), int(j)) for i, j in pairs]
        self.folder = Path(folder) if folder is not None else None
        self._items: dict[str, list[torch.Tensor | None]] = {}
        self._maps: dict[str, tuple[np.memmap, list[int], tuple[int, ...]]] = {}

    def _pixels(self, key: str, p: int) -> tuple[int, int]:
        side = OUTPUT_FIELDS[key][0]
        return self.shapes[self.pairs[p][side - 1]]

    def _map(self, key: str, channels: tuple[int, ...]) -> tuple[np.memmap, list[int], tuple[int, ...]]:
        """The memory-mapped float32 file of ``key`` (made on its first output)."""
        if key not in self._maps:
            per_pixel = math.prod(channels)
            sizes = [h * w * per_pixel for h, w in (self._pixels(key, p) for p in range(len(self.pairs)))]
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
            sub = Path(str(self.folder)) / f".pair_store_{uuid.uuid4().hex[:8]}"
            sub.mkdir(parents=True, exist_ok=True)
            path = sub / f"{OUTPUT_FIELDS[key][1]}.f32"
            mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(max(offsets[-1], 1),))
            _unlink_mapped(path, sub)
            self._maps[key] = (mm, offsets, channels)
        return self._maps[key]

    def put(self, key: str, p: int, value: torch.Tensor) -> None:
        """Store pair ``p``'s output ``key`` (``p1``, ``c1``, ``p2``, ``c2``, ``d1``, ...): a CPU
        tensor (H, W, ...) of the pair's view size."""
        if key not in OUTPUT_FIELDS:
            raise KeyError(f"unknown output {key!r}; expected one of {list(OUTPUT_FIELDS)}")
        h, w = self._pixels(key, p)
        if tuple(value.shape[:2]) != (h, w):
            raise ValueError(f"pair {p} {key}: expected ({h}, {w}, ...), got {tuple(value.shape)}")
        items = self._items.setdefault(key, [None] * len(self.pairs))
        with torch.inference_mode(False):
            if self.kind == "memory":
                items[p] = value.detach().float().clone(memory_format=torch.contiguous_format)
            elif self.kind == "fp16":
                items[p] = value.detach().clamp(-_F16_MAX, _F16_MAX).to(torch.float16)
            else:
                mm, offsets, _ = self._map(key, tuple(value.shape[2:]))
                mm[offsets[p] : offsets[p + 1]] = value.detach().float().reshape(-1).numpy()
                items[p] = torch.empty(0)  # marks the pair as stored

    def fields(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """PairPredictions field name -> P tensors, for every output kind that was stored.

        Raises ValueError naming a (key, pair) that never arrived."""
        out = {}
        for key, items in self._items.items():
            missing = [p for p, t in enumerate(items) if t is None]
            if missing:
                raise ValueError(f"output {key!r} missing for pairs {missing[:10]}")
            if self.kind == "disk":
                mm, offsets, channels = self._maps[key]
                with torch.inference_mode(False):
                    flat = torch.from_numpy(mm)
                    items = [
                        flat[offsets[p] : offsets[p + 1]].view(*self._pixels(key, p), *channels)
                        for p in range(len(self.pairs))
                    ]
            out[OUTPUT_FIELDS[key][1]] = tuple(items)  # type: ignore[arg-type]
        return out

    def nbytes(self) -> int:
        """Bytes the stored outputs take (RAM for memory/fp16, disk for disk)."""
        if self.kind == "disk":
            return sum(int(mm.nbytes) for mm, _, _ in self._maps.values())
        return sum(t.numel() * t.element_size() for items in self._items.values() for t in items if t is not None)


def _unlink_mapped(path: Path, folder: Path) -> None:
    """Remove a mapped file and its folder right away (POSIX keeps the mapping); elsewhere keep them."""
    if os.name != "posix":
        return
    path.unlink()
    folder.rmdir()
