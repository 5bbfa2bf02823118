"""Reading images robustly, finding image files, and writing files atomically.

``read_image`` follows detectron2's ``read_image(path, format="RGB")`` (the reader behind the
official Focus-DETR numbers): the EXIF orientation is applied, then the image is converted like
Pillow's ``convert("RGB")``. It departs from it only where that conversion loses data: 16-bit
samples are rescaled instead of clipped at 255.

Every file the package writes (checkpoints, results, pictures, ONNX graphs, downloads) goes
through :func:`atomic_path`: the data goes to a temporary file in the destination folder, is
flushed to disk (and checked, where the writer checks) and then renamed over the destination,
so a crash or a failed check leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ImageReadError",
    "atomic_open",
    "atomic_path",
    "atomic_save",
    "atomic_write_bytes",
    "list_image_files",
    "read_image",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
    | {".ppm", ".pgm", ".pbm", ".pnm"}
)
"""Lower-case suffixes that ``list_image_files`` picks up inside folders."""

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mkv", ".avi", ".webm", ".mov"})
"""Lower-case suffixes that ``predict`` reads as videos."""

_EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that makes the image upright, as ImageOps.exif_transpose.
_ORIENTATION_TO_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow decodes 16-bit grey PNG/TIFF into "I;16*" and 16-bit PGM/PPM grey into "I".
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


class ImageReadError(Exception):
    """An image file is missing, empty, corrupt, truncated or not an image.

    Attributes:
        path: the file that could not be read (``None`` when unknown).
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep ``path`` when the error crosses a DataLoader worker boundary (pickling).
        return (type(self), (str(self), self.path))


def read_image(path: str | os.PathLike[str]) -> Tensor:
    """Read an image file as an upright RGB ``uint8`` tensor.

    Semantics (those of detectron2's ``read_image(path, format="RGB")``, except for 16 bits):

    - The EXIF orientation (all 8 values) is applied as ``PIL.ImageOps.exif_transpose`` does;
      unreadable EXIF data is ignored.
    - Colour conversion is Pillow's ``convert("RGB")``: alpha (RGBA, LA, PA, palette
      transparency) is dropped, not composited, so transparent pixels show their stored colour;
      grey levels are repeated on the three channels; CMYK uses Pillow's conversion.
    - 16-bit grey images (modes ``I;16*`` and ``I``, e.g. 16-bit PNG, TIFF, PGM) are mapped from
      0..65535 to 0..255 with rounding (``round(value / 257)``), values outside 0..65535 being
      clipped; ``convert("RGB")`` would clip everything above 255 instead. 16-bit colour images
      are reduced to 8 bits by Pillow's decoder.
    - Float images (mode ``F``) follow Pillow: values are clipped to 0..255.
    - Multi-frame files (GIF, TIFF, APNG, ...) give their first frame.

    A truncated file is an error, unless the caller set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.

    Args:
        path: image file in any format Pillow reads.

    Returns:
        ``uint8`` tensor ``[3, height, width]``, RGB, contiguous, on the CPU.

    Raises:
        ImageReadError: the file does not exist, is not a file, is empty, is not an image,
            or is corrupt or truncated. The message names the file and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"cannot read image {path}: file does not exist", path)
    if not path.is_file():
        raise ImageReadError(f"cannot read image {path}: not a regular file", path)
    if path.stat().st_size == 0:
        raise ImageReadError(f"cannot read image {path}: file is empty", path)
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncation and corruption surface here
            upright = _orient(_to_rgb(image), _exif_orientation(image))
            rgb = np.asarray(upright, dtype=np.uint8)
    except UnidentifiedImageError as err:
        raise ImageReadError(
            f"cannot read image {path}: not an image format Pillow recognises", path
        ) from err
    except Exception as err:  # decoders raise OSError, ValueError, SyntaxError, struct.error...
        raise ImageReadError(
            f"cannot read image {path}: corrupt or truncated ({type(err).__name__}: {err})", path
        ) from err
    # Pillow's array is read-only; the copy makes the tensor writable (and contiguous CHW).
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())


def _exif_orientation(image: Image.Image) -> int:
    """EXIF orientation of ``image`` (1 = upright); 1 when absent or unreadable."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(orientation)
    except Exception:  # broken EXIF blocks must not make a readable image unreadable
        return 1


