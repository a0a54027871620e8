"""What the page shows as soon as files are dropped, and the example scene (no Gradio here).

:func:`upload_tiles` turns the uploads into thumbnail tiles in upload order: a photo's preview,
or a red tile naming the problem for a file that is not a readable image; photos past the per-run
limit are dimmed and captioned. :func:`upload_note` is the one-line summary under them. The
example scene (:func:`example_files`) is a set of views of a textured box rendered by the project's
own ray caster (``scripts/make_example.py``), so it is redistributable and needs no download; it
has enough texture for COLMAP, the offline engine.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from core.inputs.preprocessing import heif_available
from core.inputs.video import is_video

__all__ = [
    "EXAMPLE_DIR",
    "THUMB_SIZE",
    "Tile",
    "example_files",
    "file_paths",
    "thumbnail",
    "tiles_html",
    "upload_note",
    "upload_tiles",
]

THUMB_SIZE = 256
"""Longest side of a thumbnail, pixels."""
EXAMPLE_DIR = Path(__file__).resolve().parent / "assets" / "examples" / "box"
"""The example scene's photos (rendered by ``scripts/make_example.py``)."""
_TILE_HW = (144, 192)
_HTML_THUMB = 160
_BAD_RGB = (96, 24, 32)
_DIM = 0.3
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Tile:
    """One upload as the page shows it."""

    image: np.ndarray
    """(H, W, 3) uint8 preview (or the problem tile)."""
    caption: str
    problem: str | None = None
    """Why the file will not be used as it is (None: it is a usable photo)."""


def thumbnail(path: Path, max_pixels: int | None = None, size: int = THUMB_SIZE) -> np.ndarray:
    """A photo's preview, EXIF-oriented, longest side ``size``: (H, W, 3) uint8. Raises OSError/ValueError.

    Images over ``max_pixels`` (the pipeline's limit) are refused from their header, JPEGs are
    decoded at a reduced scale (``draft``), so a preview never costs more memory than a run would.
    """
    heif_available()  # registers the HEIC opener when pillow-heif is installed
    with Image.open(path) as im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ValueError(f"{w}x{h} is over the limit of {max_pixels} pixels (possible decompression bomb)")
        im.draft("RGB", (size, size))
        im = ImageOps.exif_transpose(im)
        im.thumbnail((size, size))
        return np.asarray(im.convert("RGB"))


def file_paths(files: Any) -> list[Path]:
    """gr.File(file_count='multiple') value (paths, FileData dicts or objects) -> paths."""
    if files is None:
        return []
    if isinstance(files, (str, Path)):
        files = [files]
    out = []
    for f in files:
        if isinstance(f, (str, Path)):
            out.append(Path(f))
        elif isinstance(f, Mapping) and "path" in f:
            out.append(Path(f["path"]))
        elif hasattr(f, "path"):
            out.append(Path(f.path))
        elif hasattr(f, "name"):
            out.append(Path(f.name))
        else:
            raise ValueError(f"cannot read the upload {f!r}")
    return out


def _problem_tile(text: str) -> np.ndarray:
    """A dark red tile with a cross and ``text``: (144, 192, 3) uint8."""
    h, w = _TILE_HW
    im = Image.new("RGB", (w, h), _BAD_RGB)
    draw = ImageDraw.Draw(im)
    cx, cy, r = w // 2, h // 2 - 14, 22
    draw.line((cx - r, cy - r, cx + r, cy + r), fill=(255, 140, 140), width=6)
    draw.line((cx - r, cy + r, cx + r, cy - r), fill=(255, 140, 140), width=6)
    font = ImageFont.load_default(size=17)
    box = draw.textbbox((0, 0), text, font=font)
    draw.text(((w - (box[2] - box[0])) / 2, h - 40), text, fill=(255, 225, 225), font=font)
    return np.asarray(im)


VideoTiles = Callable[[Path], Sequence[tuple[np.ndarray, str]]]
"""A video file -> (thumbnail, frame name) of each frame a run keeps; raises OSError/ValueError."""


def upload_tiles(
    paths: Sequence[Path], max_images: int, *, max_pixels: int | None = None, video_frames: VideoTiles | None = None
) -> list[Tile]:
    """Tiles for the uploads, in order: previews (a video: its kept frames, via ``video_frames``),
    problem tiles for unreadable files, dimmed previews past ``max_images`` usable images."""
    tiles: list[Tile] = []
    n_ok = 0
    for p in paths:
        if is_video(p):
            try:
                frames = list(video_frames(p)) if video_frames is not None else []
            except _READ_ERRORS:
                tiles.append(Tile(_problem_tile("not a video"), f"✖ {p.name}: not a readable video", "not an image"))
                continue
        else:
            try:
                frames = [(thumbnail(p, max_pixels), p.name)]
            except _READ_ERRORS:
                tiles.append(Tile(_problem_tile("not an image"), f"✖ {p.name}: not an image", "not an image"))
                continue
        for img, name in frames:
            n_ok += 1
            if n_ok > max_images:
                dim = (img.astype(np.float32) * _DIM).astype(np.uint8)
                tiles.append(Tile(dim, f"✖ {name}: over the limit of {max_images}", "over the limit"))
            else:
                tiles.append(Tile(img, f"{name} (video: {len(frames)} frames will be kept)" if is_video(p) else name))
    return tiles


def upload_note(tiles: Sequence[Tile], max_images: int) -> str:
    """One markdown line about the uploads' problems ("" when there is none)."""
    bad = [t for t in tiles if t.problem == "not an image"]
    over = [t for t in tiles if t.problem == "over the limit"]
    parts = []
    if bad:
        unique = list(dict.fromkeys(t.caption.split(" ", 1)[1].split(":")[0] for t in bad))
        names = ", ".join(unique[:3]) + (" …" if len(unique) > 3 else "")
        parts.append(f"{names} {'is not an image' if len(bad) == 1 else f'({len(bad)} files) are not images'}")
    if over:
        photos = "1 photo is" if len(over) == 1 else f"{len(over)} photos are"
        parts.append(f"{photos} over the limit of {max_images} per run")
    if not parts:
        return ""
    return f"⚠ {'; '.join(parts)}. Remove them (✕ in the file list) before pressing Reconstruct."


def _data_uri(image: np.ndarray, size: int = _HTML_THUMB) -> str:
    im = Image.fromarray(image)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def tiles_html(tiles: Sequence[Tile]) -> str:
    """The tiles as an HTML grid (inline JPEGs): flagged ones outlined in red, their caption saying why."""
    cells = []
    for t in tiles:
        cls = "thumb bad" if t.problem else "thumb"
        caption = html.escape(t.caption)
        cells.append(
            f"<figure class='{cls}' title='{caption}'><img src='{_data_uri(t.image)}' alt='{caption}'>"
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return f"<div class='thumb-grid'>{''.join(cells)}</div>"


def example_files() -> list[Path]:
    """The example scene's photos, in order (empty when the assets are missing)."""
    return sorted(EXAMPLE_DIR.glob("*.jpg")) if EXAMPLE_DIR.is_dir() else []
