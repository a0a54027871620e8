"""Shared fixtures: paths to the reference test vectors copied into tests/fixtures/."""

from __future__ import annotations

import sys
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
