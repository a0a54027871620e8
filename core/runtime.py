"""Device and precision policy: which device, which autocast dtype, TF32, CPU allocator tuning.

Only the entry points call this module (``main.py`` at start-up, the pipeline's DUSt3R engine
per run); the network (``model.py``) and the library (``core/*``) take the device and the
autocast dtype as arguments and never decide them.

- :func:`resolve_device`: ``"auto"``/``"cpu"``/``"cuda[:N]"``/``"mps"`` -> ``torch.device``.
- :func:`select_autocast_dtype`: the encoder/decoder autocast dtype for a device and a
  ``--precision`` choice (bf16 on GPUs of compute capability 8+, else fp16; bf16 on CPUs with
  native bf16 instructions; None = plain float32). Heads always run in float32.
- :func:`enable_tf32`: TF32 matmuls/convolutions on CUDA, process-wide, like the reference.
- :func:`tune_cpu_allocator`: keep freed memory for reuse instead of handing it back to the OS.

CPU allocator tuning, in detail. PyTorch's CPU tensors come from ``malloc``. glibc serves every
block above its mmap threshold (at most 32 MB; the DPT heads' full-resolution maps are 50-100 MB
at 512x384) with a fresh ``mmap`` and unmaps it on free, and trims freed heap memory back to the
OS. Each large tensor then pays a page fault and a zeroing for every 4 KB page it touches.
Measured on a 2-core CPU, 3 images at 512x384 in fp32: about 1,000,000 page faults per inference
run without the tuning, about 4,000 with it (from the second run on; ~150,000 in the first), and
a run 5-10% faster (``bench/bench_inference.py --no-allocator-tuning`` compares whole runs).
:func:`tune_cpu_allocator` sets, with glibc's ``mallopt``:

- ``M_MMAP_MAX = 0``: large blocks come from the heap, where freed memory is reused;
- ``M_TRIM_THRESHOLD`` = 2 GB: freed memory at the top of the heap stays mapped;
- ``M_ARENA_MAX = 1``: threads started afterwards (the web app's job threads) use the main heap,
  where the two settings above apply in full (a thread heap is at most 64 MB and blocks larger
  than that are still mapped one by one).

The cost: the process keeps its peak resident memory after a run instead of shrinking. It is a
process-wide setting, applied once (later calls are no-ops); on other C libraries or systems it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import re
import sys
import warnings
from pathlib import Path

import torch

__all__ = ["resolve_device", "select_autocast_dtype", "enable_tf32", "tune_cpu_allocator"]

logger = logging.getLogger(__name__)

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD_BYTES = 2**31 - 1  # the largest value mallopt's int takes (~2 GB)


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.

    Raises ValueError for unknown names and for accelerators that are not available, TypeError
    for anything but a str or torch.device.
    """
    if isinstance(name, torch.device):
        text = str(name)
    elif isinstance(name, str):
        text = name.strip().lower()
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(name).__name__}: {name!r}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} requested but MPS is not available; use 'cpu' or 'auto'")
        return torch.device("mps")
    raise ValueError(f"unknown device {name!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic instructions (x86 AVX512-BF16 / AMX-BF16, ARM BF16)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def select_autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for the encoder/decoder, or None for plain float32.

    precision: ``"auto"`` -> on CUDA bf16 if compute capability >= 8 else fp16; on CPU bf16 only
    when the CPU has native bf16 instructions, else None; on other devices None.
    ``"fp32"`` -> None. ``"bf16"`` / ``"fp16"`` -> that dtype (fp16 on CPU raises ValueError: CPU
    fp16 autocast is slow and poorly covered; use bf16 or fp32). Heads always run in float32.
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cpu" and not _cpu_has_native_bf16():
            warnings.warn(
                "bf16 requested on a CPU without native bf16 instructions: expect it to be slow", stacklevel=2
            )
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("precision 'fp16' is not supported on CPU; use 'bf16' or 'fp32'")
        return torch.float16
    # auto
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_native_bf16() else None
    return None


def enable_tf32() -> None:
    """Allow TF32 for float32 matmuls and convolutions on CUDA (Ampere and newer).

    Process-wide, like the reference (which sets it when croco is imported); ``main.py`` calls
    this once at start-up. No effect on CPU runs.
    """
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9 API
        matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:  # pragma: no cover - older torch
        matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@functools.lru_cache(maxsize=1)
def tune_cpu_allocator() -> bool:
    """Apply the allocator settings of the module docstring once per process.

    Returns True when glibc accepted all of them (later calls return the first answer).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.info("no mallopt in the C library; CPU allocator left as it is")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES), (_M_ARENA_MAX, 1))
    accepted = all(mallopt(param, value) == 1 for param, value in settings)
    logger.info("CPU allocator tuned (large blocks reused, freed memory kept): %s", accepted)
    return accepted
