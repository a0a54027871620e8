"""The network's architecture: :class:`ModelArch`, the keys of an official ``config.json``.

One frozen dataclass describes every network this app can build: its fields are the keyword
arguments of Naver's model class as an official ``config.json`` stores them (FORMAT.md section 1;
a ``.pth`` holds the same as a constructor string, :func:`core.checkpoint.parse_constructor_string`).
``__post_init__`` rejects what this implementation cannot run, naming the value.
:data:`OFFICIAL_CONFIGS` holds the architectures of Naver's official checkpoints.

Pure data (no torch): ``core/checkpoint.py`` returns it, ``model.py`` builds the network from it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelArch", "OFFICIAL_CONFIGS"]

_INF = float("inf")
_HEAD_TYPES = ("linear", "dpt", "catmlp+dpt")
_MAST3R_HEAD = "catmlp+dpt"
_DESC_MODE_RE = re.compile(r"pts3d\+desc(\d+)")
_DEPTH_MODES = ("exp", "square", "linear")
_CONF_MODES = ("exp", "sigmoid")
_FREEZE = ("none", "mask", "encoder")
#: Largest accepted sizes (official: widths 1024/768, depths 24/12, heads 16/12, patch 16, mlp_ratio 4).
_MAX = {"dim": 16384, "depth": 256, "heads": 1024, "size": 256, "mlp_ratio": 64.0, "img_size": 8192}
#: Field metadata of the keys an official config.json leaves out (written only when not at the default).
_OPTIONAL = {"config_json": "optional"}


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ValueError(f"{name} must be a list or tuple, got {value!r}")


@dataclass(frozen=True)
class ModelArch:
    """The network's architecture: the keyword arguments of Naver's ``AsymmetricCroCo3DStereo``
    (DUSt3R) or ``AsymmetricMASt3R`` (MASt3R: ``head_type="catmlp+dpt"``).

    The fields are the keys of an official ``config.json`` (FORMAT.md section 1; the hub files
    store them, a ``.pth`` holds them as a constructor string), plus optional keys the official
    files leave out (marked ``_OPTIONAL``: ``patch_size`` and ``mlp_ratio``, constructor arguments
    at their defaults, and the DPT widths ``dpt_*``, fixed in the reference and changed only by
    the tiny test fixtures); :meth:`to_config` writes those only when they differ from the default.
    Defaults are the reference constructor's, except ``landscape_only`` (must be False here).
    Lists are stored as tuples and ``img_size`` as (H, W), so an instance is hashable.
    Raises ValueError for anything this implementation cannot run, naming the value.
    """

    pos_embed: str = "RoPE100"
    """Position embedding: ``RoPE<base>`` (2-D rotary, official base 100); nothing else is supported."""
    patch_embed_cls: str = "PatchEmbedDust3R"
    """``PatchEmbedDust3R`` (the loader maps the training-time ``ManyAR_PatchEmbed`` to it)."""
    img_size: tuple[int, int] = (224, 224)
    """Training size (H, W), multiples of patch_size (an int means square); unused at inference."""
    patch_size: int = field(default=16, metadata=_OPTIONAL)
    """Pixels per token side."""
    head_type: str = "linear"
    """``linear`` or ``dpt`` (DUSt3R), ``catmlp+dpt`` (MASt3R: DPT plus a local-feature MLP)."""
    output_mode: str = "pts3d"
    """``pts3d`` (points and confidence; DUSt3R) or ``pts3d+desc<D>`` (MASt3R, D-channel descriptors)."""
    depth_mode: tuple = ("exp", -_INF, _INF)
    """``(mode, -inf, inf)``, mode ``exp`` (official), ``square`` or ``linear``."""
    conf_mode: tuple = ("exp", 1, _INF)
    """``(mode, vmin, vmax)``, mode ``exp`` (official, vmin 1) or ``sigmoid``."""
    enc_embed_dim: int = 768
    """Encoder width (official 1024)."""
    enc_depth: int = 12
    """Encoder blocks (official 24)."""
    enc_num_heads: int = 12
    """Encoder attention heads (official 16); head dim must be a multiple of 4 (2-D RoPE)."""
    dec_embed_dim: int = 512
    """Decoder width (official 768)."""
    dec_depth: int = 8
    """Decoder blocks per view (official 12; the DPT head needs 10 or more)."""
    dec_num_heads: int = 16
    """Decoder attention heads (official 12); head dim must be a multiple of 4."""
    mlp_ratio: float = field(default=4.0, metadata=_OPTIONAL)
    """MLP hidden width / block width."""
    landscape_only: bool = False
    """Must be False: portrait images are encoded as they are (the loader forces it for a .pth)."""
    freeze: str = "none"
    """Training-only (``none``, ``mask`` or ``encoder``); accepted and ignored."""
    dpt_feature_dim: int = field(default=256, metadata=_OPTIONAL)
    """DPT fusion width (even)."""
    dpt_last_dim: int = field(default=128, metadata=_OPTIONAL)
    """DPT last convolution width."""
    dpt_layer_dims: tuple[int, int, int, int] = field(default=(96, 192, 384, 768), metadata=_OPTIONAL)
    """DPT widths of the four hooked layers' maps."""
    desc_mode: str = field(default="norm", metadata=_OPTIONAL)
    """MASt3R: descriptor normalisation; ``norm`` (L2) is the only mode."""
    two_confs: bool = field(default=False, metadata=_OPTIONAL)
    """MASt3R: the descriptors get their own confidence channel (official True); else a copy of ``conf``."""
    desc_conf_mode: tuple | None = field(default=None, metadata=_OPTIONAL)
    """MASt3R: ``(mode, vmin, vmax)`` of the descriptor confidence (official ``("exp", 0, inf)``);
    None = ``conf_mode``."""

    def __post_init__(self) -> None:
        size = self.img_size
        size = (size, size) if isinstance(size, int) and not isinstance(size, bool) else _as_tuple(size, "img_size")
        object.__setattr__(self, "img_size", size)
        for name in ("depth_mode", "conf_mode", "dpt_layer_dims"):
            object.__setattr__(self, name, _as_tuple(getattr(self, name), name))
        if self.desc_conf_mode is not None:
            object.__setattr__(self, "desc_conf_mode", _as_tuple(self.desc_conf_mode, "desc_conf_mode"))
        self._check_embedding()
        self._check_modes()
        self._check_widths()
        if self.head_type in ("dpt", _MAST3R_HEAD):
            self._check_dpt()
        self._check_descriptors()

    def _check_embedding(self) -> None:
        if not re.fullmatch(r"RoPE(\d+(?:\.\d*)?)", str(self.pos_embed)):
            raise ValueError(f"pos_embed {self.pos_embed!r} is not supported: only 2-D RoPE ('RoPE100') models")
        if self.patch_embed_cls == "ManyAR_PatchEmbed":
            raise ValueError(
                "patch_embed_cls 'ManyAR_PatchEmbed' is the training-time patch embedding "
                "(it transposes portrait images); use 'PatchEmbedDust3R' for inference"
            )
        if self.patch_embed_cls != "PatchEmbedDust3R":
            raise ValueError(f"patch_embed_cls must be 'PatchEmbedDust3R', got {self.patch_embed_cls!r}")
        if self.landscape_only:
            raise ValueError(
                "landscape_only=True is not supported: official checkpoints use False "
                "(portrait images encoded as they are); pass landscape_only=False"
            )
        if self.freeze not in _FREEZE:
            raise ValueError(f"freeze must be 'none', 'mask' or 'encoder', got {self.freeze!r}")
        p = self.patch_size
        if not isinstance(p, int) or isinstance(p, bool) or p < 1:
            raise ValueError(f"patch_size must be a positive int, got {p!r}")
        if len(self.img_size) != 2 or any(not isinstance(s, int) or s <= 0 or s % p for s in self.img_size):
            raise ValueError(f"img_size must be an int or (H, W) of positive multiples of {p}, got {self.img_size!r}")

    def _check_modes(self) -> None:
        if self.head_type not in _HEAD_TYPES:
            raise ValueError(f"head_type must be one of {_HEAD_TYPES}, got {self.head_type!r}")
        if self.head_type != _MAST3R_HEAD and self.output_mode != "pts3d":
            raise ValueError(f"output_mode must be 'pts3d' for the {self.head_type} head, got {self.output_mode!r}")
        d = self.depth_mode
        if len(d) != 3 or d[0] not in _DEPTH_MODES or d[1] != -_INF or d[2] != _INF:
            raise ValueError(f"depth_mode must be ('exp'|'square'|'linear', -inf, inf), got {d!r}")
        _check_conf_mode(self.conf_mode, "conf_mode")

    def _check_bounds(self) -> None:
        """Every size positive and below :data:`_MAX` (an absurd config fails here, before anything
        is built or allocated)."""
        sizes = {
            "enc_embed_dim": self.enc_embed_dim, "enc_depth": self.enc_depth, "enc_num_heads": self.enc_num_heads,
            "dec_embed_dim": self.dec_embed_dim, "dec_depth": self.dec_depth, "dec_num_heads": self.dec_num_heads,
            "patch_size": self.patch_size, "dpt_feature_dim": self.dpt_feature_dim, "dpt_last_dim": self.dpt_last_dim,
        }  # fmt: skip
        for name, value in sizes.items():
            limit = _MAX.get(name.rsplit("_", 1)[1], _MAX["dim"])
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
                raise ValueError(f"{name} must be an int in [1, {limit}], got {value!r}")
        if not isinstance(self.mlp_ratio, (int, float)) or not 0 < self.mlp_ratio <= _MAX["mlp_ratio"]:
            raise ValueError(f"mlp_ratio must be in (0, {_MAX['mlp_ratio']}], got {self.mlp_ratio!r}")
        if any(not isinstance(s, int) or s > _MAX["img_size"] for s in self.img_size):
            raise ValueError(f"img_size must be at most {_MAX['img_size']} pixels per side, got {self.img_size!r}")

    @property
    def min_parameters(self) -> int:
        """A lower bound of the network's parameter count (the encoder's and both decoders'
        attention and MLP weights), to reject a config that does not fit the file's tensors
        before the network is built."""
        r = float(self.mlp_ratio)
        enc = self.enc_depth * (4 + 2 * r) * self.enc_embed_dim**2
        dec = 2 * self.dec_depth * (8 + 2 * r) * self.dec_embed_dim**2
        return int(enc + dec)

    def _check_widths(self) -> None:
        self._check_bounds()
        for name, dim, heads in (
            ("enc", self.enc_embed_dim, self.enc_num_heads),
            ("dec", self.dec_embed_dim, self.dec_num_heads),
        ):
            if heads < 1 or dim % heads or (dim // heads) % 4:
                raise ValueError(
                    f"{name}_embed_dim / {name}_num_heads must give a head dim divisible by 4 "
                    f"(RoPE 2-D), got {dim} / {heads}"
                )
        if self.enc_depth < 1 or self.dec_depth < 1:
            raise ValueError(f"enc_depth and dec_depth must be >= 1, got {self.enc_depth}, {self.dec_depth}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")

    def _check_dpt(self) -> None:
        if self.dec_depth < 10:
            raise ValueError(f"the DPT head needs dec_depth >= 10 (as the reference), got {self.dec_depth}")
        dims = self.dpt_layer_dims
        if len(dims) != 4 or any(not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"dpt_layer_dims must be 4 positive ints, got {dims!r}")
        if self.dpt_feature_dim < 2 or self.dpt_feature_dim % 2 or self.dpt_last_dim < 1:
            raise ValueError(
                f"dpt_feature_dim must be even >= 2 and dpt_last_dim >= 1, got {self.dpt_feature_dim}, "
                f"{self.dpt_last_dim}"
            )

    def _check_descriptors(self) -> None:
        if self.head_type != _MAST3R_HEAD:
            if self.two_confs or self.desc_conf_mode is not None or self.desc_mode != "norm":
                raise ValueError(
                    f"two_confs, desc_conf_mode and desc_mode belong to MASt3R (head_type {_MAST3R_HEAD!r}), "
                    f"got head_type {self.head_type!r}"
                )
            return
        match = _DESC_MODE_RE.fullmatch(str(self.output_mode))
        if not match or int(match.group(1)) < 1:
            raise ValueError(
                f"output_mode must be 'pts3d+desc<D>' (D >= 1) for the {_MAST3R_HEAD} head, got {self.output_mode!r}"
            )
        if self.desc_mode != "norm":
            raise ValueError(f"desc_mode must be 'norm', got {self.desc_mode!r}")
        if not isinstance(self.two_confs, bool):
            raise ValueError(f"two_confs must be true or false, got {self.two_confs!r}")
        if self.desc_conf_mode is not None:
            _check_conf_mode(self.desc_conf_mode, "desc_conf_mode")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelArch:
        """From a config mapping (a parsed ``config.json`` or constructor string); unknown keys -> ValueError."""
        if not isinstance(config, Mapping):
            raise ValueError(f"model config must be a mapping, got {type(config).__name__}")
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(config) - set(accepted))
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; accepted keys: {sorted(accepted)}")
        return cls(**config)

    def to_config(self) -> dict[str, Any]:
        """The keys of a ``config.json`` for this architecture (tuples as lists); the optional keys
        only when they differ from their defaults, so an official architecture gives exactly the
        official file's keys."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("config_json") != "optional" or value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def rope_base(self) -> float:
        """The RoPE base frequency from ``pos_embed`` (``RoPE100`` -> 100.0)."""
        return float(self.pos_embed[len("RoPE") :])

    @property
    def desc_dim(self) -> int:
        """Descriptor channels per pixel (MASt3R: the D of ``pts3d+desc<D>``, official 24); 0 for DUSt3R."""
        match = _DESC_MODE_RE.fullmatch(self.output_mode)
        return int(match.group(1)) if match else 0

    @property
    def metric(self) -> bool:
        """Whether the predicted points are in metres (True for MASt3R, False for DUSt3R).

        Neither config.json nor the .pth constructor string has a flag for it. The rule: the
        MASt3R architecture (``catmlp+dpt``) is metric, because Naver's only released MASt3R
        weights (``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric``) were trained on metric-scale
        data; every DUSt3R checkpoint predicts up to an unknown scale.
        """
        return self.head_type == _MAST3R_HEAD


def _check_conf_mode(mode: tuple, name: str) -> None:
    if len(mode) != 3 or mode[0] not in _CONF_MODES or not all(isinstance(v, (int, float)) for v in mode[1:]):
        raise ValueError(f"{name} must be ('exp'|'sigmoid', vmin, vmax), got {mode!r}")


_OFFICIAL_COMMON = ModelArch(
    enc_embed_dim=1024,
    enc_depth=24,
    enc_num_heads=16,
    dec_embed_dim=768,
    dec_depth=12,
    dec_num_heads=12,
    img_size=(512, 512),
)
#: The architectures of Naver's official checkpoints (their config.json, FORMAT.md section 1;
#: MASt3R: ``AsymmetricMASt3R`` with the DPT head plus local features), by short name.
OFFICIAL_CONFIGS: dict[str, ModelArch] = {
    "DUSt3R_ViTLarge_BaseDecoder_512_dpt": dataclasses.replace(_OFFICIAL_COMMON, head_type="dpt"),
    "DUSt3R_ViTLarge_BaseDecoder_512_linear": dataclasses.replace(_OFFICIAL_COMMON, head_type="linear"),
    "DUSt3R_ViTLarge_BaseDecoder_224_linear": dataclasses.replace(
        _OFFICIAL_COMMON, img_size=(224, 224), head_type="linear"
    ),
    "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric": dataclasses.replace(
        _OFFICIAL_COMMON,
        head_type=_MAST3R_HEAD,
        output_mode="pts3d+desc24",
        two_confs=True,
        desc_conf_mode=("exp", 0, _INF),
    ),
}
