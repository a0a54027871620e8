"""Memory guard of pair inference: predict a run's peak, compare it with the free memory.

:func:`estimate_memory` predicts the peak from the views' sizes and the pair list the run will
use (formula in its docstring); :func:`check_memory` compares it with the free device memory
(:func:`available_memory`) times ``cfg.memory_fraction``; :func:`plan_memory` does both for a run
and halves the batch while it does not fit. If even one pair at a time does not fit,
:class:`InsufficientMemoryError` names the estimate and the pair count and suggests
``swin``/``logwin`` or a smaller image size (:func:`memory_advice`).

Calibration of the estimate: the PyTorch CPU allocator's peak during ``run_inference`` (summed
from the profiler's per-op allocations; weights excluded) for 3 images (landscape, portrait,
landscape), batch 1 and 8, fp32 and bf16: tiny fixture models at 64x48 and 512x384: estimate /
measured = 1.28-1.63 (the small terms are rounded up); a model with the official DPT head widths
(256/128, the term that dominates at 512x384): 1.01-1.02 at both sizes (e.g. 592 MB estimated vs
578 MB measured at batch 8, 512x384). ``bench/bench_inference.py`` prints the estimate next to
the measured peak for the full 512_dpt model. The estimate excludes allocator slack and
fragmentation: ``cfg.memory_fraction`` leaves that headroom.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from config import InferenceConfig
from core.errors import InsufficientMemoryError
from core.inference.storage import bytes_per_value

try:  # optional: only used to read the available RAM when installed
    import psutil  # type: ignore[import-not-found]

    _HAS_PSUTIL = True
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None
    _HAS_PSUTIL = False

__all__ = [
    "ModelDims",
    "MemoryEstimate",
    "InsufficientMemoryError",
    "estimate_memory",
    "check_memory",
    "check_pairs",
    "available_memory",
    "memory_advice",
    "plan_memory",
    "estimate_alignment_bytes",
    "check_alignment_memory",
    "resolve_batch_size",
    "view_cache_bytes",
]

logger = logging.getLogger(__name__)

_GB = 1024**3
_FP32 = 4
_ALIGN_PAIR_PIXEL = 24
_ALIGN_CONSTANT = 32 * 1024**2

Shape = tuple[int, int]


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
    """Number of pairs P in the pair list."""
    n_views: int
    """Views in the result (a single image's copy counts: 2 views)."""
    batch_size: int
    """Pairs (and images) processed together that the estimate assumes (smaller groups run smaller)."""
    device: str
    """Device the estimate is for."""
    bytes_peak: int
    """Peak on the device (CPU runs: everything, outputs included)."""
    bytes_weights: int
    """Network weights (already resident once the model is loaded)."""
    bytes_tokens: int
    """Cached encoder tokens of all encoded views."""
    bytes_view_cache: int
    """Cached per-view head features (at most the configured cap)."""
    bytes_batch: int
    """Largest transient of one encoder batch or one decoder+heads batch."""
    bytes_outputs: int
    """All pair outputs (float32, on the host)."""
    bytes_host: int
    """Host RAM for the outputs when the device is not the CPU (0 on CPU: in ``bytes_peak``; 0 on disk)."""
    storage: str = "memory"
    """Where the outputs wait for the alignment (:mod:`core.inference.storage`): memory, fp16 or disk."""
    bytes_disk: int = 0
    """Disk the outputs take (``storage`` disk: memory-mapped files in the job folder), else 0."""

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
        stored = "" if self.storage == "memory" else f"; outputs stored as {self.storage}"
        return f"{self.gb_peak:.2f} GB peak on {self.device} for {self.pairs} pairs ({parts} GB{stored})"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_hw(image_hw: Sequence[Shape], patch: int) -> list[Shape]:
    out = []
    for k, hw in enumerate(image_hw):
        if len(hw) != 2:
            raise ValueError(f"image_hw[{k}] must be (H, W), got {hw!r}")
        h, w = int(hw[0]), int(hw[1])
        if h < patch or w < patch or h % patch or w % patch:
            raise ValueError(f"image {k}: height and width must be positive multiples of {patch}, got {h}x{w}")
        out.append((h, w))
    return out


def check_pairs(pairs: Sequence[Sequence[int]], n_views: int) -> list[tuple[int, int]]:
    """Validate a pair list (``core.inputs.pairs.make_pairs`` output) against ``n_views`` views.

    pairs: P (view-1 index, view-2 index), P >= 1, indices in 0..n_views-1, i != j.
    Returns them as a list of int tuples. Raises ValueError/TypeError naming the bad pair.
    """
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a sequence of (i, j) index pairs, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError("pairs is empty: need at least one (i, j) pair")
    out = []
    for p, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{p}] must be (i, j), got {pair!r}")
        i, j = int(pair[0]), int(pair[1])
        if not (0 <= i < n_views and 0 <= j < n_views) or i == j:
            raise ValueError(f"pairs[{p}] = {(i, j)}: need two different view indices in 0..{n_views - 1}")
        out.append((i, j))
    return out


