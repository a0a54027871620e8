"""MASt3R checkpoints: both official formats, parity with Naver's code, the official key list, descriptors."""

from __future__ import annotations

import argparse
import ast
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import model as M
from config import OFFICIAL_CHECKPOINTS, InferenceConfig, ModelConfig
from core.checkpoint import check_state_dict, remap_checkpoint_keys, weights_availability
from core.inference import run_inference
from core.types import InputImage, PairPredictions
from model import OFFICIAL_CONFIGS, CheckpointError, DUSt3R, load_model, parse_constructor_string

OFFICIAL = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"
OFFICIAL_STRING = (
    "AsymmetricMASt3R(enc_depth=24, dec_depth=12, enc_embed_dim=1024, dec_embed_dim=768, enc_num_heads=16, "
    "dec_num_heads=12, pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "landscape_only=False, two_confs=True, desc_conf_mode=('exp', 0, inf))"
)
OUTPUTS = ("pts3d", "conf", "desc", "desc_conf")


@pytest.fixture(scope="module")
def mast3r_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny_mast3r"


@pytest.fixture(scope="module")
def ref(mast3r_dir: Path):
    with np.load(mast3r_dir / "tiny_mast3r_inference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def nets(mast3r_dir: Path) -> dict[str, DUSt3R]:
    folder = mast3r_dir / "tiny_mast3r"
    return {"safetensors": load_model(folder), "pth": load_model(folder / "checkpoint.pth")}


def rel_err(got: torch.Tensor, ref: np.ndarray) -> float:
    got_np = got.detach().cpu().numpy()
    assert got_np.shape == ref.shape, (got_np.shape, ref.shape)
    return float(np.abs(got_np.astype(np.float64) - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def reference_key(p: int, view: int, name: str) -> str:
    return f"pair{p}_pred{view}_{'pts3d_in_other_view' if (view, name) == (2, 'pts3d') else name}"


# ---- formats and parity ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_pair_outputs_match_naver_in_both_formats(fmt: str, nets: dict[str, DUSt3R], ref: dict) -> None:
    net = nets[fmt]
    assert net.head_type == "catmlp+dpt" and net.desc_dim == 8 and net.metric
    assert len(ref["pairs"]) == 6
    for p, (i, j) in enumerate(ref["pairs"]):
        with torch.inference_mode():
            pred1, pred2 = net(torch.from_numpy(ref[f"img_{i}"]), torch.from_numpy(ref[f"img_{j}"]), descriptors=True)
        pred2 = {"pts3d": pred2["pts3d_in_other_view"], **pred2}
        for view, pred in ((1, pred1), (2, pred2)):
            for name in OUTPUTS:
                key = reference_key(p, view, name)
                assert rel_err(pred[name][0], ref[key]) < 1e-4, key
        torch.testing.assert_close(pred1["desc"].norm(dim=-1), torch.ones_like(pred1["conf"]))
        assert bool((pred2["desc_conf"] > 0).all()) and bool((pred2["conf"] >= 1).all())


def test_both_formats_hold_the_same_weights(nets: dict[str, DUSt3R], mast3r_dir: Path) -> None:
    a, b = nets["safetensors"].state_dict(), nets["pth"].state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    expected = [line.split("\t")[0] for line in (mast3r_dir / "keys_tiny_mast3r.txt").read_text().splitlines()]
    assert list(a) == expected  # 657 tensors in the reference order
    assert len(load_file(mast3r_dir / "tiny_mast3r" / "model.safetensors")) == 649  # 8 aliases dropped


def test_skipping_descriptors_changes_neither_points_nor_confidence(nets: dict[str, DUSt3R], ref: dict) -> None:
    net = nets["safetensors"]
    img1, img2 = torch.from_numpy(ref["img_1"]), torch.from_numpy(ref["img_0"])
    calls: list[int] = []
    handle = net.downstream_head1.head_local_features.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.inference_mode():
            plain1, plain2 = net(img1, img2)
            assert calls == []  # the MLP does not run unless asked
            full1, full2 = net(img1, img2, descriptors=True)
            assert calls == [1]
    finally:
        handle.remove()
    assert set(plain1) == {"pts3d", "conf"} and set(plain2) == {"pts3d_in_other_view", "conf"}
    for plain, full in ((plain1, full1), (plain2, full2)):
        for key, value in plain.items():
            assert torch.equal(value, full[key]), key


def test_run_inference_passes_descriptors_through(nets: dict[str, DUSt3R], ref: dict, tmp_path: Path) -> None:
    images = [
        InputImage(
            tensor=torch.from_numpy(ref[f"img_{k}"]),
            idx=k,
            name=f"img{k}.png",
            original_size=(ref[f"img_{k}"].shape[-1], ref[f"img_{k}"].shape[-2]),
            resized_size=(ref[f"img_{k}"].shape[-1], ref[f"img_{k}"].shape[-2]),
            crop_box=(0, 0, ref[f"img_{k}"].shape[-1], ref[f"img_{k}"].shape[-2]),
        )
        for k in range(3)
    ]
    cfg = InferenceConfig(precision="fp32", descriptors=True)
    preds = run_inference(nets["pth"], images, cfg, device=torch.device("cpu"), autocast_dtype=None)
    assert preds.pairs.tolist() == ref["pairs"].tolist() and preds.has_descriptors
    fields = {
        "desc_1": (1, "desc"),
        "desc_conf_1": (1, "desc_conf"),
        "desc_2": (2, "desc"),
        "desc_conf_2": (2, "desc_conf"),
    }
    for p in range(6):
        assert rel_err(preds.pts3d_2[p], ref[reference_key(p, 2, "pts3d")]) < 1e-4
        for field, (view, name) in fields.items():
            assert rel_err(getattr(preds, field)[p], ref[reference_key(p, view, name)]) < 1e-4, field
    preds.save_npz(tmp_path / "pairs.npz")
    again = PairPredictions.load_npz(tmp_path / "pairs.npz")
    assert again.has_descriptors and torch.equal(again.desc_2[3], preds.desc_2[3])
    plain = run_inference(
        nets["pth"], images, InferenceConfig(precision="fp32"), device=torch.device("cpu"), autocast_dtype=None
    )
    assert not plain.has_descriptors and all(torch.equal(a, b) for a, b in zip(plain.conf_1, preds.conf_1, strict=True))


def test_descriptors_on_a_dust3r_model_are_refused(fixtures_dir: Path) -> None:
    net = load_model(fixtures_dir / "tiny_dpt")
    assert net.desc_dim == 0 and not net.metric
    img = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="MASt3R only"):
        net(img, img, descriptors=True)


# ---- the official architecture -------------------------------------------------------------------


def official_tensors(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    lines = (fixtures_dir / f"keys_{OFFICIAL}.txt").read_text().splitlines()
    out = {}
    for line in lines:
        name, shape, dtype = line.split("\t")
        assert dtype == "float32"
        out[name] = torch.empty(ast.literal_eval(shape), device="meta")
    return out


def test_official_key_list_loads_strictly_into_a_meta_model(fixtures_dir: Path) -> None:
    assert OFFICIAL_CHECKPOINTS[OFFICIAL] == f"naver/{OFFICIAL}"
    arch = OFFICIAL_CONFIGS[OFFICIAL]
    assert arch.metric and arch.desc_dim == 24 and arch.two_confs
    with torch.device("meta"):
        net = DUSt3R(arch)
    tensors = official_tensors(fixtures_dir)
    expected = net.state_dict(keep_vars=True)
    assert [(k, tuple(v.shape)) for k, v in expected.items()] == [(k, tuple(v.shape)) for k, v in tensors.items()]
    assert len(tensors) == 1017 and sum(p.numel() for p in net.parameters()) == 688_638_856
    net.load_state_dict(
        check_state_dict(expected, remap_checkpoint_keys(tensors), "official"), strict=True, assign=True
    )
    # the hub file: the 8 scratch.layer_rn.* aliases dropped and named in its metadata
    aliases = {}
    for name in tensors:
        match = re.fullmatch(r"(.*\.scratch\.)layer_rn\.(\d)\.weight", name)
        if match:
            aliases[name] = f"{match.group(1)}layer{int(match.group(2)) + 1}_rn.weight"
    stored = {k: v for k, v in tensors.items() if k not in aliases}
    assert len(aliases) == 8 and len(stored) == 1009
    check_state_dict(expected, remap_checkpoint_keys(stored, aliases=aliases), "official safetensors")
    missing = {k: v for k, v in tensors.items() if "head_local_features.fc2" not in k}
    with pytest.raises(CheckpointError, match=r"missing keys: downstream_head1.head_local_features.fc2.bias"):
        check_state_dict(expected, remap_checkpoint_keys(missing), "official")


def test_official_constructor_string_is_parsed_not_evaluated() -> None:
    kw = parse_constructor_string(OFFICIAL_STRING)
    assert kw["patch_embed_cls"] == "PatchEmbedDust3R" and kw["desc_conf_mode"] == ("exp", 0, float("inf"))
    assert M.ModelArch.from_config(kw) == OFFICIAL_CONFIGS[OFFICIAL]
    with pytest.raises(CheckpointError, match="head_type"):
        parse_constructor_string(OFFICIAL_STRING.replace("catmlp+dpt", "dpt"))
    with pytest.raises(CheckpointError, match="head_type"):
        parse_constructor_string(OFFICIAL_STRING.replace("AsymmetricMASt3R", "AsymmetricCroCo3DStereo"))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"output_mode": "pts3d"}, "pts3d\\+desc<D>"),
        ({"output_mode": "pts3d+desc0"}, "D >= 1"),
        ({"desc_mode": "raw"}, "desc_mode"),
        ({"desc_conf_mode": ["exp", 0]}, "desc_conf_mode"),
        ({"head_type": "dpt", "output_mode": "pts3d"}, "belong to MASt3R"),
    ],
)
def test_invalid_mast3r_configs_are_rejected(changes: dict, match: str) -> None:
    config = {**OFFICIAL_CONFIGS[OFFICIAL].to_config(), **changes}
    with pytest.raises(ValueError, match=match):
        M.ModelArch.from_config(config)


