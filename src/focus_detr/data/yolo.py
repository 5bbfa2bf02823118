"""YOLO (Ultralytics) detection datasets, read into the COCO dict that every format shares.

Layout::

    data.yaml            path: .          (optional; the root, relative to this file)
                         train: images/train   (a folder, a .txt list of images, or a list)
                         val: images/val
                         names: [cat, dog]     (or {0: cat, 1: dog})
    images/train/a.jpg   labels/train/a.txt    one "class cx cy w h" line per object,
                                               normalised to the image; a polygon line
                                               "class x1 y1 x2 y2 ..." gives its bounding box

The label file of an image is found by replacing the last ``images`` folder of its path with
``labels`` (beside the image when the path has no ``images`` folder); an image without a label
file has no objects. Class index ``k`` becomes COCO category id ``k + 1``. Image sizes come
from the file headers (:func:`~focus_detr.data.image_check.read_image_size`).

Label lines that cannot be used (class index out of range, coordinates outside [0, 1], empty
boxes, malformed lines) are counted in one warning per split, with a few examples.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focus_detr.data.image_check import (
    BadImage,
    UnreadableImageError,
    read_image_size,
    report_bad_images,
)
from focus_detr.errors import DatasetError
from focus_detr.io import list_image_files

YAML_NAMES = ("data.yaml", "dataset.yaml")
_COORDINATE_TOLERANCE = 1e-6  # rounding of normalised coordinates written with 6 decimals
_EXAMPLES = 5


def find_data_yaml(root: str | os.PathLike[str]) -> Path | None:
    """``root`` itself if it is a YAML file, else its ``data.yaml`` / ``dataset.yaml``, else
    its only ``*.yaml`` file; None when there is none."""
    root = Path(root)
    if root.is_file() and root.suffix in (".yaml", ".yml"):
        return root
    if not root.is_dir():
        return None
    for name in YAML_NAMES:
        if (root / name).is_file():
            return root / name
    candidates = sorted([*root.glob("*.yaml"), *root.glob("*.yml")])
    return candidates[0] if len(candidates) == 1 else None


@dataclass(frozen=True)
class YoloDescription:
    """What ``data.yaml`` says.

    Attributes:
        file: the YAML file.
        root: the folder split paths are relative to.
        splits: split name -> its entries (folders or list files) as written.
        class_names: class index -> name.
    """

    file: Path
    root: Path
    splits: dict[str, list[str]]
    class_names: dict[int, str]


def read_data_yaml(path: str | os.PathLike[str]) -> YoloDescription:
    """Parse ``data.yaml`` (PyYAML ``safe_load``), with errors that name the file."""
    import yaml

    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{path} is not a YOLO dataset description (no key: value mapping)")
    names = _class_names(content.get("names"), path)
    if "nc" in content and content["nc"] != len(names):
        raise DatasetError(f"{path}: nc is {content['nc']!r} but 'names' has {len(names)} names")
    root = _root(content.get("path"), path)
    splits: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        value = content.get(split)
        if value is None:
            continue
        entries = value if isinstance(value, list) else [value]
        if not entries or not all(isinstance(e, str) and e for e in entries):
            raise DatasetError(f"{path}: '{split}' must be a path or a list of paths")
        splits[split] = list(entries)
    return YoloDescription(file=path, root=root, splits=splits, class_names=names)


def _class_names(names: object, path: Path) -> dict[int, str]:
    if isinstance(names, list):
        return {index: str(name) for index, name in enumerate(names)}
    if isinstance(names, dict):
        result = {}
        for key, name in names.items():
            if isinstance(key, bool) or not (
                isinstance(key, int) or (isinstance(key, str) and key.isdigit())
            ):
                raise DatasetError(f"{path}: class index {key!r} in 'names' is not an integer")
            result[int(key)] = str(name)
        return dict(sorted(result.items()))
    raise DatasetError(f"{path} has no 'names' list or mapping of class names")


def _root(value: object, yaml_file: Path) -> Path:
    if value is None or value == "":
        return yaml_file.parent
    root = Path(str(value)).expanduser()
    return root if root.is_absolute() else yaml_file.parent / root


@dataclass
class _SplitReading:
    """A split being read: its COCO entries and what was wrong with it."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    bad_images: list[BadImage] = field(default_factory=list)
    bad_labels: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def reject(self, reason: str, where: str) -> None:
        self.bad_labels[reason] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(where)


def read_yolo_split(
    description: YoloDescription, split: str, *, bad_images: str = "skip"
) -> tuple[dict[str, Any], Path]:
    """The split as a COCO dict, and the folder its ``file_name`` entries are relative to.

    The image headers are read for the sizes, which checks them too: unreadable images are
    left out with one warning (policies ``skip`` and ``unchecked``) or make this an error
    (policy ``error``); see :mod:`focus_detr.data.image_check`.
    """
    if split not in description.splits:
        raise DatasetError(f"{description.file} has no '{split}' split")
    image_files = _split_images(description, split)
    image_dir = _common_folder(image_files, description)
    reading = _SplitReading()
    for path in image_files:
        _read_image_entry(path, image_dir, description, reading)
    where = f"{description.file} ({split})"
    report_bad_images(reading.bad_images, len(image_files), where, bad_images, stacklevel=3)
    _warn_about_labels(reading, where, len(description.class_names))
    categories = [
        {"id": index + 1, "name": name} for index, name in description.class_names.items()
    ]
    info = {"description": f"converted from {description.file} ({split})"}
    coco = {
        "info": info,
        "images": reading.images,
        "annotations": reading.annotations,
        "categories": categories,
    }
    return coco, image_dir


