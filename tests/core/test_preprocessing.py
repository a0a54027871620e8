"""core.inputs.preprocessing: reference-exact geometry and pixels, accepted formats, rejections."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFile

import core.inputs.preprocessing as pp
from config import PreprocessConfig
from core.inputs.preprocessing import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    list_image_files,
    load_image,
    load_images,
    plan_resize_crop,
    preprocess_pil,
    to_rgb8,
)

CFG64 = PreprocessConfig(image_size=64)


def _official_cases(fixtures_dir: Path) -> list[dict]:
    return json.loads((fixtures_dir / "preprocess" / "preprocess_official.json").read_text())


def _u8_to_tensor(u8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(u8.copy()).permute(2, 0, 1).to(torch.float32) / 255
    return ((x - 0.5) / 0.5)[None]


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- reference parity -----------------------------------------------------------------------


def test_official_fixtures_match_exactly(fixtures_dir):
    cases = _official_cases(fixtures_dir)
    assert len(cases) == 15
    root = fixtures_dir / "preprocess"
    for case in cases:
        cfg = PreprocessConfig(image_size=case["size"], square_ok=case["square_ok"])
        out = load_image(root / case["raw"], cfg, idx=3)
        expected = np.asarray(Image.open(root / case["expected"]).convert("RGB"))
        label = case["expected"]
        assert out.true_shape == tuple(case["true_shape_HxW"]), label
        assert out.original_size == tuple(case["raw_WxH_after_exif"]), label
        assert out.resized_size == tuple(case["resized_WxH"]), label
        np.testing.assert_array_equal(out.rgb(), expected, err_msg=label)
        # the tensor itself is (u8 / 255 - 0.5) / 0.5 bit for bit
        assert out.tensor.dtype == torch.float32 and out.tensor.shape == (1, 3, *case["true_shape_HxW"])
        torch.testing.assert_close(out.tensor, _u8_to_tensor(expected), rtol=0, atol=0)
        assert out.idx == 3 and out.name == Path(case["raw"]).name


def test_official_crop_boxes(fixtures_dir):
    root = fixtures_dir / "preprocess"
    boxes = {
        (512, False, "raw0.png"): (0, 0, 512, 384),
        (512, False, "raw2.png"): (0, 64, 512, 448),  # square -> 4:3
        (512, True, "raw2.png"): (0, 0, 512, 512),
        (512, False, "raw4.png"): (2, 0, 338, 512),  # 341 wide -> 336, around cx = 170
        (512, False, "raw5.png"): (0, 6, 512, 390),  # 396 high -> 384, around cy = 198
        (224, False, "raw0.png"): (37, 0, 261, 224),  # 299x224, cx = 149
        (224, False, "raw1.png"): (0, 37, 224, 261),
    }
    for (size, square_ok, raw), box in boxes.items():
        out = load_image(root / "raw" / raw, PreprocessConfig(image_size=size, square_ok=square_ok))
        assert out.crop_box == box, (size, square_ok, raw)


def test_exif_orientation_gives_portrait(fixtures_dir):
    raw6 = fixtures_dir / "preprocess" / "raw" / "raw6.png"
    assert Image.open(raw6).size == (320, 240)
    out = load_image(raw6, PreprocessConfig())
    assert out.original_size == (240, 320) and out.true_shape == (512, 384)


def test_tiny_fixture_images_reproduce_inference_inputs(fixtures_dir):
    ref = np.load(fixtures_dir / "tiny_linear_inference.npz")
    images = load_images([fixtures_dir / "images"], CFG64)
    assert [im.name for im in images] == ["img0.png", "img1.png", "img2.png"]
    assert [im.idx for im in images] == [0, 1, 2]
    for k, im in enumerate(images):
        np.testing.assert_array_equal(im.tensor.numpy(), ref[f"img_{k}"], err_msg=f"img_{k}")
        assert list(im.true_shape) == ref[f"true_shape_{k}"][0].tolist()
    # img2 (40x40) is upscaled to 64x64, then the square becomes 4:3
    assert images[2].resized_size == (64, 64) and images[2].crop_box == (0, 8, 64, 56)


@pytest.mark.parametrize(
    ("size", "square_ok", "wh", "resized", "final_wh"),
    [
        (512, False, (640, 480), (512, 384), (512, 384)),
        (512, False, (1000, 562), (512, 288), (512, 288)),
        (512, False, (333, 500), (341, 512), (336, 512)),
        (512, False, (257, 199), (512, 396), (512, 384)),
        (512, False, (500, 500), (512, 512), (512, 384)),
        (512, True, (500, 500), (512, 512), (512, 512)),
        (224, False, (640, 480), (299, 224), (224, 224)),
        (224, False, (480, 640), (224, 299), (224, 224)),
        (320, False, (640, 481), (320, 240), (320, 240)),  # any multiple of 16 is a long side
        (512, False, (1024, 41), (512, 20), (512, 16)),  # 20.5 -> 20: banker's rounding
        (512, False, (1024, 43), (512, 22), (512, 16)),  # 21.5 -> 22
    ],
)
def test_plan_resize_crop(size, square_ok, wh, resized, final_wh):
    got_resized, box = plan_resize_crop(wh, PreprocessConfig(image_size=size, square_ok=square_ok))
    assert got_resized == resized
    assert (box[2] - box[0], box[3] - box[1]) == final_wh


def test_resize_filter_is_lanczos_when_larger_else_bicubic(tmp_path):
    big = Image.fromarray(_noise(90, 120, seed=1))
    small = Image.fromarray(_noise(30, 40, seed=2))
    for img, filt in ((big, Image.Resampling.LANCZOS), (small, Image.Resampling.BICUBIC)):
        out = preprocess_pil(img, CFG64)
        expected = np.asarray(img.resize((64, 48), filt))
        np.testing.assert_array_equal(out.rgb(), expected)


def test_original_from_processed_maps_back_to_the_upload():
    # 333x500 portrait: resized to 341x512, cropped to x in [2, 338); a dark dot at (200, 300)
    w, h, dot = 333, 500, (200, 300)
    arr = np.full((h, w, 3), 255, np.uint8)
    arr[dot[1] - 3 : dot[1] + 4, dot[0] - 3 : dot[0] + 4] = 0
    out = preprocess_pil(Image.fromarray(arr), PreprocessConfig(image_size=512))
    assert out.resized_size == (341, 512) and out.crop_box == (2, 0, 338, 512)
    m = out.original_from_processed()
    sx, sy = 341 / 333, 512 / 500
    np.testing.assert_allclose(m, [[1 / sx, 0, 2.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]], rtol=1e-12)
    dark = out.rgb().sum(-1) < 200
    v, u = np.nonzero(dark)
    centre = m @ np.array([u.mean(), v.mean(), 1.0])
    np.testing.assert_allclose(centre[:2], dot, atol=0.5)
    # corners of the processed image land inside the original
    for u_p, v_p in ((0, 0), (335, 511)):
        x, y, _ = m @ np.array([u_p, v_p, 1.0])
        assert -0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5  # pixel centres, edges at -0.5


# --- accepted inputs ------------------------------------------------------------------------


def test_rgba_is_composited_on_white():
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[...] = (200, 100, 0, 128)
    rgba[:, 32:, 3] = 0  # right half fully transparent (its colour channels are black)
    out = preprocess_pil(Image.fromarray(rgba, "RGBA"), CFG64).rgb().astype(int)
    a = 128 / 255
    expected = np.array([200, 100, 0]) * a + 255 * (1 - a)  # [227.4, 177.2, 127.0]
    np.testing.assert_allclose(out[:, :32].reshape(-1, 3), np.tile(expected, (48 * 32, 1)), atol=1)
    assert (out[:, 32:] == 255).all()


def test_la_and_palette_with_transparency_are_composited_on_white(tmp_path):
    la = np.zeros((48, 64, 2), np.uint8)
    la[..., 0], la[..., 1] = 50, 0
    la[:24, :, 1] = 255
    out = preprocess_pil(Image.fromarray(la, "LA"), CFG64).rgb()
    assert (out[:24] == 50).all() and (out[24:] == 255).all()

    pal = Image.new("P", (64, 48), 0)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.paste(1, (0, 0, 32, 48))
    pal.save(tmp_path / "pal.png", transparency=0)
    out = load_image(tmp_path / "pal.png", CFG64).rgb()
    assert (out[:, :32] == (10, 20, 30)).all() and (out[:, 32:] == 255).all()


def test_grayscale_palette_and_bilevel(tmp_path):
    Image.new("L", (64, 48), 77).save(tmp_path / "gray.png")
    assert (load_image(tmp_path / "gray.png", CFG64).rgb() == 77).all()
    pal = Image.new("P", (64, 48), 1)
    pal.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    pal.save(tmp_path / "pal.bmp")
    assert (load_image(tmp_path / "pal.bmp", CFG64).rgb() == (9, 99, 199)).all()
    Image.new("1", (64, 48), 1).save(tmp_path / "bw.png")
    assert (load_image(tmp_path / "bw.png", CFG64).rgb() == 255).all()


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_images_are_scaled_not_clipped(tmp_path, mode):
    values = np.array([0, 1000, 32896, 65535])
    arr = np.repeat(values, 16)[None, :].repeat(48, 0)  # (48, 64), four vertical bands
    dtype = np.uint16 if mode == "I;16" else np.int32
    img = Image.fromarray(arr.astype(dtype))
    assert img.mode == mode
    if mode == "I;16":
        img.save(tmp_path / "g16.png")
        reread = Image.open(tmp_path / "g16.png")
        assert reread.mode in ("I;16", "I")
        rgb = load_image(tmp_path / "g16.png", CFG64).rgb()
    else:
        rgb = preprocess_pil(img, CFG64).rgb()
    bands = rgb[0, [0, 16, 32, 48], 0]
    np.testing.assert_array_equal(bands, [0, 4, 128, 255])  # 1000 * 255 / 65535 = 3.89
    assert (rgb == rgb[..., :1]).all()


def test_cmyk_tiff_and_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (64, 48), (255, 0, 0, 0))  # pure cyan
    cmyk.save(tmp_path / "cyan.tif")
    assert (load_image(tmp_path / "cyan.tif", CFG64).rgb() == (0, 255, 255)).all()
    cmyk.save(tmp_path / "cyan.jpg", quality=95)
    assert Image.open(tmp_path / "cyan.jpg").mode == "CMYK"
    rgb = load_image(tmp_path / "cyan.jpg", CFG64).rgb().astype(int)
    np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), [0, 255, 255], atol=3)


@pytest.mark.parametrize(("ext", "kwargs"), [(".webp", {"lossless": True}), (".bmp", {}), (".tif", {}), (".png", {})])
def test_lossless_formats_give_identical_tensors(tmp_path, ext, kwargs):
    arr = _noise(72, 96, seed=5)
    Image.fromarray(arr).save(tmp_path / f"x{ext}", **kwargs)
    out = load_image(tmp_path / f"x{ext}", CFG64)
    ref = preprocess_pil(Image.fromarray(arr), CFG64)
    torch.testing.assert_close(out.tensor, ref.tensor, rtol=0, atol=0)
    assert out.true_shape == (48, 64)


def test_jpeg_and_tiff_exif_orientation(tmp_path):
    arr = _noise(48, 64, seed=6)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    img.save(tmp_path / "o.tif", exif=exif)
    for name in ("o.jpg", "o.tif"):
        out = load_image(tmp_path / name, CFG64)
        assert out.original_size == (48, 64) and out.true_shape == (64, 48), name
    expected = np.rot90(arr, k=-1)  # clockwise
    np.testing.assert_array_equal(load_image(tmp_path / "o.tif", CFG64).rgb(), expected)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    rgb = load_image(tmp_path / "anim.gif", CFG64).rgb()
    assert (rgb == (255, 0, 0)).all()


def test_heif_is_read_through_pillow_heif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")  # a listed dependency: present in CI
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[:, :32] = (200, 40, 40)
    arr[:, 32:] = (40, 40, 200)
    pillow_heif.from_pillow(Image.fromarray(arr)).save(tmp_path / "x.heic", quality=95)
    out = load_image(tmp_path / "x.heic", CFG64)
    assert out.true_shape == (48, 64)
    np.testing.assert_allclose(out.rgb()[:, 4:28].reshape(-1, 3).mean(0), (200, 40, 40), atol=8)
    np.testing.assert_allclose(out.rgb()[:, 36:60].reshape(-1, 3).mean(0), (40, 40, 200), atol=8)


def test_heif_without_pillow_heif_says_how_to_fix(tmp_path, monkeypatch):
    # a HEIF-branded header: detected by content even with a neutral extension
    (tmp_path / "photo.img").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    monkeypatch.setattr(pp, "_register_heif", lambda: False)
    with pytest.raises(ImageLoadError, match=r"photo\.img: HEIC/HEIF .*pip install pillow-heif"):
        load_image(tmp_path / "photo.img", CFG64)


def test_enhancement_is_applied_before_the_resize():
    img = Image.fromarray(_noise(90, 120, seed=7))
    plain = preprocess_pil(img, CFG64)
    cfg = PreprocessConfig(image_size=64, enhance=True)
    enhanced = preprocess_pil(img, cfg)
    manual = ImageEnhance.Sharpness(ImageEnhance.Contrast(img).enhance(1.2)).enhance(1.5)
    expected = np.asarray(manual.resize((64, 48), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(enhanced.rgb(), expected)
    assert not torch.equal(plain.tensor, enhanced.tensor)
    assert not PreprocessConfig().enhance  # off by default


def test_preprocess_pil_does_not_modify_its_input():
    img = Image.fromarray(_noise(50, 70, seed=8))
    before = np.asarray(img).copy()
    preprocess_pil(img, CFG64, idx=4, name="mem")
    np.testing.assert_array_equal(np.asarray(img), before)
    with pytest.raises(TypeError, match="ndarray"):
        preprocess_pil(before, CFG64)  # type: ignore[arg-type]


def test_to_rgb8_float_images():
    f01 = Image.fromarray(np.full((4, 4), 0.5, np.float32))
    assert (np.asarray(to_rgb8(f01)) == 128).all()
    f255 = Image.fromarray(np.full((4, 4), 300.0, np.float32))
    assert (np.asarray(to_rgb8(f255)) == 255).all()


# --- folders and lists ----------------------------------------------------------------------


def test_folder_is_read_in_sorted_name_order(tmp_path):
    for name, value in (("b.png", 20), ("a.jpg", 10), ("c.webp", 30)):
        Image.new("RGB", (64, 48), (value,) * 3).save(tmp_path / name)
    (tmp_path / "._a.jpg").write_bytes(b"macOS resource fork, skipped")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_image_files(tmp_path)] == ["a.jpg", "b.png", "c.webp"]
    images = load_images([tmp_path], CFG64)
    assert [(im.idx, im.name) for im in images] == [(0, "a.jpg"), (1, "b.png"), (2, "c.webp")]
    # a folder and files mixed, and a single path instead of a list
    mixed = load_images([tmp_path / "c.webp", tmp_path], CFG64)
    assert [im.name for im in mixed] == ["c.webp", "a.jpg", "b.png", "c.webp"]
    assert [im.idx for im in mixed] == [0, 1, 2, 3]
    assert [im.name for im in load_images(str(tmp_path / "b.png"), CFG64)] == ["b.png"]
    assert ".png" in IMAGE_EXTENSIONS and ".heic" in IMAGE_EXTENSIONS


def test_single_image_is_not_duplicated(fixtures_dir):
    assert len(load_images([fixtures_dir / "images" / "img0.png"], CFG64)) == 1


def test_empty_folder_and_empty_list_are_errors(tmp_path):
    with pytest.raises(ImageLoadError, match="no images found"):
        load_images([tmp_path], CFG64)
    with pytest.raises(ImageLoadError, match="no images found"):
        load_images([], CFG64)


# --- rejections -----------------------------------------------------------------------------


def test_text_file_renamed_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("definitely not a JPEG\n" * 20)
    with pytest.raises(ImageLoadError, match=r"^notes\.jpg: not an image file"):
        load_image(tmp_path / "notes.jpg", CFG64)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(tmp_path, fmt):
    path = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(_noise(60, 80, seed=9)).save(path, format=fmt)
    data = path.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"^cut\.\w+: broken or truncated"):
        load_image(cut, CFG64)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_too_small_image(tmp_path):
    Image.new("RGB", (10, 10), "red").save(tmp_path / "tiny.png")
    with pytest.raises(ImageLoadError, match=r"^tiny\.png: 10x10 is too small"):
        load_image(tmp_path / "tiny.png", CFG64)
    # the limit is one patch: 16 pixels per side is enough
    Image.new("RGB", (16, 16), "red").save(tmp_path / "patch.png")
    assert load_image(tmp_path / "patch.png", CFG64).true_shape == (48, 64)


def test_too_elongated_image():
    img = Image.new("RGB", (2000, 20), "red")
    with pytest.raises(ImageLoadError, match=r"strip: 2000x20 is too elongated"):
        preprocess_pil(img, PreprocessConfig(), name="strip")


def test_decompression_bomb_is_rejected_from_the_header(tmp_path):
    # 3000x3000 PNG cut after 2 kB: the size check fires before any decoding would fail
    Image.new("L", (3000, 3000), 0).save(tmp_path / "big.png")
    (tmp_path / "bomb.png").write_bytes((tmp_path / "big.png").read_bytes()[:2000])
    max_pixels_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError, match=r"^bomb\.png: 3000x3000 = 9000000 pixels is over the limit of 1000000"):
        load_image(tmp_path / "bomb.png", PreprocessConfig(max_pixels=1_000_000))
    assert Image.MAX_IMAGE_PIXELS == max_pixels_before


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pillow_own_bomb_error_is_reported_too(tmp_path):
    # 40000x40000 is past Pillow's hard limit: it refuses at open, reported as ours
    (tmp_path / "huge.png").write_bytes(_png_header_only(40000, 40000))
    with pytest.raises(ImageLoadError, match=r"^huge\.png: .*decompression bomb"):
        load_image(tmp_path / "huge.png", PreprocessConfig(max_pixels=10**10))


def test_bomb_guard_for_in_memory_images():
    with pytest.raises(ImageLoadError, match="over the limit of 100"):
        preprocess_pil(Image.new("RGB", (20, 20)), PreprocessConfig(max_pixels=100))


def test_missing_file_and_folder_path(tmp_path):
    with pytest.raises(ImageLoadError, match=r"^gone\.jpg: file not found"):
        load_image(tmp_path / "gone.jpg", CFG64)
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path, CFG64)
    with pytest.raises(ImageLoadError, match="gone.png: file not found"):
        load_images([tmp_path / "gone.png"], CFG64)


def test_unreadable_file(tmp_path, monkeypatch):
    Image.new("RGB", (64, 48)).save(tmp_path / "locked.png")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pp.Image, "open", deny)
    with pytest.raises(ImageLoadError, match=r"^locked\.png: cannot read the file"):
        load_image(tmp_path / "locked.png", CFG64)


def test_errors_are_value_errors_naming_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError) as info:
        load_image(tmp_path / "bad.png", CFG64)
    assert isinstance(info.value, ImageLoadError) and info.value.filename == "bad.png"
    assert str(info.value).startswith("bad.png: ")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_side must be >= 1, got 0"):
        PreprocessConfig(min_side=0)
    with pytest.raises(ValueError, match="multiple of 16, got 500"):
        PreprocessConfig(image_size=500)
