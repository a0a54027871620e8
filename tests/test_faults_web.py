"""Fault injection in the web app (issue 12): lost heartbeats, expired results, racing exports,
quotas and per-run limits (handlers called as plain functions), hostile clients against a live
server, thumbnails of decompression bombs, server paths. Bounded: tiny model, 64-px images; the
race runs 1 ``/package`` against 3 ``/render`` twice (with and without the export grace period).
"""

from __future__ import annotations

import json
import shutil
import threading
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest
from PIL import Image, ImageFile

import gradio_ui
import pipeline
from config import UIConfig
from tests.conftest import tiny_config
from tests.fault_helpers import png_header
from tests.live_app import free_port

# --------------------------------------------------------------------------------------------
# Sessions, exports, quotas (handlers called as plain functions)
# --------------------------------------------------------------------------------------------


def _request(session: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=session)


def _no_progress(*args, **kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def images(fixtures_dir: Path) -> list[str]:
    return [str(p) for p in sorted((fixtures_dir / "images").glob("img*.png"))]


def test_lost_heartbeat_during_another_users_run_loses_nothing(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=10, max_images=4)
    cfg = replace(cfg, jobs=replace(cfg.jobs, keep_session_jobs=False))
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    mine = handlers.reconstruct(images, _request("mine"), _no_progress)[0]
    handlers.unload(_request("mine"))  # the heartbeat drops; the page is still open
    used = sum(p.stat().st_size for p in (tmp_path / "jobs").rglob("*") if p.is_file()) / 2**20
    handlers.cfg = replace(cfg, jobs=replace(cfg.jobs, max_total_mb=used * 1.5, max_age_hours=1e-6))
    for other in range(2):  # other users' runs: cleanup by age and size may not touch my job
        try:
            handlers.reconstruct(images[:2], _request(f"other-{other}"), _no_progress)
        except gr.Error as e:
            assert "storage limit" in e.message
    assert mine.job.dir.is_dir() and mine.pairs_path.is_file() and mine.job.inputs_dir.is_dir()
    glb, _, status = handlers.render(mine, view_mode="pointcloud")
    assert Path(glb).is_file() and "Done" in status
    again = handlers.realign(mine, _request("mine"), _no_progress, niter=5)[0]
    assert again.scene.n_views == 3


def test_an_expired_result_says_so_and_creates_nothing(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    result = handlers.reconstruct(images, _request("s"), _no_progress)[0]
    shutil.rmtree(result.job.dir)  # cleaned up (its state outlived it)
    for call in (
        lambda: handlers.render(result, cam_size=0.1),
        lambda: handlers.package(result),
        lambda: handlers.realign(result, _request("s"), _no_progress),
    ):
        with pytest.raises(gr.Error, match="expired") as info:
            call()
        assert str(tmp_path) not in info.value.message
    assert not result.job.dir.exists()
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == []  # no folder re-created


def _race(handlers, result) -> dict[str, object]:
    """One ``/package`` and three ``/render`` of the same session at once; key -> file or exception."""
    outcome: dict[str, object] = {}

    def call(key: str, fn) -> None:
        try:
            outcome[key] = fn()
        except Exception as e:  # noqa: BLE001 - surfaced by the caller
            outcome[key] = e

    jobs = {"zip": lambda: handlers.package(result, view_mode="pointcloud")}
    for k in range(3):
        jobs[f"render{k}"] = lambda k=k: handlers.render(result, cam_size=0.01 + 0.01 * k)[0]
    threads = [threading.Thread(target=call, args=(key, fn)) for key, fn in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return outcome


def test_one_package_racing_three_renders_never_loses_a_file(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    result = handlers.reconstruct(images, _request("s"), _no_progress)[0]
    no_grace = replace(result, settings=replace(result.settings, jobs=replace(result.settings.jobs, export_keep_s=0)))
    for res in (result, no_grace):  # without the grace period in-flight exports still never lose files
        outcome = _race(handlers, res)
        errors = {k: v for k, v in outcome.items() if isinstance(v, Exception)}
        assert not errors, errors
        if res is result:  # within the grace period every returned file is still there
            with zipfile.ZipFile(str(outcome["zip"])) as zf:
                assert zf.testzip() is None and "scene.glb" in zf.namelist()
            assert all(Path(str(outcome[f"render{k}"])).is_file() for k in range(3))
    exports = result.job.dir / "exports"
    assert not [p for p in exports.iterdir() if p.name.startswith(".")]  # no half-made export folder


def test_api_clients_without_heartbeat_and_protected_jobs_keep_the_quota(images: list[str], tmp_path: Path) -> None:
    """Protected jobs count: when only live work fills ``max_total_mb``, new runs are refused."""
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    handlers.reconstruct(images[:2], _request("api-1"), _no_progress)  # API clients never unload
    used = sum(p.stat().st_size for p in (tmp_path / "jobs").rglob("*") if p.is_file()) / 2**20
    handlers.cfg = replace(cfg, jobs=replace(cfg.jobs, max_total_mb=used * 1.1))
    with pytest.raises(gr.Error, match="storage limit is reached") as info:
        handlers.reconstruct(images[:2], _request("api-2"), _no_progress)
    assert "max_total_mb" in info.value.message
    floor = replace(cfg, jobs=replace(cfg.jobs, min_free_mb=1e9))  # a free-space floor above the disk
    handlers.cfg = floor
    with pytest.raises(gr.Error, match="disk is almost full"):
        handlers.reconstruct(images[:2], _request("api-2"), _no_progress)
    assert len(list((tmp_path / "jobs").iterdir())) == 1


def test_per_run_limits_name_the_limit(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4, max_pairs=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    with pytest.raises(gr.Error, match=r"6 image pairs .* at most 4 per run \(max_pairs\)"):
        handlers.reconstruct(images, _request("s"), _no_progress)
    handlers.cfg = replace(cfg, ui=replace(cfg.ui, max_pairs=100, max_run_s=1e-6))
    with pytest.raises(gr.Error, match=r"max_run_s"):
        handlers.reconstruct(images, _request("s"), _no_progress)
    failed = [json.loads(p.read_text()) for p in (tmp_path / "jobs").glob("*/manifest.json")]
    assert [m["status"] for m in failed] == ["failed"]


# --------------------------------------------------------------------------------------------
# Hostile clients against a live server (in this process)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live-jobs")
    cfg = tiny_config(root, niter=5, port=free_port(), max_request_mb=1)
    demo = gradio_ui.build_demo(cfg, pipeline.Pipeline(cfg))
    demo.launch(prevent_thread_lock=True, quiet=True, **gradio_ui.launch_kwargs(cfg))
    try:
        yield demo.local_url.rstrip("/"), root
    finally:
        demo.close()


def _upload_dir_files() -> set[Path]:
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    return {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def test_foreign_origins_are_refused_and_nothing_is_stored(live, caplog) -> None:
    url, _ = live
    before = _upload_dir_files()
    part = ("files", ("a.png", b"\x89PNG" + b"\0" * 100, "image/png"))
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
        r = httpx.post(f"{url}/gradio_api/upload", files=[part], headers={"Origin": origin})
        assert r.status_code == 403, (origin, r.text)
        r = httpx.post(f"{url}/gradio_api/call/reconstruct", json={"data": []}, headers={"Origin": origin})
        assert r.status_code == 403
    assert _upload_dir_files() == before
    own = httpx.post(f"{url}/gradio_api/upload", files=[part], headers={"Origin": url})
    assert own.status_code == 200


def test_uploads_over_the_request_cap_are_refused(live) -> None:
    url, _ = live
    before = _upload_dir_files()
    parts = [("files", (f"p{k}.png", b"\0" * 400_000, "image/png")) for k in range(3)]  # 1.2 MB > 1 MB
    r = httpx.post(f"{url}/gradio_api/upload", files=parts)
    assert r.status_code == 413 and "at most 1 MB per request" in r.text
    assert _upload_dir_files() == before
    assert UIConfig().max_request_mb < 6 * 45  # six 45 MB parts in one request: refused by default


def test_unknown_endpoints_are_404_and_malformed_requests_one_line(live, caplog) -> None:
    url, _ = live
    for path, body in (("/gradio_api/call/nope", {"data": []}), ("/gradio_api/run/nope", {"data": []})):
        r = httpx.post(url + path, json=body)
        assert r.status_code == 404, (path, r.status_code, r.text)
    r = httpx.post(f"{url}/gradio_api/queue/join", json={"fn_index": 999, "data": [], "session_hash": "x"})
    assert r.status_code == 404
    assert not any(rec.exc_info for rec in caplog.records if rec.name == "web_guard")


def test_job_files_are_never_served_by_path(live, images: list[str]) -> None:
    from gradio_client import Client, handle_file

    url, root = live
    client = Client(url + "/", verbose=False)
    viewer, *_ = client.predict(files=[handle_file(p) for p in images], niter=5, api_name="/reconstruct")
    assert Path(viewer).is_file()  # the session's own copy came through Gradio's cache
    job = next(p for p in root.iterdir() if p.is_dir())
    for target in (job / "inputs" / "img0.png", job / "scene.npz", job / "pairs.npz", job / "manifest.json"):
        for prefix in ("/gradio_api/file=", "/gradio_api/file/", "/file="):
            r = httpx.get(f"{url}{prefix}{target}")
            assert r.status_code in (403, 404), (prefix, target, r.status_code)


# --------------------------------------------------------------------------------------------
# Thumbnails, names, exit codes
# --------------------------------------------------------------------------------------------


def test_thumbnails_apply_the_pixel_limit_before_decoding(tmp_path: Path, monkeypatch) -> None:
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_header(13000, 13000))
    cfg = tiny_config(tmp_path / "jobs")
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))

    def no_decode(self, *args, **kwargs):
        raise AssertionError("an image over the pixel limit was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.warns(UserWarning, match="huge.png: not previewed: 13000x13000 is over the limit"):
        update = handlers.thumbnails([str(bomb)])
    assert update.visible is False


def test_manifests_hold_no_absolute_server_paths(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    result = handlers.reconstruct(images, _request("s"), _no_progress)[0]
    manifest = result.job.manifest_path.read_text()
    assert "inputs/img0.png" in manifest and "/tmp/gradio" not in manifest
    zip_path = handlers.package(result)
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            if name.endswith(".json"):
                assert str(tmp_path) not in zf.read(name).decode(), name
