"""The web app's named API endpoints, driven by gradio_client against a live server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import trimesh
from gradio_client import Client, handle_file

from tests.live_app import serve_tiny_app


@pytest.fixture(scope="module")
def app_url(fixtures_dir: Path, tmp_path_factory):
    """The app with the tiny DUSt3R model, served on a free loopback port for this module."""
    with serve_tiny_app(fixtures_dir, tmp_path_factory.mktemp("api-jobs"), niter=15) as url:
        yield url


def test_api_lists_named_endpoints(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/reconstruct", "/render", "/package", "/realign", "/thumbnails"} <= set(api)
    params = {p["parameter_name"]: p for p in api["/reconstruct"]["parameters"]}
    assert not params["files"]["parameter_has_default"]
    for name in (
        "engine",
        "image_size",
        "scene_graph",
        "niter",
        "schedule",
        "min_conf_thr",
        "view_mode",
        "known_focal",
    ):
        assert params[name]["parameter_has_default"], name
    assert params["niter"]["parameter_default"] == 15  # the server's config


def test_reconstruct_then_render_through_the_api(app_url: str, fixtures_dir: Path) -> None:
    client = Client(app_url, verbose=False)
    files = [handle_file(str(p)) for p in sorted((fixtures_dir / "images").glob("img*.png"))]
    viewer, gallery, glb, status, model_status = client.predict(
        files=files, engine="dust3r", niter=10, api_name="/reconstruct"
    )
    assert Path(viewer).suffix == ".glb" and Path(glb).suffix == ".glb"
    scene = trimesh.load(glb)
    assert sum(len(g.vertices) for g in scene.geometry.values()) > 500
    assert len(gallery) == 9
    assert "Done" in status and "3 views" in status
    assert "loaded" in model_status
    # the same client session keeps the scene: a display change re-exports it
    viewer2, glb2, status2 = client.predict(view_mode="pointcloud", show_cameras=False, api_name="/render")
    cloud = trimesh.load(glb2)
    assert any(isinstance(g, trimesh.PointCloud) for g in cloud.geometry.values())
    assert "display" in status2
    zip_path = client.predict(view_mode="pointcloud", api_name="/package")
    assert Path(zip_path).name == "reconstruction.zip" and Path(zip_path).stat().st_size > 0


def test_api_errors_are_messages(app_url: str, tmp_path: Path) -> None:
    client = Client(app_url, verbose=False)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(Exception, match="broken.png"):
        client.predict(files=[handle_file(str(bad)), handle_file(str(bad))], api_name="/reconstruct")


def test_video_through_the_api(app_url: str, fixtures_dir: Path, tmp_path: Path) -> None:
    """/thumbnails previews the kept frames, /plan says what the run costs, /reconstruct runs them."""
    from tests.video_clip import pan_clip

    client = Client(app_url, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"fps", "max_frames"} <= {p["parameter_name"] for p in api["/thumbnails"]["parameters"]}
    assert {"fps", "max_frames", "sharpest", "skip_static"} <= {
        p["parameter_name"] for p in api["/reconstruct"]["parameters"]
    }
    clip = handle_file(str(pan_clip(fixtures_dir, tmp_path / "clip.mp4")))
    thumbs = client.predict(files=[clip], fps=2, max_frames=4, api_name="/thumbnails")["value"]  # a Gallery update
    assert len(thumbs) == 4 and all(t["caption"].startswith("clip_t") for t in thumbs)
    line = client.predict(files=[clip], fps=2, max_frames=4, api_name="/plan")
    assert "4 video frames" in line and "10 pairs" in line
    _viewer, gallery, glb, status, _ = client.predict(
        files=[clip], fps=2, max_frames=4, niter=10, api_name="/reconstruct"
    )
    assert "Done" in status and "4 views" in status and len(gallery) == 12
    assert sum(len(g.vertices) for g in trimesh.load(glb).geometry.values()) > 100
