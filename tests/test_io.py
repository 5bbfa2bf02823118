"""Tests for focus_detr.io: image reading in every mode, file listing, atomic writes."""

from __future__ import annotations

import io
import os
import pickle
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from focus_detr.io import (
    ImageReadError,
    atomic_save,
    atomic_write_bytes,
    list_image_files,
    read_image,
)


def _rgb_pattern(height: int = 24, width: int = 40) -> np.ndarray:
    """An asymmetric RGB test image: every rotation or flip of it is different."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack(
        [(cols * 255) // (width - 1), (rows * 255) // (height - 1), (rows * cols) % 256], axis=2
    ).astype(np.uint8)


def _hwc(tensor: torch.Tensor) -> np.ndarray:
    assert tensor.dtype == torch.uint8 and tensor.dim() == 3 and tensor.shape[0] == 3
    assert tensor.is_contiguous()
    return tensor.permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    ("suffix", "options"),
    [(".png", {}), (".bmp", {}), (".tiff", {}), (".webp", {"lossless": True}), (".ppm", {})],
)
def test_lossless_formats_read_exactly(tmp_path: Path, suffix: str, options: dict) -> None:
    pixels = _rgb_pattern()
    path = tmp_path / f"image{suffix}"
    Image.fromarray(pixels).save(path, **options)
    image = read_image(path)
    assert image.shape == (3, 24, 40)
    np.testing.assert_array_equal(_hwc(image), pixels)


def test_rgb_jpeg_matches_pillow_decoding(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.fromarray(_rgb_pattern()).save(path, quality=90)
    expected = np.asarray(Image.open(path).convert("RGB"))
    image = read_image(str(path))
    np.testing.assert_array_equal(_hwc(image), expected)
    assert np.abs(_hwc(image).astype(int) - _rgb_pattern().astype(int)).mean() < 8


def test_one_pixel_image_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PyTorch's "non-writable array" warning
        image = read_image(path)
        image[0, 0, 0] += 1  # the tensor owns writable memory
    image[0, 0, 0] -= 1
    assert image.shape == (3, 1, 1)
    assert image.flatten().tolist() == [10, 20, 30]


def test_grayscale_is_repeated_on_three_channels(tmp_path: Path) -> None:
    grey = _rgb_pattern()[:, :, 0]
    path = tmp_path / "grey.png"
    Image.fromarray(grey, mode="L").save(path)
    pixels = _hwc(read_image(path))
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], grey)


def test_one_bit_image(tmp_path: Path) -> None:
    path = tmp_path / "binary.png"
    Image.fromarray(_rgb_pattern()[:, :, 0] > 127).convert("1").save(path)
    values = set(np.unique(_hwc(read_image(path))).tolist())
    assert values == {0, 255}


_SIXTEEN_BIT_VALUES = np.array(
    [[0, 1, 128, 129, 257, 385, 386, 1000], [30000, 65534, 65535, 512, 600, 32768, 40000, 7]]
)


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"depth{suffix}"
    Image.fromarray(_SIXTEEN_BIT_VALUES.astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    pixels = _hwc(read_image(path)).astype(np.int64)
    expected = np.round(_SIXTEEN_BIT_VALUES / 257.0)
    np.testing.assert_array_equal(pixels[:, :, 0], expected)
    assert np.abs(pixels[:, :, 1] - _SIXTEEN_BIT_VALUES / 257.0).max() <= 0.5
    np.testing.assert_array_equal(pixels[:, :, 0], pixels[:, :, 2])
    assert pixels[0, 1, 0] == 0 and pixels[0, 2, 0] == 0 and pixels[0, 3, 0] == 1


def test_sixteen_bit_pgm_in_mode_I(tmp_path: Path) -> None:
    path = tmp_path / "scan.pgm"
    values = np.array([0, 257, 1000, 65535], dtype=">u2")
    path.write_bytes(b"P5 4 1 65535\n" + values.tobytes())
    assert Image.open(path).mode == "I"
    assert _hwc(read_image(path))[0, :, 0].tolist() == [0, 1, 4, 255]


def test_thirty_two_bit_int_tiff_clips_outside_sixteen_bits(tmp_path: Path) -> None:
    path = tmp_path / "int32.tiff"
    Image.fromarray(np.array([[-5, 25700, 70000]], dtype=np.int32)).save(path)
    assert _hwc(read_image(path))[0, :, 0].tolist() == [0, 100, 255]


def test_float_image_follows_pillow(tmp_path: Path) -> None:
    path = tmp_path / "float.tiff"
    Image.fromarray(np.array([[-3.0, 0.0, 100.0, 300.0]], dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    assert _hwc(read_image(path))[0, :, 0].tolist() == [0, 0, 100, 255]


def test_rgba_drops_alpha_like_convert_rgb(tmp_path: Path) -> None:
    rgba = np.dstack([_rgb_pattern(), np.full((24, 40), 0, dtype=np.uint8)])
    rgba[:12, :, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(_hwc(read_image(path)), _rgb_pattern())


def test_grey_with_alpha(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.new("LA", (3, 2), (77, 0)).save(path)
    assert np.all(_hwc(read_image(path)) == 77)


def test_palette_with_transparency(tmp_path: Path) -> None:
    palette_image = Image.new("P", (4, 2))
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette_image.putdata([0, 1, 2, 1, 0, 0, 2, 2])
    palette_image.info["transparency"] = bytes([0, 128, 255])  # per-entry alpha (tRNS)
    path = tmp_path / "palette.png"
    palette_image.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = _hwc(read_image(path))
    assert pixels[0, 0].tolist() == [255, 0, 0]  # fully transparent entry keeps its colour
    assert pixels[0, 1].tolist() == [0, 255, 0]
    assert pixels[0, 2].tolist() == [0, 0, 255]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about byte transparency here
        reference = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(pixels, reference)


def test_gif_palette_and_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (5, 3), color) for color in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(path), "n_frames", 1) == 2
    assert _hwc(read_image(path))[1, 2].tolist() == [255, 0, 0]


def test_multi_page_tiff_gives_first_page(tmp_path: Path) -> None:
    pages = [Image.new("L", (4, 4), 10), Image.new("L", (6, 2), 200)]
    path = tmp_path / "pages.tiff"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    image = read_image(path)
    assert image.shape == (3, 4, 4) and torch.all(image == 10)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.fromarray(_rgb_pattern()).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    pixels = _hwc(read_image(path))
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(path).convert("RGB")))
    assert np.abs(pixels.astype(int) - _rgb_pattern().astype(int)).mean() < 10


def _save_with_orientation(pixels: np.ndarray, path: Path, orientation: int, **options) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **options)


@pytest.mark.parametrize(("orientation", "clockwise_quarter_turns"), [(3, 2), (6, 1), (8, 3)])
def test_exif_rotated_jpeg_matches_manual_rotation(
    tmp_path: Path, orientation: int, clockwise_quarter_turns: int
) -> None:
    path = tmp_path / f"rotated{orientation}.jpg"
    _save_with_orientation(_rgb_pattern(), path, orientation, quality=95)
    stored = np.asarray(Image.open(path).convert("RGB"))  # as stored, no orientation applied
    pixels = _hwc(read_image(path))
    np.testing.assert_array_equal(pixels, np.rot90(stored, k=-clockwise_quarter_turns))
    if orientation in (6, 8):
        assert pixels.shape == (40, 24, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_exif_orientations_match_exif_transpose(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"oriented{orientation}.png"
    _save_with_orientation(_rgb_pattern(), path, orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(_hwc(read_image(path)), expected)


def test_broken_orientation_value_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "odd.jpg"
    _save_with_orientation(_rgb_pattern(), path, 42, quality=95)
    assert read_image(path).shape == (3, 24, 40)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_rgb_pattern(64, 64)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _corrupt_png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_rgb_pattern()).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[60:80] = bytes(20)  # inside the compressed IDAT data
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("truncated.jpg", _jpeg_bytes()[:-200], "truncated"),
        ("no_end_marker.jpg", _jpeg_bytes()[:-2], "truncated"),
        ("header_only.jpg", _jpeg_bytes()[:20], "not an image"),
        ("corrupt.png", _corrupt_png_bytes(), "corrupt"),
        ("empty.jpg", b"", "empty"),
        ("notes.txt", b"this is not an image\n", "not an image"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR", "corrupt"),
    ],
)
def test_unreadable_files_raise_image_read_error(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert name in str(info.value)
    assert info.value.path == path


def test_missing_file_and_folder_raise_image_read_error(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"missing\.jpg.*does not exist"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


def test_image_read_error_survives_pickling() -> None:
    error = ImageReadError("cannot read image a.jpg: file is empty", "a.jpg")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.path == Path("a.jpg")
    assert str(ImageReadError(message="x")) == "x"  # the DataLoader re-raises this way


def test_list_image_files(tmp_path: Path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ["b/deep/z.PNG", "b/a.jpg", "a.jpeg", "c.webp", "notes.txt", ".x.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".hidden" / "y.jpg").write_bytes(b"x")
    single = tmp_path / "b" / "a.jpg"
    other = tmp_path / "b" / "deep" / "odd.image"
    other.write_bytes(b"x")
    found = list_image_files([other, str(tmp_path), single])
    relative = [path.relative_to(tmp_path).as_posix() for path in found]
    assert relative == ["b/deep/odd.image", "a.jpeg", "b/a.jpg", "b/deep/z.PNG", "c.webp"]
    assert list_image_files([tmp_path / "b" / "deep" / "z.PNG"]) == [tmp_path / "b/deep/z.PNG"]
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        list_image_files([single, tmp_path / "nope.jpg"])


def _leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def test_atomic_write_bytes_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "data.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert _leftovers(target.parent) == []
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_atomic_save_round_trip_and_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pth"
    state = {"weight": torch.arange(6.0).reshape(2, 3), "step": 7}
    atomic_save(state, target)
    loaded = torch.load(target)
    assert loaded["step"] == 7 and torch.equal(loaded["weight"], state["weight"])
    before = target.read_bytes()
    with pytest.raises(Exception, match="pickle"):
        atomic_save({"bad": lambda: None}, target)  # fails midway through torch.save
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []
    with pytest.raises(IsADirectoryError):
        atomic_save(state, tmp_path)
