"""A network wrapper that logs every encoder and decoder call to a file: how the Ray tests count,
across worker processes, that each image is encoded once and each pair decoded once.

Importable by Ray workers (the project root is on their path), pickled by reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import model as M
from config import ModelConfig


class CountingModel:
    """Delegates to the network; appends ``encode <b>`` / ``decode <B>`` lines to ``log_dir/<pid>.log``."""

    def __init__(self, net: Any, log_dir: Path) -> None:
        self._net = net
        self._log = Path(log_dir) / f"{os.getpid()}.log"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._net, name)

    def _note(self, what: str, n: int) -> None:
        with open(self._log, "a") as f:
            f.write(f"{what} {n}\n")

    def encode(self, img):
        self._note("encode", img.shape[0])
        return self._net.encode(img)

    def decode(self, f1, pos1, f2, pos2):
        self._note("decode", f1.shape[0])
        return self._net.decode(f1, pos1, f2, pos2)


def load_counting(log_dir: str, cfg: ModelConfig) -> CountingModel:
    """``functools.partial(load_counting, log_dir)`` is a picklable model loader for the Ray pool."""
    return CountingModel(M.load_model(cfg.checkpoint, device=cfg.device), Path(log_dir))


def read_counts(log_dir: Path) -> dict[str, int]:
    """Images encoded and pairs decoded, summed over every process that logged to ``log_dir``."""
    totals = {"encode": 0, "decode": 0}
    for log in Path(log_dir).glob("*.log"):
        for line in log.read_text().splitlines():
            what, n = line.split()
            totals[what] += int(n)
    return totals
