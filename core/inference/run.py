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
   The outputs go into a :class:`core.inference.storage.PairStore` as they arrive: float32 in RAM,
   float16 in RAM, or float32 memory-mapped files in the job folder (``cfg.pair_storage``; ``auto``
   picks by size), and the memory estimate counts them as stored. The batches and their maths are
   :mod:`core.inference.worker`'s, shared with the Ray path (:mod:`core.inference.distributed`).
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from config import InferenceConfig
from core.errors import InsufficientMemoryError
from core.inference.memory import (
    ModelDims,
    available_memory,
    check_pairs,
    memory_advice,
    plan_memory,
    view_cache_bytes,
)
from core.inference.storage import PairStore, StorageKind, check_disk, output_bytes, resolve_storage
from core.inference.worker import (
    PairModel,
    PairWorker,
    Tokens,
    ViewFeatureCache,
    decode_chunks,
    distinct_sources,
    encode_chunks,
)
from core.inputs.pairs import make_pairs
from core.types import InputImage, PairPredictions, ProgressFn

__all__ = ["PairModel", "run_inference", "choose_storage", "assemble_predictions"]

logger = logging.getLogger(__name__)

_GB = 1024**3


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


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
    storage_dir: Path | None = None,
) -> PairPredictions:
    """Network predictions for every pair of ``pairs`` (in that order).

    model: the network on ``device`` in eval mode (:class:`PairModel`, e.g. ``model.DUSt3R``).
    images: the N >= 2 views to run (``core.inputs.preprocessing.load_views``: a single image
    arrives with its copy), ``tensor`` (1, 3, H, W) float32 in [-1, 1]; shapes may differ.
    cfg: batch size (pairs decoded together; also images encoded together), memory fraction,
    view-cache size, pair storage, and the scene graph named in advice (``cfg.precision`` is
    resolved by the caller into ``autocast_dtype``).
    pairs: P (view-1 index, view-2 index), made once by the caller with
    ``make_pairs(len(images), cfg.scene_graph)``; the same list sizes the memory estimate.
    None makes exactly that list here.
    autocast_dtype: None for float32, or torch.bfloat16 / torch.float16 for the encoder and decoder.
    storage_dir: where ``cfg.pair_storage`` ``disk`` (or ``auto`` on a large job) maps its files
    (the job folder); None = RAM only.

    Returns PairPredictions on the CPU, float32 (float16 with ``pair_storage`` fp16; memory-mapped
    with disk): ``pairs`` (P, 2) int64; per pair pts3d_1 (H_i, W_i, 3) and pts3d_2 (H_j, W_j, 3) in
    view i's camera frame, conf_1, conf_2 (>= 1); per view the input image, name, original size
    and processed->original map.

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
    storage = choose_storage(cfg, hw, pairs, storage_dir)
    est = plan_memory(
        hw,
        pairs,
        cfg,
        dims,
        device=device,
        autocast_dtype=autocast_dtype,
        sources=_shared_tensors(views),
        storage=storage,
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
    worker = PairWorker(model, device, autocast_dtype, cfg.descriptors)
    store = PairStore(hw, pairs, storage, folder=storage_dir)
    runner = _Runner(worker, est.batch_size, progress or _no_progress)
    try:
        runner.run(views, pairs, store, view_cache_bytes(cfg))
    except torch.OutOfMemoryError as e:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise InsufficientMemoryError(
            f"out of memory on {device} while running {len(pairs)} pairs (estimate was {est.describe()}): "
            f"{memory_advice(est, cfg.scene_graph)}; or lower the batch size (now {est.batch_size})."
        ) from e
    return assemble_predictions(views, pairs, store, metric=bool(getattr(model, "metric", False)))


def choose_storage(
    cfg: InferenceConfig, hw: Sequence[tuple[int, int]], pairs: Sequence[tuple[int, int]], folder: Path | None
) -> StorageKind:
    """``cfg.pair_storage`` resolved for this job (:func:`core.inference.storage.resolve_storage`
    against the free RAM); for ``disk``, the free space of ``folder`` is checked too."""
    fp32 = output_bytes(hw, pairs, "memory")
    storage = resolve_storage(cfg.pair_storage, fp32, folder=folder, available=available_memory("cpu"))
    if storage == "disk" and folder is not None:
        check_disk(output_bytes(hw, pairs, "disk"), Path(folder))
    return storage


def assemble_predictions(
    views: Sequence[InputImage], pairs: Sequence[tuple[int, int]], store: PairStore, *, metric: bool = False
) -> PairPredictions:
    """The filled ``store`` of a run on ``views`` -> PairPredictions with the views' info; ``metric``:
    the network predicts metres (MASt3R)."""
    with torch.inference_mode(False):
        return PairPredictions(
            pairs=torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2),
            true_shapes=tuple(im.true_shape for im in views),
            images=tuple(im.tensor.detach().float().cpu() for im in views),
            names=tuple(im.name for im in views),
            original_sizes=tuple(im.original_size for im in views),
            original_from_processed=np.stack([im.original_from_processed() for im in views]),
            **store.fields(),
            metric=metric,
        )


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Runner:
    """One run in this process: :meth:`run` encodes the views, then decodes the pairs."""

    worker: PairWorker
    batch_size: int
    report: ProgressFn

    @torch.inference_mode()
    def run(self, views: list[InputImage], pairs: list[tuple[int, int]], store: PairStore, cache_bytes: int) -> None:
        """views: N views; pairs: P validated (i, j). Fills ``store`` with every pair's outputs."""
        source = distinct_sources([im.tensor for im in views])
        t0 = time.perf_counter()
        tokens = self.encode(views, source)
        t1 = time.perf_counter()
        view_features = ViewFeatureCache(self.worker.model, {k: tok for k, (tok, _) in tokens.items()}, cache_bytes)
        self.decode(views, pairs, source, tokens, view_features, store)
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

    def encode(self, views: list[InputImage], source: list[int]) -> Tokens:
        """Each distinct view (``source[k] == k``) encoded once, batched by shape
        (:func:`~core.inference.worker.encode_chunks`). Returns view -> (tokens (N, E), positions (N, 2))."""
        n = len(views)
        self.report("encode", 0, n)
        tokens: Tokens = {}
        ready = 0
        for chunk in encode_chunks([im.true_shape for im in views], source, self.batch_size):
            for k, tok in zip(chunk, self.worker.encode([views[k].tensor for k in chunk]), strict=True):
                tokens[k] = tok
            ready += sum(1 for s in source if s in chunk)
            self.report("encode", ready, n)
        return tokens

    def decode(
        self,
        views: list[InputImage],
        pairs: list[tuple[int, int]],
        source: list[int],
        tokens: Tokens,
        view_features: ViewFeatureCache,
        store: PairStore,
    ) -> None:
        """Decoder + both heads per (shape1, shape2) group, ``batch_size`` pairs at a time
        (:func:`~core.inference.worker.decode_chunks`), each batch's outputs into ``store``."""
        n_pairs = len(pairs)
        self.report("pairs", 0, n_pairs)
        done = 0
        for chunk in decode_chunks([im.true_shape for im in views], pairs, self.batch_size):
            i0, j0 = pairs[chunk[0]]
            views1 = [source[pairs[p][0]] for p in chunk]  # encoded view of each pair's view 1
            views2 = [source[pairs[p][1]] for p in chunk]
            shapes = (views[i0].true_shape, views[j0].true_shape)
            out = self.worker.decode(views1, views2, shapes, tokens, view_features)
            for key, values in out.items():
                for p, value in zip(chunk, values, strict=True):
                    store.put(key, p, value)
            done += len(chunk)
            self.report("pairs", done, n_pairs)
