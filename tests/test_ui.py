"""gradio_ui.py without a browser: build_demo, the no-weights start, handlers called as plain functions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import trimesh

import gradio_ui
import pipeline
from config import AppConfig, ModelConfig
from tests.conftest import tiny_config


def _cfg(fixtures_dir: Path, out: Path, checkpoint: str | None = None) -> AppConfig:
    return tiny_config(out, niter=15, checkpoint=checkpoint, max_images=4)


def _component(demo: gr.Blocks, elem_id: str):
    found = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    assert len(found) == 1, elem_id
    return found[0]


def _request(session: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=session)


class _Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[object, str]] = []

    def __call__(self, value, desc: str | None = None, **kwargs) -> None:
        self.calls.append((value, desc or ""))


@pytest.fixture(scope="module")
def images(fixtures_dir: Path) -> list[str]:
    return [str(p) for p in sorted((fixtures_dir / "images").glob("img*.png"))]


def test_build_demo_with_weights_selects_dust3r(fixtures_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(fixtures_dir, tmp_path)
    demo = gradio_ui.build_demo(cfg, pipeline.Pipeline(cfg))
    assert isinstance(demo, gr.Blocks) and not demo.is_running
    assert _component(demo, "engine").value == "dust3r"
    assert _component(demo, "notice").visible is False
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"reconstruct", "render", "package", "realign", "thumbnails"} <= names
    reconstruct = next(d for d in demo.fns.values() if d.api_name == "reconstruct")
    assert reconstruct.concurrency_limit == 1 and reconstruct.concurrency_id == "device"
    kwargs = gradio_ui.launch_kwargs(cfg)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["share"] is False
    assert kwargs["max_file_size"] == int(cfg.ui.max_upload_mb * 1024 * 1024)
    assert str(tmp_path.resolve()) in kwargs["allowed_paths"]
    assert "Escape" in kwargs["head"] and Path(kwargs["css_paths"][0]).is_file()


def test_no_weights_start_selects_colmap_and_says_why(fixtures_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(fixtures_dir, tmp_path, checkpoint=str(tmp_path / "weights" / "model.safetensors"))
    demo = gradio_ui.build_demo(cfg, pipeline.Pipeline(cfg))
    assert _component(demo, "engine").value == "colmap"
    notice = _component(demo, "notice")
    assert notice.visible is True
    assert "COLMAP is selected" in notice.value and "not found" in notice.value and "--checkpoint" in notice.value
    status = _component(demo, "model-status").value
    assert "not available" in status and "COLMAP ready" in status


def test_offline_empty_cache_start_selects_colmap(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = replace(_cfg(fixtures_dir, tmp_path), model=ModelConfig(cache_dir=str(tmp_path / "hf"), device="cpu"))
    demo = gradio_ui.build_demo(cfg, pipeline.Pipeline(cfg))
    assert _component(demo, "engine").value == "colmap"
    notice = _component(demo, "notice").value
    assert "offline" in notice and "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt" in notice


def test_settings_to_config() -> None:
    base = AppConfig()
    engine, cfg = gradio_ui.settings_to_config(
        base,
        {
            "engine": "colmap",
            "image_size": 224,
            "scene_graph": "swin",
            "window_size": 2,
            "cyclic": False,
            "niter": 50,
            "schedule": "cosine",
            "known_focal": "500, 510",
            "view_mode": "pointcloud",
            "min_conf_thr": 5,
            "init_conf_thr": 5,
            "mask_sky": True,
            "cam_size": 0.1,
            "matcher": "sequential",
            "mapper": "incremental",
        },
    )
    assert engine == "colmap"
    assert cfg.preprocess.image_size == 224 and cfg.inference.scene_graph == "swin-2-noncyclic"
    assert cfg.alignment.niter == 50 and cfg.alignment.schedule == "cosine"
    assert cfg.alignment.known_focal == (500.0, 510.0)
    assert cfg.alignment.min_conf_thr == cfg.postprocess.min_conf_thr == 5.0
    assert cfg.viz.as_pointcloud and cfg.viz.cam_size == 0.1 and cfg.postprocess.mask_sky
    assert cfg.colmap.matcher == "sequential" and cfg.colmap.mapper == "incremental"
    assert (
        gradio_ui.settings_to_config(base, {"scene_graph": "oneref", "ref_image": 2})[1].inference.scene_graph
        == "oneref-2"
    )
    with pytest.raises(ValueError, match="focal"):
        gradio_ui.settings_to_config(base, {"known_focal": "wide"})
    with pytest.raises(ValueError, match="image_size"):
        gradio_ui.settings_to_config(base, {"image_size": 100})
    with pytest.raises(ValueError, match="view_mode"):
        gradio_ui.display_config(base, {"view_mode": "hologram"})  # voxels became a view mode (issue 13)


@pytest.fixture(scope="module")
def ui_run(fixtures_dir: Path, images: list[str], tmp_path_factory):
    cfg = _cfg(fixtures_dir, tmp_path_factory.mktemp("ui-jobs"))
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    progress = _Progress()
    out = handlers.reconstruct(images, _request("session-a"), progress, engine="dust3r", niter=15)
    return handlers, out, progress


def test_reconstruct_handler_outputs(ui_run) -> None:
    handlers, (result, glb, gallery, glb_btn, status, model_md), progress = ui_run
    assert isinstance(result, pipeline.Result) and result.scene.n_views == 3
    assert Path(glb).is_file() and Path(glb).suffix == ".glb"
    assert trimesh.load(glb).geometry
    assert glb_btn == glb
    assert len(gallery) == 9 and all(Path(p).is_file() for p, _ in gallery)
    assert "Done" in status and "align" in status and result.job.id in status
    assert "loaded on cpu" in model_md
    zip_path = handlers.package(result)  # chained after the run in the page
    assert Path(zip_path).name == "reconstruction.zip" and Path(zip_path).is_file()
    descs = [d for _, d in progress.calls]
    assert "Pair inference 6/6 pairs" in descs and "Global alignment 15/15 iterations" in descs
    assert any(d.startswith("Loading the DUSt3R network") for d in descs)
    assert handlers.sessions.protected() == {result.job.id}


def test_display_change_reexports_without_rerunning(ui_run, monkeypatch: pytest.MonkeyPatch) -> None:
    handlers, outputs, _ = ui_run
    result, old_glb = outputs[0], outputs[1]

    def fail(*args, **kwargs):
        raise AssertionError("a display change must not re-run the reconstruction")

    monkeypatch.setattr(handlers.pipeline, "reconstruct", fail)
    monkeypatch.setattr(handlers.pipeline, "realign", fail)
    glb, glb_btn, status = handlers.render(result, view_mode="pointcloud", show_cameras=False, min_conf_thr=2.0)
    assert glb != old_glb and glb_btn == glb
    geoms = trimesh.load(glb).geometry.values()
    assert any(isinstance(g, trimesh.PointCloud) for g in geoms)
    assert not any(isinstance(g, trimesh.Trimesh) for g in geoms)
    assert "display" in status
    zip_path = handlers.package(result, view_mode="pointcloud")
    assert Path(zip_path).is_file() and Path(zip_path).parent.parent == Path(glb).parent.parent
    # before any run, display changes do nothing
    assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in handlers.render(None, cam_size=0.1))


def test_realign_handler_uses_saved_pairs(ui_run, monkeypatch: pytest.MonkeyPatch) -> None:
    handlers, outputs, _ = ui_run
    monkeypatch.setattr(pipeline, "get_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no network")))
    progress = _Progress()
    new = handlers.realign(outputs[0], _request("session-a"), progress, niter=25, schedule="cosine")
    result = new[0]
    assert result.job.id != outputs[0].job.id and result.scene.names == outputs[0].scene.names
    assert json.loads(result.job.manifest_path.read_text())["settings"]["alignment"]["niter"] == 25
    assert "Global alignment 25/25 iterations" in [d for _, d in progress.calls]
    with pytest.raises(gr.Error, match="needs a finished DUSt3R"):
        handlers.realign(None, _request("session-a"), progress)


def test_errors_become_messages(ui_run, fixtures_dir: Path, tmp_path: Path) -> None:
    handlers, _, _ = ui_run
    req = _request("session-b")
    with pytest.raises(gr.Error, match="Upload one or more photos"):
        handlers.reconstruct([], req, _Progress())
    too_many = [str(fixtures_dir / "images" / "img0.png")] * 5
    with pytest.raises(gr.Error, match="limit is 4"):
        handlers.reconstruct(too_many, req, _Progress())
    bad = tmp_path / "holiday.jpg"
    bad.write_text("definitely not a jpeg")
    with pytest.raises(gr.Error, match="holiday.jpg") as info:
        handlers.reconstruct([str(fixtures_dir / "images" / "img0.png"), str(bad)], req, _Progress())
    assert "Traceback" not in str(info.value)
    with pytest.raises(gr.Error, match="Invalid setting"):
        handlers.reconstruct([str(bad)], req, _Progress(), known_focal="wide")
    with pytest.raises(gr.Error, match="oneref-9"):
        handlers.reconstruct(
            [str(fixtures_dir / "images" / "img0.png")] * 3, req, _Progress(), scene_graph="oneref", ref_image=9
        )


def test_thumbnails_and_bad_uploads(ui_run, images: list[str], tmp_path: Path) -> None:
    handlers, _, _ = ui_run
    bad = tmp_path / "x.png"
    bad.write_text("nope")
    with pytest.warns(UserWarning, match="x.png: not a readable image"):
        update = handlers.thumbnails([*images, str(bad)])
    assert update.visible is True
    assert [item["caption"] for item in update.value] == ["img0.png", "img1.png", "img2.png"]
    assert handlers.thumbnails(None).visible is False
    with pytest.warns(UserWarning, match="at most 4"):
        handlers.thumbnails(images * 2)


def test_session_jobs_are_protected_until_unload(fixtures_dir: Path, images: list[str], tmp_path: Path) -> None:
    """Issue 12 moved the end of protection from the heartbeat (``unload``) to the deletion of the
    session's state (``release_result``, the gr.State delete_callback), and a full quota now
    refuses new runs instead of letting them run over the limit."""
    cfg = _cfg(fixtures_dir, tmp_path / "jobs")
    cfg = replace(cfg, jobs=replace(cfg.jobs, keep_session_jobs=False))
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    first = handlers.reconstruct(images[:2], _request("s1"), _Progress())[0]
    used_mb = sum(p.stat().st_size for p in first.job.dir.rglob("*") if p.is_file()) / 2**20
    handlers.cfg = replace(cfg, jobs=replace(cfg.jobs, max_total_mb=used_mb * 1.05))  # room for nothing more
    # the size limit is tiny, yet the live session's job survives the second run, which is refused
    with pytest.raises(gr.Error, match="storage limit"):
        handlers.reconstruct(images[:2], _request("s2"), _Progress())
    assert first.job.dir.is_dir()
    handlers.unload(_request("s1"))  # heartbeat lost: the page may reconnect, its state lives on
    assert first.job.dir.is_dir() and handlers.sessions.protected() == {first.job.id}
    handlers.release_result(first)  # Gradio deleted s1's state
    assert not first.job.dir.exists()  # keep_session_jobs=False
    handlers.cfg = cfg
    second = handlers.reconstruct(images[:2], _request("s2"), _Progress())[0]
    assert second.job.dir.is_dir()
    assert handlers.sessions.protected() == {second.job.id}


def test_engine_and_graph_visibility() -> None:
    acc_input, acc_pairs, acc_align, acc_colmap, realign = gradio_ui.UIHandlers.engine_visibility("colmap")
    assert not acc_input.visible and not acc_align.visible and acc_colmap.visible and not realign.visible
    glb_btn, zip_btn = gradio_ui.UIHandlers.glb_ready()
    assert glb_btn.interactive and not zip_btn.interactive and "Preparing" in zip_btn.label
    assert gradio_ui.UIHandlers.zip_ready().interactive
    window, cyclic, ref = gradio_ui.UIHandlers.graph_visibility("oneref")
    assert not window.visible and not cyclic.visible and ref.visible


def test_no_weights_page_reconstructs_with_colmap(fixtures_dir: Path, tmp_path: Path) -> None:
    """The no-weights start does real work: the selected COLMAP engine runs from the page's handler."""
    from PIL import Image

    from tests.core.synthetic_render import render_orbit

    paths = []
    for k, view in enumerate(render_orbit(6, width=320, height=240)):
        paths.append(tmp_path / f"v{k}.png")
        Image.fromarray(view.image).save(paths[-1])
    cfg = _cfg(fixtures_dir, tmp_path / "jobs", checkpoint=str(tmp_path / "missing.safetensors"))
    cfg = replace(cfg, ui=replace(cfg.ui, max_images=8))
    pipe = pipeline.Pipeline(cfg)
    demo = gradio_ui.build_demo(cfg, pipe)
    engine = _component(demo, "engine").value
    assert engine == "colmap"
    handlers = gradio_ui.UIHandlers(cfg, pipe)
    result, glb, gallery, _, status, _ = handlers.reconstruct(
        [str(p) for p in paths], _request("s"), _Progress(), engine=engine, dense=False
    )
    assert result.engine == "colmap" and result.scene.n_views == 6 and result.scene.sparse is not None
    assert "COLMAP" in status and "points" in status
    assert len(gallery) == 6  # RGB only: a sparse scene has no depth or confidence maps
    assert any(isinstance(g, trimesh.PointCloud) for g in trimesh.load(glb).geometry.values())
    # the page's zip holds COLMAP's own model: its camera model and its multi-view tracks
    import zipfile

    import pycolmap

    zip_path = Path(handlers.package(result))
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_path / "unzipped")
    rec = pycolmap.Reconstruction(str(tmp_path / "unzipped" / "colmap" / "sparse" / "0"))
    assert {c.model.name for c in rec.cameras.values()} == {"SIMPLE_RADIAL"}
    tracks = np.array([p.track.length() for p in rec.points3D.values()])
    assert rec.num_reg_images() == 6 and tracks.min() >= 2 and tracks.max() >= 3


