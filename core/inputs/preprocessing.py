"""Uploaded image files -> network inputs, with the reference's exact rules.

The geometry follows the reference ``load_images`` (FORMAT.md section 3) to the pixel:

1. EXIF orientation is applied (``ImageOps.exif_transpose``), then the image becomes 8-bit RGB.
2. Aspect-preserving resize to a target long side ``L``; each side becomes
   ``int(round(side * L / max(W, H)))`` (Python's banker's rounding). LANCZOS when the image is
   larger than ``L``, BICUBIC otherwise. ``L = image_size``, except in the 224 mode where
   ``L = round(224 * max(W/H, H/W))`` so that the SHORT side becomes 224.
3. Crop around ``(W // 2, H // 2)``: in the 224 mode a centred square (224x224); otherwise width
   and height are floored to multiples of 16, and a square image becomes 4:3 (e.g. 512x384)
   unless ``square_ok``.
4. ``(uint8 / 255 - 0.5) / 0.5`` -> (1, 3, H, W) float32 in [-1, 1].

What the reference does not do, and we add for real uploads: WebP/BMP/TIFF/GIF/AVIF and
HEIC/HEIF (through pillow-heif, registered on first use), transparency composited on WHITE (the
reference drops the alpha channel), 16-bit images scaled to 8 bits (the reference clips them),
and clear :class:`ImageLoadError` rejections (non-images, truncated files, images smaller than a
16-pixel patch, decompression bombs). Animated files give their first frame. None of these
change the result for the 8-bit RGB/grayscale JPEG/PNG files the reference accepts.

The load stage is :func:`load_views`: the views to run, where a single image is paired with a
copy of itself (the one place that happens; :func:`load_images` never duplicates).
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

from config import PreprocessConfig
from core.errors import ImageLoadError
from core.inputs.pairs import duplicate_single_image
from core.types import InputImage

__all__ = [
    "IMAGE_EXTENSIONS",
    "PATCH_SIZE",
    "ImageLoadError",
    "heif_available",
    "list_image_files",
    "check_image_file",
    "load_image",
    "load_images",
    "load_views",
    "plan_resize_crop",
    "preprocess_pil",
    "to_rgb8",
]

logger = logging.getLogger(__name__)

#: The network's patch size: processed widths and heights are multiples of it.
PATCH_SIZE = 16

#: File extensions picked up when a folder is given (lower case). Explicit file paths are opened
#: by content, whatever their extension.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".png",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".avif",
    ".heic",
    ".heif",
    ".hif",
)

_HEIF_EXTENSIONS = (".heic", ".heif", ".hif")
# ISO-BMFF brands of HEIF stills/sequences (bytes 8..12 after b"ftyp"); AVIF is read by Pillow.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"mif2"}
# Pillow's decoders raise these for broken, truncated or unsupported files.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


@functools.cache
def _register_heif() -> bool:
    """Register pillow-heif's opener with Pillow once; False when pillow-heif is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    logger.debug("pillow-heif %s registered for HEIC/HEIF", pillow_heif.__version__)
    return True


def heif_available() -> bool:
    """True when HEIC/HEIF files can be read (pillow-heif installed); registers it on first call."""
    return _register_heif()


