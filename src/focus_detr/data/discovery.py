"""Find the splits of a dataset folder in any supported format, and load them.

Formats (detected from the folder, or forced with ``format``):

- ``coco``: ``ROOT/annotations/instances_<split>.json`` and ``ROOT/<split>/`` images, with
  splits ``train2017``/``val2017`` or ``train``/``val``;
- ``yolo``: ``ROOT/data.yaml`` (Ultralytics layout, see :mod:`focus_detr.data.yolo`);
  ``ROOT`` may also be the YAML file itself;
- ``voc``: ``ROOT/Annotations``, ``ROOT/JPEGImages``, ``ROOT/ImageSets/Main/<split>.txt``
  with splits ``train``/``val`` or ``trainval``/``test`` (see :mod:`focus_detr.data.voc`).

Every format is read into the same :class:`~focus_detr.data.coco.CocoDetection` (YOLO and VOC
through the COCO dict they convert to), so training, evaluation and conversion do not depend
on the format.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focus_detr.errors import DatasetError

FORMATS = ("coco", "yolo", "voc")

#: (training split, validation split) names tried in this order, per format.
SPLIT_PAIRS = (("train2017", "val2017"), ("train", "val"))
VOC_SPLIT_PAIRS = (("train", "val"), ("trainval", "test"))

_LAYOUTS = (
    "COCO (annotations/instances_<split>.json), YOLO (data.yaml) or Pascal VOC "
    "(Annotations/ and ImageSets/Main/)"
)


@dataclass(frozen=True)
class SplitFiles:
    """One split of a dataset.

    Attributes:
        images: the folder the split's image file names are relative to.
        annotations: COCO: the ``instances`` JSON file; YOLO: ``data.yaml``; VOC: the split's
            list ``ImageSets/Main/<split>.txt``.
        format: ``coco``, ``yolo`` or ``voc``.
        name: the split's name (``train``, ``val2017``...).
    """

    images: Path
    annotations: Path
    format: str = "coco"
    name: str = ""

    @property
    def root(self) -> Path:
        """The dataset folder."""
        if self.format == "voc":
            return self.annotations.parents[2]
        return self.annotations.parent if self.format == "yolo" else self.annotations.parents[1]


def detect_format(root: str | os.PathLike[str]) -> str:
    """The format of the dataset folder ``root``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        DatasetError: no format or several formats match (choose with ``--format``).
    """
    from focus_detr.data.voc import is_voc_folder
    from focus_detr.data.yolo import find_data_yaml

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    found = []
    if root.is_dir() and any((root / "annotations").glob("instances_*.json")):
        found.append("coco")
    if find_data_yaml(root) is not None:
        found.append("yolo")
    if is_voc_folder(root):
        found.append("voc")
    if len(found) > 1:
        raise DatasetError(f"{root} looks like {' and '.join(found)}; choose with --format")
    if not found:
        raise DatasetError(f"{root} is not a dataset folder: expected {_LAYOUTS}")
    return found[0]


def _format(root: str | os.PathLike[str], format: str | None) -> str:
    if format is None:
        return detect_format(root)
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; choose one of {FORMATS}")
    if not Path(root).exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    return format


def find_split(root: str | os.PathLike[str], split: str, format: str | None = "coco") -> SplitFiles:
    """The split called ``split`` of the dataset ``root``.

    Raises:
        FileNotFoundError: naming what is missing.
    """
    format = _format(root, format)
    root = Path(root)
    if format == "yolo":
        return _yolo_split(root, split)
    if format == "voc":
        from focus_detr.data.voc import split_file

        files = SplitFiles(root / "JPEGImages", split_file(root, split), "voc", split)
        if not files.annotations.is_file():
            raise FileNotFoundError(f"no split list {files.annotations}")
        return files
    files = SplitFiles(
        root / split, root / "annotations" / f"instances_{split}.json", "coco", split
    )
    if not files.annotations.is_file():
        raise FileNotFoundError(f"no annotation file {files.annotations}")
    if not files.images.is_dir():
        raise FileNotFoundError(f"no image folder {files.images}")
    return files


def _yolo_split(root: Path, split: str) -> SplitFiles:
    from focus_detr.data.yolo import find_data_yaml, read_data_yaml

    data_yaml = find_data_yaml(root)
    if data_yaml is None:
        raise FileNotFoundError(f"no data.yaml in {root}")
    description = read_data_yaml(data_yaml)
    if split not in description.splits:
        raise FileNotFoundError(f"{data_yaml} has no '{split}' split")
    entries = description.splits[split]
    folder = description.root / entries[0] if len(entries) == 1 else description.root
    return SplitFiles(folder, data_yaml, "yolo", split)


def _split_pairs(format: str) -> tuple[tuple[str, str], ...]:
    return VOC_SPLIT_PAIRS if format == "voc" else SPLIT_PAIRS


def _has_split(root: Path, split: str, format: str) -> bool:
    try:
        find_split(root, split, format)
    except FileNotFoundError:
        return False
    return True


def discover_splits(
    root: str | os.PathLike[str], format: str | None = None
) -> tuple[SplitFiles, SplitFiles | None]:
    """The training split and the validation split (None if absent) of a dataset folder.

    Raises:
        FileNotFoundError: the folder does not exist or has no training split.
        DatasetError: the format cannot be told (see :func:`detect_format`).
    """
    format = _format(root, format)
    root = Path(root)
    for train_split, val_split in _split_pairs(format):
        if _has_split(root, train_split, format):
            train = find_split(root, train_split, format)
            try:
                return train, find_split(root, val_split, format)
            except FileNotFoundError:
                return train, None
    expected = " or ".join(t for t, _ in _split_pairs(format))
    raise FileNotFoundError(
        f"{root} ({format}) has no training split ({expected}); expected {_LAYOUTS} (or give "
        f"--train-images and --train-annotations)"
    )


def evaluation_split(
    root: str | os.PathLike[str], split: str | None = None, format: str | None = None
) -> SplitFiles:
    """The split to evaluate on: ``split`` if given, else ``val2017`` / ``val`` (VOC: ``val``
    or ``test``)."""
    try:
        format = _format(root, format)
    except DatasetError:
        format = "coco"  # the COCO messages below say what is missing
    if split is not None:
        return find_split(root, split, format)
    for _, val_split in _split_pairs(format):
        if _has_split(Path(root), val_split, format):
            return find_split(root, val_split, format)
    if format == "coco":
        raise FileNotFoundError(
            f"no annotations/instances_val2017.json or instances_val.json in {root} (nor "
            f"data.yaml or a VOC folder); use --split"
        )
    names = " or ".join(v for _, v in _split_pairs(format))
    raise FileNotFoundError(f"{root} ({format}) has no {names} split; use --split")


def read_split(
    files: SplitFiles,
    *,
    class_names: Sequence[str] | None = None,
    bad_images: str = "skip",
) -> tuple[Path | dict[str, Any], Path]:
    """The split's annotations in COCO form (the JSON file itself for COCO, else the dict)
    and its image folder.

    Args:
        files: the split.
        class_names: VOC only: the classes in label order (e.g. the training split's).
        bad_images: policy for unreadable images met while reading YOLO image sizes.
    """
    if files.format == "yolo":
        from focus_detr.data.yolo import read_data_yaml, read_yolo_split

        data, image_dir = read_yolo_split(
            read_data_yaml(files.annotations), files.name, bad_images=bad_images
        )
        return data, image_dir
    if files.format == "voc":
        from focus_detr.data.voc import read_voc_split

        return read_voc_split(files.root, files.name, class_names=class_names)
    return files.annotations, files.images


def load_split(
    files: SplitFiles,
    transforms: Any = None,
    *,
    filter_empty: bool = False,
    category_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    bad_images: str = "skip",
) -> Any:
    """The split as a :class:`~focus_detr.data.coco.CocoDetection`, whatever its format.

    Args:
        files: the split (:func:`find_split`, :func:`discover_splits`).
        transforms / filter_empty / category_ids / bad_images: as for ``CocoDetection``.
        class_names: VOC only: the classes in label order (e.g. the training split's, for its
            validation split), which fixes the category ids.
    """
    annotations, image_dir = read_split(files, class_names=class_names, bad_images=bad_images)
    return open_split(
        files,
        annotations,
        image_dir,
        transforms,
        filter_empty=filter_empty,
        category_ids=category_ids,
        bad_images=bad_images,
    )


def open_split(
    files: SplitFiles,
    annotations: Path | dict[str, Any],
    image_dir: Path,
    transforms: Any = None,
    **options: Any,
) -> Any:
    """The :class:`~focus_detr.data.coco.CocoDetection` of a split :func:`read_split` read;
    ``options`` as for ``CocoDetection``."""
    from focus_detr.data.coco import CocoDetection

    if files.format == "yolo":
        # the image sizes came from the headers just read: checked already
        options["bad_images"] = "unchecked"
        source = f"{files.annotations} ({files.name})"
    else:
        source = str(files.annotations)
    return CocoDetection(image_dir, annotations, transforms, source=source, **options)


def load_dataset(
    root: str | os.PathLike[str],
    split: str | None = None,
    *,
    format: str | None = None,
    transforms: Any = None,
    **options: Any,
) -> Any:
    """One split of a dataset folder in any format, as a
    :class:`~focus_detr.data.coco.CocoDetection` (default: the validation split).

    ``options`` as :func:`load_split` (``filter_empty``, ``category_ids``, ``class_names``,
    ``bad_images``).
    """
    files = evaluation_split(root, split, format)
    return load_split(files, transforms, **options)
