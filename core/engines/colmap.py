"""Classical structure-from-motion engine: COLMAP through pycolmap (CPU only, no weights).

Stages (each reports ``progress(stage, done, total)``):

1. ``features``: every upload is written into ``job_dir/colmap_work/images`` in a form COLMAP reads
   (JPEG/PNG, 8-bit RGB, EXIF orientation applied, downscaled only when its long side exceeds
   ``ColmapConfig.max_image_size``; files that already qualify are copied byte for byte so their
   EXIF focal length still seeds the intrinsics). SIFT is extracted image by image into the
   per-job database ``job_dir/colmap_work/database.db``. Counts: images.
2. ``matching``: COLMAP's exhaustive or sequential matcher (``matcher="auto"``: exhaustive up
   to ``exhaustive_max_images`` images, else sequential along the order the files were given),
   with geometric verification, in one call (splitting it costs a descriptor load and index
   build per image and call). Counts: pairs, reported at start and end only.
3. ``mapping``: global (GLOMAP-style rotation averaging + global positioning, the default) or
   incremental mapping. Counts: registered images (global mapping reports only start and end).
   The model is written to ``job_dir/colmap_work/sparse/<k>`` (COLMAP binary format).
4. ``dense`` (``ColmapConfig.dense``, on by default): multi-view stereo on the registered images,
   undistorted at ``ColmapConfig.mvs_size`` (:mod:`core.engines.mvs_colmap`,
   :mod:`core.engines.mvs`), on ``ModelConfig.device``. Counts: views.

``cancel`` (optional) is polled between the stages and between the views of the dense step.

Output: a :class:`core.types.Scene` with ``engine="colmap"`` holding only the registered
images, in input order. Dense runs store the undistorted working-size images with their exact
pinhole intrinsics and fill ``depths``/``pts3d``/``conf`` (see :mod:`core.engines.mvs`) next to
``sparse``; the notes below describe the sparse scene. Conventions, per view k:

- ``images[k]``: the oriented RGB image, downscaled to ``display_max_size`` (long side).
- ``focals[k]``, ``principal_points[k]``: the camera's pinhole part in pixels of ``images[k]``
  with integer pixel centres (COLMAP puts pixel centres at +0.5, so cx_scene = s * cx_colmap - 0.5).
  The camera model (``camera_model``, SIMPLE_RADIAL by default) may carry lens distortion;
  the scene is pinhole, so the distortion is dropped and reported per image in
  ``extra["cameras"]`` (``max_distortion_px``: how far, in pixels of the COLMAP image, the
  pinhole model misplaces the image corners). A warning names images where that exceeds 1%
  of the image diagonal (sparse scenes only: the dense step undistorts the images it stores). Use ``camera_model="SIMPLE_PINHOLE"`` or ``"PINHOLE"`` to map with an
  exactly pinhole camera.
- ``world_from_cam[k]``: inverse of COLMAP's ``cam_from_world`` (COLMAP already uses OpenCV
  axes). The world frame and scale are COLMAP's (arbitrary gauge).
- ``original_from_processed[k]``: the exact affine from ``images[k]`` pixels to pixels of the
  uploaded image after EXIF orientation (integer pixel centres on both sides).
- ``sparse``: the model's points: xyz, colour, track length, mean reprojection error in pixels
  of the images COLMAP ran on.

Images that did not register (or landed in a smaller, disconnected model) are left out of the
scene and named in ``Scene.warnings``. Fewer than two registered images raise
:class:`ColmapError`, which suggests the DUSt3R engine.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from config import AppConfig, ColmapConfig
from core.engines.colmap_scene import (
    RunInfo,
    display_from_colmap,
    original_from_display,
    scaled_size,
    sparse_scene,
)
from core.engines.mvs import STAGE_DENSE, MvsConfig
from core.engines.mvs_colmap import densify, resolve_device
from core.errors import Cancelled, ColmapError
from core.inputs.preprocessing import ImageLoadError, heif_available, to_rgb8
from core.types import ProgressFn, Scene

try:  # optional dependency: the engine reports itself unavailable without it
    import pycolmap

    _PYCOLMAP_IMPORT_ERROR: str | None = None
except ImportError as _e:  # pragma: no cover - depends on the environment
    pycolmap = None  # type: ignore[assignment]
    _PYCOLMAP_IMPORT_ERROR = str(_e)

__all__ = [
    "ColmapEngine",
    "ColmapError",
    "STAGE_FEATURES",
    "STAGE_MATCHING",
    "STAGE_MAPPING",
    "STAGE_DENSE",
    "choose_matcher",
    "display_from_colmap",
    "original_from_display",
    "relative_rotation_errors_deg",
]

logger = logging.getLogger(__name__)

#: Progress stage names reported by this engine.
STAGE_FEATURES = "features"
STAGE_MATCHING = "matching"
STAGE_MAPPING = "mapping"

#: Sub-folder of the job folder that holds everything COLMAP reads and writes.
COLMAP_DIR = "colmap_work"
#: JPEG quality of converted images (SIFT is insensitive to it at this level).
_JPEG_QUALITY = 95
#: Images with fewer SIFT features than this are named in the "too few registered" error.
_FEW_FEATURES = 50
#: Fixed seed for COLMAP's RANSAC and mappers: the same input gives the same model.
_SEED = 0
#: Formats COLMAP is given as they are (when 8-bit RGB/grey, upright and small enough).
_PASSTHROUGH_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}
#: Lossy source formats are re-encoded as JPEG, everything else as PNG (lossless).
_LOSSY_FORMATS = {"JPEG", "MPO", "HEIF", "AVIF", "WEBP"}
_CAMERA_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE")
_MATCHERS = ("auto", "exhaustive", "sequential")
_MAPPERS = ("global", "incremental")
_PYCOLMAP_ERRORS = (RuntimeError, ValueError)
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def choose_matcher(n_images: int, cfg: ColmapConfig) -> str:
    """Resolve ``cfg.matcher``: ``auto`` -> ``exhaustive`` up to ``exhaustive_max_images``, else ``sequential``."""
    if cfg.matcher not in _MATCHERS:
        raise ValueError(f"matcher must be one of {_MATCHERS}, got {cfg.matcher!r}")
    if cfg.matcher != "auto":
        return cfg.matcher
    return "exhaustive" if n_images <= cfg.exhaustive_max_images else "sequential"


def relative_rotation_errors_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """Angles (degrees) between relative rotations over all pairs i < j.

    rot_a, rot_b: (N, 3, 3) cam_from_world rotations of the same N cameras in two frames (for
    example estimated and ground truth). Returns (N (N - 1) / 2,) float64: for each pair the
    angle of ``(Ra_i Ra_j^T) (Rb_i Rb_j^T)^T``; independent of either world frame.
    """
    rot_a, rot_b = np.asarray(rot_a, np.float64), np.asarray(rot_b, np.float64)
    if rot_a.shape != rot_b.shape or rot_a.ndim != 3 or rot_a.shape[1:] != (3, 3):
        raise ValueError(f"expected two (N, 3, 3) arrays, got {rot_a.shape} and {rot_b.shape}")
    i, j = np.triu_indices(rot_a.shape[0], k=1)
    rel_a = rot_a[i] @ rot_a[j].transpose(0, 2, 1)  # (P, 3, 3)
    rel_b = rot_b[i] @ rot_b[j].transpose(0, 2, 1)
    diff = rel_a @ rel_b.transpose(0, 2, 1)
    cos = (np.trace(diff, axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _poll(cancel: Callable[[], bool] | None, stage: str) -> None:
    """Raise Cancelled when ``cancel()`` says so (before ``stage``)."""
    if cancel is not None and cancel():
        raise Cancelled(f"COLMAP cancelled before the {stage} stage")


def _safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:60] or "image"


def _n_threads(cfg: ColmapConfig) -> int:
    if cfg.num_threads > 0:
        return cfg.num_threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# Images: uploads -> what COLMAP reads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PreparedImage:
    """One upload as handed to COLMAP."""

    index: int
    """Position in the input list."""
    name: str
    """File name of the upload."""
    colmap_name: str
    """File name inside ``colmap_work/images`` (unique, ordered like the input)."""
    original_size: tuple[int, int]
    """(W, H) of the upload after EXIF orientation."""
    colmap_size: tuple[int, int]
    """(W, H) of the image COLMAP reads."""
    converted: bool
    """False when the upload was copied byte for byte."""


def _prepare_image(path: Path, index: int, out_dir: Path, cfg: ColmapConfig, max_pixels: int) -> _PreparedImage:
    """Copy or convert one upload into ``out_dir``. Raises ImageLoadError naming the file."""
    name = path.name
    if not path.is_file():
        raise ImageLoadError(f"{name}: file not found ({path})", filename=name)
    if path.suffix.lower() in (".heic", ".heif", ".hif") and not heif_available():
        raise ImageLoadError(
            f"{name}: HEIC/HEIF images need the pillow-heif package (pip install pillow-heif), "
            "or convert the file to JPEG or PNG",
            filename=name,
        )
    stem = f"{index:04d}_{_safe_stem(path.stem)}"
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageLoadError(
                    f"{name}: {w}x{h} has more than {max_pixels} pixels (PreprocessConfig.max_pixels)", filename=name
                )
            orientation = im.getexif().get(0x0112, 1)
            fmt = im.format or ""
            passthrough = (
                fmt in _PASSTHROUGH_FORMATS
                and im.mode in ("RGB", "L")
                and "transparency" not in im.info
                and orientation in (0, 1)
                and getattr(im, "n_frames", 1) == 1
                and scaled_size((w, h), cfg.max_image_size) == (w, h)
            )
            im.load()  # full decode: truncated files fail here, not silently inside COLMAP
            if passthrough:
                dst = out_dir / f"{stem}{_PASSTHROUGH_FORMATS[fmt]}"
                shutil.copyfile(path, dst)
                return _PreparedImage(index, name, dst.name, (w, h), (w, h), converted=False)
            oriented = ImageOps.exif_transpose(im)
            exif = oriented.getexif()
    except ImageLoadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageLoadError(f"{name}: not an image file Pillow can read ({e})", filename=name) from e
    except _PIL_ERRORS as e:
        raise ImageLoadError(f"{name}: broken or truncated image file ({e})", filename=name) from e
    rgb = to_rgb8(oriented)
    original_size = rgb.size
    target = scaled_size(original_size, cfg.max_image_size)
    if target != original_size:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
    if fmt in _LOSSY_FORMATS:
        dst = out_dir / f"{stem}.jpg"
        rgb.save(dst, "JPEG", quality=_JPEG_QUALITY, exif=exif.tobytes() if len(exif) else b"")
    else:
        dst = out_dir / f"{stem}.png"
        rgb.save(dst, "PNG")
    return _PreparedImage(index, name, dst.name, original_size, target, converted=True)


def _call(stage: str, fn: Callable, *args, **kwargs):
    """Run one pycolmap call; its failures become ColmapError naming the stage."""
    try:
        return fn(*args, **kwargs)
    except _PYCOLMAP_ERRORS as e:
        raise ColmapError(f"COLMAP {stage} failed: {e}") from e


def _extract(
    db_path: Path,
    image_dir: Path,
    names: Sequence[str],
    cfg: ColmapConfig,
    threads: int,
    on_image: Callable[[int], None],
) -> None:
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = threads
    options.use_gpu = False
    options.max_image_size = cfg.max_image_size if cfg.max_image_size > 0 else -1
    options.sift.max_num_features = cfg.max_num_features
    # All images are imported in one call first: the AUTO camera mode then shares one camera
    # between images of equal size and EXIF focal length (separate calls would not).
    _call(
        "image import",
        pycolmap.import_images,
        db_path,
        image_dir,
        camera_mode=pycolmap.CameraMode.AUTO,
        image_names=list(names),
        options=reader,
    )
    # Batches of `threads` images: COLMAP extracts one image per thread, so this keeps every core
    # busy while progress still moves.
    for start in range(0, len(names), threads):
        batch = list(names[start : start + threads])
        _call(
            "feature extraction",
            pycolmap.extract_features,
            db_path,
            image_dir,
            image_names=batch,
            camera_mode=pycolmap.CameraMode.AUTO,
            reader_options=reader,
            extraction_options=options,
            device=pycolmap.Device.cpu,
        )
        on_image(start + len(batch))


def _sequential_options(cfg: ColmapConfig, threads: int):
    opts = pycolmap.SequentialPairingOptions()
    opts.overlap = cfg.sequential_overlap
    opts.quadratic_overlap = True
    opts.loop_detection = False  # needs a vocabulary tree file
    opts.num_threads = threads
    return opts


def _count_pairs(db_path: Path, matcher: str, cfg: ColmapConfig, threads: int) -> int:
    """Number of image pairs COLMAP's pair generator will match (for progress and stats)."""
    with pycolmap.Database.open(db_path) as db:
        if matcher == "exhaustive":
            gen = pycolmap.ExhaustivePairGenerator(pycolmap.ExhaustivePairingOptions(), db)
        else:
            gen = pycolmap.SequentialPairGenerator(_sequential_options(cfg, threads), db)
        return len(gen.all_pairs())


