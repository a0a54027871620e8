"""The network's steps on one device, one batch at a time: what every run executes.

A run (:func:`core.inference.run.run_inference` in this process, or each Ray worker of
:mod:`core.inference.distributed`) plans its batches with :func:`encode_chunks` and
:func:`decode_chunks` and runs them with a :class:`PairWorker`; both paths share these functions,
so they batch the same images and pairs together and give the same numbers.

- :func:`encode_chunks`: the distinct views grouped by size, ``batch_size`` at a time (view indices).
- :func:`decode_chunks`: the pairs grouped by (view-1 size, view-2 size), ``batch_size`` at a time
  (pair indices, in pair order inside each group).
- :class:`PairWorker`: ``encode`` one chunk of images -> per-view (tokens, positions) on the device;
  ``decode`` one chunk of pairs on cached tokens -> per-pair CPU float32 outputs.
- :class:`ViewFeatureCache`: the per-view part of the DPT heads, computed once per view.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = [
    "PairModel",
    "PairWorker",
    "ViewFeatureCache",
    "Tokens",
    "OUT_KEYS",
    "distinct_sources",
    "encode_chunks",
    "decode_chunks",
]

_GB = 1024**3

Shape = tuple[int, int]
#: view index -> (encoder tokens (N, E), positions (N, 2) int64), on the worker's device.
Tokens = dict[int, tuple[torch.Tensor, torch.Tensor]]

#: Per-pair outputs of :meth:`PairWorker.decode`: key -> (head, output name).
OUT_KEYS = {
    "p1": (1, "pts3d"),
    "c1": (1, "conf"),
    "p2": (2, "pts3d"),
    "c2": (2, "conf"),
    "d1": (1, "desc"),
    "dc1": (1, "desc_conf"),
    "d2": (2, "desc"),
    "dc2": (2, "desc_conf"),
}


class PairModel(Protocol):
    """What :func:`run_inference` needs from the network (``model.DUSt3R`` satisfies it).

    ``config`` (a mapping with the constructor keys) and ``parameters()`` feed the memory
    estimate (:meth:`core.inference.memory.ModelDims.from_model`).
    """

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img (B, 3, H, W) -> tokens (B, N, enc_dim) after enc_norm, positions (B, N, 2) int64."""
        ...

    def decode(
        self, f1: torch.Tensor, pos1: torch.Tensor, f2: torch.Tensor, pos2: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """B pairs of cached tokens -> per view [encoder tokens, decoder layer 1..L]."""
        ...

    def head_view_features(self, which: int, enc_tokens: torch.Tensor, true_shape: Shape) -> torch.Tensor | None:
        """Encoder tokens (B, N, enc_dim) -> the part of head ``which`` that depends on them alone
        (any shape, float32), or None when there is no such part."""
        ...

    def head(
        self,
        which: int,
        tokens: list[torch.Tensor],
        true_shape: Shape,
        view_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """-> {"pts3d": (B, H, W, 3), "conf": (B, H, W)} float32 (autocast off inside);
        view_features: :meth:`head_view_features` of ``tokens[0]`` (B, ...) when known."""
        ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def distinct_sources(tensors: Sequence[torch.Tensor]) -> list[int]:
    """For each view, the index of the first view with an identical tensor (itself if none)."""
    seen: dict[tuple, list[int]] = {}
    source = []
    for k, t in enumerate(tensors):
        key = (tuple(t.shape), float(t.float().sum()), float(t.float().abs().sum()))
        match = next((j for j in seen.get(key, []) if tensors[j] is t or torch.equal(tensors[j], t)), None)
        if match is None:
            seen.setdefault(key, []).append(k)
            match = k
        source.append(match)
    return source


def _to_host(res: Mapping[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Head output {"pts3d": (B, H, W, 3), "conf": (B, H, W), ...} -> per-sample CPU float32 tensors.

    The copies are made outside inference mode so they are ordinary tensors: global alignment
    can use them in autograd graphs (inference tensors cannot be saved for backward).
    """
    host = {k: v.float().cpu() for k, v in res.items()}
    with torch.inference_mode(False):
        return {k: [x.clone(memory_format=torch.contiguous_format) for x in v.unbind(0)] for k, v in host.items()}


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_chunks(shapes: Sequence[Shape], source: Sequence[int], batch_size: int) -> list[list[int]]:
    """The encoder batches: each distinct view (``source[k] == k``) once, grouped by size (H, W) in
    order of first appearance, ``batch_size`` views at a time. Returns lists of view indices."""
    by_shape: dict[Shape, list[int]] = {}
    for k in sorted(set(source)):
        by_shape.setdefault(tuple(shapes[k]), []).append(k)
    return [chunk for group in by_shape.values() for chunk in _chunks(group, batch_size)]


def decode_chunks(shapes: Sequence[Shape], pairs: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """The decoder batches: pairs grouped by (view-1 size, view-2 size) in order of first
    appearance, ``batch_size`` pairs at a time. Returns lists of pair indices."""
    groups: dict[tuple[Shape, Shape], list[int]] = {}
    for p, (i, j) in enumerate(pairs):
        groups.setdefault((tuple(shapes[i]), tuple(shapes[j])), []).append(p)
    return [chunk for members in groups.values() for chunk in _chunks(members, batch_size)]


class ViewFeatureCache:
    """Per-view head features (``model.head_view_features``) keyed by (head, view), least
    recently used out first, at most ``max_bytes`` of them (0: nothing is cached and
    :meth:`get` returns None, so the heads compute the part themselves)."""

    def __init__(self, model: PairModel, tokens: Mapping[int, torch.Tensor], max_bytes: int) -> None:
        self.model = model
        self.tokens = tokens  # view -> encoder tokens (N, E)
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.computed = 0
        self.reused = 0
        self.no_features: set[int] = set()  # heads with no per-view part

    def get(self, which: int, views: Sequence[int], shape: Shape) -> torch.Tensor | None:
        """Features of head ``which`` for ``views`` (one per pair of the batch, repeats allowed;
        all of size ``shape``) stacked (B, ...), the missing ones computed in one batch."""
        if self.max_bytes <= 0 or which in self.no_features:
            return None
        missing = [k for k in dict.fromkeys(views) if (which, k) not in self.entries]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            feats = self.model.head_view_features(which, torch.stack([self.tokens[k] for k in missing]), shape)
            if feats is None:
                self.no_features.add(which)
                return None
            fresh = {k: f.clone() for k, f in zip(missing, feats.unbind(0), strict=True)}
            self.computed += len(fresh)
        batch = torch.stack([fresh[k] if k in fresh else self.entries[(which, k)] for k in views])
        self.reused += len(views) - len(fresh)
        for k in dict.fromkeys(views):
            if k in fresh:
                self._put((which, k), fresh[k])
            else:
                self.entries.move_to_end((which, k))
        return batch

    def _put(self, key: tuple[int, int], value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        while self.bytes + size > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        self.entries[key] = value
        self.bytes += size

    def describe(self) -> str:
        return f"{self.computed} computed, {self.reused} reused, {self.bytes / _GB:.2f} GB"


@dataclass(frozen=True)
class PairWorker:
    """The network on one device: encode a batch of images, decode a batch of pairs.

    model: the network in eval mode on ``device``; autocast_dtype: None (float32) or bf16/fp16
    for the encoder and decoder (heads always float32); descriptors: also run MASt3R's
    local-feature MLP (``desc``, ``desc_conf``). Call inside ``torch.inference_mode()``.
    """

    model: PairModel
    device: torch.device
    autocast_dtype: torch.dtype | None
    descriptors: bool = False

    def encode(self, images: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """images: b tensors (1, 3, H, W) of one size -> per image (tokens (N, E), positions (N, 2)) on the device."""
        batch = torch.cat(list(images)).to(device=self.device, dtype=torch.float32)
        with _autocast(self.device, self.autocast_dtype):
            tok, pos = self.model.encode(batch)  # (b, N, E), (b, N, 2)
        return [(tok[b], pos[b]) for b in range(len(images))]

    def decode(
        self,
        views1: Sequence[int],
        views2: Sequence[int],
        shapes: tuple[Shape, Shape],
        tokens: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
        view_features: ViewFeatureCache,
    ) -> dict[str, list[torch.Tensor]]:
        """One batch of B pairs (views1[b], views2[b]) of sizes ``shapes`` = (view-1 (H, W), view-2 (H, W)),
        on the cached ``tokens`` (view -> tokens, positions).

        Returns {"p1", "c1", "p2", "c2"} (+ "d1", "dc1", "d2", "dc2" with descriptors): B CPU float32
        tensors each ((H, W, 3) points in view 1's frame, (H, W) confidences, (H, W, D) descriptors)."""
        shape1, shape2 = shapes
        f1 = torch.stack([tokens[k][0] for k in views1])  # (B, N1, E)
        pos1 = torch.stack([tokens[k][1] for k in views1])
        f2 = torch.stack([tokens[k][0] for k in views2])  # (B, N2, E)
        pos2 = torch.stack([tokens[k][1] for k in views2])
        head_kw = {"descriptors": True} if self.descriptors else {}
        with _autocast(self.device, self.autocast_dtype):
            dec1, dec2 = self.model.decode(f1, pos1, f2, pos2)
        res1 = _to_host(self.model.head(1, dec1, shape1, view_features.get(1, views1, shape1), **head_kw))
        del dec1
        res2 = _to_host(self.model.head(2, dec2, shape2, view_features.get(2, views2, shape2), **head_kw))
        del dec2
        out: dict[str, list[torch.Tensor]] = {}
        for key, (which, name) in OUT_KEYS.items():
            res = res1 if which == 1 else res2
            if name in res:
                out[key] = res[name]
        return out
