"""The page's live handlers (ui_live, ui_progress, ui_uploads, ui_restore) called as plain functions:
progress and time left, Cancel, failed runs that keep the previous result, refused display
changes, options that do not apply, upload flags, estimates, the example, the reload restore."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

import pipeline
from config import ModelConfig
from core.errors import Cancelled
from core.inputs.exif_gps import attach_gps
from tests.conftest import tiny_config
from tests.core.scene_factory import make_sparse_scene
from tests.core.synthetic_town import EPSG, make_town, town_scene, write_town_jpegs
from ui_handlers import UIHandlers, status_text
from ui_live import DISPLAY_OUTPUTS, RUN_OUTPUTS, LivePage
from ui_progress import Calibration, RunProgress, estimate_run, fmt_duration, plan_html, progress_html
from ui_restore import load_result
from ui_uploads import example_files, tiles_html, upload_note, upload_tiles


def _req(session: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=session)


def _skipped(value) -> bool:
    return isinstance(value, dict) and value == {"__type__": "update"}


def _named(values: tuple, names: tuple[str, ...] = RUN_OUTPUTS) -> dict:
    assert len(values) == len(names)
    return {n: v for n, v in zip(names, values, strict=True) if not _skipped(v)}


def _drain(gen, names: tuple[str, ...] = RUN_OUTPUTS) -> list[dict]:
    return [_named(v, names) for v in gen]


def _last(yields: list[dict]) -> dict:
    """The last value each output got."""
    out: dict = {}
    for y in yields:
        out.update(y)
    return out


def _file(update) -> Path:
    """The file a component update holds (Gradio keeps it as FileData)."""
    value = getattr(update, "value", update)
    return Path(value["path"] if isinstance(value, dict) else value)


@pytest.fixture(scope="module")
def images(fixtures_dir: Path) -> list[str]:
    return [str(p) for p in sorted((fixtures_dir / "images").glob("img*.png"))]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> LivePage:
    cfg = tiny_config(tmp_path_factory.mktemp("live-jobs"), niter=15, max_images=4)
    return LivePage(UIHandlers(cfg, pipeline.Pipeline(cfg)), Calibration(gflops=50.0))


@pytest.fixture(scope="module")
def first(live: LivePage, images: list[str]) -> dict:
    """A finished live run (its yields and its last outputs)."""
    yields = _drain(live.run(images, None, None, _req("a"), engine="dust3r", niter=15))
    return {"yields": yields, "final": _last(yields)}


def test_a_run_shows_its_stages_with_elapsed_and_left_then_the_result(live: LivePage, first: dict) -> None:
    yields, final = first["yields"], first["final"]
    cards = [y["progress"] for y in yields if "run-progress" in str(y.get("progress", ""))]
    assert cards and all("elapsed" in c and ("left" in c or "estimating" in c) for c in cards)
    stages = " ".join(cards)
    assert "Writing the 3D model" in stages and "Drawing the depth" in stages and "Packaging" in stages
    running = [y["status"] for y in yields if str(y.get("status", "")).startswith("Running:")]
    assert running and not any("Upload photos" in s for s in running)
    assert yields[0]["run_btn"].interactive is False and yields[0]["cancel_btn"].visible is True
    result = final["result"]
    assert result.scene.n_views == 3 and final["last_job"] == result.job.id
    assert final["status"].startswith("**Done** · 3 views") and "<" not in final["status"]
    assert "points shown" in final["status"] and result.job.id in final["status"]
    assert _file(final["zip"]).name == "reconstruction.zip" and final["zip"].interactive
    assert final["viewer"].label.endswith(result.job.id) and _file(final["viewer"]).suffix == ".glb"
    assert final["cancel_btn"].visible is False and final["run_btn"].interactive is True
    assert final["realign_btn"].interactive is True  # a DUSt3R run with its pairs saved
    assert "Done in" in final["progress"] and live.board.get("a") is None
    assert live.calib.scale(f"dust3r:{result.settings.model.checkpoint}") != 1.0  # learned from the run


def test_cancel_stops_between_iterations_and_keeps_the_previous_result(live: LivePage, images, first) -> None:
    previous = first["final"]["result"]
    gen = live.run(images, previous, None, _req("c"), engine="dust3r", niter=2000)
    seen = []
    for values in gen:
        y = _named(values)
        seen.append(y)
        if "Global alignment" in str(y.get("progress", "")):
            assert live.cancel(_req("c")).interactive is False
            break
    rest = _drain(gen)
    final = _last(seen + rest)
    assert final["status"].startswith("Cancelled after") and "previous result is still shown" in final["status"]
    assert "result" not in final and "viewer" not in final  # the previous model stays
    job_dirs = sorted(p for p in Path(live.h.cfg.jobs.output_root).iterdir() if p.is_dir())
    manifest = json.loads((job_dirs[-1] / "manifest.json").read_text())
    assert manifest["status"] == "cancelled" and "global alignment" in manifest["error"]
    assert live.cancel(_req("c")).visible is False  # nothing left to cancel


def test_pipeline_cancel_hook_raises_cancelled(tmp_path: Path, images: list[str]) -> None:
    cfg = tiny_config(tmp_path, niter=5)
    with pytest.raises(Cancelled, match="cancelled during"):
        pipeline.reconstruct(images, cfg, cancel=lambda: True)
    (job,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((job / "manifest.json").read_text())["status"] == "cancelled"


def test_a_failed_run_keeps_the_previous_result_and_says_so_once(live: LivePage, first, tmp_path: Path) -> None:
    previous = first["final"]["result"]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64)
    shown: list[gr.Error] = []
    for attempt in range(2):
        gen = live.run([str(bad), str(bad)], previous, None, _req("f"), engine="dust3r")
        seen = []
        with pytest.raises(gr.Error) as info:
            for values in gen:
                seen.append(_named(values))
        shown.append(info.value)
        final = _last(seen)
        assert "result" not in final and "viewer" not in final and "gallery" not in final
        assert final["status"].startswith("**Reconstruction failed**: broken.jpg")
        assert "previous result is still shown" in final["status"] and final["run_btn"].interactive
        assert attempt == 0 or info.value.message == shown[0].message
    assert shown[0].message.startswith("Reconstruction failed: broken.jpg") and "Traceback" not in shown[0].message
    assert shown[0].visible is True and shown[1].visible is False  # the same error is not stacked
    assert shown[0].duration is not None  # it goes away by itself


def _page_error(gen) -> str:
    with pytest.raises(gr.Error) as info:
        next(gen)
    return info.value.message


def test_checks_before_a_run_are_titled_errors(live: LivePage, images: list[str]) -> None:
    too_many = _page_error(live.run([images[0]] * 5, None, None, _req("t"), engine="dust3r"))
    assert too_many.startswith("Too many images: 5 images uploaded; the limit is 4")
    assert _page_error(live.run([], None, None, _req("t"), engine="dust3r")).startswith(
        "No images: Upload one or more photos"
    )
    assert _page_error(live.run(images, None, None, _req("t"), known_focal="wide")).startswith("Invalid setting: ")


def test_offline_without_weights_fails_at_once_and_says_what_to_do(tmp_path: Path, monkeypatch, images) -> None:
    import core.checkpoint
    import ui_handlers

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(core.checkpoint, "hub_reachable", lambda timeout_s=1.5: False)
    monkeypatch.setattr(ui_handlers, "hub_reachable", lambda timeout_s=1.5: False)
    cfg = tiny_config(tmp_path)
    cfg = cfg.__class__(**{**cfg.__dict__, "model": ModelConfig(cache_dir=str(tmp_path / "hf"), device="cpu")})
    page = LivePage(UIHandlers(cfg, pipeline.Pipeline(cfg)), Calibration(gflops=50.0))
    why = page.h.dust3r_availability()
    assert why and "cannot be downloaded here" in why and "download on the first" not in why
    assert "--checkpoint" in why and "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt" in why
    html = page.model_html("dust3r")
    assert "not available here" in html and "cannot be downloaded here" in html and "COLMAP works offline" in html
    assert "cannot be downloaded" not in page.model_html("colmap")
    message = _page_error(page.run(images, None, None, _req("o"), engine="dust3r"))
    assert message.startswith("DUSt3R weights unavailable: ") and "cannot be downloaded here" in message
    assert not any(p.is_dir() for p in tmp_path.glob("2*"))  # no job was started
    assert "download on the first" not in page.h.model_status_md()


def test_display_change_that_would_empty_the_view_is_refused_and_set_back(live: LivePage, first) -> None:
    final = first["final"]
    result, shown = final["result"], final["shown"]
    before = shown["display"]["min_conf_thr"]
    with pytest.warns(UserWarning, match=r"Nothing to draw with Confidence threshold 19.0: no point would be left"):
        out = _drain(
            live.render(result, shown, _req("d"), **{**shown["display"], "min_conf_thr": 19.0}), DISPLAY_OUTPUTS
        )
    assert out == [{"min_conf_thr": before}]  # only the control, set back; no model, no zip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(live.render(result, shown, _req("d"), **{**shown["display"], "min_conf_thr": 19.0}))
    assert not [w for w in caught if "Nothing to draw" in str(w.message)]  # not stacked
    # an ordinary change: the model first, then the zip that matches it
    out = _drain(
        live.render(result, shown, _req("d"), **{**shown["display"], "view_mode": "pointcloud"}), DISPLAY_OUTPUTS
    )
    assert out[0]["viewer"].label.endswith(result.job.id) and not out[0]["zip"].interactive
    assert out[0]["shown"]["display"]["view_mode"] == "pointcloud" and "points shown" in out[0]["status"]
    assert out[1]["zip"].interactive and _file(out[1]["zip"]).is_file()
    assert _drain(live.render(None, None, _req("d")), DISPLAY_OUTPUTS) == [{}]  # before any result: nothing


def test_a_sparse_result_turns_off_the_options_that_cannot_change_it(live: LivePage, tmp_path: Path) -> None:
    scene, _ = make_sparse_scene()
    job = pipeline.create_job(tmp_path)
    result = pipeline.Result(scene, job, "colmap", {"total": 1.0}, None, live.h.cfg)
    final = _last(_drain(live._show("s", result, None, None)))
    assert final["view_mode"]["value"] == "pointcloud" and final["view_mode"]["interactive"] is False
    for name in ("min_conf_thr", "clean_depth", "mask_sky"):
        assert final[name]["interactive"] is False, name
    assert final["display_note"].visible and "need dense depth" in final["display_note"].value
    assert "need dense depth" in final["gallery"].label and len(final["gallery"].value) == 3
    assert final["realign_btn"].interactive is False
    assert final["shown"]["forced_points"] is True
    # the next dense result gives Mesh back
    dense_result = next(r for r in reversed(live._recent.values()) if r.scene.is_dense)
    dense = _last(_drain(live._show("s", dense_result, final["shown"], None)))
    assert dense["view_mode"] == {"__type__": "update", "interactive": True, "value": "mesh"}


def test_uploads_are_flagged_as_they_drop(live: LivePage, images: list[str], tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    files = [*images, images[0], images[1], str(notes)]
    thumbs, note, plan = live.uploads(files, _req("u"), engine="dust3r")
    assert thumbs.visible and thumbs.value.count("<figure") == 6 and thumbs.value.count("thumb bad") == 2
    assert "notes.txt: not an image" in thumbs.value and "img1.png: over the limit of 4" in thumbs.value
    assert note.visible and "notes.txt is not an image" in note.value and "1 photo is over the limit of 4" in note.value
    assert "4 photos" in plan  # the usable ones
    thumbs, note, plan = live.uploads(images, _req("u"), engine="dust3r")
    assert thumbs.value.count("thumb bad") == 0 and not note.visible and "3 photos · 6 pairs" in plan
    tiles = upload_tiles([Path(images[0])], 4)
    assert upload_note(tiles, 4) == "" and "<img src='data:image/jpeg;base64," in tiles_html(tiles)


def test_estimates_and_the_plan(live: LivePage) -> None:
    from config import AppConfig, apply_settings

    calib = Calibration(gflops=50.0)
    complete = apply_settings(AppConfig(), {"scene_graph": "complete"})  # "auto" is count-based on main
    big = estimate_run(complete, "dust3r", 32, calib)
    assert big.n_pairs == 32 * 31 and big.total > 3600
    html = plan_html(big, complete)
    assert "32 photos · 992 pairs" in html and "Slow on a CPU" in html
    assert "smaller image size" in html and "early stop" in html and "sliding-window" in html
    one = estimate_run(AppConfig(), "dust3r", 1, calib)
    assert one.n_pairs == 2 and "1 photo (paired with itself)" in plan_html(one, AppConfig())
    colmap = estimate_run(AppConfig(), "colmap", 8, calib)
    assert colmap.n_pairs == 28 and "Slow" not in plan_html(colmap, AppConfig())
    assert fmt_duration(95) == "1 min 40 s" and fmt_duration(7300) == "2 h 02 min"


def test_progress_time_left_and_indeterminate_stages() -> None:
    from config import AppConfig

    now = [0.0]
    est = estimate_run(AppConfig(), "colmap", 8, Calibration(gflops=50.0))
    run = RunProgress(est, clock=lambda: now[0])
    run.report("features", 0, 8)
    now[0] = 4.0
    run.report("features", 4, 8)
    view = run.view()
    assert view.fraction == 0.5 and view.elapsed == 4.0 and view.label == "SIFT features 4/8 images"
    assert view.eta == pytest.approx(
        4.0 + sum(est.stages[s] for s in ("matching", "mapping", "outputs", *("glb", "views", "zip"))), rel=0.01
    )
    now[0] = 9.0
    run.report("mapping", 0, 8)  # global mapping reports no count while it runs
    mapping = run.view()
    assert mapping.fraction is None and "indeterminate" in progress_html(mapping)
    run.cancel()
    assert run.cancelled() and "stopping after the current step" in progress_html(run.view())


def test_the_example_is_ours_and_runs_offline(live: LivePage) -> None:
    files = example_files()
    assert len(files) == 8 and all(p.suffix == ".jpg" and p.stat().st_size < 100_000 for p in files)
    value, engine = live.example()
    assert value == [str(p) for p in files[:4]]  # this page allows 4 photos per run
    assert engine == "colmap"  # no weights, seconds on a CPU


def test_reload_restores_the_last_result_or_says_it_is_gone(live: LivePage, first, tmp_path: Path) -> None:
    result = first["final"]["result"]
    live._recent.clear()  # as after a server restart: read back from the job folder
    final = _last(_drain(live.restore(result.job.id, _req("r"))))
    restored = final["result"]
    assert restored.job.id == result.job.id and restored.scene.n_views == 3 and final["last_job"] == result.job.id
    np.testing.assert_allclose(restored.scene.world_from_cam, result.scene.world_from_cam, atol=1e-6)
    assert restored.settings.alignment.niter == 15 and restored.pairs_path is not None
    assert final["status"].startswith("**Done** · 3 views") and _file(final["viewer"]).is_file()
    assert "Restored" in final["progress"] and final["min_conf_thr"]["value"] == 3.0
    assert result.job.id in live.h.sessions.protected()
    gone = _last(_drain(live.restore("20200101-000000-0123abcd", _req("r"))))
    assert "no longer on this server" in gone["status"] and gone["last_job"] is None
    assert load_result(tmp_path, "../../etc", live.h.cfg) is None  # not a job id
    assert _last(_drain(live.restore(None, _req("r")))).keys() == {"model"}


def test_status_is_markdown_and_one_photo_is_one_photo(live: LivePage, images: list[str]) -> None:
    final = _last(_drain(live.run(images[:1], None, None, _req("one"), engine="dust3r", niter=5)))
    status = final["status"]
    assert "1 photo (paired with itself)" in status and "2 views" not in status
    assert "<" not in status and "<" not in status_text(final["result"])


def test_the_status_says_where_the_scene_is_and_the_gis_files_are_offered(live: LivePage, first, tmp_path) -> None:
    """Photos with GPS: CRS and RMSE in the status, the LAZ/LAS, DSM/DTM/ortho and georef.json
    offered; a known distance (display setting) makes a scene without GPS metric; none: why not."""
    town = make_town(grid=(3, 3), size=(48, 36))
    scene = attach_gps(town_scene(town)[0], write_town_jpegs(town, tmp_path / "photos"))
    result = pipeline.Result(scene, pipeline.create_job(tmp_path), "dust3r", {"total": 1.0}, None, live.h.cfg)
    final = _last(_drain(live._show("g", result, None, None)))
    assert f"Georeferenced: WGS 84 / UTM zone 32N (EPSG:{EPSG}), RMSE 0.00 m over 9 of 9 cameras" in final["status"]
    assert "· metres, " in final["status"] and "scale unknown" not in final["status"]
    offered = [Path(f["path"]).name for f in final["gis"].value]
    assert final["gis"].visible and offered[:3] == ["pointcloud.laz", "pointcloud.las", "dsm.tif"]
    assert {"ortho.tif", "georef.json"} <= set(offered)
    # the first run's photos carry no GPS: the status says why, and there is nothing to offer
    plain = first["final"]
    assert "Not georeferenced: 0 of 3 photos carry a GPS position" in plain["status"]
    assert plain["gis"].visible is False and "scale unknown" in plain["status"]
    a, b = first["final"]["result"].scene.names[:2]
    shown = first["final"]["shown"]
    scaled = _last(
        _drain(live.render(first["final"]["result"], shown, _req("a"), scale_from=f"{a},{b},2.5"), DISPLAY_OUTPUTS)
    )
    assert f"Metric, not on the map: metric from scale_from ({a} to {b} = 2.5 m)" in scaled["status"]
    assert "· metres, " in scaled["status"] and scaled["gis"].value[-1]["orig_name"] == "georef.json"
