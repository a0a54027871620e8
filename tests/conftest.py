"""Shared fixtures: paths to the reference test vectors copied into tests/fixtures/."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import AlignmentConfig, AppConfig, InferenceConfig, JobConfig, ModelConfig, PreprocessConfig, UIConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def one_torch_thread() -> Iterator[None]:
    """Small tensors: one thread avoids OpenMP contention on a shared CPU; restored afterwards.
    A module makes it its fixture with ``pytest.fixture(autouse=True, name="_one_thread")(one_torch_thread)``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_config(
    out: Path, *, model: str = "tiny_linear", niter: int = 20, checkpoint: str | None = None, **ui: int
) -> AppConfig:
    """The one tiny-model config of the suite: a fixture network, 64 px inputs, fp32 on the CPU,
    jobs below ``out``; ``ui`` overrides UIConfig fields (``max_images=4``, ``port=...``)."""
    return AppConfig(
        model=ModelConfig(checkpoint=checkpoint or str(FIXTURES / model), device="cpu"),
        preprocess=PreprocessConfig(image_size=64),
        inference=InferenceConfig(precision="fp32"),
        alignment=AlignmentConfig(niter=niter),
        jobs=JobConfig(output_root=out),
        ui=UIConfig(**ui),
    )


#: The slowest test files, collected first so that ``-n 2 --dist loadfile`` (pyproject) starts them
#: early and the two processes finish together (longest first); everything else keeps its order.
SLOW_FILES = (
    "test_browser.py", "test_faults.py", "test_distributed.py", "test_cli.py", "test_ui_live.py", "test_mvs.py",
    "test_video.py", "test_ui.py", "test_faults_web.py",
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n 2``, pyproject) two test processes share the cores: one intra-op
    thread each (and for the processes they start) instead of two threads per process fighting
    over two cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: k for k, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: file order kept
