"""Built-in synthetic datasets: the laptop quick start and the fine-tuning example.

Images show 1-6 coloured shapes (see :mod:`focus_detr.data.shapes` for the class sets) at
small, medium and large sizes (COCO area buckets 32^2 and 96^2) over textured, noisy
backgrounds. Shapes are bright and saturated, backgrounds dull and darker, so the task is
learnable by a small DETR on a CPU, while textures, scales, several objects and some overlap keep
it from being trivial. Every image is drawn from its own seed stream ``(seed, split, index)``:
the output is byte-identical across runs, and the validation split never shares a stream with
the training split.

Two layouts. COCO (:func:`generate_synthetic_coco`, the quick start's 8 classes by default)::

    train/000000.png ...          val/000000.png ...
    annotations/instances_train.json   annotations/instances_val.json
    synthetic.json                (generation settings; marks a complete dataset)

YOLO (:func:`generate_synthetic_yolo`, the fine-tuning example's 6 classes by default)::

    data.yaml                     (path, train, val, names)
    images/train/000000.png ...   labels/train/000000.txt ...  (one "class cx cy w h" a line)
    images/val/...                labels/val/...
    synthetic.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from focus_detr.data.shapes import SHAPES, SHAPES_FINETUNE, ShapeSet, draw_image, shape_set

CATEGORY_NAMES = SHAPES.names
_GENERATOR_VERSION = 2
_SPLITS = {"train": 0, "val": 1}
_META_FILE = "synthetic.json"
# Settings whose default is left out of synthetic.json, so that datasets written before they
# existed still count as complete.
_OPTIONAL_SETTINGS = {"shapes": SHAPES.name, "layout": "coco"}


@dataclass(frozen=True)
class SyntheticPaths:
    """Where a generated synthetic dataset (COCO layout) lives.

    Attributes:
        root: dataset folder.
        train_images / val_images: image folders of the two splits.
        train_annotations / val_annotations: COCO ``instances`` JSON files.
        category_names: class names, label ``i`` has COCO category id ``i + 1``.
    """

    root: Path
    train_images: Path
    val_images: Path
    train_annotations: Path
    val_annotations: Path
    category_names: tuple[str, ...] = CATEGORY_NAMES

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> SyntheticPaths:
        root = Path(root)
        return cls(
            root=root,
            train_images=root / "train",
            val_images=root / "val",
            train_annotations=root / "annotations" / "instances_train.json",
            val_annotations=root / "annotations" / "instances_val.json",
        )


@dataclass(frozen=True)
class SyntheticYoloPaths:
    """Where a generated synthetic dataset (YOLO layout) lives.

    Attributes:
        root: dataset folder (give it to ``focus-detr train --data``).
        data_yaml: the dataset description (``path``, ``train``, ``val``, ``names``).
        train_images / val_images: image folders; labels are in the parallel ``labels/``.
        category_names: class names, YOLO class index ``i`` is ``category_names[i]``.
    """

    root: Path
    data_yaml: Path
    train_images: Path
    val_images: Path
    category_names: tuple[str, ...]

    @classmethod
    def under(cls, root: str | os.PathLike[str], shapes: ShapeSet) -> SyntheticYoloPaths:
        root = Path(root)
        return cls(
            root=root,
            data_yaml=root / "data.yaml",
            train_images=root / "images" / "train",
            val_images=root / "images" / "val",
            category_names=shapes.names,
        )


@dataclass(frozen=True)
class _Settings:
    num_train: int
    num_val: int
    height_range: tuple[int, int]
    width_range: tuple[int, int]
    max_objects: int
    seed: int
    version: int = _GENERATOR_VERSION
    shapes: str = SHAPES.name
    layout: str = "coco"

    def as_dict(self) -> dict[str, Any]:
        values = json.loads(json.dumps(asdict(self)))
        for key, default in _OPTIONAL_SETTINGS.items():
            if values[key] == default:
                del values[key]
        return values


def generate_synthetic_coco(
    root: str | os.PathLike[str],
    *,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: tuple[int, int] | None = None,
    image_size_range: tuple[int, int] = (160, 256),
    max_objects: int = 6,
    seed: int = 0,
    shapes: ShapeSet | str = SHAPES,
) -> SyntheticPaths:
    """Write a synthetic dataset in COCO layout under ``root`` (which must be absent or empty).

    Args:
        root: output folder.
        num_train / num_val: images per split.
        image_size: fixed ``(height, width)`` of every image; when None each side is drawn
            uniformly from ``image_size_range`` (inclusive).
        image_size_range: ``(min, max)`` side length when ``image_size`` is None.
        max_objects: at most this many objects per image (at least 1).
        seed: base seed; the same settings give byte-identical files.
        shapes: the class set (:data:`~focus_detr.data.shapes.SHAPES`, the quick start's, by
            default) or its name.

    Returns:
        The paths of the generated files.
    """
    settings = _make_settings(
        num_train, num_val, image_size, image_size_range, max_objects, seed, shapes, "coco"
    )
    _generate(Path(root), settings)
    return _coco_paths(Path(root), settings)


def generate_synthetic_yolo(
    root: str | os.PathLike[str],
    *,
    num_train: int = 300,
    num_val: int = 100,
    image_size: tuple[int, int] | None = None,
    image_size_range: tuple[int, int] = (160, 256),
    max_objects: int = 6,
    seed: int = 0,
    shapes: ShapeSet | str = SHAPES_FINETUNE,
) -> SyntheticYoloPaths:
    """Write a synthetic dataset in YOLO (Ultralytics) layout under ``root``.

    By default the fine-tuning example's classes (circle, triangle, star, heart, arrow,
    hexagon) and a small training split, as a dataset of one's own would be. Arguments as
    :func:`generate_synthetic_coco`.
    """
    settings = _make_settings(
        num_train, num_val, image_size, image_size_range, max_objects, seed, shapes, "yolo"
    )
    _generate(Path(root), settings)
    return SyntheticYoloPaths.under(root, shape_set(settings.shapes))


def ensure_synthetic_dataset(
    root: str | os.PathLike[str],
    *,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: tuple[int, int] | None = None,
    image_size_range: tuple[int, int] = (160, 256),
    max_objects: int = 6,
    seed: int = 0,
    shapes: ShapeSet | str = SHAPES,
) -> SyntheticPaths:
    """Return the COCO-layout dataset under ``root``, generating it first if missing,
    incomplete or stale.

    Generation goes to a temporary sibling folder that is renamed into place, so an interrupted
    run never leaves a half-written dataset behind, and concurrent callers (several training
    processes) end up sharing one complete copy. An existing ``root`` that is not a synthetic
    dataset written by this module is never deleted (``FileExistsError``).
    Arguments as :func:`generate_synthetic_coco`.
    """
    settings = _make_settings(
        num_train, num_val, image_size, image_size_range, max_objects, seed, shapes, "coco"
    )
    _ensure(Path(root), settings)
    return _coco_paths(Path(root), settings)


def ensure_synthetic_yolo(
    root: str | os.PathLike[str],
    *,
    num_train: int = 300,
    num_val: int = 100,
    image_size: tuple[int, int] | None = None,
    image_size_range: tuple[int, int] = (160, 256),
    max_objects: int = 6,
    seed: int = 0,
    shapes: ShapeSet | str = SHAPES_FINETUNE,
) -> SyntheticYoloPaths:
    """:func:`generate_synthetic_yolo` once: as :func:`ensure_synthetic_dataset`, YOLO layout."""
    settings = _make_settings(
        num_train, num_val, image_size, image_size_range, max_objects, seed, shapes, "yolo"
    )
    _ensure(Path(root), settings)
    return SyntheticYoloPaths.under(root, shape_set(settings.shapes))


def _coco_paths(root: Path, settings: _Settings) -> SyntheticPaths:
    return dataclasses.replace(
        SyntheticPaths.under(root), category_names=shape_set(settings.shapes).names
    )


def _make_settings(
    num_train: int,
    num_val: int,
    image_size: tuple[int, int] | None,
    image_size_range: tuple[int, int],
    max_objects: int,
    seed: int,
    shapes: ShapeSet | str,
    layout: str,
) -> _Settings:
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got {num_train}, {num_val}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if image_size is not None:
        height_range = (int(image_size[0]), int(image_size[0]))
        width_range = (int(image_size[1]), int(image_size[1]))
    else:
        height_range = width_range = (int(image_size_range[0]), int(image_size_range[1]))
    if min(height_range + width_range) < 32 or height_range[0] > height_range[1]:
        raise ValueError(f"image sides must be >= 32 and min <= max, got {image_size_range}")
    name = shapes if isinstance(shapes, str) else shapes.name
    if shape_set(name) != shapes and name != shapes:  # the name must be a built-in set's
        raise ValueError(f"shapes must be one of the built-in sets, got {name!r}")
    return _Settings(
        num_train, num_val, height_range, width_range, max_objects, seed, shapes=name, layout=layout
    )


def _generate(root: Path, settings: _Settings) -> None:
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; use ensure_synthetic_dataset to reuse it")
    _write_dataset(root, settings)


def _ensure(root: Path, settings: _Settings) -> None:
    if _is_complete(root, settings):
        return
    if root.exists() and any(root.iterdir()) and not (root / _META_FILE).is_file():
        raise FileExistsError(f"{root} exists and does not hold a synthetic dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_dataset(staging, settings)
        _replace_folder(staging, root, settings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _split_folders(root: Path, settings: _Settings) -> dict[str, tuple[Path, Path]]:
    """Per split: (image folder, annotation file (COCO) or label folder (YOLO))."""
    if settings.layout == "yolo":
        return {s: (root / "images" / s, root / "labels" / s) for s in _SPLITS}
    return {s: (root / s, root / "annotations" / f"instances_{s}.json") for s in _SPLITS}


def _is_complete(root: Path, settings: _Settings) -> bool:
    try:
        stored = json.loads((root / _META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stored != settings.as_dict():
        return False
    counts = {"train": settings.num_train, "val": settings.num_val}
    for split, (images, labels) in _split_folders(root, settings).items():
        if not labels.exists() or not images.is_dir():
            return False
        if sum(1 for _ in images.glob("*.png")) != counts[split]:
            return False
    return settings.layout != "yolo" or (root / "data.yaml").is_file()


def _replace_folder(staging: Path, root: Path, settings: _Settings) -> None:
    """Move ``staging`` to ``root``; a stale synthetic ``root`` is moved aside and deleted."""
    if _is_complete(root, settings):  # another process finished first: keep its copy
        return
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        try:
            root.rename(old)
        except OSError:
            old = None  # another process moved it first
    try:
        staging.rename(root)
    except OSError:
        if not _is_complete(root, settings):  # lost the race to a different dataset
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_dataset(root: Path, settings: _Settings) -> None:
    shapes = shape_set(settings.shapes)
    counts = {"train": settings.num_train, "val": settings.num_val}
    for split, (images, labels) in _split_folders(root, settings).items():
        images.mkdir(parents=True, exist_ok=True)
        if settings.layout == "yolo":
            labels.mkdir(parents=True, exist_ok=True)
            _draw_split(split, images, counts[split], settings, _yolo_writer(labels))
        else:
            labels.parent.mkdir(parents=True, exist_ok=True)
            coco = _coco_split(split, images, counts[split], settings, shapes)
            _write_json(labels, coco)
    if settings.layout == "yolo":
        _write_data_yaml(root / "data.yaml", shapes)
    _write_json(root / _META_FILE, settings.as_dict())


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


ObjectSink = Callable[[int, str, int, int, list[tuple[int, list[float], float]]], None]


def _draw_split(
    split: str, folder: Path, count: int, settings: _Settings, sink: ObjectSink
) -> None:
    """Draw and save ``count`` images; ``sink(index, file_name, height, width, objects)``."""
    shapes = shape_set(settings.shapes)
    for index in range(count):
        rng = np.random.default_rng(
            np.random.SeedSequence(settings.seed % 2**63, spawn_key=(_SPLITS[split], index))
        )
        height = int(rng.integers(settings.height_range[0], settings.height_range[1] + 1))
        width = int(rng.integers(settings.width_range[0], settings.width_range[1] + 1))
        pixels, objects = draw_image(rng, height, width, settings.max_objects, shapes)
        file_name = f"{index:06d}.png"
        PIL.Image.fromarray(pixels).save(folder / file_name, compress_level=1)
        sink(index, file_name, height, width, objects)


def _coco_split(
    split: str, folder: Path, count: int, settings: _Settings, shapes: ShapeSet
) -> dict[str, Any]:
    """Draw the split's images; returns its COCO dictionary."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []

    def collect(index: int, file_name: str, height: int, width: int, objects: list) -> None:
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for label, bbox, area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                }
            )

    _draw_split(split, folder, count, settings, collect)
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(shapes.names)
    ]
    info = {"description": f"focus-detr synthetic shapes ({split})", "version": "1"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _yolo_writer(labels: Path) -> ObjectSink:
    """Writes one ``class cx cy w h`` line per object (normalised to the image)."""

    def write(index: int, file_name: str, height: int, width: int, objects: list) -> None:
        lines = []
        for label, (x, y, w, h), _ in objects:
            centre_x, centre_y = (x + w / 2) / width, (y + h / 2) / height
            lines.append(f"{label} {centre_x:.6f} {centre_y:.6f} {w / width:.6f} {h / height:.6f}")
        text = "".join(f"{line}\n" for line in lines)
        (labels / f"{Path(file_name).stem}.txt").write_text(text, encoding="utf-8")

    return write


def _write_data_yaml(path: Path, shapes: ShapeSet) -> None:
    import yaml

    description = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(shapes.names)),
    }
    header = f"# focus-detr synthetic shapes ({shapes.name}), YOLO layout\n"
    path.write_text(header + yaml.safe_dump(description, sort_keys=False), encoding="utf-8")