def _split_images(description: YoloDescription, split: str) -> list[Path]:
    files: list[Path] = []
    for entry in description.splits[split]:
        path = _resolve(entry, description)
        if path.is_dir():
            files.extend(list_image_files([path]))
        elif path.is_file() and path.suffix == ".txt":
            files.extend(_listed_images(path, description))
        else:
            raise DatasetError(
                f"{description.file}: '{split}' entry {entry!r} is neither a folder nor a .txt "
                f"list of images ({path} does not exist)"
            )
    return list(dict.fromkeys(files))


def _resolve(entry: str, description: YoloDescription) -> Path:
    path = Path(entry).expanduser()
    if path.is_absolute():
        return path
    resolved = description.root / path
    beside = description.file.parent / path
    # Ultralytics files often name a root relative to its own datasets folder: fall back to
    # the YAML's folder when the root does not hold the split
    return resolved if resolved.exists() or not beside.exists() else beside


def _listed_images(list_file: Path, description: YoloDescription) -> list[Path]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read the image list {list_file}: {error}") from error
    images = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        path = Path(line)
        if not path.is_absolute():
            path = list_file.parent / line if line.startswith("./") else description.root / line
        images.append(path)
    return images


def _common_folder(files: list[Path], description: YoloDescription) -> Path:
    if not files:
        return description.root
    return Path(os.path.commonpath([str(path.parent) for path in files]))


def label_file(image: Path) -> Path:
    """The label file of an image: its last ``images`` folder replaced by ``labels``."""
    parts = image.parts
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            return Path(*parts[:index], "labels", *parts[index + 1 :]).with_suffix(".txt")
    return image.with_suffix(".txt")


def _read_image_entry(
    path: Path, image_dir: Path, description: YoloDescription, reading: _SplitReading
) -> None:
    try:
        height, width = read_image_size(path)
    except UnreadableImageError as error:
        reading.bad_images.append(BadImage(path, str(error)))
        return
    image_id = len(reading.images) + 1
    reading.images.append(
        {
            "id": image_id,
            "file_name": path.relative_to(image_dir).as_posix(),
            "height": height,
            "width": width,
        }
    )
    labels = label_file(path)
    if not labels.is_file():
        return
    try:
        lines = labels.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        reading.reject("unreadable label files", str(labels))
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        box = _parse_line(line, description.class_names, reading, f"{labels}:{number}: {line!r}")
        if box is None:
            continue
        class_index, (x, y, w, h) = box
        reading.annotations.append(
            {
                "id": len(reading.annotations) + 1,
                "image_id": image_id,
                "category_id": class_index + 1,
                "bbox": [x * width, y * height, w * width, h * height],
                "area": w * width * h * height,
                "iscrowd": 0,
            }
        )


def _parse_line(
    line: str, class_names: dict[int, str], reading: _SplitReading, where: str
) -> tuple[int, tuple[float, float, float, float]] | None:
    """``(class index, normalised [x, y, w, h])`` of a label line, or None (counted)."""
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        reading.reject("malformed lines", where)
        return None
    is_polygon = len(values) >= 7 and len(values) % 2 == 1
    if not (len(values) == 5 or is_polygon) or not values[0].is_integer():
        reading.reject("malformed lines", where)
        return None
    class_index = int(values[0])
    if class_index not in class_names:
        reading.reject("class index out of range", where)
        return None
    coordinates = values[1:]
    if is_polygon:
        xs, ys = coordinates[0::2], coordinates[1::2]
        corners = (min(xs), min(ys), max(xs), max(ys))
    else:
        centre_x, centre_y, w, h = coordinates
        corners = (centre_x - w / 2, centre_y - h / 2, centre_x + w / 2, centre_y + h / 2)
    low, high = -_COORDINATE_TOLERANCE, 1 + _COORDINATE_TOLERANCE
    if not all(low <= v <= high for v in (*coordinates, *corners)):
        reading.reject("coordinates outside [0, 1]", where)
        return None
    # within the tolerance: rounding of the written decimals, not a box outside the image
    x0, y0 = max(corners[0], 0.0), max(corners[1], 0.0)
    x1, y1 = min(corners[2], 1.0), min(corners[3], 1.0)
    if x1 <= x0 or y1 <= y0:
        reading.reject("empty boxes", where)
        return None
    return class_index, (x0, y0, x1 - x0, y1 - y0)


def _warn_about_labels(reading: _SplitReading, where: str, num_classes: int) -> None:
    if not reading.bad_labels:
        return
    total = sum(reading.bad_labels.values())
    parts = ", ".join(f"{count} {reason}" for reason, count in sorted(reading.bad_labels.items()))
    examples = "".join(f"\n  {example}" for example in reading.examples)
    warnings.warn(
        f"{where}: {total} labels ignored ({parts}; {num_classes} classes); for example:{examples}",
        stacklevel=4,
    )
