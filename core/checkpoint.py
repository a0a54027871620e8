"""Placeholder until the checkpoint module lands: hub probing (moved from the pipeline)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from config import OFFICIAL_CHECKPOINTS, ModelConfig


def _hub_repo_id(checkpoint: str) -> str | None:
    """The hub repo id a checkpoint string names, or None when it names a local path."""
    text = checkpoint.strip()
    if text in OFFICIAL_CHECKPOINTS:
        return OFFICIAL_CHECKPOINTS[text]
    if Path(text).expanduser().exists():
        return None
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.endswith((".pth", ".pt", ".safetensors")):
        return text
    return None


def _hub_cache_dir(cache_dir: str | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir) if cache_dir is not None else str(constants.HF_HUB_CACHE)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def weights_availability(model_cfg: ModelConfig) -> str | None:
    """None when ``model_cfg.checkpoint`` can be loaded without the network, else why not.

    Looks at the file system and the Hugging Face cache only (never downloads).
    """
    text = model_cfg.checkpoint.strip()
    path = Path(text).expanduser()
    how = (
        "Provide them with --checkpoint /path/to/folder (config.json + model.safetensors), "
        "--checkpoint /path/to/model.safetensors or an original .pth file"
    )
    if path.exists():
        return None
    repo_id = _hub_repo_id(text)
    if repo_id is None:
        return f"DUSt3R checkpoint {text!r} not found. {how}."
    from huggingface_hub import try_to_load_from_cache

    cache = _hub_cache_dir(model_cfg.cache_dir)
    cached = [
        try_to_load_from_cache(repo_id, name, cache_dir=model_cfg.cache_dir)
        for name in ("config.json", "model.safetensors")
    ]
    if all(isinstance(c, str) and Path(c).is_file() for c in cached):
        return None
    if _hub_offline():
        return (
            f"DUSt3R weights ({repo_id}) are not in the Hugging Face cache ({cache}) and the hub is "
            f"offline (HF_HUB_OFFLINE). {how}, or go online once so they download (about 2.3 GB)."
        )
    return (
        f"DUSt3R weights ({repo_id}) are not downloaded yet (about 2.3 GB, into {cache}); they "
        f"download on the first DUSt3R run. {how}."
    )
