"""Placeholder until the runtime module lands (device and precision policy)."""

from core.allocator import tune_cpu_allocator  # noqa: F401
from core.inference import enable_tf32  # noqa: F401
from model import resolve_device, select_autocast_dtype  # noqa: F401
