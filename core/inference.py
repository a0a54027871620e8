"""Pair inference: the network on every pair of a scene graph, each image encoded once.

:func:`run_inference` turns preprocessed images into the pairwise predictions that global
alignment consumes (:class:`core.types.PairPredictions`), giving the reference's numbers (its
``make_pairs`` order, its per-pair outputs) far faster than the reference's one-pair-at-a-time loop:

1. **Encode once.** Every distinct image goes through ``model.encode`` exactly once per run
   (images of equal shape are batched, ``cfg.batch_size`` at a time); the tokens stay cached on
   the device. Byte-identical inputs (the single-image duplicate, or the same photo uploaded
   twice) share one encoding.
2. **Decode in batches.** Pairs are grouped by (view-1 shape, view-2 shape) so landscape, portrait
   and square images mix freely; each group is decoded ``cfg.batch_size`` pairs at a time on the
   cached tokens, then both heads run (float32, autocast off inside ``model.head``). Each batch's
   outputs move to the CPU as float32 right away. The part of each DPT head that depends only on
   the view's own encoder tokens (``model.head_view_features``: about a sixth of the head's
   work) is computed once per view and head and reused by every pair the view is in, within
   ``cfg.view_cache_gb`` (least recently used out first).
3. **Precision.** The caller picks the autocast dtype (``core.runtime.select_autocast_dtype(device,
   cfg.precision)``: bf16/fp16 on CUDA, bf16 on CPUs with native bf16, None = plain float32) and
   passes it in; this module never imports ``model.py``. Encoder and decoder run under autocast,
   heads in float32. TF32 is a process-wide switch: ``main.py`` calls ``core.runtime.enable_tf32`` once.
4. **Memory guard.** Before anything runs, :func:`estimate_memory` predicts the peak (formula in
   its docstring) and :func:`check_memory` compares it with the free device memory times
   ``cfg.memory_fraction``. If the requested batch size does not fit but a smaller one does, the
   batch shrinks (logged); if even one pair at a time does not fit, :class:`InsufficientMemoryError`
   names the estimate and the pair count and suggests ``swin``/``logwin`` or a smaller image size.
   A CUDA out-of-memory error that still happens is re-raised as the same error with the same advice.
5. **CPU allocator.** ``cfg.tune_cpu_allocator`` is applied by the entry points (``main.py``,
   the pipeline's DUSt3R engine) with ``core.runtime.tune_cpu_allocator``, not here.

Single image: it is paired with a copy of itself, as the reference demo does
(:func:`core.inputs.pairs.duplicate_single_image`): the result then has 2 views (the image, and the copy
named ``"<name> (copy)"``) and the pairs of ``make_pairs(2, scene_graph)``: (1, 0), (0, 1). The
copy shares the image's encoding (one encoder pass).

Everything runs under ``torch.inference_mode()``. Progress: ``progress("encode", views_ready,
n_views)`` and ``progress("pairs", pairs_done, n_pairs)``, each first called with 0.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from config import InferenceConfig
from core.errors import InsufficientMemoryError
from core.inputs.pairs import count_pairs, duplicate_single_image, make_pairs
from core.types import InputImage, PairPredictions, ProgressFn

try:  # optional: only used to read the available RAM when installed
    import psutil  # type: ignore[import-not-found]

    _HAS_PSUTIL = True
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None
    _HAS_PSUTIL = False

__all__ = [
    "PairModel",
    "ModelDims",
    "MemoryEstimate",
    "InsufficientMemoryError",
    "run_inference",
    "estimate_memory",
    "check_memory",
    "available_memory",
    "resolve_batch_size",
    "view_cache_bytes",
]

logger = logging.getLogger(__name__)

_GB = 1024**3
_FP32 = 4


class PairModel(Protocol):
    """What :func:`run_inference` needs from the network (``model.DUSt3R`` satisfies it).

    ``config`` (a mapping with the constructor keys) and ``parameters()`` feed the memory
    estimate (:meth:`ModelDims.from_model`).
    """

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img (B, 3, H, W) -> tokens (B, N, enc_dim) after enc_norm, positions (B, N, 2) int64."""
        ...

    def decode(
        self, f1: torch.Tensor, pos1: torch.Tensor, f2: torch.Tensor, pos2: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """B pairs of cached tokens -> per view [encoder tokens, decoder layer 1..L]."""
        ...

    def head_view_features(
        self, which: int, enc_tokens: torch.Tensor, true_shape: tuple[int, int]
    ) -> torch.Tensor | None:
        """Encoder tokens (B, N, enc_dim) -> the part of head ``which`` that depends on them alone
        (any shape, float32), or None when there is no such part."""
        ...

    def head(
        self,
        which: int,
        tokens: list[torch.Tensor],
        true_shape: tuple[int, int],
        view_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """-> {"pts3d": (B, H, W, 3), "conf": (B, H, W)} float32 (autocast off inside);
        view_features: :meth:`head_view_features` of ``tokens[0]`` (B, ...) when known. Called with
        ``descriptors=True`` only when ``cfg.descriptors`` (then a model with ``desc_dim > 0`` also
        returns "desc" (B, H, W, D) and "desc_conf" (B, H, W))."""
        ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


# --------------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    """Architecture numbers the memory estimate needs (defaults: the official 512_dpt model)."""

    weight_bytes: int = 571_171_208 * _FP32
    """Bytes of all parameters and buffers as stored on the device."""
    enc_embed_dim: int = 1024
    """Encoder width."""
    enc_num_heads: int = 16
    """Encoder attention heads."""
    dec_embed_dim: int = 768
    """Decoder width."""
    dec_depth: int = 12
    """Decoder layers per view (the heads receive dec_depth + 1 token tensors per view)."""
    dec_num_heads: int = 12
    """Decoder attention heads."""
    mlp_ratio: float = 4.0
    """MLP hidden width / model width."""
    patch_size: int = 16
    """Pixels per token side."""
    head_type: str = "dpt"
    """``linear`` or ``dpt``."""
    dpt_feature_dim: int = 256
    """DPT fusion width."""
    dpt_last_dim: int = 128
    """DPT last conv width (the full-resolution layer)."""

    def __post_init__(self) -> None:
        if self.head_type not in ("linear", "dpt"):
            raise ValueError(f"head_type must be 'linear' or 'dpt', got {self.head_type!r}")
        for name in (
            "weight_bytes",
            "enc_embed_dim",
            "enc_num_heads",
            "dec_embed_dim",
            "dec_depth",
            "dec_num_heads",
            "patch_size",
            "dpt_feature_dim",
            "dpt_last_dim",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_model(cls, model: Any) -> ModelDims:
        """Read the numbers from a network with a ``config`` mapping (``model.DUSt3R``) and
        ``parameters()``; missing keys keep the constructor defaults of the reference."""
        config = getattr(model, "config", None)
        if not isinstance(config, Mapping):
            raise TypeError(
                f"model must expose a 'config' mapping of its constructor keys, got "
                f"{type(config).__name__} on {type(model).__name__}"
            )
        seen: set[int] = set()
        weight_bytes = 0
        tensors = list(model.parameters()) + list(getattr(model, "buffers", lambda: [])())
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                weight_bytes += t.numel() * t.element_size()
        return cls(
            weight_bytes=max(weight_bytes, 1),
            enc_embed_dim=int(config.get("enc_embed_dim", 768)),
            enc_num_heads=int(config.get("enc_num_heads", 12)),
            dec_embed_dim=int(config.get("dec_embed_dim", 512)),
            dec_depth=int(config.get("dec_depth", 8)),
            dec_num_heads=int(config.get("dec_num_heads", 16)),
            mlp_ratio=float(config.get("mlp_ratio", 4.0)),
            patch_size=int(config.get("patch_size", 16)),
            # MASt3R's catmlp+dpt head: its DPT part is the DPT head (descriptor outputs not counted)
            head_type={"catmlp+dpt": "dpt"}.get(str(config.get("head_type")), str(config.get("head_type", "linear"))),
            dpt_feature_dim=int(config.get("dpt_feature_dim", 256)),
            dpt_last_dim=int(config.get("dpt_last_dim", 128)),
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted memory of one run (bytes). See :func:`estimate_memory` for the formula."""

    pairs: int
    """Number of pairs P the scene graph gives."""
    n_views: int
    """Views in the result (a single image counts 2: it is paired with a copy)."""
    batch_size: int
    """Pairs (and images) processed together that the estimate assumes (smaller groups run smaller)."""
    device: str
    """Device the estimate is for."""
    bytes_peak: int
    """Peak on the device (CPU runs: everything, outputs included)."""
    bytes_weights: int
    """Network weights (already resident once the model is loaded)."""
    bytes_tokens: int
    """Cached encoder tokens of all views."""
    bytes_view_cache: int
    """Cached per-view head features (at most the configured cap)."""
    bytes_batch: int
    """Largest transient of one encoder batch or one decoder+heads batch."""
    bytes_outputs: int
    """All pair outputs (float32, on the host)."""
    bytes_host: int
    """Host RAM for the outputs when the device is not the CPU (0 on CPU: in ``bytes_peak``)."""

    @property
    def gb_peak(self) -> float:
        return self.bytes_peak / _GB

    def describe(self) -> str:
        """One line: peak, its parts and the pair count."""
        parts = (
            f"weights {self.bytes_weights / _GB:.2f}, tokens {self.bytes_tokens / _GB:.2f}, "
            f"view cache {self.bytes_view_cache / _GB:.2f}, "
            f"batch of {self.batch_size} {self.bytes_batch / _GB:.2f}, outputs {self.bytes_outputs / _GB:.2f}"
        )
        return f"{self.gb_peak:.2f} GB peak on {self.device} for {self.pairs} pairs ({parts} GB)"


def _activation_bytes(autocast_dtype: torch.dtype | None) -> int:
    return 2 if autocast_dtype in (torch.bfloat16, torch.float16) else _FP32


def _check_hw(image_hw: Sequence[tuple[int, int]], patch: int) -> list[tuple[int, int]]:
    out = []
    for k, hw in enumerate(image_hw):
        if len(hw) != 2:
            raise ValueError(f"image_hw[{k}] must be (H, W), got {hw!r}")
        h, w = int(hw[0]), int(hw[1])
        if h < patch or w < patch or h % patch or w % patch:
            raise ValueError(f"image {k}: height and width must be positive multiples of {patch}, got {h}x{w}")
        out.append((h, w))
    return out


#: Scene graphs with at most this many pairs are enumerated for the estimate (exact shape
#: groups and output sizes); larger ones use the largest image for every pair (an upper bound).
EXACT_ESTIMATE_MAX_PAIRS = 200_000


def _encoder_batch_bytes(b: int, hw: tuple[int, int], dims: ModelDims, a: int) -> int:
    """Transient of encoding b images of size hw: one block's activations (+ attention scores)."""
    t = hw[0] * hw[1] // dims.patch_size**2
    e = dims.enc_embed_dim
    return int(b * t * (e * (_FP32 + a * (11 + 2 * dims.mlp_ratio)) + dims.enc_num_heads * t * a))


def _head_pixel_floats(dims: ModelDims) -> int:
    """float32 values per output pixel alive at the head's peak (one view of one pair)."""
    if dims.head_type == "dpt":
        fd, last = dims.dpt_feature_dim, dims.dpt_last_dim
        return max(fd // 2 + last, 2 * last) + fd // 4 + 16
    return 28


def _decoder_batch_bytes(b: int, hw1: tuple[int, int], hw2: tuple[int, int], dims: ModelDims, a: int) -> int:
    """Transient of decoding b pairs (view sizes hw1, hw2) and running both heads."""
    p2 = dims.patch_size**2
    t1, t2 = hw1[0] * hw1[1] // p2, hw2[0] * hw2[1] // p2
    e, d, depth = dims.enc_embed_dim, dims.dec_embed_dim, dims.dec_depth
    kept = b * (t1 + t2) * (e * a + depth * d * a)
    working = b * (t1 + t2) * d * a * (16 + 2 * dims.mlp_ratio) + b * dims.dec_num_heads * (t1 + t2) ** 2 * a
    batch_out = b * (hw1[0] * hw1[1] + hw2[0] * hw2[1]) * 4 * _FP32
    heads = 0
    for t, hw in ((t1, hw1), (t2, hw2)):
        cast = b * t * (e + depth * d) * _FP32 if a == 2 else 0
        heads = max(heads, cast + b * hw[0] * hw[1] * _FP32 * _head_pixel_floats(dims))
    return int(kept + max(working, heads + batch_out))


def estimate_memory(
    n_images: int,
    image_hw: Sequence[tuple[int, int]],
    scene_graph: str,
    dims: ModelDims,
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None,
    batch_size: int = 1,
    view_cache_bytes: int = 0,
) -> MemoryEstimate:
    """Predict the pair count and the peak memory of a run, without allocating anything.

    n_images: number of input images (1 is paired with a copy: 2 views); image_hw: their (H, W)
    network sizes; dims: :class:`ModelDims`; autocast_dtype: None (fp32) or bf16/fp16;
    batch_size: pairs (and images) processed together, as in :func:`run_inference`;
    view_cache_bytes: the cap on the per-view head features (``cfg.view_cache_gb``).

    Formula (bytes). a = 2 under 16-bit autocast else 4, f = 4; per view T = HW / patch^2 tokens;
    E, D, L, He, Hd, r = encoder/decoder widths, decoder depth, heads, mlp ratio; pairs are grouped
    by (view-1 size, view-2 size) exactly as the run does, b = min(batch_size, group size):

    - weights W (autocast inside ``inference_mode`` keeps no cached low-precision weight copies:
      one layer's copy at a time, measured; not counted);
    - tokens = sum over views of T * (E*a + 16) (encoder output + int64 positions);
    - view cache = min(cap, sum over distinct views of 2 * F * 16T * f) for DPT heads (both heads'
      features at a quarter of the resolution), 0 for linear heads;
    - encoder batch = b * T * (E*(f + a*(11 + 2r)) + He*T*a)  (one block: residual, qkv, rope,
      MLP hidden, attention scores);
    - decoder batch = kept + max(working, heads + batch outputs), with
      kept = b*(T1 + T2)*(E + L*D)*a (the token lists kept for the heads, both views),
      working = b*(T1 + T2)*D*a*(16 + 2r) + b*Hd*(T1 + T2)^2*a (one layer of both streams),
      heads = the larger view's float32 copy of its token list (only when a = 2)
      + b*HW*f*k with k = max(F/2 + last, 2*last) + F/4 + 16 for DPT (F, last = DPT widths; the
      full-resolution convolutions dominate: 336 floats per pixel for the official head) or
      k = 28 for the linear head, batch outputs = b*(HW1 + HW2)*4*f;
    - outputs = sum over pairs of (HW_i + HW_j)*4*f (pts3d + conf, float32, kept on the host);
    - peak = W + tokens + view cache + max(encoder batches, decoder batches) (+ outputs on the CPU;
      on CUDA they are ``bytes_host``).

    Calibration: the PyTorch CPU allocator's peak during ``run_inference`` (summed from the
    profiler's per-op allocations; weights excluded) for 3 images (landscape, portrait,
    landscape), batch 1 and 8, fp32 and bf16: tiny fixture models at 64x48 and 512x384:
    estimate / measured = 1.28-1.63 (the small terms are rounded up); a model with the official
    DPT head widths (256/128, the term that dominates at 512x384): 1.01-1.02 at both sizes
    (e.g. 592 MB estimated vs 578 MB measured at batch 8, 512x384). ``bench/bench_inference.py``
    prints the estimate next to the measured peak for the full 512_dpt model. The estimate
    excludes allocator slack and fragmentation: ``cfg.memory_fraction`` leaves that headroom.
    """
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be an int >= 1, got {n_images!r}")
    if len(image_hw) != n_images:
        raise ValueError(f"expected {n_images} image sizes, got {len(image_hw)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if view_cache_bytes < 0:
        raise ValueError(f"view_cache_bytes must be >= 0, got {view_cache_bytes}")
    device = torch.device(device)
    hw = _check_hw(image_hw, dims.patch_size)
    n_views = max(n_images, 2)  # a single image is paired with a copy of itself
    hw = hw * 2 if n_images == 1 else hw
    n_pairs = count_pairs(n_images, scene_graph)
    a, f = _activation_bytes(autocast_dtype), _FP32
    p2 = dims.patch_size**2

    pair_groups: dict[tuple[tuple[int, int], tuple[int, int]], int] = {}
    if n_pairs <= EXACT_ESTIMATE_MAX_PAIRS:
        pairs = make_pairs(n_views, scene_graph)
        out_pixels = 0
        for i, j in pairs:
            key = (hw[i], hw[j])
            pair_groups[key] = pair_groups.get(key, 0) + 1
            out_pixels += hw[i][0] * hw[i][1] + hw[j][0] * hw[j][1]
    else:
        largest = max(hw, key=lambda s: s[0] * s[1])
        pair_groups[(largest, largest)] = n_pairs
        out_pixels = n_pairs * 2 * largest[0] * largest[1]
    view_groups: dict[tuple[int, int], int] = {}
    for s in hw[:n_images]:  # the single image's copy shares its encoding
        view_groups[s] = view_groups.get(s, 0) + 1

    weights = dims.weight_bytes
    tokens = sum(h * w // p2 for h, w in hw) * (dims.enc_embed_dim * a + 16)
    view_cache = 0
    if dims.head_type == "dpt":
        quarter_pixels = sum(16 * h * w // p2 for h, w in hw[:n_images])  # the copy shares its image's
        view_cache = min(view_cache_bytes, 2 * dims.dpt_feature_dim * quarter_pixels * f)
    encoder = max(_encoder_batch_bytes(min(batch_size, c), s, dims, a) for s, c in view_groups.items())
    decoder = max(
        (_decoder_batch_bytes(min(batch_size, c), s1, s2, dims, a) for (s1, s2), c in pair_groups.items()), default=0
    )
    batch = max(encoder, decoder)
    outputs = out_pixels * 4 * f
    on_cpu = device.type == "cpu"
    peak = int(weights + tokens + view_cache + batch + (outputs if on_cpu else 0))
    return MemoryEstimate(
        pairs=n_pairs,
        n_views=n_views,
        batch_size=batch_size,
        device=str(device),
        bytes_peak=peak,
        bytes_weights=int(weights),
        bytes_tokens=int(tokens),
        bytes_view_cache=int(view_cache),
        bytes_batch=int(batch),
        bytes_outputs=int(outputs),
        bytes_host=0 if on_cpu else int(outputs),
    )


def _read_meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup memory limit (containers), or None when unlimited/unknown."""
    pairs = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    )
    for limit_path, usage_path in pairs:
        try:
            limit_text = Path(limit_path).read_text().strip()
            usage = int(Path(usage_path).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max":
            return None
        limit = int(limit_text)
        if limit >= 1 << 60:  # cgroup v1 "unlimited"
            return None
        return max(limit - usage, 0)
    return None


def available_memory(device: torch.device | str) -> int | None:
    """Free bytes the run could use on ``device``, or None when it cannot be determined.

    CUDA: ``torch.cuda.mem_get_info`` free + memory PyTorch has reserved but not allocated.
    CPU: psutil's available RAM if installed, else ``MemAvailable`` from /proc/meminfo; the
    smaller of that and the room under a cgroup memory limit.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    if device.type == "cpu":
        ram = int(psutil.virtual_memory().available) if _HAS_PSUTIL else _read_meminfo_available()
        cgroup = _cgroup_available()
        if ram is None:
            return cgroup
        return ram if cgroup is None else min(ram, cgroup)
    return None


def _advice(est: MemoryEstimate, scene_graph: str) -> str:
    graph_tip = (
        "use a sparser scene graph such as 'swin-3' or 'logwin-3' (about 2K pairs per image instead of N-1)"
        if not scene_graph.startswith(("swin", "logwin", "oneref"))
        else "use a smaller K in the scene graph or 'oneref-0'"
    )
    return (
        f"{graph_tip}, fewer images, or a smaller image size (image_size 384 or 224; memory grows with the pixel count)"
    )


def check_memory(
    est: MemoryEstimate,
    scene_graph: str,
    *,
    memory_fraction: float = 0.9,
    weights_resident: bool = True,
    available: int | None = None,
    host_available: int | None = None,
) -> None:
    """Raise :class:`InsufficientMemoryError` when ``est`` does not fit.

    Needed = ``bytes_peak`` (minus the weights when they are already loaded on the device, as
    the free-memory figure no longer counts them); allowed = ``memory_fraction`` x the free
    memory (``available``, default :func:`available_memory`). For non-CPU devices the host
    outputs are checked against the free RAM too. Unknown free memory -> no check (logged).
    """
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    checks = [(est.device, est.bytes_peak - (est.bytes_weights if weights_resident else 0), available)]
    if est.bytes_host:
        checks.append(("cpu", est.bytes_host, host_available))
    for dev, needed, free in checks:
        if free is None:
            free = available_memory(dev)
        if free is None:
            logger.info("free memory on %s unknown; skipping the memory check (%s)", dev, est.describe())
            continue
        allowed = free * memory_fraction
        if needed > allowed:
            what = "device" if dev == est.device else "host RAM (pair outputs)"
            raise InsufficientMemoryError(
                f"not enough memory: this job needs about {needed / _GB:.1f} GB of {what} on {dev} "
                f"({est.describe()}), but only {allowed / _GB:.1f} GB may be used "
                f"({memory_fraction:.0%} of {free / _GB:.1f} GB free). {est.pairs} pairs for "
                f"{est.n_views} images with scene graph '{scene_graph}': {_advice(est, scene_graph)}."
            )


def view_cache_bytes(cfg: InferenceConfig) -> int:
    """``cfg.view_cache_gb`` in bytes."""
    return int(cfg.view_cache_gb * _GB)


def resolve_batch_size(batch_size: int, device: torch.device) -> int:
    """``InferenceConfig.batch_size`` -> pairs per decoder batch: 0 (auto) is 8 on CUDA and 1 on
    CPU, where one pair at a time measured ~20% faster than batches (cache-bound, bench_inference)."""
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0 (0 = auto), got {batch_size}")
    if batch_size:
        return batch_size
    return 8 if device.type == "cuda" else 1


def _plan(
    n_images: int,
    hw: list[tuple[int, int]],
    cfg: InferenceConfig,
    dims: ModelDims,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> MemoryEstimate:
    """Estimate and check; shrink the batch (halving) while it does not fit. Raises when batch 1 fails."""
    batch = resolve_batch_size(cfg.batch_size, device)
    while True:
        est = estimate_memory(
            n_images,
            hw,
            cfg.scene_graph,
            dims,
            device=device,
            autocast_dtype=autocast_dtype,
            batch_size=batch,
            view_cache_bytes=view_cache_bytes(cfg),
        )
        try:
            check_memory(est, cfg.scene_graph, memory_fraction=cfg.memory_fraction)
        except InsufficientMemoryError:
            if batch == 1:
                raise
            batch //= 2
            continue
        if batch < resolve_batch_size(cfg.batch_size, device):
            logger.warning(
                "batch size lowered from %d to %d to fit in memory (%s)",
                resolve_batch_size(cfg.batch_size, device),
                batch,
                est.describe(),
            )
        return est


# --------------------------------------------------------------------------------------------
# Inference
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


def run_inference(
    model: PairModel,
    images: Sequence[InputImage],
    cfg: InferenceConfig,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    progress: ProgressFn | None = None,
) -> PairPredictions:
    """Network predictions for every pair of ``cfg.scene_graph`` (reference pair order).

    model: the network on ``device`` in eval mode (:class:`PairModel`, e.g. ``model.DUSt3R``).
    images: N preprocessed views, ``tensor`` (1, 3, H, W) float32 in [-1, 1]; shapes may differ.
    cfg: scene graph, batch size (pairs decoded together; also images encoded together) and
    memory fraction, view-cache size (``cfg.precision`` is resolved by the caller into
    ``autocast_dtype``; ``cfg.tune_cpu_allocator`` is applied by the caller too).
    autocast_dtype: None for float32, or torch.bfloat16 / torch.float16 for the encoder and decoder.

    Returns PairPredictions (CPU float32): ``pairs`` (P, 2) int64 (view-1 index, view-2 index);
    per pair pts3d_1 (H_i, W_i, 3) and pts3d_2 (H_j, W_j, 3) in view i's camera frame, conf_1,
    conf_2 (>= 1); the input images and names. A single image is paired with a copy of itself
    (2 views, pairs (1, 0), (0, 1); see the module docs).

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
    views = duplicate_single_image(images)  # one image -> [image, copy named "<name> (copy)"]
    pairs = make_pairs(len(views), cfg.scene_graph)
    hw = [im.true_shape for im in images]
    est = _plan(len(images), hw, cfg, dims, device, autocast_dtype)
    logger.info(
        "inference: %d views, %d pairs, batch %d, %s, autocast %s; estimate %s",
        len(views),
        len(pairs),
        est.batch_size,
        device,
        autocast_dtype,
        est.describe(),
    )
    try:
        return _run(
            model,
            views,
            pairs,
            est.batch_size,
            device,
            autocast_dtype,
            view_cache_bytes(cfg),
            progress,
            cfg.descriptors,
        )
    except torch.OutOfMemoryError as e:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise InsufficientMemoryError(
            f"out of memory on {device} while running {len(pairs)} pairs (estimate was {est.describe()}): "
            f"{_advice(est, cfg.scene_graph)}; or lower the batch size (now {est.batch_size})."
        ) from e


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

    def get(self, which: int, views: Sequence[int], shape: tuple[int, int]) -> torch.Tensor | None:
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


@torch.inference_mode()
def _run(
    model: PairModel,
    views: list[InputImage],
    pairs: list[tuple[int, int]],
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    cache_bytes: int,
    progress: ProgressFn | None,
    descriptors: bool = False,
) -> PairPredictions:
    n, n_pairs = len(views), len(pairs)
    head_kw = {"descriptors": True} if descriptors else {}  # MASt3R's local-feature MLP, only when asked
    report = progress if progress is not None else (lambda stage, done, total: None)
    tensors = [im.tensor for im in views]
    source = _distinct_sources(tensors)
    t0 = time.perf_counter()

    # 1. encode each distinct image once, batched by shape
    report("encode", 0, n)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for k in sorted(set(source)):
        by_shape.setdefault(views[k].true_shape, []).append(k)
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    ready = 0
    for group in by_shape.values():
        for chunk in _chunks(group, batch_size):
            batch = torch.cat([tensors[k] for k in chunk]).to(device=device, dtype=torch.float32)
            with _autocast(device, autocast_dtype):
                tok, pos = model.encode(batch)  # (b, N, E), (b, N, 2)
            for b, k in enumerate(chunk):
                cache[k] = (tok[b], pos[b])
            ready += sum(1 for s in source if s in chunk)
            report("encode", ready, n)
    t1 = time.perf_counter()

    # 2. decode + heads per (shape1, shape2) group, batch_size pairs at a time
    report("pairs", 0, n_pairs)
    groups: dict[tuple[tuple[int, int], tuple[int, int]], list[int]] = {}
    for p, (i, j) in enumerate(pairs):
        groups.setdefault((views[i].true_shape, views[j].true_shape), []).append(p)
    out: dict[str, list[torch.Tensor | None]] = {k: [None] * n_pairs for k in _OUT_KEYS}
    view_features = _ViewFeatureCache(model, {k: tok for k, (tok, _) in cache.items()}, cache_bytes)
    done = 0
    for (shape1, shape2), members in groups.items():
        for chunk in _chunks(members, batch_size):
            views1 = [source[pairs[p][0]] for p in chunk]  # encoded view of each pair's view 1
            views2 = [source[pairs[p][1]] for p in chunk]
            f1 = torch.stack([cache[k][0] for k in views1])  # (B, N1, E)
            pos1 = torch.stack([cache[k][1] for k in views1])
            f2 = torch.stack([cache[k][0] for k in views2])  # (B, N2, E)
            pos2 = torch.stack([cache[k][1] for k in views2])
            with _autocast(device, autocast_dtype):
                dec1, dec2 = model.decode(f1, pos1, f2, pos2)
            res1 = _to_host(model.head(1, dec1, shape1, view_features.get(1, views1, shape1), **head_kw))
            del dec1
            res2 = _to_host(model.head(2, dec2, shape2, view_features.get(2, views2, shape2), **head_kw))
            del dec2
            _store(out, chunk, res1, res2)
            done += len(chunk)
            report("pairs", done, n_pairs)
    t2 = time.perf_counter()
    logger.info(
        "encoded %d distinct images in %.2f s; %d pairs decoded in %.2f s (%.3f s/pair); view cache: %s",
        len(set(source)),
        t1 - t0,
        n_pairs,
        t2 - t1,
        (t2 - t1) / max(n_pairs, 1),
        view_features.describe(),
    )
    return PairPredictions(
        pairs=torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2),
        pts3d_1=tuple(out["p1"]),  # type: ignore[arg-type]
        conf_1=tuple(out["c1"]),  # type: ignore[arg-type]
        pts3d_2=tuple(out["p2"]),  # type: ignore[arg-type]
        conf_2=tuple(out["c2"]),  # type: ignore[arg-type]
        true_shapes=tuple(im.true_shape for im in views),
        images=tuple(t.detach().float().cpu() for t in tensors),
        names=tuple(im.name for im in views),
        **({f: tuple(out[k]) for k, f in _DESC_FIELDS.items()} if descriptors else {}),  # type: ignore[arg-type]
    )


def _store(out: dict[str, list], chunk: list[int], res1: Mapping[str, list], res2: Mapping[str, list]) -> None:
    """Put one batch's per-sample head outputs (:func:`_to_host`) of pairs ``chunk`` into ``out``."""
    for key, (which, name) in _OUT_KEYS.items():
        res = res1 if which == 1 else res2
        if name in res:
            for b, p in enumerate(chunk):
                out[key][p] = res[name][b]


#: Per-pair outputs collected by :func:`_run`: key -> (head, output name).
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
