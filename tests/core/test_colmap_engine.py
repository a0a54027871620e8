"""COLMAP engine: synthetic box-on-ground scene with known cameras (tests/core/synthetic_render.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from config import AppConfig, ColmapConfig
from core.engines.colmap import (
    STAGE_FEATURES,
    STAGE_MAPPING,
    STAGE_MATCHING,
    ColmapEngine,
    ColmapError,
    _extract,
    _prepare_image,
    choose_matcher,
    display_from_colmap,
    original_from_display,
    relative_rotation_errors_deg,
)
from core.inputs.preprocessing import ImageLoadError
from tests.core.synthetic_render import render_orbit

N_VIEWS = 8
WIDTH, HEIGHT, FOCAL = 320, 240, 260.0


@dataclasses.dataclass(frozen=True)
class Capture:
    paths: list[Path]
    world_from_cam: np.ndarray  # (N, 4, 4) ground truth
    K: np.ndarray  # (3, 3) ground truth, integer pixel centres


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    folder = tmp_path_factory.mktemp("synthetic")
    views = render_orbit(N_VIEWS, width=WIDTH, height=HEIGHT, focal=FOCAL, seed=0)
    paths = []
    for k, view in enumerate(views):
        path = folder / f"view_{k}.png"
        Image.fromarray(view.image).save(path)
        paths.append(path)
    return Capture(paths, np.stack([v.world_from_cam for v in views]), views[0].K)


def _cfg(**colmap: object) -> AppConfig:
    # These tests cover structure from motion (the sparse scene, ``--sparse``); the dense step
    # that follows by default is tested in test_mvs.py.
    return AppConfig(colmap=ColmapConfig(num_threads=2, dense=False, **colmap))  # type: ignore[arg-type]


class _Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.calls.append((stage, done, total))

    def last(self, stage: str) -> tuple[int, int]:
        return [c[1:] for c in self.calls if c[0] == stage][-1]


def _rotation_errors(scene, capture: Capture, indices: list[int]) -> np.ndarray:
    est = np.linalg.inv(scene.world_from_cam.astype(np.float64))[:, :3, :3]  # cam_from_world
    gt = np.linalg.inv(capture.world_from_cam[indices])[:, :3, :3]
    return relative_rotation_errors_deg(est, gt)


def _blank(path: Path, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    Image.new("RGB", size, (128, 128, 128)).save(path)
    return path


def test_global_mapping_registers_every_view_with_accurate_cameras(capture: Capture, tmp_path: Path) -> None:
    progress = _Progress()
    scene = ColmapEngine().reconstruct(capture.paths, _cfg(), tmp_path, progress)

    assert scene.engine == "colmap" and scene.warnings == ()
    assert scene.names == tuple(p.name for p in capture.paths)
    assert scene.extra["n_registered"] == N_VIEWS and scene.extra["mapper"] == "global"
    assert scene.extra["matcher"] == "exhaustive" and scene.extra["n_pairs"] == N_VIEWS * (N_VIEWS - 1) // 2
    assert (tmp_path / "colmap_work" / "database.db").is_file()
    assert scene.depths is None and scene.pts3d is None and scene.conf is None

    errors = _rotation_errors(scene, capture, list(range(N_VIEWS)))
    assert errors.max() < 1.0, f"relative rotation errors (deg): {np.round(errors, 3)}"
    assert scene.extra["mean_reproj_error_px"] < 1.5

    # Intrinsics in pixels of the stored images (here the full 320x240), integer pixel centres.
    assert all(im.shape == (HEIGHT, WIDTH, 3) and im.dtype == np.uint8 for im in scene.images)
    np.testing.assert_allclose(scene.focals, FOCAL, rtol=0.03)
    np.testing.assert_allclose(scene.principal_points, np.tile(capture.K[:2, 2], (N_VIEWS, 1)), atol=1e-3)
    np.testing.assert_allclose(scene.original_from_processed, np.tile(np.eye(3), (N_VIEWS, 1, 1)), atol=1e-12)

    sparse = scene.sparse
    assert sparse is not None and sparse.xyz.shape[0] > 200
    m = sparse.xyz.shape[0]
    assert sparse.rgb.shape == (m, 3) and sparse.rgb.dtype == np.uint8
    assert sparse.track_length.shape == (m,) and sparse.track_length.min() >= 2
    assert sparse.reproj_error.shape == (m,) and np.all(sparse.reproj_error >= 0)

    # Pose inversion and the half-pixel shift: the Scene's pinhole cameras put every observed
    # point where COLMAP's keypoint is (COLMAP pixel centres are at +0.5).
    model = pycolmap.Reconstruction(scene.extra["model_dir"])
    K = scene.intrinsics()
    for k, name in enumerate(scene.names):
        image = next(im for im in model.images.values() if im.name.endswith(Path(name).stem + ".png"))
        obs = [p for p in image.points2D if p.has_point3D()]
        xy = np.array([p.xy for p in obs]) - 0.5  # (M, 2) keypoints, integer pixel centres
        world = np.array([model.points3D[p.point3D_id].xyz for p in obs])  # (M, 3)
        cam_from_world = np.linalg.inv(scene.world_from_cam[k].astype(np.float64))
        in_cam = world @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
        uv = in_cam @ K[k].T
        uv = uv[:, :2] / uv[:, 2:]
        assert np.median(np.linalg.norm(uv - xy, axis=1)) < 0.4

    # Progress: every stage reached its total.
    assert progress.last(STAGE_FEATURES) == (N_VIEWS, N_VIEWS)
    done, total = progress.last(STAGE_MATCHING)
    assert done == total == scene.extra["n_pairs"]
    assert progress.last(STAGE_MAPPING) == (N_VIEWS, N_VIEWS)


def test_incremental_sequential_downscaled_and_unregistered_image(capture: Capture, tmp_path: Path) -> None:
    # A blank image in the middle cannot register: it is dropped and named in a warning.
    blank = _blank(tmp_path / "blank.png")
    paths = [*capture.paths[:4], blank, *capture.paths[4:]]
    cfg = _cfg(
        mapper="incremental", exhaustive_max_images=4, sequential_overlap=2, max_image_size=256, display_max_size=160
    )
    job = tmp_path / "job"
    job.mkdir()
    progress = _Progress()
    scene = ColmapEngine().reconstruct(paths, cfg, job, progress)

    assert scene.extra["mapper"] == "incremental"
    assert scene.extra["matcher"] == "sequential"
    assert scene.extra["n_pairs"] == 2 * len(paths) - 3  # i+1 and i+2 neighbours only
    assert scene.names == tuple(p.name for p in capture.paths)
    assert scene.extra["unregistered"] == ["blank.png"]
    assert len(scene.warnings) == 1 and "blank.png" in scene.warnings[0]

    errors = _rotation_errors(scene, capture, list(range(N_VIEWS)))
    assert errors.max() < 1.0, f"relative rotation errors (deg): {np.round(errors, 3)}"
    assert scene.extra["mean_reproj_error_px"] < 1.5

    # COLMAP ran on 256x192 copies, the scene stores 160x120 images; mapped back to the
    # original pixels the intrinsics are the true ones.
    assert all(im.shape == (120, 160, 3) for im in scene.images)
    assert scene.original_sizes == ((WIDTH, HEIGHT),) * N_VIEWS
    assert all(cam["width"] == 256 and cam["height"] == 192 for cam in scene.extra["cameras"])
    k_original = scene.original_from_processed @ scene.intrinsics()  # (N, 3, 3)
    np.testing.assert_allclose(k_original[:, 0, 0], FOCAL, rtol=0.03)
    np.testing.assert_allclose(k_original[:, :2, 2], np.tile(capture.K[:2, 2], (N_VIEWS, 1)), atol=1e-3)
    assert progress.last(STAGE_MAPPING) == (N_VIEWS, len(paths))


def test_blank_images_raise_colmap_error_suggesting_dust3r(tmp_path: Path) -> None:
    paths = [_blank(tmp_path / f"{c}.png") for c in "abc"]
    with pytest.raises(ColmapError, match="DUSt3R") as info:
        ColmapEngine().reconstruct(paths, _cfg(), tmp_path / "job", lambda *a: None)
    message = str(info.value)
    assert "registered 0 of 3 images" in message and "a.png, b.png, c.png" in message
    assert isinstance(info.value, ValueError)


def test_two_views_raise_colmap_error_asking_for_a_third_or_dust3r(capture: Capture, tmp_path: Path) -> None:
    # pycolmap 4.2's global and incremental mappers both refuse two-view models.
    with pytest.raises(ColmapError, match="at least three overlapping views.*DUSt3R"):
        ColmapEngine().reconstruct(capture.paths[:2], _cfg(), tmp_path, lambda *a: None)


def test_input_errors(tmp_path: Path) -> None:
    engine = ColmapEngine()
    with pytest.raises(ColmapError, match="at least 2 images, got 1"):
        engine.reconstruct([_blank(tmp_path / "a.png")], _cfg(), tmp_path / "job", lambda *a: None)
    with pytest.raises(ImageLoadError, match="missing.jpg: file not found"):
        engine.reconstruct(
            [_blank(tmp_path / "a.png"), tmp_path / "missing.jpg"], _cfg(), tmp_path / "job", lambda *a: None
        )
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.png: not an image"):
        engine.reconstruct(
            [_blank(tmp_path / "a.png"), tmp_path / "notes.png"], _cfg(), tmp_path / "job", lambda *a: None
        )
    with pytest.raises(ValueError, match="mapper must be one of"):
        engine.reconstruct(
            [],
            dataclasses.replace(_cfg(), colmap=dataclasses.replace(ColmapConfig(), mapper="hierarchical")),
            tmp_path / "job",
            lambda *a: None,
        )  # type: ignore[arg-type]


def test_engine_interface() -> None:
    engine = ColmapEngine()
    assert engine.name == "colmap"
    assert engine.availability() is None  # pycolmap is installed in this environment


def test_choose_matcher() -> None:
    cfg = ColmapConfig(exhaustive_max_images=10)
    assert choose_matcher(2, cfg) == "exhaustive"
    assert choose_matcher(10, cfg) == "exhaustive"
    assert choose_matcher(11, cfg) == "sequential"
    assert choose_matcher(3, dataclasses.replace(cfg, matcher="sequential")) == "sequential"
    assert choose_matcher(500, dataclasses.replace(cfg, matcher="exhaustive")) == "exhaustive"
    with pytest.raises(ValueError, match="'vocab'"):
        choose_matcher(5, dataclasses.replace(cfg, matcher="vocab"))  # type: ignore[arg-type]


def test_pixel_maps_hand_computed() -> None:
    # COLMAP 400x300 (centres at +0.5) -> display 200x150 (integer centres): u_d = u_c / 2 - 0.5.
    a = display_from_colmap((400, 300), (200, 150))
    np.testing.assert_allclose(a @ [0.5, 0.5, 1], [-0.25, -0.25, 1])  # first COLMAP pixel centre
    np.testing.assert_allclose(a @ [200.0, 150.0, 1], [99.5, 74.5, 1])  # image centre -> centre
    # display 200x150 -> original 400x300: display pixel 0 covers original pixels 0 and 1.
    b = original_from_display((400, 300), (200, 150))
    np.testing.assert_allclose(b @ [0.0, 0.0, 1], [0.5, 0.5, 1])
    np.testing.assert_allclose(b @ [99.5, 74.5, 1], [199.5, 149.5, 1])
    # Composition is the plain corner-origin rescale: centre convention in, centre convention out.
    np.testing.assert_allclose(b @ a @ [10.5, 20.5, 1], [10.0, 20.0, 1])


def _rot(axis: np.ndarray, deg: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def test_relative_rotation_errors_ignore_the_world_frame() -> None:
    rng = np.random.default_rng(0)
    gt = np.stack([_rot(rng.normal(size=3), rng.uniform(0, 180)) for _ in range(4)])  # cam_from_world
    world_change = _rot(np.array([1.0, 2.0, 3.0]), 70.0)
    est = gt @ world_change  # the same cameras in another world frame
    np.testing.assert_allclose(relative_rotation_errors_deg(est, gt), 0.0, atol=1e-5)
    est[2] = _rot(np.array([0.0, 1.0, 0.0]), 2.0) @ est[2]  # camera 2 off by 2 degrees
    errors = relative_rotation_errors_deg(est, gt)  # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    np.testing.assert_allclose(errors, [0, 2, 0, 2, 0, 2], atol=1e-5)
    with pytest.raises(ValueError, match="expected two"):
        relative_rotation_errors_deg(est[:3], gt)


def test_prepare_applies_exif_orientation_and_flattens_alpha(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cfg = ColmapConfig(max_image_size=0)
    # 40x20 JPEG stored sideways (orientation 6 = rotate 90 degrees clockwise to display).
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=95)
    prep = _prepare_image(tmp_path / "sideways.jpg", 3, out, cfg, 10**8)
    assert prep.converted and prep.original_size == (20, 40) and prep.colmap_size == (20, 40)
    assert prep.colmap_name.startswith("0003_sideways") and prep.colmap_name.endswith(".jpg")
    with Image.open(out / prep.colmap_name) as im:
        assert im.size == (20, 40) and im.getexif().get(0x0112, 1) == 1
        top = np.asarray(im.convert("L"))[:20].mean()
        bottom = np.asarray(im.convert("L"))[20:].mean()
    assert top > 200 and bottom < 50  # the white half is on top once rotated clockwise
    # RGBA PNG -> RGB PNG composited on white; a plain RGB JPEG small enough is copied as is.
    Image.new("RGBA", (30, 20), (0, 0, 0, 0)).save(tmp_path / "alpha.png")
    prep = _prepare_image(tmp_path / "alpha.png", 0, out, cfg, 10**8)
    with Image.open(out / prep.colmap_name) as im:
        assert prep.converted and im.mode == "RGB" and np.asarray(im).min() == 255
    Image.new("RGB", (30, 20), (10, 20, 30)).save(tmp_path / "plain.jpg")
    prep = _prepare_image(tmp_path / "plain.jpg", 1, out, cfg, 10**8)
    assert not prep.converted
    assert (out / prep.colmap_name).read_bytes() == (tmp_path / "plain.jpg").read_bytes()
    # Downscaled only when larger than max_image_size; too many pixels is rejected.
    prep = _prepare_image(tmp_path / "plain.jpg", 2, out, ColmapConfig(max_image_size=15), 10**8)
    assert prep.converted and prep.colmap_size == (15, 10) and prep.original_size == (30, 20)
    with pytest.raises(ImageLoadError, match="plain.jpg: 30x20 has more than 100 pixels"):
        _prepare_image(tmp_path / "plain.jpg", 2, out, cfg, 100)


def test_extraction_shares_one_camera_between_images_of_one_exif_camera(tmp_path: Path) -> None:
    # Features are extracted in batches (progress); the cameras must still be shared as in one call.
    rng = np.random.default_rng(0)
    names = []
    for k in range(3):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D"
        exif.get_ifd(0x8769)[0xA405] = 28  # FocalLengthIn35mmFilm
        img = Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8))
        img.save(tmp_path / f"{k}.jpg", exif=exif.tobytes())
        names.append(f"{k}.jpg")
    db_path = tmp_path / "database.db"
    pycolmap.Database.open(db_path).close()
    done: list[int] = []
    _extract(db_path, tmp_path, names, ColmapConfig(), 1, done.append)
    assert done == [1, 2, 3]
    with pycolmap.Database.open(db_path) as db:
        cameras = db.read_all_cameras()
        assert len(cameras) == 1
        # The EXIF prior (28 mm equivalent over the 43.27 mm full-frame diagonal), not the
        # no-EXIF default of 1.2 x the long side.
        assert cameras[0].has_prior_focal_length
        assert cameras[0].focal_length == pytest.approx(28 / 43.27 * 200, rel=1e-3)
        assert all(db.num_keypoints_for_image(im.image_id) > 10 for im in db.read_all_images())