def _looks_like_heif(path: Path) -> bool:
    if path.suffix.lower() in _HEIF_EXTENSIONS:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return False  # Image.open reports the real problem
    return len(head) == 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def list_image_files(folder: str | Path) -> list[Path]:
    """Supported image files of a folder (not recursive), sorted by file name.

    Hidden files (leading ``.``, e.g. macOS ``._x.jpg`` resource forks) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageLoadError(f"{folder}: not a folder", filename=str(folder))
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        ),
        key=lambda p: p.name,
    )


def plan_resize_crop(size: tuple[int, int], cfg: PreprocessConfig) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Reference geometry for an image of ``size`` = (W, H) (after EXIF orientation).

    Returns ``(resized_size, crop_box)``: (W, H) after the aspect-preserving resize and
    (left, top, right, bottom) of the crop in the resized image. The crop may be empty for
    extreme aspect ratios; :func:`preprocess_pil` rejects those.

    >>> plan_resize_crop((333, 500), PreprocessConfig(image_size=512))
    ((341, 512), (2, 0, 338, 512))
    """
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {size}")
    if cfg.image_size == 224:
        long_side = round(224 * max(w / h, h / w))  # short side -> 224
    else:
        long_side = cfg.image_size
    longest = max(w, h)
    rw, rh = (int(round(side * long_side / longest)) for side in (w, h))
    cx, cy = rw // 2, rh // 2
    if cfg.image_size == 224:
        half = min(cx, cy)
        return (rw, rh), (cx - half, cy - half, cx + half, cy + half)
    half_w = ((2 * cx) // PATCH_SIZE) * PATCH_SIZE // 2
    half_h = ((2 * cy) // PATCH_SIZE) * PATCH_SIZE // 2
    if rw == rh and not cfg.square_ok:
        half_h = 3 * half_w // 4  # exact: half_w is a multiple of 8
    return (rw, rh), (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def _resize_filter(size: tuple[int, int], resized: tuple[int, int]) -> Image.Resampling:
    """LANCZOS when the image is larger than the target long side, BICUBIC otherwise."""
    return Image.Resampling.LANCZOS if max(size) > max(resized) else Image.Resampling.BICUBIC


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB.

    Transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited on white.
    16-bit grayscale (``I;16*``, and ``I``, read as 0..65535) is scaled by 255/65535 with
    rounding; float (``F``) images are read as 0..1 when their maximum is <= 1, else as 0..255.
    CMYK, palette, grayscale and bilevel images use Pillow's conversion. Raises ValueError for
    colour modes Pillow cannot convert (e.g. LAB).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB", "1") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I
        arr = np.asarray(img).astype(np.int64)
        arr = np.clip(arr, 0, 65535)
        u8 = ((arr * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(u8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if arr.size and float(arr.max()) <= 1.0 else 1.0
        u8 = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(u8, mode="L").convert("RGB")
    return img.convert("RGB")


def _normalise(img: Image.Image) -> torch.Tensor:
    """8-bit RGB image -> (1, 3, H, W) float32 in [-1, 1], bit-identical to the reference."""
    arr = np.array(img, dtype=np.uint8, copy=True)  # (H, W, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return x.sub(0.5).div(0.5).unsqueeze(0)


def _check_size(size: tuple[int, int], cfg: PreprocessConfig, name: str) -> None:
    w, h = size
    if w * h > cfg.max_pixels:
        raise ImageLoadError(
            f"{name}: {w}x{h} = {w * h} pixels is over the limit of {cfg.max_pixels} "
            "(possible decompression bomb); downscale it or raise max_pixels",
            filename=name,
        )
    if min(w, h) < cfg.min_side:
        raise ImageLoadError(
            f"{name}: {w}x{h} is too small; each side needs at least {cfg.min_side} pixels",
            filename=name,
        )


def preprocess_pil(img: Image.Image, cfg: PreprocessConfig, *, idx: int = 0, name: str = "image") -> InputImage:
    """An in-memory Pillow image -> :class:`InputImage`.

    Applies EXIF orientation, the RGB conversion of :func:`to_rgb8`, the optional enhancement
    (``cfg.enhance``: contrast then sharpness, before the resize), and the reference resize, crop
    and normalisation. The input image is not modified. Raises :class:`ImageLoadError` (message
    starting with ``name``) for too small, too elongated or too large images.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(img).__name__}")
    _check_size(img.size, cfg, name)
    try:
        oriented = ImageOps.exif_transpose(img)
    except _PIL_ERRORS as e:
        raise ImageLoadError(f"{name}: cannot decode the image ({e})", filename=name) from e
    return _preprocess_oriented(oriented, cfg, idx=idx, name=name)


def _preprocess_oriented(img: Image.Image, cfg: PreprocessConfig, *, idx: int, name: str) -> InputImage:
    """Decoded image with EXIF orientation already applied -> :class:`InputImage`."""
    try:
        rgb = to_rgb8(img)
    except _PIL_ERRORS as e:
        raise ImageLoadError(f"{name}: cannot convert a {img.mode} image to RGB ({e})", filename=name) from e
    original_size = rgb.size
    if cfg.enhance:
        rgb = ImageEnhance.Contrast(rgb).enhance(cfg.contrast)
        rgb = ImageEnhance.Sharpness(rgb).enhance(cfg.sharpness)

    resized_size, crop_box = plan_resize_crop(original_size, cfg)
    out_w, out_h = crop_box[2] - crop_box[0], crop_box[3] - crop_box[1]
    if min(resized_size) < 1 or out_w < PATCH_SIZE or out_h < PATCH_SIZE:
        raise ImageLoadError(
            f"{name}: {original_size[0]}x{original_size[1]} is too elongated; at size "
            f"{cfg.image_size} it would give {max(out_w, 0)}x{max(out_h, 0)}, less than one "
            f"{PATCH_SIZE}-pixel patch",
            filename=name,
        )
    if out_w % PATCH_SIZE or out_h % PATCH_SIZE:  # cannot happen with the rules above
        raise ImageLoadError(f"{name}: crop {out_w}x{out_h} is not a multiple of {PATCH_SIZE}", filename=name)
    resized = rgb.resize(resized_size, _resize_filter(original_size, resized_size))
    cropped = resized.crop(crop_box)
    logger.debug("%s: %dx%d -> %dx%d -> %dx%d", name, *original_size, *resized_size, out_w, out_h)
    return InputImage(
        tensor=_normalise(cropped),
        idx=idx,
        name=name,
        original_size=(int(original_size[0]), int(original_size[1])),
        resized_size=(int(resized_size[0]), int(resized_size[1])),
        crop_box=(int(crop_box[0]), int(crop_box[1]), int(crop_box[2]), int(crop_box[3])),
    )


def _open_oriented(path: Path, cfg: PreprocessConfig, name: str) -> Image.Image:
    """Open ``path``, check its header size, fully decode the first frame, apply EXIF orientation.

    Raises :class:`ImageLoadError` naming the file. The returned image no longer refers to the
    file. EXIF is applied while the file is open: TIFF keeps its orientation in the file's tags,
    which a detached copy would lose.
    """
    if path.is_dir():
        raise ImageLoadError(f"{name}: is a folder, not an image file", filename=name)
    if not path.exists():
        raise ImageLoadError(f"{name}: file not found ({path})", filename=name)
    if _looks_like_heif(path) and not _register_heif():
        raise ImageLoadError(
            f"{name}: HEIC/HEIF images need the pillow-heif package (pip install pillow-heif), "
            "or convert the file to JPEG or PNG",
            filename=name,
        )
    try:
        with Image.open(path) as im:
            _check_size(im.size, cfg, name)  # header only: nothing decoded yet
            n_frames = getattr(im, "n_frames", 1)
            if n_frames > 1:
                logger.info("%s: %d frames, using the first", name, n_frames)
            im.load()  # full decode of frame 0: truncated data raises here
            return ImageOps.exif_transpose(im)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageLoadError(f"{name}: not an image file Pillow can read ({e})", filename=name) from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{name}: rejected as a possible decompression bomb ({e})", filename=name) from e
    except PermissionError as e:
        raise ImageLoadError(f"{name}: cannot read the file (permission denied)", filename=name) from e
    except _PIL_ERRORS as e:
        raise ImageLoadError(f"{name}: broken or truncated image file ({e})", filename=name) from e


def check_image_file(path: str | Path, cfg: PreprocessConfig) -> tuple[int, int]:
    """Open and fully decode one image file with exactly the checks of :func:`load_image` (missing,
    unreadable, not an image, truncated, too small, a decompression bomb), keeping nothing.

    Returns its (W, H) after EXIF orientation. Raises :class:`ImageLoadError` with the message
    :func:`load_image` would give, so every engine rejects a bad file the same way.
    """
    path = Path(path)
    img = _open_oriented(path, cfg, path.name)
    size = (int(img.size[0]), int(img.size[1]))
    img.close()
    return size


def load_image(path: str | Path, cfg: PreprocessConfig, *, idx: int = 0, name: str | None = None) -> InputImage:
    """One image file -> :class:`InputImage` (reference rules, see the module docstring).

    ``name`` defaults to the file name. Raises :class:`ImageLoadError` naming the file for
    missing, unreadable, non-image, truncated, too small, too elongated or too large files.
    """
    path = Path(path)
    name = name if name is not None else path.name
    img = _open_oriented(path, cfg, name)
    return _preprocess_oriented(img, cfg, idx=idx, name=name)


def load_images(paths: Sequence[str | Path], cfg: PreprocessConfig) -> list[InputImage]:
    """Image files and/or folders -> :class:`InputImage` list, ``idx`` = position in the list.

    A folder stands for its supported images (:data:`IMAGE_EXTENSIONS`, hidden files skipped)
    in sorted file-name order, as in the reference. A single str/Path is accepted as a
    one-element list. Raises :class:`ImageLoadError` on the first bad file, or when no image is
    found.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(list_image_files(p) if p.is_dir() else [p])
    if not files:
        shown = ", ".join(str(p) for p in paths) or "(empty list)"
        raise ImageLoadError(f"no images found in {shown}; supported extensions: {' '.join(IMAGE_EXTENSIONS)}")
    return [load_image(f, cfg, idx=k) for k, f in enumerate(files)]


def load_views(paths: Sequence[str | Path], cfg: PreprocessConfig) -> list[InputImage]:
    """Image files and/or folders -> the views to run (the load stage).

    :func:`load_images`, then a single image is paired with a copy of itself, as the reference
    app does (:func:`core.inputs.pairs.duplicate_single_image`: the copy shares the tensor, has
    idx 1 and the name ``"<name> (copy)"``), so there are always >= 2 views and the caller makes
    the pair list once with ``make_pairs(len(views), scene_graph)``. Raises as :func:`load_images`.
    """
    return duplicate_single_image(load_images(paths, cfg))