def _check_sources(sources: Sequence[int] | None, n_views: int) -> list[int]:
    if sources is None:
        return list(range(n_views))
    out = [int(s) for s in sources]
    if len(out) != n_views or any(not 0 <= s <= k for k, s in enumerate(out)):
        raise ValueError(f"sources must give each of the {n_views} views an index <= its own, got {list(sources)}")
    return out


# --------------------------------------------------------------------------------------------
# Estimate
# --------------------------------------------------------------------------------------------


def _activation_bytes(autocast_dtype: torch.dtype | None) -> int:
    return 2 if autocast_dtype in (torch.bfloat16, torch.float16) else _FP32


def _encoder_batch_bytes(b: int, hw: Shape, dims: ModelDims, a: int) -> int:
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


def _decoder_batch_bytes(b: int, hw1: Shape, hw2: Shape, dims: ModelDims, a: int) -> int:
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


def _pair_groups(hw: Sequence[Shape], pairs: Sequence[tuple[int, int]]) -> tuple[dict[tuple[Shape, Shape], int], int]:
    """Pairs per (view-1 size, view-2 size) group, as the run groups them, and the output pixels."""
    groups: dict[tuple[Shape, Shape], int] = {}
    out_pixels = 0
    for i, j in pairs:
        key = (hw[i], hw[j])
        groups[key] = groups.get(key, 0) + 1
        out_pixels += hw[i][0] * hw[i][1] + hw[j][0] * hw[j][1]
    return groups, out_pixels


