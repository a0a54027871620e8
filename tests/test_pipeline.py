"""pipeline.py end to end on the tiny fixture models: jobs, manifests, isolation, re-alignment, cleanup."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh

import pipeline
from config import AppConfig, JobConfig, ModelConfig
from core.inputs.preprocessing import ImageLoadError
from core.types import PairPredictions
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def images(fixtures_dir: Path) -> list[Path]:
    return sorted((fixtures_dir / "images").glob("img*.png"))


@pytest.fixture(scope="module")
def tiny_run_and_calls(fixtures_dir: Path, images: list[Path], tmp_path_factory):
    """One reconstruction shared by the read-only checks below, with its progress reports."""
    cfg = tiny_config(tmp_path_factory.mktemp("jobs"))
    calls: list[tuple[str, int, int]] = []
    result = pipeline.reconstruct(images, cfg, progress=lambda s, d, t: calls.append((s, d, t)))
    return result, calls


@pytest.fixture(scope="module")
def tiny_run(tiny_run_and_calls) -> pipeline.Result:
    return tiny_run_and_calls[0]


@pytest.fixture(scope="module")
def progress_calls(tiny_run_and_calls) -> list[tuple[str, int, int]]:
    return tiny_run_and_calls[1]


def test_reconstruct_writes_a_complete_job(tiny_run: pipeline.Result, images: list[Path]) -> None:
    job = tiny_run.job
    assert job.dir.parent == Path(tiny_run.settings.jobs.output_root)
    assert tiny_run.scene.n_views == 3
    assert tiny_run.scene.names == ("img0.png", "img1.png", "img2.png")
    # inputs are byte copies of the uploads, in order
    copies = sorted(job.inputs_dir.iterdir())
    assert [p.name for p in copies] == [p.name for p in images]
    assert all(c.read_bytes() == i.read_bytes() for c, i in zip(copies, images, strict=True))
    assert (job.dir / "settings.json").is_file()
    assert job.scene_path.is_file() and tiny_run.pairs_path == job.pairs_path
    assert not (job.dir / ".running").exists()

    manifest = json.loads(job.manifest_path.read_text())
    assert manifest["status"] == "done" and manifest["engine"] == "dust3r" and manifest["job_id"] == job.id
    for lib in ("python", "torch", "numpy", "gradio", "pycolmap"):
        assert manifest["versions"][lib], lib
    assert manifest["settings"]["alignment"]["niter"] == 20
    assert manifest["settings"]["preprocess"]["image_size"] == 64
    stages = manifest["timings_s"]
    for stage in ("prepare", "load", "model", "encode", "pairs", "align", "outputs", "total"):
        assert stage in stages and stages[stage] >= 0, stage
    assert stages["total"] >= sum(v for k, v in stages.items() if k != "total") * 0.99
    assert [im["name"] for im in manifest["images"]] == ["img0.png", "img1.png", "img2.png"]
    assert manifest["images"][0]["original_size"] == [96, 72]
    assert manifest["images"][0]["processed_size"] == [64, 48]
    assert manifest["n_views"] == 3 and manifest["files"]["scene"] == "scene.npz"


def test_pairs_npz_uses_the_fixture_key_layout(tiny_run: pipeline.Result, fixtures_dir: Path) -> None:
    with np.load(tiny_run.pairs_path) as saved, np.load(fixtures_dir / "tiny_linear_inference.npz") as ref:
        ref_keys = set(ref.files)
        assert ref_keys <= set(saved.files)
        np.testing.assert_array_equal(saved["pairs"], ref["pairs"])
        for key in ("pair0_pred1_pts3d", "pair5_pred2_conf"):
            scale = float(np.abs(ref[key]).max())
            np.testing.assert_allclose(saved[key], ref[key], atol=1e-4 * scale, rtol=0)


def test_progress_reports_every_stage_with_counts(progress_calls: list[tuple[str, int, int]]) -> None:
    stages = list(dict.fromkeys(s for s, _, _ in progress_calls))
    assert stages[:3] == ["prepare", "load", "model"]
    assert {"encode", "pairs", "align", "outputs"} <= set(stages)
    assert ("pairs", 6, 6) in progress_calls
    assert ("align", 20, 20) in progress_calls
    assert pipeline.stage_label("pairs", 3, 6) == "Pair inference 3/6 pairs"
    assert pipeline.stage_label("align", 10, 300) == "Global alignment 10/300 iterations"


def test_export_reuses_the_scene_with_new_display_options(tiny_run: pipeline.Result) -> None:
    cfg = tiny_run.settings
    mesh_files = pipeline.export(tiny_run, cfg.postprocess, cfg.viz, ["glb"])
    cloud_files = pipeline.export(
        tiny_run, cfg.postprocess, replace(cfg.viz, view_mode="pointcloud", show_cameras=False), ["glb"]
    )
    assert mesh_files["glb"].parent != cloud_files["glb"].parent  # each export gets its own folder
    assert mesh_files["glb"].parent.parent == tiny_run.job.dir / "exports"
    mesh = trimesh.load(mesh_files["glb"])
    cloud = trimesh.load(cloud_files["glb"])
    assert any(isinstance(g, trimesh.Trimesh) and len(g.faces) > 100 for g in mesh.geometry.values())
    assert any(isinstance(g, trimesh.PointCloud) for g in cloud.geometry.values())
    assert not any(isinstance(g, trimesh.Trimesh) for g in cloud.geometry.values())  # no cameras, no mesh
    stricter = pipeline.export(
        tiny_run,
        replace(cfg.postprocess, min_conf_thr=8.0, outlier_removal=False),
        replace(cfg.viz, view_mode="pointcloud", show_cameras=False),
        ["glb"],
    )
    n_loose = sum(len(g.vertices) for g in cloud.geometry.values())
    n_strict = sum(len(g.vertices) for g in trimesh.load(stricter["glb"]).geometry.values())
    assert 0 < n_strict < n_loose
    with pytest.raises(ValueError, match="unknown export format"):
        pipeline.export(tiny_run, cfg.postprocess, cfg.viz, ["gif"])


def test_render_views_gallery(tiny_run: pipeline.Result) -> None:
    views = pipeline.render_views(tiny_run, tiny_run.settings.viz)
    assert len(views) == 9  # RGB, depth, confidence per view
    assert all(p.is_file() and p.parent == tiny_run.job.dir / "views" for p, _ in views)
    assert "img1.png" in views[3][1]


def test_two_concurrent_jobs_share_no_file(fixtures_dir: Path, images: list[Path], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=10)
    results: dict[int, pipeline.Result] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            res = pipeline.reconstruct(images, cfg)
            pipeline.export(res, cfg.postprocess, cfg.viz, ["glb", "npz"])
            results[k] = res
        except BaseException as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    a, b = results[0].job, results[1].job
    assert a.id != b.id and a.dir != b.dir
    files_a = {p.resolve() for p in a.dir.rglob("*") if p.is_file()}
    files_b = {p.resolve() for p in b.dir.rglob("*") if p.is_file()}
    assert files_a and files_b and not files_a & files_b
    # nothing was written beside the two job folders
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == sorted([a.id, b.id])
    for job in (a, b):
        assert json.loads(job.manifest_path.read_text())["status"] == "done"


def test_realign_from_saved_pairs_without_the_network(
    tiny_run: pipeline.Result, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("realign must not load the model")

    monkeypatch.setattr(pipeline, "get_model", no_network)
    cfg = replace(
        tiny_run.settings,
        alignment=replace(tiny_run.settings.alignment, niter=40, schedule="cosine"),
        jobs=replace(tiny_run.settings.jobs, output_root=tmp_path),
    )
    calls = []
    res = pipeline.realign(tiny_run.pairs_path, cfg, progress=lambda s, d, t: calls.append((s, d, t)))
    assert res.job.dir.parent == tmp_path and res.job.id != tiny_run.job.id
    assert res.scene.n_views == 3
    assert res.scene.names == tiny_run.scene.names  # from the manifest beside pairs.npz
    assert res.scene.original_sizes == tiny_run.scene.original_sizes
    assert ("align", 40, 40) in calls
    manifest = json.loads(res.job.manifest_path.read_text())
    assert manifest["source_pairs"] == str(tiny_run.pairs_path.resolve())
    assert manifest["settings"]["alignment"]["schedule"] == "cosine"
    # same predictions, same alignment settings -> same scene as the original run
    same = pipeline.realign(tiny_run.pairs_path, replace(cfg, alignment=tiny_run.settings.alignment))
    np.testing.assert_allclose(same.scene.focals, tiny_run.scene.focals, rtol=1e-3)


def test_realign_without_images_gives_grey_points(fixtures_dir: Path, tmp_path: Path) -> None:
    with np.load(fixtures_dir / "tiny_linear_inference.npz") as ref:
        stripped = {k: ref[k] for k in ref.files if not k.startswith("img_")}
    path = tmp_path / "noimg.npz"
    np.savez(path, **stripped)
    assert PairPredictions.load_npz(path).images is None
    cfg = tiny_config(tmp_path / "jobs", niter=10)
    res = pipeline.realign(path, cfg)
    for img in res.scene.images:
        assert img.dtype == np.uint8 and (img == img[..., :1]).all()  # grey: R == G == B
    assert any("no images" in w for w in res.scene.warnings)


def test_bad_inputs_are_clear_errors(fixtures_dir: Path, images: list[Path], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs")
    with pytest.raises(ValueError, match="unknown engine 'nerf'"):
        pipeline.reconstruct(images, cfg, engine="nerf")
    with pytest.raises(ImageLoadError, match="missing.png: file not found"):
        pipeline.reconstruct([images[0], tmp_path / "missing.png"], cfg)
    bad = tmp_path / "fake.png"
    bad.write_text("not an image")
    with pytest.raises(ImageLoadError, match="fake.png"):
        pipeline.reconstruct([images[0], bad], cfg)
    # the failed run left a manifest that says so
    failed = [json.loads(p.read_text()) for p in (tmp_path / "jobs").glob("*/manifest.json")]
    assert failed and all(m["status"] == "failed" and "fake.png" in m["error"] for m in failed)
    with pytest.raises(ValueError, match="pair predictions file not found"):
        pipeline.realign(tmp_path / "none.npz", cfg)


def test_folder_argument_means_sorted_images(fixtures_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.png", "c.PNG"):
        (folder / name).write_bytes((fixtures_dir / "images" / "img0.png").read_bytes())
    (folder / "notes.txt").write_text("x")
    assert [p.name for p in pipeline.expand_image_paths([folder])] == ["a.png", "b.png", "c.PNG"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageLoadError, match="no images"):
        pipeline.expand_image_paths([empty])


def _make_job(root: Path, age_s: float, size: int, now: float) -> pipeline.Job:
    job = pipeline.create_job(root)
    (job.dir / "blob.bin").write_bytes(b"\0" * size)
    for p in [job.dir, *job.dir.iterdir()]:
        os.utime(p, (now - age_s, now - age_s))
    return job


def test_cleanup_by_age_and_size_keeps_protected_and_foreign_folders(tmp_path: Path) -> None:
    now = time.time()
    root = tmp_path / "jobs"
    old = _make_job(root, 3 * 3600, 1000, now)
    old_protected = _make_job(root, 3 * 3600, 1000, now)
    mid = _make_job(root, 1800, 600_000, now)
    new = _make_job(root, 60, 600_000, now)
    running = _make_job(root, 5 * 3600, 10, now)
    (running.dir / ".running").write_text(str(os.getpid()))  # a live process (a dead one: interrupted, cleaned)
    foreign = root / "my-notes"
    foreign.mkdir()
    os.utime(foreign, (now - 10 * 3600, now - 10 * 3600))
    cfg = JobConfig(output_root=root, max_age_hours=2.0, max_total_mb=1.0)  # 1 MiB: mid + new exceed it
    deleted = pipeline.cleanup_jobs(cfg, protected={old_protected.id}, now=now)
    assert set(deleted) == {old.id, mid.id}  # too old; then the least recent while over the size limit
    assert new.dir.is_dir() and old_protected.dir.is_dir() and running.dir.is_dir() and foreign.is_dir()
    assert pipeline.cleanup_jobs(cfg, protected={old_protected.id}, now=now) == []


def test_job_ids_are_unique_and_sortable(tmp_path: Path) -> None:
    jobs = [pipeline.create_job(tmp_path) for _ in range(20)]
    assert len({j.id for j in jobs}) == 20
    assert all(j.dir.is_dir() and (j.dir / ".dust3r-job").is_file() for j in jobs)


def test_weights_availability_never_downloads(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pipeline.weights_availability(ModelConfig(checkpoint=str(fixtures_dir / "tiny_linear"))) is None
    missing = pipeline.weights_availability(ModelConfig(checkpoint=str(tmp_path / "model.safetensors")))
    assert missing and "not found" in missing and "--checkpoint" in missing
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = pipeline.weights_availability(ModelConfig(cache_dir=str(tmp_path / "hf")))
    assert offline and "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt" in offline and "offline" in offline
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))
    engines = pipeline.make_engines(AppConfig(model=ModelConfig(checkpoint=str(tmp_path / "nope.pth"))))
    assert set(engines) == {"dust3r", "colmap"}
    assert engines["dust3r"].availability() is not None
    assert engines["colmap"].availability() is None
