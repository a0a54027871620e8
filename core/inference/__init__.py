"""Pair inference: the network on every pair of a pair list, and the memory guard around it.

- :mod:`core.inference.run`: :func:`run_inference` (encode each image once, decode pairs in
  batches, per-view head cache) and the :class:`PairModel` protocol it needs.
- :mod:`core.inference.memory`: :func:`estimate_memory` (the peak of a run, from the views' sizes
  and the pair list), :func:`check_memory` against the free memory, :func:`plan_memory` (both, and
  the batch size that fits, and :func:`check_alignment_memory`: the alignment that follows).
- :mod:`core.inference.worker`: the batches (:func:`~core.inference.worker.encode_chunks`,
  :func:`~core.inference.worker.decode_chunks`) and :class:`~core.inference.worker.PairWorker`,
  shared by the in-process run and the Ray workers.
- :mod:`core.inference.storage`: where the predictions wait for the alignment
  (:class:`~core.inference.storage.PairStore`: float32, float16 or memory-mapped on disk).
- :mod:`core.inference.distributed` (optional, ``requirements-ray.txt``; not imported here):
  :class:`~core.inference.distributed.RayPairPool`, the same run on Ray workers.

The caller makes the pair list once (``core.inputs.pairs.make_pairs``) and passes the same list
to both.
"""

from core.errors import InsufficientMemoryError
from core.inference.memory import (
    MemoryEstimate,
    ModelDims,
    available_memory,
    check_alignment_memory,
    check_memory,
    check_pairs,
    estimate_alignment_bytes,
    estimate_memory,
    plan_memory,
    resolve_batch_size,
    view_cache_bytes,
)
from core.inference.run import PairModel, run_inference

__all__ = [
    "PairModel",
    "ModelDims",
    "MemoryEstimate",
    "InsufficientMemoryError",
    "run_inference",
    "estimate_memory",
    "check_memory",
    "check_pairs",
    "plan_memory",
    "estimate_alignment_bytes",
    "check_alignment_memory",
    "available_memory",
    "resolve_batch_size",
    "view_cache_bytes",
]
