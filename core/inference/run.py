"""Pair inference: the network on every pair of a pair list, each image encoded once.

:func:`run_inference` turns preprocessed views and the pair list made once by the caller
(``core.inputs.pairs.make_pairs``) into the pairwise predictions that global alignment consumes
(:class:`core.types.PairPredictions`), giving the reference's numbers (its per-pair outputs)
far faster than the reference's one-pair-at-a-time loop:

1. **Encode once.** Every distinct image goes through ``model.encode`` exactly once per run
   (images of equal shape are batched, ``cfg.batch_size`` at a time); the tokens stay cached on
   the device. Byte-identical inputs (the single-image copy, or the same photo uploaded twice)
   share one encoding.
2. **Decode in batches.** Pairs are grouped by (view-1 shape, view-2 shape) so landscape, portrait
   and square images mix freely; each group is decoded ``cfg.batch_size`` pairs at a time on the
   cached tokens, then both heads run (float32, autocast off inside ``model.head``). Each batch's
   outputs move to the CPU as float32 right away. The part of each DPT head that depends only on
   the view's own encoder tokens (``model.head_view_features``: about a sixth of the head's
   work) is computed once per view and head and reused by every pair the view is in, within
   ``cfg.view_cache_gb`` (least recently used out first).
3. **Precision.** The caller picks the autocast dtype (``model.select_autocast_dtype(device,
   cfg.precision)``: bf16/fp16 on CUDA, bf16 on CPUs with native bf16, None = plain float32) and
   passes it in; this module never imports ``model.py``. Encoder and decoder run under autocast,
   heads in float32. TF32 and the CPU allocator are process-wide switches set by the entry points.
4. **Memory guard.** Before anything runs, :func:`core.inference.memory.plan_memory` estimates the
   peak of this pair list (:func:`~core.inference.memory.estimate_memory`) and checks it against
   the free memory, shrinking the batch or raising :class:`InsufficientMemoryError`. A CUDA
   out-of-memory error that still happens is re-raised as the same error with the same advice.

Single image: the load stage pairs it with a copy of itself (``core.inputs.preprocessing.load_views``),
so this module always receives at least two views; the copy shares the image's tensor and so
its encoding (one encoder pass).

Everything runs under ``torch.inference_mode()``. Progress: ``progress("encode", views_ready,
n_views)`` and ``progress("pairs", pairs_done, n_pairs)``, each first called with 0.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from config import InferenceConfig
from core.errors import InsufficientMemoryError
from core.inference.memory import ModelDims, check_pairs, memory_advice, plan_memory, view_cache_bytes
from core.inputs.pairs import make_pairs
from core.types import InputImage, PairPredictions, ProgressFn

__all__ = ["PairModel", "run_inference"]

logger = logging.getLogger(__name__)

_GB = 1024**3

Shape = tuple[int, int]


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
# Helpers
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def _validate_images(images: Sequence[InputImage], patch: int) -> None:
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a sequence of InputImage, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("no images given: need at least one")
    for k, im in enumerate(images):
        if not isinstance(im, InputImage):
            raise TypeError(f"images[{k}] must be an InputImage, got {type(im).__name__}")
        t = im.tensor
        if t.ndim != 4 or t.shape[0] != 1 or t.shape[1] != 3:
            raise ValueError(f"images[{k}] ({im.name}): tensor must be (1, 3, H, W), got {tuple(t.shape)}")
        h, w = t.shape[-2:]
        if h < patch or w < patch or h % patch or w % patch:
            raise ValueError(
                f"images[{k}] ({im.name}): height and width must be positive multiples of {patch}, got {h}x{w}"
            )
        if not t.is_floating_point():
            raise TypeError(f"images[{k}] ({im.name}): tensor must be float in [-1, 1], got {t.dtype}")


def _distinct_sources(tensors: Sequence[torch.Tensor]) -> list[int]:
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


def _shared_tensors(views: Sequence[InputImage]) -> list[int]:
    """For each view, the first view holding the very same tensor object (itself if none): what the
    memory estimate counts as one encoding (a single image's copy), without reading any pixel."""
    first: dict[int, int] = {}
    return [first.setdefault(id(im.tensor), k) for k, im in enumerate(views)]


def run_inference(
    model: PairModel,
    images: Sequence[InputImage],
    cfg: InferenceConfig,
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    progress: ProgressFn | None = None,
) -> PairPredictions:
    """Network predictions for every pair of ``pairs`` (in that order).

    model: the network on ``device`` in eval mode (:class:`PairModel`, e.g. ``model.DUSt3R``).
    images: the N >= 2 views to run (``core.inputs.preprocessing.load_views``: a single image
    arrives with its copy), ``tensor`` (1, 3, H, W) float32 in [-1, 1]; shapes may differ.
    cfg: batch size (pairs decoded together; also images encoded together), memory fraction,
    view-cache size, and the scene graph named in advice (``cfg.precision`` is resolved by the
    caller into ``autocast_dtype``).
    pairs: P (view-1 index, view-2 index), made once by the caller with
    ``make_pairs(len(images), cfg.scene_graph)``; the same list sizes the memory estimate.
    None makes exactly that list here.
    autocast_dtype: None for float32, or torch.bfloat16 / torch.float16 for the encoder and decoder.

    Returns PairPredictions (CPU float32): ``pairs`` (P, 2) int64; per pair pts3d_1 (H_i, W_i, 3)
    and pts3d_2 (H_j, W_j, 3) in view i's camera frame, conf_1, conf_2 (>= 1); per view the input
    image, name, original size and processed->original map.

    Raises ValueError/TypeError for bad input, InsufficientMemoryError when the job cannot fit
    (before running) or CUDA runs out of memory (during the run).
    """
    device = torch.device(device)
    if autocast_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype!r}")
    dims = ModelDims.from_model(model)
    _validate_images(images, dims.patch_size)
    if cfg.descriptors and not getattr(model, "desc_dim", 0):
        raise ValueError("descriptors asked for (InferenceConfig.descriptors) but the model has none (MASt3R only)")
    views = list(images)
    pairs = make_pairs(len(views), cfg.scene_graph) if pairs is None else check_pairs(pairs, len(views))
    hw = [im.true_shape for im in views]
    est = plan_memory(
        hw, pairs, cfg, dims, device=device, autocast_dtype=autocast_dtype, sources=_shared_tensors(views)
    )
    logger.info(
        "inference: %d views, %d pairs, batch %d, %s, autocast %s; estimate %s",
        len(views),
        len(pairs),
        est.batch_size,
        device,
        autocast_dtype,
        est.describe(),
    )
    runner = _Runner(model, device, autocast_dtype, est.batch_size, progress or _no_progress, cfg.descriptors)
    try:
        return runner.run(views, pairs, view_cache_bytes(cfg))
    except torch.OutOfMemoryError as e:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise InsufficientMemoryError(
            f"out of memory on {device} while running {len(pairs)} pairs (estimate was {est.describe()}): "
            f"{memory_advice(est, cfg.scene_graph)}; or lower the batch size (now {est.batch_size})."
        ) from e


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class _ViewFeatureCache:
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


