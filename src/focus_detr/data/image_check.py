"""A fast check of a dataset's image files before anything is trained or evaluated on them.

Each file is opened with Pillow without decoding its pixels: that reads the header only, which
tells whether the file exists, is an image Pillow recognises, and how large it is (upright, after
the EXIF orientation that :func:`focus_detr.io.read_image` applies). A file whose pixel data is
corrupt behind a good header is only found when the loader decodes it.

What happens to the images that fail (:data:`BAD_IMAGE_POLICIES`):

- ``"skip"`` (the default): they are left out and one warning names every one of them with its
  reason, so that a few broken files in a large dataset do not stop a run hours in;
- ``"error"``: a :class:`~focus_detr.errors.DatasetError` names every one of them at once;
- ``"unchecked"``: no check (the loader fails on a bad image when it reaches it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from focus_detr.errors import DatasetError

BAD_IMAGE_POLICIES = ("skip", "error", "unchecked")

_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATIONS_SWAPPING_SIDES = frozenset({5, 6, 7, 8})  # transposes and 90-degree rotations


@dataclass(frozen=True)
class BadImage:
    """An image entry that cannot be used.

    Attributes:
        path: the file.
        reason: why (missing, unreadable, size differs from the annotations...).
    """

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class UnreadableImageError(Exception):
    """:func:`read_image_size` could not read a header; the message says why."""


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of an image file as :func:`focus_detr.io.read_image` returns it.

    Reads the header only (no pixel decoding). EXIF orientations 5-8 swap the sides, as the
    image is turned upright when read.

    Raises:
        UnreadableImageError: missing, empty, not a file, or not an image Pillow recognises.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise UnreadableImageError("file does not exist" if not path.exists() else "not a file")
        if path.stat().st_size == 0:
            raise UnreadableImageError("file is empty")
        with Image.open(path) as image:
            width, height = image.size
            orientation = _orientation(image)
    except UnidentifiedImageError:
        raise UnreadableImageError("not an image format Pillow recognises") from None
    except OSError as error:
        raise UnreadableImageError(f"cannot open it ({error})") from None
    if orientation in _ORIENTATIONS_SWAPPING_SIDES:
        width, height = height, width
    return int(height), int(width)


def _orientation(image: Image.Image) -> int:
    # A PNG's getexif() decodes the whole image when the EXIF chunk was not in the header;
    # read EXIF only where the header already holds it.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # broken EXIF blocks are ignored by read_image too
        return 1


def find_bad_images(
    paths: Sequence[Path], stated_sizes: Sequence[tuple[int, int]] | None = None
) -> list[tuple[int, BadImage]]:
    """``(index, problem)`` of every entry whose file is unusable.

    Args:
        paths: image files.
        stated_sizes: ``(height, width)`` the annotations give each file, checked when given.
    """
    bad = []
    for index, path in enumerate(paths):
        try:
            size = read_image_size(path)
        except UnreadableImageError as error:
            bad.append((index, BadImage(path, str(error))))
            continue
        if stated_sizes is not None and tuple(stated_sizes[index]) != size:
            stated = tuple(stated_sizes[index])
            bad.append(
                (
                    index,
                    BadImage(
                        path,
                        f"the file is {size[0]}x{size[1]} (h x w) but the annotations say "
                        f"{stated[0]}x{stated[1]}",
                    ),
                )
            )
    return bad


def check_policy(policy: str) -> str:
    """``policy`` if it is one of :data:`BAD_IMAGE_POLICIES`."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {policy!r}")
    return policy


def report_bad_images(
    bad: Sequence[BadImage],
    total: int,
    source: str | os.PathLike[str],
    policy: str,
    stacklevel: int = 2,
) -> None:
    """Warn about ``bad`` (policy ``skip``) or raise naming all of them (policy ``error``)."""
    if not bad:
        return
    listing = "".join(f"\n  {problem}" for problem in bad)
    if policy == "error":
        raise DatasetError(f"{source}: {len(bad)} of {total} images cannot be used:{listing}")
    warnings.warn(
        f"{source}: {len(bad)} of {total} images cannot be used and are left out:{listing}",
        stacklevel=stacklevel + 1,
    )
