"""Reading checkpoint files: where the weights are, what architecture they name, and the tensors.

:func:`read_checkpoint` turns a checkpoint source into a :class:`CheckpointFile` (the architecture
as a :class:`core.arch.ModelArch`, the state dict, the safetensors alias map); ``model.py`` builds
the network from the architecture and loads the tensors strictly, with :func:`remap_checkpoint_keys`
and :func:`check_state_dict` from here. This module never imports ``model.py``.

Sources (FORMAT.md section 2):

- an official short name (``DUSt3R_ViTLarge_BaseDecoder_512_dpt``, ...,
  ``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric``: ``config.OFFICIAL_CHECKPOINTS``)
  or a Hugging Face hub repo id ``owner/name``: ``config.json`` + ``model.safetensors`` downloaded
  with huggingface_hub's cache (this module is the only place in ``core`` that downloads);
- a local folder with ``config.json`` + ``model.safetensors`` (the hub layout) or a single ``.pth``;
- a ``.safetensors`` file with ``config.json`` beside it (memory-mapped, never copied);
- an original ``.pth``: ``{"model": state_dict, "args": Namespace(model="<constructor call>")}``
  (``AsymmetricCroCo3DStereo(...)`` or ``AsymmetricMASt3R(...)``),
  read with ``weights_only=True`` (only tensors and ``argparse.Namespace`` are unpickled) and its
  constructor string parsed with :func:`parse_constructor_string`, never evaluated.

:func:`weights_availability` answers, without downloading, whether a source loads offline.
Every failure is a :class:`core.errors.CheckpointError` whose message names the file or hub id.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pickle
import re
import socket
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from config import OFFICIAL_CHECKPOINTS, ModelConfig
from core.arch import ModelArch
from core.errors import CheckpointError

__all__ = [
    "CONSTRUCTOR_NAMES",
    "CheckpointFile",
    "read_checkpoint",
    "parse_constructor_string",
    "remap_checkpoint_keys",
    "check_state_dict",
    "hub_repo_id",
    "hub_reachable",
    "weights_availability",
]

#: Class names a ``.pth`` constructor string may call: Naver's DUSt3R and MASt3R model classes.
CONSTRUCTOR_NAMES: tuple[str, ...] = ("AsymmetricCroCo3DStereo", "AsymmetricMASt3R")
_MAST3R_CLASS, _MAST3R_HEAD = "AsymmetricMASt3R", "catmlp+dpt"

_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_HUB_FILES = ("config.json", "model.safetensors")
_HOW_TO_PROVIDE = (
    "Provide them with --checkpoint /path/to/folder (config.json + model.safetensors), "
    "--checkpoint /path/to/model.safetensors or an original .pth file"
)


@dataclass(frozen=True)
class CheckpointFile:
    """What a checkpoint holds, before any network exists."""

    source: str
    """The file, folder or hub id it was read from (for messages)."""
    arch: ModelArch
    """The architecture (from ``config.json`` or the constructor string)."""
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    """The tensors by state-dict name, on the CPU (safetensors: memory-mapped)."""
    aliases: dict[str, str] = field(default_factory=dict)
    """``{dropped_name: kept_name}`` from a safetensors file's metadata (tensors shared by two names)."""


# --------------------------------------------------------------------------------------------
# Constructor strings (.pth "args.model")
# --------------------------------------------------------------------------------------------


