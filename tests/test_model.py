"""The network: official key lists, parity with the reference fixtures, shapes, RoPE, precision."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.transformer import apply_rope, rope_cos_sin
from model import OFFICIAL_CONFIGS, DUSt3R, ModelArch, load_model

INF = float("inf")
TINY = ["tiny_linear", "tiny_dpt"]


def rel_err(got: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else got
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-12)
    return float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) / scale


def small_model(head_type: str = "dpt", seed: int = 0) -> DUSt3R:
    torch.manual_seed(seed)
    kw = {"dpt_feature_dim": 16, "dpt_last_dim": 8, "dpt_layer_dims": [8, 8, 16, 16]} if head_type == "dpt" else {}
    arch = ModelArch(
        enc_embed_dim=32,
        enc_depth=2,
        enc_num_heads=2,
        dec_embed_dim=24,
        dec_depth=10,
        dec_num_heads=2,
        head_type=head_type,
        img_size=64,
        **kw,
    )
    return DUSt3R(arch).eval()


@pytest.fixture(scope="module")
def tiny_models(fixtures_dir: Path) -> dict[str, DUSt3R]:
    return {name: load_model(fixtures_dir / name) for name in TINY}


# ---- official architecture ------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(OFFICIAL_CONFIGS))
def test_official_variant_keys_and_shapes_match_reference(variant: str, fixtures_dir: Path) -> None:
    expected = []
    for line in (fixtures_dir / f"keys_{variant}.txt").read_text().splitlines():
        name, shape, dtype = line.split("\t")
        expected.append((name, shape, dtype))
    with torch.device("meta"):
        net = DUSt3R.from_config(OFFICIAL_CONFIGS[variant])
    got = [(k, str(tuple(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()]
    assert got == expected  # names, shapes, dtypes and order
    n_unique = sum(p.numel() for p in net.parameters())
    mast3r = variant.startswith("MASt3R")  # the 512 DPT network plus the local-feature MLPs
    assert n_unique == (688_638_856 if mast3r else 571_171_208 if variant.endswith("dpt") else 532_342_784)


@pytest.mark.parametrize("name", TINY)
def test_arch_round_trips_config_json(name: str, fixtures_dir: Path) -> None:
    config = json.loads((fixtures_dir / name / "config.json").read_text())
    arch = ModelArch.from_config(config)
    assert arch.to_config() == config and hash(arch) == hash(ModelArch.from_config(config))
    assert DUSt3R.from_config(config).arch == arch


def test_official_arch_writes_exactly_the_official_config_keys() -> None:
    official_keys = {
        "pos_embed", "patch_embed_cls", "img_size", "head_type", "output_mode", "depth_mode", "conf_mode",
        "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads",
        "landscape_only", "freeze",
    }  # fmt: skip
    for name, arch in OFFICIAL_CONFIGS.items():
        mast3r_keys = {"two_confs", "desc_conf_mode"} if name.startswith("MASt3R") else set()
        assert set(arch.to_config()) == official_keys | mast3r_keys
        assert ModelArch.from_config(arch.to_config()) == arch


def test_dpt_alias_names_share_one_module() -> None:
    net = small_model("dpt")
    scratch = net.downstream_head1.dpt.scratch
    for k in range(4):
        assert getattr(scratch, f"layer{k + 1}_rn") is scratch.layer_rn[k]
    sd = net.state_dict()
    assert (
        "downstream_head2.dpt.scratch.layer_rn.3.weight" in sd and "downstream_head2.dpt.scratch.layer4_rn.weight" in sd
    )


# ---- parity with the reference fixtures --------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_pair_outputs_match_reference(name: str, tiny_models: dict[str, DUSt3R], fixtures_dir: Path) -> None:
    net = tiny_models[name]
    ref = np.load(fixtures_dir / f"{name}_inference.npz")
    assert len(ref["pairs"]) == 6
    for p, (i, j) in enumerate(ref["pairs"]):
        with torch.inference_mode():
            pred1, pred2 = net(torch.from_numpy(ref[f"img_{i}"]), torch.from_numpy(ref[f"img_{j}"]))
        assert rel_err(pred1["pts3d"][0], ref[f"pair{p}_pred1_pts3d"]) < 1e-4
        assert rel_err(pred1["conf"][0], ref[f"pair{p}_pred1_conf"]) < 1e-4
        assert rel_err(pred2["pts3d_in_other_view"][0], ref[f"pair{p}_pred2_pts3d_in_other_view"]) < 1e-4
        assert rel_err(pred2["conf"][0], ref[f"pair{p}_pred2_conf"]) < 1e-4
        assert pred1["pts3d"].dtype == torch.float32 and bool((pred2["conf"] >= 1).all())


@pytest.mark.parametrize("name", TINY)
def test_intermediates_match_reference(name: str, tiny_models: dict[str, DUSt3R], fixtures_dir: Path) -> None:
    net = tiny_models[name]
    ref = np.load(fixtures_dir / f"{name}_intermediates_pair0.npz")
    captured: dict[str, list] = {}

    def record(key: str):
        def hook(_mod, _inp, out):
            captured.setdefault(key, []).append(out)

        return hook

    handles = [net.patch_embed.register_forward_hook(record("patch"))]
    handles += [blk.register_forward_hook(record(f"enc{b}")) for b, blk in enumerate(net.enc_blocks)]
    for h in (1, 2):
        head = getattr(net, f"downstream_head{h}")
        handles.append((head.dpt if name == "tiny_dpt" else head.proj).register_forward_hook(record(f"head{h}")))
    img1, img2 = torch.from_numpy(ref["view1_img"]), torch.from_numpy(ref["view2_img"])
    try:
        with torch.inference_mode():
            f1, pos1 = net.encode(img1)
            f2, pos2 = net.encode(img2)
            dec1, dec2 = net.decode(f1, pos1, f2, pos2)
            res1 = net.head(1, dec1, (img1.shape[-2], img1.shape[-1]))
            res2 = net.head(2, dec2, (img2.shape[-2], img2.shape[-1]))
    finally:
        for handle in handles:
            handle.remove()

    got = {
        "view1_patch_tokens": captured["patch"][0][0],
        "view2_patch_tokens": captured["patch"][1][0],
        "view1_pos": pos1,
        "view2_pos": pos2,
        "pred1_pts3d": res1["pts3d"],
        "pred1_conf": res1["conf"],
        "pred2_pts3d_in_other_view": res2["pts3d"],
        "pred2_conf": res2["conf"],
    }
    for b in range(len(net.enc_blocks)):
        got[f"view1_enc_block{b}"], got[f"view2_enc_block{b}"] = captured[f"enc{b}"]
    assert len(dec1) == len(dec2) == len(net.dec_blocks) + 1
    for layer, (a, b) in enumerate(zip(dec1, dec2, strict=True)):
        got[f"dec1_layer{layer}"], got[f"dec2_layer{layer}"] = a, b
    raw = "raw" if name == "tiny_dpt" else "raw_tokens"
    got[f"head1_{raw}"], got[f"head2_{raw}"] = captured["head1"][0], captured["head2"][0]

    assert set(ref.files) - {"pair", "view1_img", "view2_img"} == set(got)
    assert pos1.dtype == torch.int64
    for key, value in got.items():
        assert rel_err(value, ref[key]) < 1e-4, key


# ---- shapes, batching, portrait images -------------------------------------------------------


@pytest.mark.parametrize("head_type", ["linear", "dpt"])
@pytest.mark.parametrize("shapes", [((64, 48), (48, 64)), ((80, 48), (80, 48)), ((32, 112), (48, 16))])
def test_forward_shapes_portrait_landscape_and_odd_token_grids(head_type: str, shapes) -> None:
    net = small_model(head_type)
    (h1, w1), (h2, w2) = shapes
    img1, img2 = torch.rand(2, 3, h1, w1) * 2 - 1, torch.rand(2, 3, h2, w2) * 2 - 1
    with torch.inference_mode():
        pred1, pred2 = net(img1, img2)
    assert pred1["pts3d"].shape == (2, h1, w1, 3) and pred1["conf"].shape == (2, h1, w1)
    assert pred2["pts3d_in_other_view"].shape == (2, h2, w2, 3) and pred2["conf"].shape == (2, h2, w2)
    assert set(pred1) == {"pts3d", "conf"} and set(pred2) == {"pts3d_in_other_view", "conf"}
    for t in (*pred1.values(), *pred2.values()):
        assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())


def test_portrait_is_not_transposed_positions_are_row_major() -> None:
    net = small_model("linear")
    _, pos = net.encode(torch.zeros(1, 3, 48, 32))  # 3 rows x 2 columns of patches
    assert pos.tolist() == [[[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]]


def test_batched_pairs_equal_one_pair_at_a_time() -> None:
    net = small_model("dpt")
    img1, img2 = torch.rand(3, 3, 48, 64) * 2 - 1, torch.rand(3, 3, 64, 48) * 2 - 1
    with torch.inference_mode():
        f1, p1 = net.encode(img1)
        f2, p2 = net.encode(img2)
        dec1, dec2 = net.decode(f1, p1, f2, p2)
        batched = net.head(2, dec2, (64, 48))["pts3d"]
        for b in range(3):
            g1, q1 = net.encode(img1[b : b + 1])
            torch.testing.assert_close(g1[0], f1[b], rtol=1e-5, atol=1e-5)
            single = net(img1[b : b + 1], img2[b : b + 1])[1]["pts3d_in_other_view"]
            torch.testing.assert_close(single[0], batched[b], rtol=1e-4, atol=1e-5)


def test_views_are_asymmetric_and_decoders_update_simultaneously(tiny_models: dict[str, DUSt3R]) -> None:
    net = tiny_models["tiny_linear"]
    torch.manual_seed(1)
    a, b = torch.rand(1, 3, 48, 64) * 2 - 1, torch.rand(1, 3, 48, 64) * 2 - 1
    with torch.inference_mode():
        fa, pa = net.encode(a)
        fb, pb = net.encode(b)
        dec1, dec2 = net.decode(fa, pa, fb, pb)
        # layer 1 of stream 2 must be computed from the decoder_embed of stream 1, not from layer 1
        x1, x2 = net.decoder_embed(fa), net.decoder_embed(fb)
        r1 = rope_cos_sin(pa, net.dec_head_dim, 100.0)
        r2 = rope_cos_sin(pb, net.dec_head_dim, 100.0)
        expected2 = net.dec_blocks2[0](x2, x1, r2, r1)
    torch.testing.assert_close(dec2[1], expected2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dec1[0], fa)
    assert not torch.allclose(dec1[1], dec2[1])


def test_bad_inputs_raise_clear_errors() -> None:
    net = small_model("linear")
    with pytest.raises(ValueError, match="multiples of 16"):
        net.encode(torch.zeros(1, 3, 50, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net.encode(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="same number"):
        net(torch.zeros(2, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="which must be 1 or 2"):
        net.head(3, [torch.zeros(1, 4, 24)], (32, 32))
    with pytest.raises(ValueError, match="does not match"):
        net.head(1, [torch.zeros(1, 4, 24)], (48, 32))


# ---- RoPE ---------------------------------------------------------------------------------------


def test_rope_matches_the_written_definition() -> None:
    """FORMAT.md 5: first half rotated by y, second by x; freqs 1/100^(2k/D), repeated twice."""
    torch.manual_seed(0)
    head_dim, n = 16, 5
    pos = torch.tensor([[[0, 0], [0, 3], [2, 1], [7, 4], [1, 9]]])
    t = torch.randn(1, 2, n, head_dim, dtype=torch.float64)
    cos, sin = rope_cos_sin(pos, head_dim, 100.0)
    got = apply_rope(t, cos.double(), sin.double())
    expected = torch.empty_like(t)
    d = head_dim // 2
    for i in range(n):
        for half, coord in ((0, int(pos[0, i, 0])), (1, int(pos[0, i, 1]))):
            seg = t[0, :, i, half * d : (half + 1) * d]
            for k in range(d // 2):
                theta = coord / 100.0 ** (2 * k / d)
                a, b = seg[:, k], seg[:, k + d // 2]
                expected[0, :, i, half * d + k] = a * math.cos(theta) - b * math.sin(theta)
                expected[0, :, i, half * d + k + d // 2] = b * math.cos(theta) + a * math.sin(theta)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq: list[int], pk: list[int]) -> float:
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), 8, 100.0)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), 8, 100.0)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert score([1, 2], [3, 5]) == pytest.approx(score([4, 7], [6, 10]), abs=1e-5)
    assert score([1, 2], [3, 5]) != pytest.approx(score([1, 2], [5, 3]), abs=1e-3)


# ---- config validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"foo": 1, "bar": 2}, r"unknown model config key\(s\) \['bar', 'foo'\]"),
        ({"landscape_only": True}, "landscape_only=True is not supported"),
        ({"patch_embed_cls": "ManyAR_PatchEmbed"}, "training-time"),
        ({"pos_embed": "cosine"}, "only 2-D RoPE"),
        ({"enc_embed_dim": 40, "enc_num_heads": 4}, "divisible by 4"),
        ({"head_type": "dpt", "dec_depth": 8}, "dec_depth >= 10"),
        ({"head_type": "conv"}, "head_type"),
        ({"depth_mode": ["exp", 0, INF]}, "depth_mode"),
        ({"img_size": [512, 500]}, "img_size"),
    ],
)
def test_invalid_configs_are_rejected(kwargs: dict, match: str) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        DUSt3R.from_config({"enc_embed_dim": 32, "enc_num_heads": 2, "dec_embed_dim": 16, "dec_num_heads": 2, **kwargs})


# ---- precision ---------------------------------------------------------------------------------


def test_heads_run_in_float32_under_bf16_autocast(tiny_models: dict[str, DUSt3R], fixtures_dir: Path) -> None:
    net = tiny_models["tiny_dpt"]
    ref = np.load(fixtures_dir / "tiny_dpt_intermediates_pair0.npz")
    img1, img2 = torch.from_numpy(ref["view1_img"]), torch.from_numpy(ref["view2_img"])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        f1, p1 = net.encode(img1)
        f2, p2 = net.encode(img2)
        dec1, _ = net.decode(f1, p1, f2, p2)
        assert dec1[-1].dtype == torch.bfloat16
        res = net.head(1, dec1, (64, 48))
    assert res["pts3d"].dtype == torch.float32 and res["conf"].dtype == torch.float32
    # bf16 backbone: close to the fp32 reference, not equal
    assert rel_err(res["pts3d"], ref["pred1_pts3d"]) < 0.1