def test_display_threshold_never_changes_the_alignment(ui_run, images: list[str]) -> None:
    """Moving the display slider and pressing Reconstruct gives the same alignment as before."""
    handlers, (first, *_), _ = ui_run
    again = handlers.reconstruct(
        images, _request("session-a"), _Progress(), engine="dust3r", niter=15, min_conf_thr=12.0
    )[0]
    assert again.settings.postprocess.min_conf_thr == 12.0
    assert again.settings.alignment.min_conf_thr == first.settings.alignment.min_conf_thr == 3.0
    np.testing.assert_array_equal(again.scene.world_from_cam, first.scene.world_from_cam)
    np.testing.assert_array_equal(again.scene.focals, first.scene.focals)
    for d_again, d_first in zip(again.scene.depths, first.scene.depths, strict=True):
        np.testing.assert_array_equal(d_again, d_first)
    stricter_init = handlers.reconstruct(
        images, _request("session-a"), _Progress(), engine="dust3r", niter=15, init_conf_thr=12.0
    )[0]
    assert stricter_init.settings.alignment.min_conf_thr == 12.0
    assert not np.array_equal(stricter_init.scene.world_from_cam, first.scene.world_from_cam)


def test_internal_errors_are_logged_with_an_id(ui_run, monkeypatch, caplog) -> None:
    handlers, *_ = ui_run

    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(handlers.pipeline, "reconstruct", broken)
    with pytest.raises(gr.Error) as info:
        handlers.reconstruct([str(Path(__file__))], _request("session-b"), _Progress())
    eid = info.value.message.split()[2].rstrip(":")
    assert info.value.message.startswith("Internal error E-") and "KeyError" not in info.value.message
    assert any(eid in r.getMessage() and r.exc_info for r in caplog.records)


