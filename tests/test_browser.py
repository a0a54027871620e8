"""A real browser on the real page: upload, run, 3D viewer, fullscreen, Escape, GLB download.

Headless Chromium (Debian ``chromium`` package, installed by ``scripts/setup.sh --dev``) driven by
Playwright against the app served on a free loopback port with the tiny DUSt3R model. A page
screenshot is saved in the test's tmp folder; set ``SCREENSHOT_PATH`` (e.g.
``SCREENSHOT_PATH=docs/screenshot.png``) to also write it there.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from tests.live_app import serve_tiny_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 960}


@pytest.fixture(scope="module")
def app_url(fixtures_dir: Path, tmp_path_factory):
    with serve_tiny_app(fixtures_dir, tmp_path_factory.mktemp("browser-jobs"), niter=30) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: run `bash scripts/setup.sh --dev` (apt package chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _canvas_pixels(page) -> np.ndarray:
    png = page.locator("#viewer canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _rendered(pixels: np.ndarray) -> bool:
    """Something besides the clear colour: enough pixels far from the most common colour."""
    flat = pixels.reshape(-1, 3)
    colors, counts = np.unique(flat // 8, axis=0, return_counts=True)
    background = colors[np.argmax(counts)] * 8
    far = np.abs(flat - background).sum(axis=1) > 60
    return far.mean() > 0.005 and flat.std() > 3


def _box(page, selector: str) -> dict:
    return page.locator(selector).first.bounding_box()


def test_upload_run_view_fullscreen_download(app_url: str, browser, fixtures_dir: Path, tmp_path: Path) -> None:
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_url)
    page.wait_for_selector("#run-btn", timeout=60_000)
    assert "DUSt3R Studio" in page.title() + page.inner_text("#app-header")

    images = [str(p) for p in sorted((fixtures_dir / "images").glob("img*.png"))]
    page.locator("#upload input[type=file]").set_input_files(images)
    page.wait_for_function("document.querySelectorAll('#thumbs img').length === 3", timeout=60_000)

    page.click("#run-btn")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=180_000)
    assert "3 views" in page.inner_text("#status")

    # the 3D viewer renders the model: a canvas that is not blank
    page.wait_for_selector("#viewer canvas", timeout=60_000)
    deadline = time.time() + 60
    while not _rendered(_canvas_pixels(page)):
        assert time.time() < deadline, "the 3D viewer canvas stayed blank"
        time.sleep(0.5)
    small = _box(page, "#viewer-wrap")

    # fullscreen toggle, then Escape
    page.click("#fullscreen-btn")
    page.wait_for_function("document.getElementById('viewer-wrap').classList.contains('viewer-fullscreen')")
    time.sleep(0.4)
    full = _box(page, "#viewer-wrap")
    assert full["width"] >= VIEWPORT["width"] - 2 and full["height"] >= VIEWPORT["height"] - 2
    canvas = _box(page, "#viewer canvas")
    assert canvas["height"] > small["height"] * 1.2  # the canvas follows its container
    assert _rendered(_canvas_pixels(page))
    page.keyboard.press("Escape")
    page.wait_for_function("!document.getElementById('viewer-wrap').classList.contains('viewer-fullscreen')")
    time.sleep(0.3)
    back = _box(page, "#viewer-wrap")
    assert abs(back["width"] - small["width"]) < 2 and abs(back["height"] - small["height"]) < 2

    # download the GLB and read it back
    with page.expect_download(timeout=60_000) as info:
        page.click("#download-glb")
    glb = tmp_path / "downloaded.glb"
    info.value.save_as(glb)
    scene = trimesh.load(glb)
    assert sum(len(g.vertices) for g in scene.geometry.values()) > 500

    shot = tmp_path / "screenshot.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("SCREENSHOT_PATH"):
        target = Path(os.environ["SCREENSHOT_PATH"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    assert not errors, errors
    page.close()


@pytest.mark.filterwarnings("ignore:broken.jpg")  # the thumbnail warning, also emitted as a Python warning
def test_error_shows_a_message_and_keeps_the_uploads(app_url: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(app_url)
    page.wait_for_selector("#run-btn", timeout=60_000)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64)
    page.locator("#upload input[type=file]").set_input_files([str(bad), str(bad)])
    page.wait_for_function(
        "document.querySelector('#upload').textContent.replace(/\\s/g, '').includes('broken.jpg')", timeout=60_000
    )
    page.click("#run-btn")
    toast = page.locator(".toast-body, [data-testid='toast-body']").first
    toast.wait_for(timeout=120_000)
    text = toast.inner_text()
    assert "broken.jpg" in text and "Traceback" not in text and "inputs/" not in text
    assert "broken.jpg" in "".join((page.locator("#upload").text_content() or "").split())  # uploads kept
    page.close()


def test_video_upload_previews_frames_and_runs(app_url: str, browser, fixtures_dir: Path, tmp_path: Path) -> None:
    """A short video: its kept frames appear as thumbnails with the plan line; fps changes them; it runs."""
    from tests.video_clip import pan_clip

    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_url)
    page.wait_for_selector("#run-btn", timeout=60_000)
    clip = pan_clip(fixtures_dir, tmp_path / "clip.mp4")
    page.locator("#upload input[type=file]").set_input_files([str(clip)])
    page.wait_for_function("document.querySelectorAll('#thumbs img').length === 2", timeout=60_000)  # 1 fps
    page.wait_for_function("document.querySelector('#plan').innerText.includes('2 video frames')", timeout=60_000)

    page.click("#video-settings button.label-wrap, #video-settings .label-wrap")  # open the Video accordion
    fps = page.locator("#video-settings input[type=number]").first
    fps.fill("2")
    fps.press("Enter")
    page.wait_for_function("document.querySelectorAll('#thumbs img').length === 4", timeout=60_000)
    page.wait_for_function("document.querySelector('#plan').innerText.includes('4 video frames')", timeout=60_000)
    plan = page.inner_text("#plan")
    assert "logwin-2-noncyclic (auto)" in plan and "10 pairs" in plan and "clip.mp4" in plan

    page.click("#run-btn")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=180_000)
    assert "4 views" in page.inner_text("#status")
    page.wait_for_selector("#viewer canvas", timeout=60_000)
    deadline = time.time() + 60
    while not _rendered(_canvas_pixels(page)):
        assert time.time() < deadline, "the 3D viewer canvas stayed blank"
        time.sleep(0.5)
    shot = tmp_path / "video.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot))
    if os.environ.get("VIDEO_SCREENSHOT_PATH"):
        shutil.copyfile(shot, os.environ["VIDEO_SCREENSHOT_PATH"])
    assert not errors, errors
    page.close()