def _match(db_path: Path, matcher: str, cfg: ColmapConfig, threads: int) -> None:
    """Match and verify all pairs in ONE COLMAP call: splitting it (for finer progress) costs a
    descriptor load and index build per image and call, +20-100 % time in measurements."""
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = threads
    options.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = _SEED
    if matcher == "exhaustive":
        _call(
            "matching",
            pycolmap.match_exhaustive,
            db_path,
            matching_options=options,
            verification_options=verification,
            device=pycolmap.Device.cpu,
        )
    else:
        _call(
            "matching",
            pycolmap.match_sequential,
            db_path,
            matching_options=options,
            pairing_options=_sequential_options(cfg, threads),
            verification_options=verification,
            device=pycolmap.Device.cpu,
        )


def _map(
    db_path: Path,
    image_dir: Path,
    out_dir: Path,
    mapper: str,
    n_images: int,
    threads: int,
    on_registered: Callable[[int], None],
) -> dict:
    """Run the mapper -> {model index: pycolmap.Reconstruction} (possibly empty)."""
    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = threads
        options.random_seed = _SEED
        options.min_model_size = 2
        options.mapper.num_threads = threads
        options.mapper.random_seed = _SEED
        options.mapper.global_positioning.use_gpu = False
        options.mapper.bundle_adjustment.ceres.use_gpu = False
        on_registered(0)
        return _call("global mapping", pycolmap.global_mapping, db_path, image_dir, out_dir, options)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = _SEED
    options.min_model_size = 2
    options.ba_use_gpu = False
    count = [0]

    def initial_pair() -> None:
        count[0] = 2
        on_registered(min(count[0], n_images))

    def next_image() -> None:
        count[0] += 1
        on_registered(min(count[0], n_images))

    on_registered(0)
    return _call(
        "incremental mapping",
        pycolmap.incremental_mapping,
        db_path,
        image_dir,
        out_dir,
        options,
        initial_image_pair_callback=initial_pair,
        next_image_callback=next_image,
    )


