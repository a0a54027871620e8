"""main.py: headless reconstruct/align on the tiny fixture models, error exits, engine selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

import main as cli

ROOT = Path(__file__).resolve().parents[1]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def cli_run(fixtures_dir: Path, tmp_path_factory) -> Path:
    """`main.py reconstruct <folder> --export all --save-pairs` with the tiny DPT model."""
    out = tmp_path_factory.mktemp("cli") / "out"
    code = cli.main(
        [
            "reconstruct",
            str(fixtures_dir / "images"),
            "--output",
            str(out),
            "--checkpoint",
            str(fixtures_dir / "tiny_dpt"),
            "--image-size",
            "64",
            "--device",
            "cpu",
            "--niter",
            "20",
            "--export",
            "all",
            "--save-pairs",
            "--precision",
            "fp32",
        ]
    )
    assert code == 0
    return out


def test_reconstruct_writes_scene_glb_manifest_and_exports(cli_run: Path, capsys) -> None:
    for name in (
        "scene.npz",
        "scene.glb",
        "manifest.json",
        "pairs.npz",
        "pointcloud.ply",
        "mesh.obj",
        "cameras.json",
        "reconstruction.zip",
    ):
        assert (cli_run / name).is_file(), name
    assert (cli_run / "colmap" / "sparse" / "0").is_dir()
    assert sorted(p.name for p in (cli_run / "depth").glob("*_depth.npy")) == [
        "img0_depth.npy",
        "img1_depth.npy",
        "img2_depth.npy",
    ]
    manifest = json.loads((cli_run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["engine"] == "dust3r"
    assert manifest["settings"]["model"]["checkpoint"].endswith("tiny_dpt")
    assert manifest["settings"]["alignment"]["niter"] == 20
    assert [im["name"] for im in manifest["images"]] == ["img0.png", "img1.png", "img2.png"]  # folder: sorted
    assert {"load", "model", "pairs", "align", "export", "total"} <= set(manifest["timings_s"])
    assert manifest["files"]["glb"] == "scene.glb" and manifest["files"]["pairs"] == "pairs.npz"
    with np.load(cli_run / "scene.npz") as scene:
        assert scene["world_from_cam"].shape == (3, 4, 4)
        assert scene["depth_2"].shape == (48, 64)
    glb = trimesh.load(cli_run / "scene.glb")
    assert sum(len(g.vertices) for g in glb.geometry.values()) > 1000
    with zipfile.ZipFile(cli_run / "reconstruction.zip") as zf:
        assert {"scene.glb", "scene.npz", "cameras.json"} <= set(zf.namelist())


def test_save_pairs_uses_the_fixture_key_layout(cli_run: Path, fixtures_dir: Path) -> None:
    with np.load(cli_run / "pairs.npz") as saved, np.load(fixtures_dir / "tiny_dpt_inference.npz") as ref:
        assert set(ref.files) <= set(saved.files)
        np.testing.assert_array_equal(saved["pairs"], ref["pairs"])
        for p in range(len(ref["pairs"])):
            key = f"pair{p}_pred2_pts3d_in_other_view"
            np.testing.assert_allclose(saved[key], ref[key], atol=1e-4 * float(np.abs(ref[key]).max()), rtol=0)


def test_align_from_saved_pairs(cli_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "realigned"
    code = cli.main(
        [
            "align",
            str(cli_run / "pairs.npz"),
            "--output",
            str(out),
            "--niter",
            "30",
            "--schedule",
            "cosine",
            "--as-pointcloud",
            "--export",
            "ply,json",
        ]
    )
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("scene.npz", "scene.glb", "manifest.json", "pointcloud.ply", "cameras.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["alignment"]["schedule"] == "cosine"
    assert manifest["source_pairs"].endswith("pairs.npz")
    assert [im["name"] for im in manifest["images"]] == ["img0.png", "img1.png", "img2.png"]
    glb = trimesh.load(out / "scene.glb")
    assert any(isinstance(g, trimesh.PointCloud) for g in glb.geometry.values())


def test_align_reference_npz_without_images(fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    with np.load(fixtures_dir / "tiny_linear_inference.npz") as ref:
        arrays = {k: ref[k] for k in ref.files if not k.startswith("img_")}
    src = tmp_path / "noimg.npz"
    np.savez(src, **arrays)
    assert cli.main(["align", str(src), "--output", str(tmp_path / "o"), "--niter", "10"]) == 0
    captured = capsys.readouterr()
    assert "points are grey" in captured.out
    assert "points are grey" not in captured.err  # warnings print once
    with np.load(tmp_path / "o" / "scene.npz") as scene:
        img = scene["image_0"]
        assert (img == img[..., :1]).all()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["reconstruct", "{tmp}/missing.png", "--output", "{tmp}/o"], cli.EXIT_INPUT, "missing.png: file not found"),
        (
            ["reconstruct", "{img}", "{tmp}/fake.png", "--output", "{tmp}/o", "--checkpoint", "{ckpt}"],
            cli.EXIT_INPUT,
            "fake.png",
        ),
        (["reconstruct", "{img}", "--output", "{tmp}/o", "--bogus"], cli.EXIT_USAGE, "unrecognized arguments: --bogus"),
        (["reconstruct", "{img}", "--output", "{tmp}/o", "--image-size", "50"], cli.EXIT_USAGE, "multiple of 16"),
        (["reconstruct", "{img}", "--output", "{tmp}/o", "--export", "gif"], cli.EXIT_USAGE, "gif"),
        (["reconstruct", "{img}", "--output", "{tmp}/o", "--engine", "nerf"], cli.EXIT_USAGE, "invalid choice"),
        (["reconstruct", "{img}", "{img}", "--output", "{tmp}/o", "--scene-graph", "swin-0"], cli.EXIT_USAGE, "swin-0"),
        (["reconstruct", "{img}", "--output", "{tmp}/o", "--known-focal", "500,-1"], cli.EXIT_USAGE, "focal"),
        (
            ["reconstruct", "{img}", "--output", "{tmp}/o", "--checkpoint", "{tmp}/none.safetensors"],
            cli.EXIT_WEIGHTS,
            "none.safetensors",
        ),
        (["align", "{tmp}/none.npz", "--output", "{tmp}/o"], cli.EXIT_INPUT, "none.npz"),
        (["align", "{tmp}/fake.png", "--output", "{tmp}/o"], cli.EXIT_FAILED, "not a readable .npz"),
        (["reconstruct", "--output", "{tmp}/o"], cli.EXIT_USAGE, "IMAGE"),
        (["reconstruct", "{img}", "--output", "{tmp}/o", "--device", "tpu"], cli.EXIT_USAGE, "unknown device 'tpu'"),
    ],
)
def test_error_exits_are_one_line(args, code, needle, fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "fake.png").write_text("not an image")
    subs = {
        "tmp": str(tmp_path),
        "img": str(fixtures_dir / "images" / "img0.png"),
        "ckpt": str(fixtures_dir / "tiny_linear"),
    }
    argv = [a.format(**subs) for a in args]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = _last_line(err)
    assert last.startswith("error:") and needle in last, err


def test_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    assert cli.main(["reconstruct", str(tmp_path / "missing.png"), "--output", str(tmp_path / "o"), "--debug"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_help_exits_zero(capsys) -> None:
    assert cli.main(["reconstruct", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--checkpoint",
        "--device",
        "--image-size",
        "--scene-graph",
        "--niter",
        "--schedule",
        "--lr",
        "--min-conf-thr",
        "--known-focal",
        "--shared-focal",
        "--as-pointcloud",
        "--export",
        "--save-pairs",
        "--engine",
        "--precision",
        "--debug",
    ):
        assert option in out, option


def test_missing_weights_offline_is_a_clear_error(fixtures_dir: Path, tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 and an empty cache: one line naming the hub id and how to provide the weights."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONUNBUFFERED": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "reconstruct",
            str(fixtures_dir / "images" / "img0.png"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == cli.EXIT_WEIGHTS, proc.stderr
    assert "Traceback" not in proc.stderr
    last = _last_line(proc.stderr)
    assert last.startswith("error:")
    assert "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt" in last and "--checkpoint" in last
    assert "cache" in last


def test_colmap_engine_from_the_cli(tmp_path: Path) -> None:
    """Engine selection: COLMAP on a small synthetic textured scene (no weights involved)."""
    from tests.core.synthetic_render import render_orbit

    views = render_orbit(6, width=320, height=240)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k, v in enumerate(views):
        Image.fromarray(v.image).save(folder / f"view{k:02d}.png")
    out = tmp_path / "out"
    code = cli.main(
        [
            "reconstruct",
            str(folder),
            "--engine",
            "colmap",
            "--output",
            str(out),
            "--checkpoint",
            str(tmp_path / "no-weights-needed"),
            "--export",
            "ply,json",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == "colmap"
    assert manifest["n_views"] == 6 and manifest["n_sparse_points"] > 100
    assert {"features", "matching", "mapping"} <= set(manifest["timings_s"])
    with np.load(out / "scene.npz") as scene:
        assert scene["world_from_cam"].shape == (6, 4, 4)
        assert scene["sparse_xyz"].shape[0] == manifest["n_sparse_points"]
    glb = trimesh.load(out / "scene.glb")
    assert any(isinstance(g, trimesh.PointCloud) for g in glb.geometry.values())
    assert (out / "pointcloud.ply").is_file() and (out / "cameras.json").is_file()


@pytest.mark.parametrize("enabled", [True, False])
def test_startup_tunes_the_cpu_allocator_before_any_thread(monkeypatch, enabled: bool) -> None:
    import torch

    from core import runtime

    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "tune_cpu_allocator", lambda: calls.append(1) or True)
    cli._configure(False, "reconstruct", enabled)
    assert calls == ([1] if enabled else [])


def test_export_all_says_on_stderr_which_formats_this_engine_skips(tmp_path: Path, capsys) -> None:
    """``--export all`` on a COLMAP (sparse) scene: one stderr line per skipped format with the
    reason; the scene's warnings are in the summary once."""
    import dataclasses
    import time

    import pipeline
    from config import AppConfig
    from tests.core.scene_factory import make_sparse_scene

    scene, _ = make_sparse_scene()
    scene = dataclasses.replace(scene, engine="colmap", warnings=("view_2.png did not register",))
    job = pipeline.job_in_folder(tmp_path / "out")
    result = pipeline.Result(scene, job, "colmap", {"total": 1.0}, None, AppConfig())
    files = cli._write_outputs(result, AppConfig(), cli._formats("all"), job.dir, time.perf_counter())
    err = capsys.readouterr().err
    assert err.count("skipped obj for the colmap engine: no mesh") == 1
    assert err.count("skipped depth for the colmap engine: no depth or confidence maps") == 1
    assert "obj" not in files and "depth" not in files and "ply" in files
    assert cli._summary(job.dir, files, result, 1.0).count("did not register") == 1