# Formula (bytes). a = 2 under 16-bit autocast else 4, f = 4; per view T = HW / patch^2 tokens;
# E, D, L, He, Hd, r = encoder/decoder widths, decoder depth, heads, mlp ratio; pairs are grouped
# by (view-1 size, view-2 size) exactly as the run does, b = min(batch_size, group size):
#
# - weights W (autocast inside ``inference_mode`` keeps no cached low-precision weight copies:
#   one layer's copy at a time, measured; not counted);
# - tokens = sum over encoded views of T * (E*a + 16) (encoder output + int64 positions);
# - view cache = min(cap, sum over encoded views of 2 * F * 16T * f) for DPT heads (both heads'
#   features at a quarter of the resolution), 0 for linear heads;
# - encoder batch = b * T * (E*(f + a*(11 + 2r)) + He*T*a)  (one block: residual, qkv, rope,
#   MLP hidden, attention scores);
# - decoder batch = kept + max(working, heads + batch outputs), with
#   kept = b*(T1 + T2)*(E + L*D)*a (the token lists kept for the heads, both views),
#   working = b*(T1 + T2)*D*a*(16 + 2r) + b*Hd*(T1 + T2)^2*a (one layer of both streams),
#   heads = the larger view's float32 copy of its token list (only when a = 2)
#   + b*HW*f*k with k = max(F/2 + last, 2*last) + F/4 + 16 for DPT (F, last = DPT widths; the
#   full-resolution convolutions dominate: 336 floats per pixel for the official head) or
#   k = 28 for the linear head, batch outputs = b*(HW1 + HW2)*4*f;
# - outputs = sum over pairs of (HW_i + HW_j)*4*s (pts3d + conf on the host, s = 4 bytes for
#   memory and disk, 2 for fp16);
# - peak = W + tokens + view cache + max(encoder batches, decoder batches) (+ outputs on the CPU
#   unless on disk; on CUDA they are ``bytes_host``, 0 on disk).
#
# Calibration: see the module docstring.
def estimate_memory(
    image_hw: Sequence[Shape],
    pairs: Sequence[tuple[int, int]],
    dims: ModelDims,
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None,
    batch_size: int = 1,
    view_cache_bytes: int = 0,
    sources: Sequence[int] | None = None,
    storage: str = "memory",
) -> MemoryEstimate:
    """Predict the peak memory of running ``pairs``, without allocating anything.

    image_hw: the N views' (H, W) network sizes (a single image's copy included); pairs: the P
    (view-1, view-2) index pairs the run is given (``make_pairs`` output); dims: :class:`ModelDims`;
    autocast_dtype: None (fp32) or bf16/fp16; batch_size: pairs (and images) processed together,
    as in :func:`core.inference.run_inference`; view_cache_bytes: the cap on the per-view head
    features (``cfg.view_cache_gb``); sources: per view, the view whose encoding it reuses (k
    itself when none; a single image's copy reuses the image's), default every view encoded;
    storage: where the outputs wait (:mod:`core.inference.storage`): ``memory`` (float32 in RAM),
    ``fp16`` (half of that) or ``disk`` (memory-mapped files: no RAM counted, ``bytes_disk``).

    Formula (bytes): the comment block above this function; calibration: the module docstring.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if view_cache_bytes < 0:
        raise ValueError(f"view_cache_bytes must be >= 0, got {view_cache_bytes}")
    device = torch.device(device)
    hw = _check_hw(image_hw, dims.patch_size)
    pairs = check_pairs(pairs, len(hw))
    encoded = [hw[k] for k in sorted(set(_check_sources(sources, len(hw))))]
    a, f, p2 = _activation_bytes(autocast_dtype), _FP32, dims.patch_size**2
    pair_groups, out_pixels = _pair_groups(hw, pairs)
    view_groups: dict[Shape, int] = {}
    for s in encoded:
        view_groups[s] = view_groups.get(s, 0) + 1
    tokens = sum(h * w // p2 for h, w in encoded) * (dims.enc_embed_dim * a + 16)
    view_cache = 0
    if dims.head_type == "dpt":
        quarter_pixels = sum(16 * h * w // p2 for h, w in encoded)
        view_cache = min(view_cache_bytes, 2 * dims.dpt_feature_dim * quarter_pixels * f)
    encoder = max(_encoder_batch_bytes(min(batch_size, c), s, dims, a) for s, c in view_groups.items())
    decoder = max(_decoder_batch_bytes(min(batch_size, c), s1, s2, dims, a) for (s1, s2), c in pair_groups.items())
    batch, on_cpu = max(encoder, decoder), device.type == "cpu"
    outputs = out_pixels * 4 * bytes_per_value(storage)
    in_ram = 0 if storage == "disk" else outputs
    return MemoryEstimate(
        pairs=len(pairs),
        n_views=len(hw),
        batch_size=batch_size,
        device=str(device),
        bytes_peak=int(dims.weight_bytes + tokens + view_cache + batch + (in_ram if on_cpu else 0)),
        bytes_weights=int(dims.weight_bytes),
        bytes_tokens=int(tokens),
        bytes_view_cache=int(view_cache),
        bytes_batch=int(batch),
        bytes_outputs=int(outputs),
        bytes_host=0 if on_cpu else int(in_ram),
        storage=storage,
        bytes_disk=int(outputs) if storage == "disk" else 0,
    )


# --------------------------------------------------------------------------------------------
# Free memory and the check
# --------------------------------------------------------------------------------------------


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


def memory_advice(est: MemoryEstimate, scene_graph: str) -> str:
    """What the user can change when ``est`` does not fit (a sparser graph, fewer or smaller images)."""
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
                f"{est.n_views} images with scene graph '{scene_graph}': {memory_advice(est, scene_graph)}."
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


def plan_memory(
    image_hw: Sequence[Shape],
    pairs: Sequence[tuple[int, int]],
    cfg: InferenceConfig,
    dims: ModelDims,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    sources: Sequence[int] | None = None,
    storage: str = "memory",
) -> MemoryEstimate:
    """Estimate ``pairs`` on views of sizes ``image_hw`` and check it fits; halve the batch
    (``cfg.batch_size``, 0 = auto) while it does not. Raises InsufficientMemoryError when one pair
    at a time does not fit. Arguments as in :func:`estimate_memory`."""
    requested = resolve_batch_size(cfg.batch_size, device)
    batch = requested
    while True:
        est = estimate_memory(
            image_hw,
            pairs,
            dims,
            device=device,
            autocast_dtype=autocast_dtype,
            batch_size=batch,
            view_cache_bytes=view_cache_bytes(cfg),
            sources=sources,
            storage=storage,
        )
        try:
            check_memory(est, cfg.scene_graph, memory_fraction=cfg.memory_fraction)
        except InsufficientMemoryError:
            if batch == 1:
                raise
            batch //= 2
            continue
        if batch < requested:
            logger.warning("batch size lowered from %d to %d to fit in memory (%s)", requested, batch, est.describe())
        return est


def estimate_alignment_bytes(image_hw: Sequence[Shape], pairs: Sequence[tuple[int, int]]) -> int:
    """Working memory of the global alignment on top of the pair outputs it reads (bytes).

    :data:`_ALIGN_PAIR_PIXEL` bytes per pixel of both views of every pair (the per-pair points
    and weights in working layout, the projected points, residuals and their gradients), 32 per
    view pixel (depth maps, Adam's moments, gradients) plus :data:`_ALIGN_CONSTANT`. Calibration
    (peak RSS during 5 iterations on the CPU, synthetic complete graphs, minus the predictions
    already in memory): 4 views 256x192 (12 pairs) 52 MB, 6 views 256x192 (30 pairs) 89 MB,
    8 views 128x96 (56 pairs) 48 MB, 12 views 128x96 (132 pairs) 90 MB, i.e. about 21-23 bytes
    per pair pixel plus 17-27 MB; the estimate is 28-45% above each (about 10% at large sizes,
    where the constant no longer matters).
    """
    hw = [(int(h), int(w)) for h, w in image_hw]
    pairs = check_pairs(pairs, len(hw))
    pair_px = sum(hw[i][0] * hw[i][1] + hw[j][0] * hw[j][1] for i, j in pairs)
    view_px = sum(h * w for h, w in hw)
    return int(_ALIGN_PAIR_PIXEL * pair_px + 32 * view_px + _ALIGN_CONSTANT)


def check_alignment_memory(
    image_hw: Sequence[Shape],
    pairs: Sequence[tuple[int, int]],
    *,
    device: torch.device | str,
    scene_graph: str,
    inference: MemoryEstimate | None = None,
    memory_fraction: float = 0.9,
    available: int | None = None,
) -> int:
    """Raise :class:`InsufficientMemoryError` when the global alignment after inference will not
    fit: it needs the pair outputs (float32, on the alignment's device) plus
    :func:`estimate_alignment_bytes`, while the network stays loaded. ``inference``: the run's
    inference estimate (for the outputs' size; default computed from the sizes). Returns the
    bytes needed; unknown free memory -> no check."""
    device = torch.device(device)
    hw = [(int(h), int(w)) for h, w in image_hw]
    pairs = check_pairs(pairs, len(hw))
    outputs = inference.bytes_outputs if inference is not None else sum(
        (hw[i][0] * hw[i][1] + hw[j][0] * hw[j][1]) * 4 * _FP32 for i, j in pairs
    )  # fmt: skip
    work = estimate_alignment_bytes(hw, pairs)
    needed = outputs + work
    free = available if available is not None else available_memory(device)
    if free is None:
        return needed
    allowed = free * memory_fraction
    if needed > allowed:
        raise InsufficientMemoryError(
            f"not enough memory for the global alignment: after pair inference it needs about "
            f"{needed / _GB:.1f} GB on {device} (pair outputs {outputs / _GB:.1f} GB + alignment "
            f"{work / _GB:.1f} GB), but only {allowed / _GB:.1f} GB may be used ({memory_fraction:.0%} of "
            f"{free / _GB:.1f} GB free). {len(pairs)} pairs for {len(hw)} images with scene graph "
            f"'{scene_graph}': use a sparser scene graph such as 'swin-3' or 'logwin-3', fewer images, or a "
            "smaller image size."
        )
    return needed
