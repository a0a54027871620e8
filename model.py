"""The DUSt3R network (our own implementation; MASt3R too) and how to load it.

Architecture (FORMAT.md sections 1, 2, 5): a ViT encoder with 2-D rotary position embedding
(RoPE, base 100) shared by both views, two transformer decoders with cross-attention that update
both token streams simultaneously, and one prediction head per view (linear + pixel shuffle, or
DPT: :mod:`core.heads`; blocks: :mod:`core.transformer`), built from a :class:`core.arch.ModelArch`
(the keys of an official ``config.json``). Module and parameter names reproduce Naver's state-dict
keys exactly, so the official checkpoints load unchanged and strictly.

Tensors: images are ``(B, 3, H, W)`` float in [-1, 1] with H and W multiples of the patch size
(16); tokens are ``(B, N, C)`` with N = (H/16)*(W/16) in row-major order; token positions are
``(B, N, 2)`` int64 ``(y, x)`` = (row, column) of the patch. Portrait and landscape images are
encoded as they are (the reference's ``landscape_only=False`` behaviour).

MASt3R (``AsymmetricMASt3R``, ``head_type="catmlp+dpt"``) is the same network with a head that
also predicts per-pixel descriptors (:class:`core.heads.MASt3RHead`), computed only when asked
for (``descriptors=True``); its points are metric (:attr:`core.arch.ModelArch.metric`).

Typical use::

    model = load_model("DUSt3R_ViTLarge_BaseDecoder_512_dpt", device="cuda")
    with torch.inference_mode():
        pred1, pred2 = model(img1, img2)   # pts3d (B,H,W,3) in view 1's camera frame, conf (B,H,W)

The inference engine uses the pieces: :meth:`DUSt3R.encode` once per image, then
:meth:`DUSt3R.decode` and :meth:`DUSt3R.head` per batch of pairs. Reading the checkpoint files
(formats, hub download, constructor strings) is :mod:`core.checkpoint`; choosing the device and
precision is :mod:`core.runtime`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from config import ModelConfig
from core import runtime
from core.arch import OFFICIAL_CONFIGS, ModelArch
from core.checkpoint import check_state_dict, parse_constructor_string, read_checkpoint, remap_checkpoint_keys
from core.errors import CheckpointError
from core.heads import DPTHead, LinearHead, MASt3RHead, dpt_hooks
from core.transformer import LN_EPS, DecoderBlock, EncoderBlock, PatchEmbed, rope_cos_sin

__all__ = [
    "ModelArch",
    "OFFICIAL_CONFIGS",
    "DUSt3R",
    "CheckpointError",
    "load_model",
    "get_model",
    "model_load_seconds",
    "clear_model_cache",
    "parse_constructor_string",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class DUSt3R(nn.Module):
    """DUSt3R (Naver's ``AsymmetricCroCo3DStereo``) or MASt3R (``AsymmetricMASt3R``) for inference,
    built from a :class:`ModelArch`.

    Submodules (registration order = the reference state-dict order): ``mask_token`` (stored,
    unused at inference), ``patch_embed``, ``enc_blocks``, ``enc_norm``, ``decoder_embed``,
    ``dec_blocks`` (view 1), ``dec_norm``, ``dec_blocks2`` (view 2), ``downstream_head1/2``.
    Use :meth:`from_config` for a config mapping (it names unknown keys). ``metric``: whether the
    points are in metres (MASt3R); ``desc_dim``: descriptor channels (0: no descriptor head).
    """

    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        if not isinstance(arch, ModelArch):
            raise TypeError(f"arch must be a ModelArch (or use DUSt3R.from_config), got {type(arch).__name__}")
        a = self.arch = arch
        self.config = arch.to_config()  # config.json keys (read by the inference memory estimate)
        self.head_type, self.patch_size = a.head_type, a.patch_size
        self.enc_embed_dim, self.dec_embed_dim = a.enc_embed_dim, a.dec_embed_dim
        self.enc_head_dim = a.enc_embed_dim // a.enc_num_heads
        self.dec_head_dim = a.dec_embed_dim // a.dec_num_heads
        self.metric, self.desc_dim = a.metric, a.desc_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, a.dec_embed_dim))
        self.patch_embed = PatchEmbed(a.patch_size, a.enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            [EncoderBlock(a.enc_embed_dim, a.enc_num_heads, a.mlp_ratio) for _ in range(a.enc_depth)]
        )
        self.enc_norm = nn.LayerNorm(a.enc_embed_dim, eps=LN_EPS)
        self.decoder_embed = nn.Linear(a.enc_embed_dim, a.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(a.dec_embed_dim, a.dec_num_heads, a.mlp_ratio) for _ in range(a.dec_depth)]
        )
        self.dec_norm = nn.LayerNorm(a.dec_embed_dim, eps=LN_EPS)
        self.dec_blocks2 = nn.ModuleList(
            [DecoderBlock(a.dec_embed_dim, a.dec_num_heads, a.mlp_ratio) for _ in range(a.dec_depth)]
        )
        self.downstream_head1 = _make_head(a)
        self.downstream_head2 = _make_head(a)

    @classmethod
    def from_config(cls, config: ModelArch | Mapping[str, Any]) -> DUSt3R:
        """Build from a :class:`ModelArch` or a config mapping (e.g. a parsed ``config.json``).

        Unknown keys and unsupported values raise ValueError naming them.
        """
        return cls(config if isinstance(config, ModelArch) else ModelArch.from_config(config))

    # ---- public pieces used by the inference engine --------------------------------------

    def _check_images(self, img: torch.Tensor, name: str) -> None:
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"{name} must be a (B, 3, H, W) tensor, got {shape}")
        h, w = img.shape[-2:]
        p = self.patch_size
        if h < p or w < p or h % p or w % p:
            raise ValueError(f"{name} height and width must be positive multiples of {p}, got {h}x{w}")

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode images.

        img: (B, 3, H, W) float in [-1, 1], H and W multiples of 16.
        Returns tokens (B, N, enc_dim) after ``enc_norm`` and positions (B, N, 2) int64 (y, x),
        N = (H/16)*(W/16) row-major.
        """
        self._check_images(img, "img")
        x, pos = self.patch_embed(img)
        rope = rope_cos_sin(pos, self.enc_head_dim, self.arch.rope_base)
        for blk in self.enc_blocks:
            x = blk(x, rope)
        return self.enc_norm(x), pos

    def decode(
        self, f1: torch.Tensor, pos1: torch.Tensor, f2: torch.Tensor, pos2: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run both decoders on B pairs.

        f1: (B, N1, enc_dim) view-1 encoder tokens (after enc_norm), pos1: (B, N1, 2) int64;
        f2, pos2 the same for view 2. Returns per view the list handed to the heads:
        [encoder tokens (B, N, enc_dim), decoder layer 1, ..., layer L (B, N, dec_dim); the last
        one after ``dec_norm``]. Both streams are updated from the previous layer's outputs.
        """
        if (
            f1.ndim != 3
            or f2.ndim != 3
            or f1.shape[0] != f2.shape[0]
            or f1.shape[-1] != self.enc_embed_dim
            or f2.shape[-1] != self.enc_embed_dim
        ):
            raise ValueError(
                f"decode expects (B, N, {self.enc_embed_dim}) tokens with equal B, "
                f"got {tuple(f1.shape)} and {tuple(f2.shape)}"
            )
        if pos1.shape != (*f1.shape[:2], 2) or pos2.shape != (*f2.shape[:2], 2):
            raise ValueError(
                f"positions must be (B, N, 2) matching the tokens, got {tuple(pos1.shape)} and {tuple(pos2.shape)}"
            )
        rope1 = rope_cos_sin(pos1, self.dec_head_dim, self.arch.rope_base)
        rope2 = rope_cos_sin(pos2, self.dec_head_dim, self.arch.rope_base)
        out1, out2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2, strict=True):
            x1, x2 = blk1(x1, x2, rope1, rope2), blk2(x2, x1, rope2, rope1)
            out1.append(x1)
            out2.append(x2)
        out1[-1] = self.dec_norm(out1[-1])
        out2[-1] = self.dec_norm(out2[-1])
        return out1, out2

    def _head_and_shape(
        self, which: int, n_tokens: int, true_shape: tuple[int, int]
    ) -> tuple[nn.Module, tuple[int, int]]:
        if which not in (1, 2):
            raise ValueError(f"which must be 1 or 2, got {which!r}")
        h, w = (int(v) for v in true_shape)
        p = self.patch_size
        if h % p or w % p or (h // p) * (w // p) != n_tokens:
            raise ValueError(f"true_shape {true_shape} does not match {n_tokens} tokens of {p}px patches")
        return (self.downstream_head1 if which == 1 else self.downstream_head2), (h, w)

    def head_view_features(
        self, which: int, enc_tokens: torch.Tensor, true_shape: tuple[int, int]
    ) -> torch.Tensor | None:
        """The part of head ``which`` that depends only on the view's own encoder tokens, or None.

        enc_tokens: (B, N, enc_dim) from :meth:`encode` (cast to float32 here). For the DPT head:
        its first hooked layer is the encoder output, and that branch up to the last fusion block
        (``refinenet1.resConfUnit1``) is the same in every pair the view is in, so it can be
        computed once per view: (B, dpt_feature_dim, H/4, W/4) float32. The linear head: None.
        Pass the result to :meth:`head` as ``view_features``.
        """
        head, shape = self._head_and_shape(which, enc_tokens.shape[1], true_shape)
        with torch.autocast(device_type=enc_tokens.device.type, enabled=False):
            return head.view_features(enc_tokens.float(), shape)

    def head(
        self,
        which: int,
        tokens: list[torch.Tensor],
        true_shape: tuple[int, int],
        view_features: torch.Tensor | None = None,
        *,
        descriptors: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Prediction head of view ``which`` (1 or 2), in float32 with autocast disabled.

        tokens: the list from :meth:`decode` for that view (cast to float32 here);
        true_shape: (H, W) of that view's images (same for the whole batch); view_features:
        :meth:`head_view_features` of ``tokens[0]`` when computed earlier (same numbers, less work).
        Returns {"pts3d": (B, H, W, 3) float32 in view 1's camera frame, "conf": (B, H, W) >= 1};
        with ``descriptors`` (MASt3R only, else ValueError) also "desc" (B, H, W, desc_dim) unit
        vectors in the view's own pixel grid and "desc_conf" (B, H, W).
        """
        head, shape = self._head_and_shape(which, tokens[-1].shape[1], true_shape)
        if descriptors and not self.desc_dim:
            raise ValueError(f"descriptors asked for, but the {self.head_type} head has none (MASt3R only)")
        with torch.autocast(device_type=tokens[-1].device.type, enabled=False):
            tokens = [t.float() for t in tokens]
            if descriptors:
                return head(tokens, shape, view_features, descriptors=True)
            return head(tokens, shape, view_features)

    def use_fast_layout(self) -> DUSt3R:
        """Store the DPT heads' convolution weights channels-last (in place; returns self).

        The same fp32 numbers (within float rounding), ~25% faster DPT heads on CPU and the layout
        tensor cores prefer. Call again after moving the model to another device.
        """
        if self.head_type in ("dpt", "catmlp+dpt"):
            for head in (self.downstream_head1, self.downstream_head2):
                head.to(memory_format=torch.channels_last)
        return self

    def forward(
        self, img1: torch.Tensor, img2: torch.Tensor, *, descriptors: bool = False
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """B pairs (img1[b], img2[b]) -> (pred1, pred2).

        img1: (B, 3, H1, W1), img2: (B, 3, H2, W2) float in [-1, 1].
        pred1 = {"pts3d": (B, H1, W1, 3), "conf": (B, H1, W1)};
        pred2 = {"pts3d_in_other_view": (B, H2, W2, 3), "conf": (B, H2, W2)}; both point maps are
        in view 1's camera frame. ``descriptors`` (MASt3R): each also gets "desc" (B, H, W, D) and
        "desc_conf" (B, H, W) of its own view.
        """
        self._check_images(img1, "img1")
        self._check_images(img2, "img2")
        if img1.shape[0] != img2.shape[0]:
            raise ValueError(
                f"img1 and img2 must hold the same number of images, got {img1.shape[0]} and {img2.shape[0]}"
            )
        if img1.shape == img2.shape:  # one encoder pass for both, as the reference
            feats, pos = self.encode(torch.cat((img1, img2)))
            f1, f2 = feats.chunk(2)
            p1, p2 = pos.chunk(2)
        else:
            f1, p1 = self.encode(img1)
            f2, p2 = self.encode(img2)
        dec1, dec2 = self.decode(f1, p1, f2, p2)
        pred1 = self.head(1, dec1, tuple(img1.shape[-2:]), descriptors=descriptors)
        pred2 = self.head(2, dec2, tuple(img2.shape[-2:]), descriptors=descriptors)
        pred2["pts3d_in_other_view"] = pred2.pop("pts3d")
        return pred1, pred2


def _make_head(arch: ModelArch) -> nn.Module:
    """One prediction head (:mod:`core.heads`) for ``arch.head_type``."""
    if arch.head_type == "linear":
        return LinearHead(arch.dec_embed_dim, arch.patch_size, arch.depth_mode, arch.conf_mode)
    token_dims = [arch.enc_embed_dim] + [arch.dec_embed_dim] * 3
    dpt = {
        "layer_dims": arch.dpt_layer_dims,
        "feature_dim": arch.dpt_feature_dim,
        "last_dim": arch.dpt_last_dim,
        "patch_size": arch.patch_size,
        "depth_mode": arch.depth_mode,
        "conf_mode": arch.conf_mode,
    }
    if arch.head_type == "dpt":
        return DPTHead(dpt_hooks(arch.dec_depth), token_dims, **dpt)
    return MASt3RHead(
        dpt_hooks(arch.dec_depth),
        token_dims,
        desc_dim=arch.desc_dim,
        two_confs=arch.two_confs,
        desc_conf_mode=arch.desc_conf_mode if arch.desc_conf_mode is not None else arch.conf_mode,
        **dpt,
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """State-dict names that refer to the same parameter (e.g. scratch.layer1_rn / layer_rn.0)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def load_model(
    source: str | Path, device: str | torch.device = "cpu", *, cache_dir: str | Path | None = None
) -> DUSt3R:
    """Load a DUSt3R or MASt3R checkpoint, in eval mode, on ``device``.

    source: an official short name (``DUSt3R_ViTLarge_BaseDecoder_512_dpt``, ...,
    ``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric``), a Hugging Face
    hub repo id (downloaded with huggingface_hub's cache and progress bar; ``cache_dir`` overrides
    the cache folder), a local folder with ``config.json`` + ``model.safetensors``, a
    ``.safetensors`` file with ``config.json`` beside it, or an original ``.pth`` checkpoint
    (:mod:`core.checkpoint` reads them). The network is built from the checkpoint's architecture
    on the meta device and every tensor is matched strictly (names after the key fixes of
    :func:`core.checkpoint.remap_checkpoint_keys`, and shapes), then moved to the device.
    Parameters do not require gradients (inference only). On the CPU the weights stay
    memory-mapped (copy-on-write), so loading takes well under a second and the pages are read
    on first use. device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` (ValueError when unknown or
    unavailable). Raises CheckpointError on any loading failure.
    """
    target = runtime.resolve_device(device)
    ckpt = read_checkpoint(source, cache_dir=cache_dir)
    with torch.device("meta"):  # no memory, no random init: the checkpoint's tensors are assigned
        model = DUSt3R(ckpt.arch)
    state_dict = remap_checkpoint_keys(ckpt.state_dict, _alias_groups(model), ckpt.aliases)
    state_dict = check_state_dict(model.state_dict(keep_vars=True), state_dict, ckpt.source)
    model.load_state_dict(state_dict, strict=True, assign=True)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("loaded %s (%s head, %.1fM parameters) on %s", ckpt.source, model.head_type, n_params / 1e6, target)
    return model.requires_grad_(False).to(target).eval().use_fast_layout()


class _ModelCache:
    """Loaded networks by (checkpoint, device, cache_dir), the most recent ``size`` of them, with
    the seconds each load took. One lock: a network is loaded once even when asked concurrently."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple[str, str, str | None], tuple[DUSt3R, float]] = OrderedDict()

    @staticmethod
    def key(cfg: ModelConfig) -> tuple[str, str, str | None]:
        return cfg.checkpoint, str(runtime.resolve_device(cfg.device)), cfg.cache_dir

    def get(self, cfg: ModelConfig) -> DUSt3R:
        key = self.key(cfg)
        with self.lock:
            if key not in self.entries:
                t0 = time.perf_counter()
                model = load_model(cfg.checkpoint, key[1], cache_dir=cfg.cache_dir)
                self.entries[key] = (model, time.perf_counter() - t0)
                while len(self.entries) > self.size:
                    self.entries.popitem(last=False)
            self.entries.move_to_end(key)
            return self.entries[key][0]


_MODELS = _ModelCache(size=2)


def get_model(cfg: ModelConfig) -> DUSt3R:
    """The model for ``cfg``, loaded on first use and cached (the app's one model cache).

    Keyed by checkpoint, resolved device and cache_dir; the two most recently used stay loaded.
    """
    return _MODELS.get(cfg)


def model_load_seconds(cfg: ModelConfig) -> float | None:
    """How long loading the cached model for ``cfg`` took, or None when it is not loaded."""
    with _MODELS.lock:
        entry = _MODELS.entries.get(_MODELS.key(cfg))
    return None if entry is None else entry[1]


def clear_model_cache() -> None:
    """Forget every loaded model (they are freed once nothing else holds them)."""
    with _MODELS.lock:
        _MODELS.entries.clear()
