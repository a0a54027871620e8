"""Checkpoint loading: every accepted format, the hub cache path, and every failure's message."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model as M
from config import ModelConfig
from model import CheckpointError, get_model, load_model, parse_constructor_string

TINY = ["tiny_linear", "tiny_dpt"]
OFFICIAL_512_DPT_STRING = (
    "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12)"
)


def load_pth(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_all_formats_load_identical_weights(name: str, fixtures_dir: Path) -> None:
    folder = fixtures_dir / name
    models = [load_model(folder), load_model(folder / "model.safetensors"), load_model(str(folder / "checkpoint.pth"))]
    for net in models:
        assert not net.training
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in net.parameters())
        assert not any(p.requires_grad for p in net.parameters())
    assert_same_weights(models[0], models[1])
    assert_same_weights(models[0], models[2])
    # the .pth is the full state dict: every tensor equals ours
    ckpt = load_pth(folder / "checkpoint.pth")["model"]
    ours = models[2].state_dict()
    assert set(ckpt) == set(ours)
    assert all(torch.equal(ckpt[k], ours[k]) for k in ckpt)


def test_safetensors_dropped_aliases_are_restored(fixtures_dir: Path) -> None:
    weights = fixtures_dir / "tiny_dpt" / "model.safetensors"
    stored = load_file(weights)
    assert "downstream_head1.dpt.scratch.layer_rn.0.weight" not in stored  # dropped by the writer
    net = load_model(weights)
    sd = net.state_dict()
    for h in (1, 2):
        for k in range(4):
            kept = stored[f"downstream_head{h}.dpt.scratch.layer{k + 1}_rn.weight"]
            assert torch.equal(sd[f"downstream_head{h}.dpt.scratch.layer_rn.{k}.weight"], kept)


def test_folder_with_only_a_pth(fixtures_dir: Path, tmp_path: Path) -> None:
    shutil.copy(fixtures_dir / "tiny_linear" / "checkpoint.pth", tmp_path / "DUSt3R_tiny.pth")
    assert_same_weights(load_model(tmp_path), load_model(fixtures_dir / "tiny_linear"))


def test_pth_without_dec_blocks2_duplicates_dec_blocks(fixtures_dir: Path, tmp_path: Path) -> None:
    ckpt = load_pth(fixtures_dir / "tiny_linear" / "checkpoint.pth")
    sd = {k: v for k, v in ckpt["model"].items() if not k.startswith("dec_blocks2.")}
    path = tmp_path / "croco_style.pth"
    torch.save({"model": sd, "args": ckpt["args"]}, path)
    net = load_model(path)
    for k, v in net.state_dict().items():
        if k.startswith("dec_blocks2."):
            assert torch.equal(v, sd["dec_blocks." + k[len("dec_blocks2.") :]])


def test_parse_official_constructor_string() -> None:
    kw = parse_constructor_string(OFFICIAL_512_DPT_STRING)
    assert kw["patch_embed_cls"] == "PatchEmbedDust3R" and kw["landscape_only"] is False
    assert kw["depth_mode"] == ("exp", -float("inf"), float("inf")) and kw["img_size"] == (512, 512)
    assert parse_constructor_string("AsymmetricCroCo3DStereo(landscape_only=True)")["landscape_only"] is False
    with torch.device("meta"):
        net = M.DUSt3R.from_config(kw)
    assert len(net.state_dict()) == 1009


# ---- hub path (real huggingface_hub cache layout, offline) --------------------------------------


def make_hub_cache(cache: Path, repo_id: str, src: Path, files=("config.json", "model.safetensors")) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in files:
        shutil.copy(src / name, snapshot / name)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_hub_repo_id_and_official_short_name_load_from_cache(offline, fixtures_dir: Path, tmp_path: Path) -> None:
    make_hub_cache(tmp_path, "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt", fixtures_dir / "tiny_dpt")
    make_hub_cache(tmp_path, "someone/tiny-linear", fixtures_dir / "tiny_linear")
    by_short_name = load_model("DUSt3R_ViTLarge_BaseDecoder_512_dpt", cache_dir=tmp_path)
    assert_same_weights(by_short_name, load_model(fixtures_dir / "tiny_dpt"))
    by_id = load_model("someone/tiny-linear", cache_dir=str(tmp_path))
    assert_same_weights(by_id, load_model(fixtures_dir / "tiny_linear"))


def test_offline_without_cache_says_what_to_do(offline, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_model("DUSt3R_ViTLarge_BaseDecoder_512_dpt", cache_dir=tmp_path)
    msg = str(info.value)
    assert "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt" in msg and str(tmp_path) in msg
    assert "--checkpoint /path/to/model.safetensors" in msg and "offline" in msg


def test_offline_default_cache_location_is_named(offline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hfcache"))
    with pytest.raises(CheckpointError, match="hfcache"):
        load_model("naver/DUSt3R_ViTLarge_BaseDecoder_224_linear")


def test_hub_repo_missing_weights_file(offline, fixtures_dir: Path, tmp_path: Path) -> None:
    make_hub_cache(tmp_path, "someone/config-only", fixtures_dir / "tiny_dpt", files=("config.json",))
    with pytest.raises(CheckpointError, match="someone/config-only"):
        load_model("someone/config-only", cache_dir=tmp_path)


def test_invalid_hub_repo_id(offline, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a valid hub repo id"):
        load_model("someone/bad..name", cache_dir=tmp_path)


# ---- bad files ----------------------------------------------------------------------------------


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model("no_such_model")
    with pytest.raises(CheckpointError, match="empty"):
        load_model("  ")


@pytest.mark.parametrize("name", ["model.safetensors", "checkpoint.pth"])
def test_truncated_file(name: str, fixtures_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(fixtures_dir / "tiny_dpt", tmp_path)
    data = (fixtures_dir / "tiny_dpt" / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_model(folder / name)


def test_garbage_safetensors(fixtures_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(fixtures_dir / "tiny_linear", tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_model(folder)


def test_wrong_extension_and_folder_without_weights(fixtures_dir: Path, tmp_path: Path) -> None:
    shutil.copy(fixtures_dir / "tiny_linear" / "model.safetensors", tmp_path / "model.bin")
    with pytest.raises(CheckpointError, match="unsupported checkpoint file .*model.bin"):
        load_model(tmp_path / "model.bin")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(tmp_path)


def test_safetensors_without_config(fixtures_dir: Path, tmp_path: Path) -> None:
    shutil.copy(fixtures_dir / "tiny_linear" / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="config file not found"):
        load_model(tmp_path / "model.safetensors")


def test_config_with_unknown_keys(fixtures_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(fixtures_dir / "tiny_linear", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(croco_extra=1, use_magic=True)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unknown model config key\(s\) \['croco_extra', 'use_magic'\]"):
        load_model(folder)


def test_config_not_json(fixtures_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(fixtures_dir / "tiny_linear", tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read model config"):
        load_model(folder)


def test_missing_unexpected_and_misshapen_tensors_are_named(fixtures_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(fixtures_dir / "tiny_linear", tmp_path)
    sd = load_file(folder / "model.safetensors")
    del sd["enc_norm.weight"]
    sd["extra.weight"] = torch.zeros(2)
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys: enc_norm.weight; unexpected keys: extra.weight"):
        load_model(folder)
    sd = load_file(fixtures_dir / "tiny_linear" / "model.safetensors")
    sd["enc_norm.weight"] = torch.zeros(3)
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"wrong shape: enc_norm.weight \(3,\)"):
        load_model(folder)
    sd["enc_norm.weight"] = torch.zeros(64, dtype=torch.int32)
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"non-float entries: enc_norm.weight"):
        load_model(folder)


@pytest.mark.parametrize(
    ("constructor", "match"),
    [
        ("__import__('os').system('echo pwned')", "must be a call AsymmetricCroCo3DStereo"),
        ("AsymmetricCroCo3DStereo(enc_depth=eval('2'))", "cannot parse argument 'enc_depth'"),
        ("AsymmetricCroCo3DStereo(enc_depth=2", "cannot parse model constructor string"),
        ("AsymmetricCroCo3DStereo(1, 2)", "keyword arguments only"),
        ("AsymmetricCroCo3DStereo(enc_depth=2, mystery_key=3)", r"unknown model config key\(s\) \['mystery_key'\]"),
    ],
)
def test_bad_constructor_strings(constructor: str, match: str, fixtures_dir: Path, tmp_path: Path) -> None:
    ckpt = load_pth(fixtures_dir / "tiny_linear" / "checkpoint.pth")
    path = tmp_path / "bad.pth"
    torch.save({"model": ckpt["model"], "args": argparse.Namespace(model=constructor)}, path)
    with pytest.raises(CheckpointError, match=match):
        load_model(path)


def test_pth_without_args(fixtures_dir: Path, tmp_path: Path) -> None:
    ckpt = load_pth(fixtures_dir / "tiny_linear" / "checkpoint.pth")
    torch.save({"model": ckpt["model"]}, tmp_path / "noargs.pth")
    with pytest.raises(CheckpointError, match="no 'args.model'"):
        load_model(tmp_path / "noargs.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a DUSt3R checkpoint"):
        load_model(tmp_path / "list.pth")


class Payload:
    """Unpickling this would run code: the loader must refuse before that."""

    marker: Path | None = None

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_pth_with_disallowed_global_is_refused(fixtures_dir: Path, tmp_path: Path) -> None:
    ckpt = load_pth(fixtures_dir / "tiny_linear" / "checkpoint.pth")
    payload = Payload()
    payload.marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": ckpt["model"], "args": ckpt["args"], "extra": payload}, path)
    with pytest.raises(CheckpointError, match=r"pickled objects other than tensors.*\(\w+\.system\)"):
        load_model(path)
    assert not payload.marker.exists()


# ---- lazy cached loading ------------------------------------------------------------------------


def test_get_model_loads_once(fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = M.load_model
    monkeypatch.setattr(M, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    M.clear_model_cache()
    cfg = ModelConfig(checkpoint=str(fixtures_dir / "tiny_linear"), device="cpu")
    try:
        assert M.model_load_seconds(cfg) is None
        first = get_model(cfg)
        assert get_model(cfg) is first
        assert len(calls) == 1
        assert M.model_load_seconds(cfg) >= 0
    finally:
        M.clear_model_cache()


def test_load_model_rejects_bad_device(fixtures_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown device"):
        load_model(fixtures_dir / "tiny_linear", device="tpu")