def _orient(image: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF ``orientation`` (1..8) to ``image``; other values leave it unchanged."""
    method = _ORIENTATION_TO_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any Pillow mode to 8-bit RGB (see ``read_image``)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        # (v + 128) // 257 == round(v / 257) exactly: 257 is odd, so there are no ties.
        grey = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode in ("P", "PA"):
        # Same colours as convert("RGB"), without Pillow's warning about byte transparency.
        return image.convert("RGBA").convert("RGB")
    if image.mode == "La":
        image = image.convert("LA")  # Pillow has no direct La -> RGB conversion
    return image if image.mode == "RGB" else image.convert("RGB")


def list_image_files(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    extensions: Collection[str] = IMAGE_EXTENSIONS,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Expand files and folders into a list of image files.

    Files given explicitly are kept whatever their suffix. Folders are searched recursively,
    through symbolic links (each real folder once, so link loops end), for files whose
    lower-cased suffix is in ``extensions``, skipping hidden files and folders (names starting
    with ".") and the folders in ``exclude`` (e.g. where results go); each folder's files come
    sorted by path. The result keeps the order of ``inputs`` and lists each file once.

    Args:
        inputs: image files and/or folders.
        extensions: lower-case suffixes to pick up in folders (default: images).
        exclude: folders not to search.

    Returns:
        The image files, as ``Path`` objects.

    Raises:
        FileNotFoundError: an input does not exist (all missing inputs are named).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [Path(item) for item in inputs]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(f"image path(s) do not exist: {', '.join(missing)}")
    skipped = {os.path.realpath(folder) for folder in exclude}
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(_files_in_folder(path, frozenset(extensions), skipped))
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def _files_in_folder(folder: Path, extensions: frozenset[str], skipped: set[str]) -> list[Path]:
    """Files under ``folder`` with one of ``extensions`` (recursive, sorted, hidden skipped)."""
    files: list[Path] = []
    visited = set(skipped)
    for root, folder_names, file_names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a link loop, a folder reached twice, or an excluded folder
            folder_names[:] = []
            continue
        visited.add(real)
        folder_names[:] = [name for name in folder_names if not name.startswith(".")]
        files.extend(
            Path(root) / name
            for name in file_names
            if not name.startswith(".") and Path(name).suffix.lower() in extensions
        )
    return sorted(files)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces ``path`` when the block succeeds.

    Whatever the block writes to the yielded path (directly, or through a library that takes a
    file name) is flushed to disk, given the permissions a plain ``open(path, "wb")`` would
    give it, and renamed over ``path``. If the block raises (a failed check included), the
    temporary file is removed and ``path`` keeps what it held. Missing parent folders are
    created. Every file this package writes goes through here.

    Raises:
        IsADirectoryError: ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    os.close(descriptor)
    try:
        yield Path(temp_name)
        _fsync_file(temp_name)
        os.chmod(temp_name, 0o666 & ~_current_umask())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` whose file replaces ``path`` only if the block succeeds
    (:func:`atomic_path`); ``mode`` is a write mode (``"wb"``, ``"w"``)."""
    with atomic_path(path) as temporary, open(temporary, mode, encoding=encoding) as handle:
        yield handle


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` atomically: a crash never leaves a half-written checkpoint.

    Args:
        obj: anything ``torch.save`` accepts (state dicts, nested containers of tensors).
        path: destination file; replaced if it exists. Missing parent folders are created.
    """
    with atomic_open(path) as handle:
        torch.save(obj, handle)


def _fsync_file(name: str) -> None:
    descriptor = os.open(name, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read by setting, then restore at once
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Flush the folder entry so the rename itself survives a power cut (POSIX only)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
