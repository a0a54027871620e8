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
from tests.fault_helpers import png_header

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
        (["align", "{tmp}/fake.png", "--output", "{tmp}/o"], cli.EXIT_INPUT, "not a readable .npz"),  # issue 12: 1 -> 3
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
            "--sparse",
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


def test_reconstruct_a_video_with_fps_and_max_frames(fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    """`reconstruct clip.mp4 --fps 2 --max-frames 4 -o out`: 4 frames by time, the sequence graph, the manifest."""
    from tests.video_clip import pan_clip

    clip = pan_clip(fixtures_dir, tmp_path / "clip.mp4")
    out = tmp_path / "out"
    argv = [
        str(clip),
        "--fps",
        "2",
        "--max-frames",
        "4",
        "-o",
        str(out),
        "--checkpoint",
        str(fixtures_dir / "tiny_linear"),
    ]
    code = cli.main(
        ["reconstruct", *argv, "--image-size", "64", "--device", "cpu", "--niter", "10", "--precision", "fp32"]
    )
    assert code == 0, capsys.readouterr().err
    assert "4 views" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    names = [im["name"] for im in manifest["images"]]
    assert len(names) == 4 and all(n.startswith("clip_t") and n.endswith("s.jpg") for n in names)
    assert all((out / "inputs" / "frames" / n).is_file() for n in names)
    (video,) = manifest["videos"]
    assert video["video"] == "clip.mp4" and video["duration_s"] == pytest.approx(2.0, abs=0.15)
    assert video["fps"] == pytest.approx(10.0, rel=0.05) and video["rotation"] == 0
    assert [f["file"] for f in video["frames"]] == names
    times = [f["time_s"] for f in video["frames"]]
    assert [int(t // 0.5) for t in times] == [0, 1, 2, 3]  # one frame per 1/fps interval
    assert names == [f"clip_t{t:06.2f}s.jpg" for t in times] and all(f["sharpness"] > 0 for f in video["frames"])
    assert video["sampling"]["fps"] == 2.0 and video["sampling"]["max_frames"] == 4
    # auto scene graph: a log window over time for video frames, not the complete graph
    assert manifest["settings"]["inference"]["graph"] == "auto"
    assert manifest["scene_graph"] == "logwin-2-noncyclic" and manifest["engine_info"]["n_pairs"] == 10
    assert "frames" in manifest["timings_s"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"\x00\x00\x00\x18ftypmp42" + b"\0" * 64, "broken.mp4: not a readable video"), (None, "no video stream")],
)
def test_bad_video_is_a_one_line_input_error(content, needle, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.mp4"
    if content is not None:
        bad.write_bytes(content)
    else:  # a stream with no video: sound only
        import av

        with av.open(str(bad), "w") as container:
            stream = container.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)
    assert cli.main(["reconstruct", str(bad), "-o", str(tmp_path / "o"), "--device", "cpu"]) == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err and _last_line(err).startswith("error: broken.mp4") and needle in _last_line(err)


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["reconstruct", "{img}", "-o", "{tmp}/file.txt"], cli.EXIT_USAGE, "file.txt exists and is not a folder"),
        (["reconstruct", "{img}", "-o", "/proc/no/such/place"], cli.EXIT_USAGE, "cannot be created or written"),
        (["reconstruct", "{img}", "-o", "{tmp}/o", "--lr", "inf"], cli.EXIT_USAGE, "lr must be a finite number"),
        # the count is checked before the network: with missing weights the exit is still 2, not 4
        (
            ["reconstruct", "{img}", "{img}", "{img}", "-o", "{tmp}/o", "--known-focal", "50,60", "--checkpoint", "{tmp}/none"],
            cli.EXIT_USAGE,
            "known_focal must hold 1 value or one per image (3), got 2",
        ),
        (["align", "{tmp}/other.npz", "-o", "{tmp}/o"], cli.EXIT_INPUT, "other.npz: no 'pairs' array"),
        (["align", "{tmp}/cut.npz", "-o", "{tmp}/o"], cli.EXIT_INPUT, "cut.npz: not a readable"),
        (["reconstruct", "{img}", "{img}", "{tmp}/tiny.png", "-o", "{tmp}/o", "--engine", "colmap"], cli.EXIT_INPUT,
         "tiny.png: 8x8 is too small; each side needs at least 16 pixels"),
        (["reconstruct", "{img}", "{img}", "{tmp}/tiny.png", "-o", "{tmp}/o", "--checkpoint", "{ckpt}"], cli.EXIT_INPUT,
         "tiny.png: 8x8 is too small; each side needs at least 16 pixels"),
        (["reconstruct", "{img}", "{img}", "{tmp}/bomb.png", "-o", "{tmp}/o", "--engine", "colmap"], cli.EXIT_INPUT,
         "bomb.png: rejected as a possible decompression bomb"),
        (["reconstruct", "{img}", "{img}", "{tmp}/big.png", "-o", "{tmp}/o", "--engine", "colmap"], cli.EXIT_INPUT,
         "(possible decompression bomb)"),
        (["reconstruct", "{img}", "-o", "{tmp}/o", "--checkpoint", "{tmp}/absurd"], cli.EXIT_WEIGHTS,
         "absurd/config.json: enc_embed_dim must be an int in [1, 16384], got -64"),
        (["reconstruct", "{img}", "-o", "{tmp}/o", "--checkpoint", "{tmp}/deep"], cli.EXIT_WEIGHTS,
         "its config describes a network of at least"),
    ],
)  # fmt: skip
def test_issue12_exit_codes_match_the_readme(args, code, needle, fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "file.txt").write_text("x")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    (tmp_path / "cut.npz").write_bytes((fixtures_dir / "tiny_linear_inference.npz").read_bytes()[:5000])
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    (tmp_path / "bomb.png").write_bytes(png_header(20000, 20000))  # over Pillow's own limit
    (tmp_path / "big.png").write_bytes(png_header(13000, 13000))  # over PreprocessConfig.max_pixels
    config = json.loads((fixtures_dir / "tiny_linear" / "config.json").read_text())
    for name, change in (("absurd", {"enc_embed_dim": -64}), ("deep", {"enc_depth": 200})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**config, **change}))
        (tmp_path / name / "model.safetensors").symlink_to(fixtures_dir / "tiny_linear" / "model.safetensors")
    subs = {"tmp": str(tmp_path), "img": str(fixtures_dir / "images" / "img0.png")}
    subs["ckpt"] = str(fixtures_dir / "tiny_linear")
    argv = [a.format(**subs) for a in args] + ["--device", "cpu"] * (args[0] == "reconstruct")
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = _last_line(err)
    assert last.startswith("error:") and needle in last, err


def test_summary_says_once_which_formats_this_engine_skips(tmp_path: Path, capsys) -> None:
    """A COLMAP (sparse) run: the summary names the skipped formats with the reason (from the
    manifest the pipeline wrote); the scene's warnings are in the summary once."""
    import dataclasses

    import pipeline
    from config import AppConfig
    from core import jobs
    from tests.core.scene_factory import make_sparse_scene

    scene, _ = make_sparse_scene()
    scene = dataclasses.replace(scene, engine="colmap", warnings=("view_2.png did not register",))
    job = pipeline.job_in_folder(tmp_path / "out")
    skipped = {"obj": "no mesh", "depth": "no depth or confidence maps"}
    jobs.update_manifest(job, exports={"skipped": skipped})
    result = pipeline.Result(scene, job, "colmap", {"total": 1.0}, None, AppConfig())
    summary = cli._summary(job.dir, {}, result, 1.0)
    assert summary.count("skipped obj: no mesh") == 1
    assert summary.count("skipped depth: no depth or confidence maps") == 1
    assert summary.count("did not register") == 1