def _literal(node: ast.AST) -> Any:
    """Value of a literal AST node: numbers, strings, bools, None, tuples/lists, inf, -x."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(e) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def parse_constructor_string(text: str) -> dict[str, Any]:
    """Parse ``AsymmetricCroCo3DStereo(key=value, ...)`` or ``AsymmetricMASt3R(...)`` (a .pth
    ``args.model``) without eval.

    Values may be literals, tuples, lists and ``inf``/``-inf``. Returns the keyword arguments with
    ``ManyAR_PatchEmbed`` replaced by ``PatchEmbedDust3R`` and ``landscape_only`` forced to False,
    as the reference loader does. The class and the head must agree (MASt3R <=> ``catmlp+dpt``).
    Raises CheckpointError for anything else.
    """
    if not isinstance(text, str):
        raise CheckpointError(f"model constructor must be a string, got {type(text).__name__}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise CheckpointError(f"cannot parse model constructor string {text!r}: {e.msg}") from e
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id not in CONSTRUCTOR_NAMES:
        names = " or ".join(f"{n}(...)" for n in CONSTRUCTOR_NAMES)
        raise CheckpointError(f"model constructor string must be a call {names}, got {text!r}")
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise CheckpointError(f"model constructor string must use keyword arguments only, got {text!r}")
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        try:
            kwargs[kw.arg] = _literal(kw.value)
        except ValueError as e:
            raise CheckpointError(f"cannot parse argument {kw.arg!r} of the model constructor string: {e}") from e
    if (call.func.id == _MAST3R_CLASS) != (kwargs.get("head_type") == _MAST3R_HEAD):
        raise CheckpointError(
            f"model constructor string: {call.func.id} with head_type {kwargs.get('head_type')!r} "
            f"(MASt3R models use {_MAST3R_CLASS} with head_type {_MAST3R_HEAD!r}), got {text!r}"
        )
    if kwargs.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        kwargs["patch_embed_cls"] = "PatchEmbedDust3R"
    kwargs["landscape_only"] = False
    return kwargs


# --------------------------------------------------------------------------------------------
# Key fixes and the strict key/shape report
# --------------------------------------------------------------------------------------------


def remap_checkpoint_keys(
    state_dict: Mapping[str, torch.Tensor],
    alias_groups: Sequence[Sequence[str]] = (),
    aliases: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """All checkpoint key fixes in one place; returns a new dict (input untouched).

    1. ``aliases`` {dropped_name: kept_name} (safetensors metadata) restores dropped tensors.
    2. ``alias_groups``: names of the network that refer to one parameter (e.g. the DPT head's
       ``scratch.layer{k}_rn`` and ``scratch.layer_rn.{k-1}``); a name missing from the file is
       filled from a present one of its group.
    3. No ``dec_blocks2.*`` keys (CroCo pre-training checkpoints): ``dec_blocks.*`` duplicated, as the
       reference does.
    """
    out = dict(state_dict)
    for dropped, kept in (aliases or {}).items():
        if dropped not in out and kept in out:
            out[dropped] = out[kept]
    for names in alias_groups:
        present = [n for n in names if n in out]
        if present:
            for n in names:
                out.setdefault(n, out[present[0]])
    if not any(k.startswith("dec_blocks2.") for k in out):
        for k in list(out):
            if k.startswith("dec_blocks."):
                out["dec_blocks2." + k[len("dec_blocks.") :]] = out[k]
    return out


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    names = sorted(names)
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_state_dict(
    expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Strict match of checkpoint tensors against the network's state dict (names and shapes).

    expected: the network's ``state_dict(keep_vars=True)`` (a meta-device network is fine).
    Returns the tensors as float32 (a new dict). Raises CheckpointError naming the missing and
    unexpected keys, non-float entries and tensors of the wrong shape.
    """
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected)}")
        raise CheckpointError(
            f"checkpoint {source} does not match the network built from its config ({'; '.join(parts)})"
        )
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor) or not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"checkpoint {source} has non-float entries: {_short_list(bad)}")
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} (network {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(f"checkpoint {source} has tensors of the wrong shape: {_short_list(wrong, 5)}")
    return {k: (v if v.dtype == torch.float32 else v.float()) for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------------------------


def _read_config_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"config file not found: {path} (a model.safetensors needs its config.json beside it)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))  # accepts the bare Infinity tokens
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read model config {path}: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"model config {path} must be a JSON object, got {type(config).__name__}")
    return config


def _arch(config: Mapping[str, Any], source: str) -> ModelArch:
    try:
        return ModelArch.from_config(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid model config for {source}: {e}") from e


def _check_fits(arch: ModelArch, state_dict: Mapping[str, Any], source: str) -> None:
    """A config that needs more parameters than the file holds is not this file's: rejected
    before the network is built."""
    held = sum(int(t.numel()) for t in state_dict.values() if isinstance(t, torch.Tensor))
    if arch.min_parameters > held:
        raise CheckpointError(
            f"{source}: its config describes a network of at least {arch.min_parameters:,} parameters, but the "
            f"file holds {held:,} values; the config does not belong to these weights"
        )


def _read_safetensors(weights: Path, config_path: Path, source: str | None = None) -> CheckpointFile:
    from safetensors import SafetensorError, safe_open

    arch = _arch(_read_config_json(config_path), str(config_path))
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            aliases = dict(f.metadata() or {})
            state_dict = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {weights}: corrupt, truncated or not a safetensors file ({e})") from e
    _check_fits(arch, state_dict, source or str(weights))
    return CheckpointFile(source or str(weights), arch, state_dict, aliases)


def _read_pth(path: Path) -> CheckpointFile:
    try:
        use_mmap = zipfile.is_zipfile(path)
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        found = sorted(set(_GLOBAL_RE.findall(str(e))))
        what = f" ({', '.join(found)})" if found else ""
        raise CheckpointError(
            f"{path} contains pickled objects other than tensors and argparse.Namespace"
            f"{what}; refusing to load it (no arbitrary code from checkpoints)"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read {path}: corrupt, truncated or not a PyTorch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a DUSt3R checkpoint: expected a dict with 'model' and 'args', got {keys}")
    constructor = getattr(ckpt.get("args"), "model", None)
    if constructor is None:
        raise CheckpointError(f"{path} has no 'args.model' constructor string; cannot tell the architecture")
    arch = _arch(parse_constructor_string(constructor), str(path))
    _check_fits(arch, ckpt["model"], str(path))
    return CheckpointFile(str(path), arch, ckpt["model"])


def _read_folder(path: Path) -> CheckpointFile:
    weights = path / "model.safetensors"
    if weights.is_file():
        return _read_safetensors(weights, path / "config.json")
    pths = sorted(path.glob("*.pth"))
    if len(pths) == 1:
        return _read_pth(pths[0])
    raise CheckpointError(
        f"folder {path} has no model.safetensors (expected config.json + model.safetensors, as on the hub, "
        f"or a single .pth file)"
    )


def _read_file(path: Path) -> CheckpointFile:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path, path.with_name("config.json"))
    if suffix in (".pth", ".pt"):
        return _read_pth(path)
    raise CheckpointError(
        f"unsupported checkpoint file {path}: expected a .safetensors (with config.json "
        f"beside it) or an original .pth file, a folder, or a hub repo id"
    )


# --------------------------------------------------------------------------------------------
# Hugging Face hub
# --------------------------------------------------------------------------------------------


def hub_repo_id(checkpoint: str) -> str | None:
    """The hub repo id a checkpoint string names, or None when it names a local path (or nothing).

    Official short names map to their repo ids; ``owner/name`` (not ending in a weights suffix,
    not an existing path) is taken as a repo id.
    """
    text = checkpoint.strip()
    if text in OFFICIAL_CHECKPOINTS:
        return OFFICIAL_CHECKPOINTS[text]
    if not text or Path(text).expanduser().exists():
        return None
    if _HUB_ID_RE.fullmatch(text) and not text.endswith(_WEIGHT_SUFFIXES):
        return text
    return None


def _hub_cache_dir(cache_dir: str | Path | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir) if cache_dir is not None else str(constants.HF_HUB_CACHE)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout_s: float = 1.5) -> bool:
    """Whether the Hugging Face hub can be reached right now: False when ``HF_HUB_OFFLINE`` is set or
    a TCP connection to the hub endpoint fails within ``timeout_s`` (name lookup included); True
    when a proxy is configured (the direct probe cannot tell). Sends no request, downloads nothing.
    """
    if _hub_offline():
        return False
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                ok.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)  # a name lookup may hang
    thread.start()
    thread.join(timeout_s)
    return ok.is_set()


def _unreachable_message(repo_id: str, cache_dir: str | Path | None) -> str:
    return (
        f"{_family(repo_id)} weights ({repo_id}) are not in the Hugging Face cache ({_hub_cache_dir(cache_dir)}) "
        f"and cannot be downloaded here: the hub is unreachable (offline or no network). On a machine with "
        f"network, download config.json and model.safetensors ({_download_size(repo_id)}) from "
        f"https://huggingface.co/{repo_id}, then {_HOW_TO_PROVIDE[0].lower()}{_HOW_TO_PROVIDE[1:]}"
    )


def _family(repo_id: str) -> str:
    return "MASt3R" if "mast3r" in repo_id.lower() else "DUSt3R"


def _download_size(repo_id: str) -> str:
    """The official files' size, for messages (MASt3R 688.6 M parameters, DUSt3R 512 DPT 571.2 M)."""
    return "about 2.8 GB" if _family(repo_id) == "MASt3R" else "about 2.3 GB"


def _hub_files(repo_id: str, cache_dir: str | Path | None) -> tuple[Path, Path]:
    """Download (or find in the cache) config.json and model.safetensors of a hub repo."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        cached = [try_to_load_from_cache(repo_id, name, cache_dir=cache_dir) for name in _HUB_FILES]
    except HFValidationError as e:
        raise CheckpointError(f"{repo_id!r} is not a valid hub repo id: {e}") from e
    if not all(isinstance(c, str) and Path(c).is_file() for c in cached) and not _hub_offline() and not hub_reachable():
        raise CheckpointError(_unreachable_message(repo_id, cache_dir))  # at once, not after the hub's retries
    paths = []
    for filename in _HUB_FILES:
        try:
            paths.append(Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir)))
        except LocalEntryNotFoundError as e:
            raise CheckpointError(
                f"checkpoint {repo_id!r} is not in the Hugging Face cache ({_hub_cache_dir(cache_dir)}) and the hub "
                f"cannot be reached (offline, HF_HUB_OFFLINE=1, or no network). Either connect once so it downloads "
                f"({_download_size(repo_id)}), or download config.json and model.safetensors "
                f"from https://huggingface.co/{repo_id} and pass the folder or file, e.g. "
                f"--checkpoint /path/to/folder or --checkpoint /path/to/model.safetensors "
                f"(an original .pth file also works)"
            ) from e
        except GatedRepoError as e:
            raise CheckpointError(
                f"hub repo {repo_id!r} is gated: accept its terms on huggingface.co and log in "
                f"(hf auth login), or pass a local file with --checkpoint"
            ) from e
        except RepositoryNotFoundError as e:
            raise CheckpointError(
                f"hub repo {repo_id!r} does not exist (or is private); official names: {sorted(OFFICIAL_CHECKPOINTS)}"
            ) from e
        except RevisionNotFoundError as e:
            raise CheckpointError(f"hub repo {repo_id!r} has no such revision: {e}") from e
        except EntryNotFoundError as e:
            raise CheckpointError(
                f"hub repo {repo_id!r} has no {filename}: it is not a DUSt3R checkpoint in the Hugging Face format"
            ) from e
        except HFValidationError as e:
            raise CheckpointError(f"{repo_id!r} is not a valid hub repo id: {e}") from e
        except HfHubHTTPError as e:
            raise CheckpointError(f"downloading {filename} of {repo_id!r} failed: {e}") from e
    return paths[0], paths[1]


def read_checkpoint(source: str | Path, *, cache_dir: str | Path | None = None) -> CheckpointFile:
    """Find and read a checkpoint (sources: module docstring); downloads hub checkpoints once.

    ``cache_dir`` overrides huggingface_hub's cache folder. Raises CheckpointError.
    """
    text = str(source).strip()
    if not text:
        raise CheckpointError("checkpoint source is empty")
    path = Path(text).expanduser()
    if path.is_dir():
        return _read_folder(path)
    if path.is_file():
        return _read_file(path)
    repo_id = hub_repo_id(text)
    if repo_id is None:
        raise CheckpointError(
            f"checkpoint not found: {text!r} is neither an existing file or folder, an official "
            f"name ({', '.join(sorted(OFFICIAL_CHECKPOINTS))}) nor a hub repo id 'owner/name'"
        )
    config_path, weights = _hub_files(repo_id, cache_dir)
    return _read_safetensors(weights, config_path, source=repo_id)


def weights_availability(model_cfg: ModelConfig) -> str | None:
    """None when ``model_cfg.checkpoint`` can be loaded without the network, else why not.

    Looks at the file system and the Hugging Face cache (never downloads); when the weights are
    not cached, :func:`hub_reachable` tells "they download on the first run" from "they cannot
    be downloaded here".
    """
    text = model_cfg.checkpoint.strip()
    if Path(text).expanduser().exists():
        return None
    repo_id = hub_repo_id(text)
    if repo_id is None:
        return f"{_family(text)} checkpoint {text!r} not found. {_HOW_TO_PROVIDE}."
    from huggingface_hub import try_to_load_from_cache

    cache = _hub_cache_dir(model_cfg.cache_dir)
    cached = [try_to_load_from_cache(repo_id, name, cache_dir=model_cfg.cache_dir) for name in _HUB_FILES]
    if all(isinstance(c, str) and Path(c).is_file() for c in cached):
        return None
    family, size = _family(repo_id), _download_size(repo_id)
    if _hub_offline():
        return (
            f"{family} weights ({repo_id}) are not in the Hugging Face cache ({cache}) and the hub is "
            f"offline (HF_HUB_OFFLINE). {_HOW_TO_PROVIDE}, or go online once so they download ({size})."
        )
    if not hub_reachable():
        return _unreachable_message(repo_id, model_cfg.cache_dir) + "."
    return (
        f"{family} weights ({repo_id}) are not downloaded yet ({size}, into {cache}); they "
        f"download on the first DUSt3R run. {_HOW_TO_PROVIDE}."
    )