Tokens = dict[int, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class _Runner:
    """One run's fixed settings; :meth:`run` encodes the views, then decodes the pairs."""

    model: PairModel
    device: torch.device
    autocast_dtype: torch.dtype | None
    batch_size: int
    report: ProgressFn
    descriptors: bool = False
    """Also run MASt3R's local-feature MLP (``desc``, ``desc_conf``); the alignment does not need it."""

    @torch.inference_mode()
    def run(self, views: list[InputImage], pairs: list[tuple[int, int]], cache_bytes: int) -> PairPredictions:
        """views: N views; pairs: P validated (i, j). Returns the CPU float32 predictions."""
        tensors = [im.tensor for im in views]
        source = _distinct_sources(tensors)
        t0 = time.perf_counter()
        tokens = self.encode(views, source)
        t1 = time.perf_counter()
        view_features = _ViewFeatureCache(self.model, {k: tok for k, (tok, _) in tokens.items()}, cache_bytes)
        out = self.decode(views, pairs, source, tokens, view_features)
        t2 = time.perf_counter()
        logger.info(
            "encoded %d distinct images in %.2f s; %d pairs decoded in %.2f s (%.3f s/pair); view cache: %s",
            len(set(source)),
            t1 - t0,
            len(pairs),
            t2 - t1,
            (t2 - t1) / max(len(pairs), 1),
            view_features.describe(),
        )
        return PairPredictions(
            pairs=torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2),
            pts3d_1=tuple(out["p1"]),
            conf_1=tuple(out["c1"]),
            pts3d_2=tuple(out["p2"]),
            conf_2=tuple(out["c2"]),
            true_shapes=tuple(im.true_shape for im in views),
            images=tuple(t.detach().float().cpu() for t in tensors),
            names=tuple(im.name for im in views),
            original_sizes=tuple(im.original_size for im in views),
            original_from_processed=np.stack([im.original_from_processed() for im in views]),
            **({f: tuple(out[k]) for k, f in _DESC_FIELDS.items()} if self.descriptors else {}),
            metric=bool(getattr(self.model, "metric", False)),
        )

    def encode(self, views: list[InputImage], source: list[int]) -> Tokens:
        """Each distinct view (``source[k] == k``) encoded once, batched by shape.

        Returns view -> (tokens (N, E), positions (N, 2)) on the device."""
        n = len(views)
        self.report("encode", 0, n)
        by_shape: dict[Shape, list[int]] = {}
        for k in sorted(set(source)):
            by_shape.setdefault(views[k].true_shape, []).append(k)
        tokens: Tokens = {}
        ready = 0
        for group in by_shape.values():
            for chunk in _chunks(group, self.batch_size):
                batch = torch.cat([views[k].tensor for k in chunk]).to(device=self.device, dtype=torch.float32)
                with _autocast(self.device, self.autocast_dtype):
                    tok, pos = self.model.encode(batch)  # (b, N, E), (b, N, 2)
                for b, k in enumerate(chunk):
                    tokens[k] = (tok[b], pos[b])
                ready += sum(1 for s in source if s in chunk)
                self.report("encode", ready, n)
        return tokens

    def decode(
        self,
        views: list[InputImage],
        pairs: list[tuple[int, int]],
        source: list[int],
        tokens: Tokens,
        view_features: _ViewFeatureCache,
    ) -> dict[str, list[torch.Tensor]]:
        """Decoder + both heads per (shape1, shape2) group, ``batch_size`` pairs at a time.

        Returns {"p1", "c1", "p2", "c2"} (+ "d1", "dc1", "d2", "dc2" with descriptors): P CPU float32
        tensors each, in pair order."""
        n_pairs = len(pairs)
        self.report("pairs", 0, n_pairs)
        groups: dict[tuple[Shape, Shape], list[int]] = {}
        for p, (i, j) in enumerate(pairs):
            groups.setdefault((views[i].true_shape, views[j].true_shape), []).append(p)
        out: dict[str, list[torch.Tensor]] = {k: [torch.empty(0)] * n_pairs for k in _OUT_KEYS}
        head_kw = {"descriptors": True} if self.descriptors else {}
        done = 0
        for (shape1, shape2), members in groups.items():
            for chunk in _chunks(members, self.batch_size):
                views1 = [source[pairs[p][0]] for p in chunk]  # encoded view of each pair's view 1
                views2 = [source[pairs[p][1]] for p in chunk]
                f1 = torch.stack([tokens[k][0] for k in views1])  # (B, N1, E)
                pos1 = torch.stack([tokens[k][1] for k in views1])
                f2 = torch.stack([tokens[k][0] for k in views2])  # (B, N2, E)
                pos2 = torch.stack([tokens[k][1] for k in views2])
                with _autocast(self.device, self.autocast_dtype):
                    dec1, dec2 = self.model.decode(f1, pos1, f2, pos2)
                res1 = _to_host(self.model.head(1, dec1, shape1, view_features.get(1, views1, shape1), **head_kw))
                del dec1
                res2 = _to_host(self.model.head(2, dec2, shape2, view_features.get(2, views2, shape2), **head_kw))
                del dec2
                _store(out, chunk, res1, res2)
                done += len(chunk)
                self.report("pairs", done, n_pairs)
        return out


def _store(out: dict[str, list], chunk: list[int], res1: Mapping[str, list], res2: Mapping[str, list]) -> None:
    """Put one batch's per-sample head outputs (:func:`_to_host`) of pairs ``chunk`` into ``out``."""
    for key, (which, name) in _OUT_KEYS.items():
        res = res1 if which == 1 else res2
        if name in res:
            for b, p in enumerate(chunk):
                out[key][p] = res[name][b]


#: Per-pair outputs collected by :meth:`_Runner.decode`: key -> (head, output name).
_OUT_KEYS = {
    "p1": (1, "pts3d"),
    "c1": (1, "conf"),
    "p2": (2, "pts3d"),
    "c2": (2, "conf"),
    "d1": (1, "desc"),
    "dc1": (1, "desc_conf"),
    "d2": (2, "desc"),
    "dc2": (2, "desc_conf"),
}
_DESC_FIELDS = {"d1": "desc_1", "dc1": "desc_conf_1", "d2": "desc_2", "dc2": "desc_conf_2"}