def test_video_thumbnails_plan_and_limits(fixtures_dir: Path, images: list[str], tmp_path: Path) -> None:
    """A video upload previews the frames a run keeps; the plan line gives the graph, pairs and memory."""
    from tests.video_clip import pan_clip

    cfg = _cfg(fixtures_dir, tmp_path / "jobs")
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    clip = str(pan_clip(fixtures_dir, tmp_path / "clip.mp4"))
    update = handlers.thumbnails([clip], fps=2, max_frames=4)
    captions = [item["caption"] for item in update.value]
    assert update.visible is True and len(captions) == 4
    assert all(c.startswith("clip_t") and c.endswith("s.jpg") for c in captions)
    assert not any((tmp_path / "jobs" / ".previews").iterdir())  # sampled into a temporary folder, removed
    line = handlers.plan([clip], fps=2, max_frames=4)
    assert "4 video frames" in line and "logwin-2-noncyclic (auto)" in line and "10 pairs" in line
    assert "GB" in line and "clip.mp4: 2.0 s" in line and "kept 4 of 20 frames" in line
    assert "scene graph complete · 12 pairs" in handlers.plan([clip], fps=2, max_frames=4, scene_graph="complete")
    assert "1 photo + 2 video frames" in handlers.plan([images[0], clip], fps=1, max_frames=2)
    assert handlers.plan(None) == ""
    with pytest.raises(gr.Error, match="max_frames 9 is above the limit of 4"):
        handlers.thumbnails([clip], max_frames=9)
    bad = tmp_path / "broken.mov"
    bad.write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning, match="broken.mov: not a readable video"):
        update = handlers.thumbnails([images[0], str(bad)])
    assert [item["caption"] for item in update.value] == ["img0.png"]
    upload = next(b for b in gradio_ui.build_demo(cfg, handlers.pipeline).blocks.values() if b.elem_id == "upload")
    assert {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".png"} <= set(upload.file_types)


def test_api_status_is_markdown_and_render_package_need_a_result(ui_run, fixtures_dir: Path, tmp_path: Path) -> None:
    handlers, (result, _, _, _, status, model_md), _ = ui_run
    assert "<" not in status and "<" not in model_md and "loaded on cpu" in model_md
    for call in (handlers.api_render, handlers.api_package):
        with pytest.raises(gr.Error, match="needs a reconstruction in this session"):
            call(None, view_mode="pointcloud")
    with pytest.raises(gr.Error, match="Nothing to draw"):
        handlers.api_render(result, min_conf_thr=19.0, show_cameras=False)
    with pytest.raises(gr.Error, match="Nothing to draw"):
        handlers.api_package(result, min_conf_thr=19.0)  # no zip of empty files
    cfg = _cfg(fixtures_dir, tmp_path)
    demo = gradio_ui.build_demo(cfg, pipeline.Pipeline(cfg))
    by_name = {d.api_name: d for d in demo.fns.values() if d.api_name}
    assert by_name["render"].fn.__name__ == "api_render" and by_name["package"].fn.__name__ == "api_package"
    assert all(
        d.api_visibility == "private" for n, d in by_name.items() if n.startswith("page_")
    )  # the page's live events are not API
