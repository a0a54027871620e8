"""Placeholder until the runtime module lands (device and precision policy)."""

import torch

from core.allocator import tune_cpu_allocator  # noqa: F401
from model import resolve_device, select_autocast_dtype  # noqa: F401


def enable_tf32() -> None:
    matmul = torch.backends.cuda.matmul
    matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