# ---- hub name, cache and offline message ---------------------------------------------------------


def make_hub_cache(cache: Path, repo_id: str, src: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, snapshot / name)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_official_short_name_loads_from_the_hub_cache(offline, mast3r_dir: Path, tmp_path: Path) -> None:
    make_hub_cache(tmp_path, f"naver/{OFFICIAL}", mast3r_dir / "tiny_mast3r")
    assert weights_availability(ModelConfig(checkpoint=OFFICIAL, cache_dir=str(tmp_path))) is None
    net = load_model(OFFICIAL, cache_dir=tmp_path)
    assert net.metric and net.head_type == "catmlp+dpt"


def test_offline_without_cache_names_the_mast3r_repo(offline, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_model(OFFICIAL, cache_dir=tmp_path)
    msg = str(info.value)
    assert f"naver/{OFFICIAL}" in msg and str(tmp_path) in msg and "--checkpoint" in msg and "2.8 GB" in msg
    why = weights_availability(ModelConfig(checkpoint=OFFICIAL, cache_dir=str(tmp_path / "hf")))
    assert why and f"naver/{OFFICIAL}" in why and "offline" in why and "MASt3R" in why


def test_mast3r_pth_with_a_missing_descriptor_tensor_is_named(mast3r_dir: Path, tmp_path: Path) -> None:
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(mast3r_dir / "tiny_mast3r" / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["args"].model.startswith("AsymmetricMASt3R(")
    del ckpt["model"]["downstream_head2.head_local_features.fc1.weight"]
    torch.save(ckpt, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: downstream_head2.head_local_features.fc1.weight"):
        load_model(tmp_path / "broken.pth")
    sd = load_file(mast3r_dir / "tiny_mast3r" / "model.safetensors")
    sd["downstream_head1.head_local_features.fc2.bias"] = torch.zeros(3)
    folder = tmp_path / "hub"
    folder.mkdir()
    shutil.copy(mast3r_dir / "tiny_mast3r" / "config.json", folder / "config.json")
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"wrong shape: downstream_head1.head_local_features.fc2.bias \(3,\)"):
        load_model(folder)