@dataclass
class _Run:
    """One run's inputs, settings, work folder and stage timings (filled in as the stages run)."""

    paths: list[Path]
    cfg: AppConfig
    ccfg: ColmapConfig
    work: Path
    matcher: str
    threads: int
    seconds: dict[str, float]

    @property
    def image_dir(self) -> Path:
        return self.work / "images"

    @property
    def sparse_dir(self) -> Path:
        return self.work / "sparse"

    @property
    def db_path(self) -> Path:
        return self.work / "database.db"


class ColmapEngine:
    """COLMAP structure from motion (SIFT, matching, global or incremental mapping) on the CPU."""

    name = "colmap"

    def availability(self) -> str | None:
        """None when pycolmap imports, else how to install it."""
        if pycolmap is None:
            return (
                f"The COLMAP engine needs the pycolmap package, which could not be imported "
                f"({_PYCOLMAP_IMPORT_ERROR}); install it with: pip install pycolmap"
            )
        return None

    def reconstruct(
        self,
        image_paths: list[Path],
        cfg: AppConfig,
        job_dir: Path,
        progress: ProgressFn,
        *,
        cancel: Callable[[], bool] | None = None,
    ) -> Scene:
        """Image files (input order) -> Scene of the registered images (see the module docstring).

        Writes ``job_dir/colmap_work/{images, database.db, sparse/}``. Raises ImageLoadError for
        unreadable files, ColmapError (ValueError) when fewer than two images register or COLMAP
        fails, ValueError for bad settings, Cancelled when ``cancel()`` returns True.
        """
        run = self._start(image_paths, cfg, job_dir)
        prepared, n_keypoints = self._features(run, progress)
        _poll(cancel, STAGE_MATCHING)
        n_pairs, n_verified = self._matching(run, progress)
        if n_verified == 0:
            raise ColmapError(self._too_few_message(prepared, 0, n_keypoints, "no image pair could be matched"))
        _poll(cancel, STAGE_MAPPING)
        rec, best_key, models = self._mapping(run, progress)
        if rec is None or rec.num_reg_images() < 2:
            n_reg = rec.num_reg_images() if rec is not None else 0
            raise ColmapError(self._too_few_message(prepared, n_reg, n_keypoints, "mapping failed"))
        info = RunInfo(run.matcher, run.seconds, n_pairs, n_verified, n_keypoints)
        scene = sparse_scene(rec, prepared, run.image_dir, run.sparse_dir / str(best_key), models, run.ccfg, info)
        if not run.ccfg.dense:
            return scene
        _poll(cancel, STAGE_DENSE)
        mvs_cfg = MvsConfig(max_size=run.ccfg.mvs_size)
        device = resolve_device(cfg.model.device)
        return densify(scene, rec, run.image_dir, mvs_cfg, device=device, progress=progress, cancel=cancel)

    def _start(self, image_paths: list[Path], cfg: AppConfig, job_dir: Path) -> _Run:
        """Check the settings and inputs; a fresh work folder."""
        missing = self.availability()
        if missing is not None:
            raise ColmapError(missing)
        ccfg = cfg.colmap
        if ccfg.mapper not in _MAPPERS:
            raise ValueError(f"mapper must be one of {_MAPPERS}, got {ccfg.mapper!r}")
        if ccfg.camera_model not in _CAMERA_MODELS:
            raise ValueError(f"camera_model must be one of {_CAMERA_MODELS}, got {ccfg.camera_model!r}")
        paths = [Path(p) for p in image_paths]
        if len(paths) < 2:
            raise ColmapError(f"structure from motion needs at least 2 images, got {len(paths)}")
        work = Path(job_dir) / COLMAP_DIR
        if work.exists():
            shutil.rmtree(work)  # a re-run in the same job starts from a fresh database
        (work / "images").mkdir(parents=True)
        (work / "sparse").mkdir()
        return _Run(paths, cfg, ccfg, work, choose_matcher(len(paths), ccfg), _n_threads(ccfg), {})

    @staticmethod
    def _features(run: _Run, progress: ProgressFn) -> tuple[list[_PreparedImage], dict[str, int]]:
        """1. Images into the work folder, SIFT features; returns the images and keypoints per image."""
        n = len(run.paths)
        t0 = time.perf_counter()
        progress(STAGE_FEATURES, 0, n)
        max_pixels = run.cfg.preprocess.max_pixels
        prepared = [_prepare_image(p, k, run.image_dir, run.ccfg, max_pixels) for k, p in enumerate(run.paths)]
        _call("database creation", pycolmap.Database.open, run.db_path).close()
        names = [p.colmap_name for p in prepared]
        _extract(run.db_path, run.image_dir, names, run.ccfg, run.threads, lambda k: progress(STAGE_FEATURES, k, n))
        run.seconds["features"] = time.perf_counter() - t0
        with pycolmap.Database.open(run.db_path) as db:
            by_name = {im.name: im.image_id for im in db.read_all_images()}
            n_keypoints = {  # 0: COLMAP could not read it
                name: db.num_keypoints_for_image(by_name[name]) if name in by_name else 0 for name in names
            }
        logger.info(
            "colmap: %d SIFT features in %d images (%.1f s)", sum(n_keypoints.values()), n, run.seconds["features"]
        )
        return prepared, n_keypoints

    @staticmethod
    def _matching(run: _Run, progress: ProgressFn) -> tuple[int, int]:
        """2. Matching and geometric verification; returns (pairs matched, pairs verified)."""
        t0 = time.perf_counter()
        n_pairs = _count_pairs(run.db_path, run.matcher, run.ccfg, run.threads)
        progress(STAGE_MATCHING, 0, n_pairs)
        _match(run.db_path, run.matcher, run.ccfg, run.threads)
        progress(STAGE_MATCHING, n_pairs, n_pairs)
        with pycolmap.Database.open(run.db_path) as db:
            n_verified = db.num_verified_image_pairs()
        run.seconds["matching"] = time.perf_counter() - t0
        logger.info(
            "colmap: %s matching, %d pairs, %d verified (%.1f s)",
            run.matcher,
            n_pairs,
            n_verified,
            run.seconds["matching"],
        )
        return n_pairs, n_verified

    @staticmethod
    def _mapping(run: _Run, progress: ProgressFn):
        """3. Mapping; returns (the largest model or None, its key, every model)."""
        n = len(run.paths)
        t0 = time.perf_counter()
        models = _map(
            run.db_path, run.image_dir, run.sparse_dir, run.ccfg.mapper, n, run.threads,
            lambda k: progress(STAGE_MAPPING, k, n),
        )  # fmt: skip
        run.seconds["mapping"] = time.perf_counter() - t0
        best_key = max(models, key=lambda k: models[k].num_reg_images(), default=None)
        rec = models[best_key] if best_key is not None else None
        n_reg = rec.num_reg_images() if rec is not None else 0
        progress(STAGE_MAPPING, n_reg, n)
        if rec is not None:
            logger.info(
                "colmap: %s mapping registered %d/%d images, %d points (%.1f s)",
                run.ccfg.mapper, n_reg, n, rec.num_points3D(), run.seconds["mapping"],
            )  # fmt: skip
        return rec, best_key, models

    @staticmethod
    def _too_few_message(
        prepared: Sequence[_PreparedImage], n_reg: int, n_keypoints: dict[str, int], reason: str
    ) -> str:
        few = [p.name for p in prepared if n_keypoints.get(p.colmap_name, 0) < _FEW_FEATURES]
        detail = f"; images with almost no SIFT features (blank or blurry?): {', '.join(few)}" if few else ""
        need = (
            "COLMAP's mappers do not build a model from only two images (pycolmap 4.2 needs at least "
            "three overlapping views)"
            if len(prepared) == 2
            else "structure from motion needs at least two registered, overlapping, textured views"
        )
        return (
            f"COLMAP registered {n_reg} of {len(prepared)} images ({reason}{detail}). {need[0].upper()}"
            f"{need[1:]}; try more images with more overlap, or the DUSt3R engine, which works from as few "
            "as two views."
        )
