"""Detection dataset over COCO-format data: images on disk plus a COCO ``instances`` dict.

Every supported format ends here: a COCO ``instances_*.json`` file is read as is, YOLO and
Pascal VOC folders are converted to the same COCO dict in memory (:mod:`focus_detr.data.yolo`,
:mod:`focus_detr.data.voc`), and :class:`CocoDetection` turns that dict into one flat table.

Category ids are mapped to contiguous labels ``0..K-1`` in increasing id order (or in the order
given by ``category_ids``), crowd annotations are left out of the targets, and boxes are
converted from COCO ``xywh`` to ``xyxy`` pixels, clipped to the image, degenerate ones dropped.
Malformed entries are errors that name the file and the entry; image files are checked before
use (:mod:`focus_detr.data.image_check`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from focus_detr.data.image_check import check_policy, find_bad_images, report_bad_images
from focus_detr.data.transforms import EMPTY_BOX_THRESHOLD, clip_and_remove_empty_boxes
from focus_detr.errors import DatasetError
from focus_detr.io import read_image

Target = dict[str, Any]
DetectionTransform = Callable[[Any, Target], tuple[Any, Target]]


@dataclass(frozen=True)
class _AnnotationTable:
    """Every image of the annotation file with its usable (non-crowd, clipped) objects.

    Flat NumPy arrays rather than per-image Python objects, so that loader workers sharing
    the dataset do not copy it page by page as reference counts change.

    Attributes:
        image_ids: ``[N]`` int64 COCO image ids, increasing.
        file_names: ``[N]`` str, paths relative to the image directory.
        sizes: ``[N, 2]`` int64 (height, width) stated by the annotation file.
        offsets: ``[N + 1]`` int64; image ``i`` owns rows ``offsets[i]:offsets[i + 1]`` below.
        boxes_xyxy: ``[M, 4]`` float32 absolute pixels, clipped to the image.
        labels: ``[M]`` int64 contiguous labels.
    """

    image_ids: np.ndarray
    file_names: np.ndarray
    sizes: np.ndarray
    offsets: np.ndarray
    boxes_xyxy: np.ndarray
    labels: np.ndarray

    def objects(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``[n, 4]`` boxes and ``[n]`` labels of image ``index`` (copies)."""
        rows = slice(int(self.offsets[index]), int(self.offsets[index + 1]))
        return self.boxes_xyxy[rows].copy(), self.labels[rows].copy()

    def select(self, keep: np.ndarray) -> _AnnotationTable:
        """The images where the boolean ``[N]`` mask ``keep`` is True, with their objects."""
        counts = np.diff(self.offsets)
        rows = np.repeat(keep, counts)
        return _AnnotationTable(
            image_ids=self.image_ids[keep],
            file_names=self.file_names[keep],
            sizes=self.sizes[keep],
            offsets=np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64),
            boxes_xyxy=self.boxes_xyxy[rows],
            labels=self.labels[rows],
        )

    def non_empty(self) -> _AnnotationTable:
        """The images that have at least one object."""
        return self.select(np.diff(self.offsets) > 0)


class CocoDetection(Dataset):
    """Detection dataset in COCO format (a file, or the dict a YOLO or VOC folder gives).

    Each item is ``(image, target)``: ``image`` uint8 ``[3, H, W]`` RGB after ``transforms``;
    ``target`` holds ``boxes`` (float32 ``[n, 4]`` xyxy pixels of the transformed image),
    ``labels`` (int64 ``[n]`` in ``0..K-1``), ``image_id`` (int), ``orig_size`` ((h, w) of the
    file) and ``size`` ((h, w) after transforms).

    Args:
        image_dir: folder the annotation file's ``file_name`` entries are relative to.
        annotation_file: COCO ``instances`` JSON file, or the same content as a dict.
        transforms: callable ``(image, target) -> (image, target)`` receiving a
            ``tv_tensors.Image`` and ``target["boxes"]`` as ``tv_tensors.BoundingBoxes`` (see
            :mod:`focus_detr.data.transforms`); boxes are clipped and emptied ones removed after.
        filter_empty: drop images with no usable annotation (training).
        category_ids: COCO ids defining the labels (label ``i`` is ``category_ids[i]``), e.g. to
            keep a pretrained model's label order; annotations of other categories are dropped.
            By default every category of the file, in increasing id order.
        bad_images: what to do with image files that are missing, unreadable or of another
            size than stated: ``"skip"`` them with one warning naming each (default),
            ``"error"`` (one error naming each), or ``"unchecked"`` (no check; see
            :mod:`focus_detr.data.image_check`). The check reads file headers only.
        source: the file named in messages (default: ``annotation_file`` when it is a path).

    Attributes:
        category_ids: ``list[int]``, label -> COCO category id.
        category_names: ``list[str]``, label -> category name.
        category_id_to_label: ``dict[int, int]``, COCO category id -> label.
        image_ids: COCO image id of each item.
        annotation_file: the JSON file read (None when built from a dict).
        source: the file or folder named in messages.
        skipped_images: the :class:`~focus_detr.data.image_check.BadImage` entries left out.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike[str],
        annotation_file: str | os.PathLike[str] | Mapping[str, Any],
        transforms: DetectionTransform | None = None,
        *,
        filter_empty: bool = False,
        category_ids: Sequence[int] | None = None,
        bad_images: str = "skip",
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        check_policy(bad_images)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        if isinstance(annotation_file, Mapping):
            data = dict(annotation_file)
            self.annotation_file: Path | None = None
            self.source = str(source) if source is not None else "<COCO dict>"
            # one bytes object: loader workers share it without copying pages
            self._ground_truth: Path | bytes = json.dumps(data).encode()
        else:
            self.annotation_file = Path(annotation_file)
            self.source = str(source) if source is not None else str(self.annotation_file)
            data = load_coco_json(self.annotation_file)
            self._ground_truth = self.annotation_file
        self.category_ids, self.category_names = _category_table(
            data.get("categories"), category_ids, self.source
        )
        self.category_id_to_label = {cid: label for label, cid in enumerate(self.category_ids)}
        table, counts = _build_table(data, self.category_id_to_label, self.source)
        _warn_about_boxes(counts, self.source)
        self._table = table.non_empty() if filter_empty else table
        self.skipped_images = self._check_images(bad_images)
        self.image_ids: list[int] = self._table.image_ids.tolist()

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def ground_truth(self) -> Path | dict[str, Any]:
        """What COCO evaluation scores against: the annotation file, or its dict."""
        if isinstance(self._ground_truth, Path):
            return self._ground_truth
        return json.loads(self._ground_truth)

    @property
    def num_annotations(self) -> int:
        """Usable (non-crowd) objects over all items."""
        return len(self._table.labels)

    def __len__(self) -> int:
        return len(self._table.image_ids)

    def image_path(self, index: int) -> Path:
        """File of item ``index``."""
        return self.image_dir / str(self._table.file_names[index])

    def _check_images(self, policy: str) -> list[Any]:
        if policy == "unchecked" or len(self) == 0:
            return []
        paths = [self.image_path(index) for index in range(len(self))]
        found = find_bad_images(paths, [tuple(size) for size in self._table.sizes.tolist()])
        report_bad_images(
            [problem for _, problem in found], len(paths), self.source, policy, stacklevel=4
        )
        if found:
            keep = np.ones(len(self), dtype=bool)
            keep[[index for index, _ in found]] = False
            self._table = self._table.select(keep)
        return [problem for _, problem in found]

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id = int(self._table.image_ids[index])
        path = self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"image {image_id} not found: {path}")
        image = read_image(path)
        orig_size = (int(image.shape[-2]), int(image.shape[-1]))
        stated_size = tuple(self._table.sizes[index].tolist())
        if orig_size != stated_size:
            raise DatasetError(
                f"{path} is {orig_size[0]}x{orig_size[1]} (h x w) but {self.source} "
                f"says {stated_size[0]}x{stated_size[1]}"
            )
        boxes, labels = self._table.objects(index)
        target: Target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes),
                format=tv_tensors.BoundingBoxFormat.XYXY,
                canvas_size=orig_size,
            ),
            "labels": torch.from_numpy(labels),
            "image_id": image_id,
            "orig_size": orig_size,
        }
        if self.transforms is not None:
            image, target = self.transforms(tv_tensors.Image(image), target)
        image = image.as_subclass(Tensor) if isinstance(image, Tensor) else image
        if not isinstance(image, Tensor) or image.dim() != 3:
            raise TypeError("transforms must return the image as a [3, H, W] tensor")
        size = (int(image.shape[-2]), int(image.shape[-1]))
        target = clip_and_remove_empty_boxes(target, size)
        target["boxes"] = target["boxes"].as_subclass(Tensor).to(torch.float32)
        target["labels"] = target["labels"].to(torch.int64)
        target["size"] = size
        return image, target


def load_coco_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a COCO annotation file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path} is not a COCO annotation file (no 'images' list)")
    return data


def category_table(data: Mapping[str, Any], source: str) -> tuple[list[int], list[str]]:
    """``(ids, names)`` of the categories of a COCO dict, in increasing id order (validated)."""
    return _category_table(data.get("categories"), None, source)


def _integer(value: object, what: str) -> int:
    """``value`` as an int (ints and integral floats; not bools, strings or None)."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise DatasetError(f"{what} must be an integer, got {value!r}")


def _entries(data: Mapping[str, Any], key: str, source: str) -> list[dict[str, Any]]:
    """The list ``data[key]`` (missing or null: empty), every item a dict."""
    entries = data.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise DatasetError(f"{source}: '{key}' must be a list, got {type(entries).__name__}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatasetError(f"{source}: {key}[{index}] must be an object, got {entry!r}")
    return entries


def _category_table(
    categories: object, category_ids: Sequence[int] | None, source: str
) -> tuple[list[int], list[str]]:
    """Label -> COCO id and label -> name, in increasing id order unless ``category_ids``."""
    names: dict[int, str] = {}
    for index, category in enumerate(_entries({"categories": categories}, "categories", source)):
        where = f"{source}: categories[{index}] ({category.get('name', 'no name')!r})"
        if "id" not in category:
            raise DatasetError(f"{where} has no 'id'")
        category_id = _integer(category["id"], f"{where}: 'id'")
        if category_id in names:
            raise DatasetError(f"{where}: duplicate category id {category_id}")
        names[category_id] = str(category.get("name", category_id))
    if category_ids is None:
        ids = sorted(names)
    else:
        ids = [int(c) for c in category_ids]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"category_ids has duplicates: {list(category_ids)}")
    return ids, [names.get(cid, f"category_{cid}") for cid in ids]


def _image_entries(data: Mapping[str, Any], source: str) -> dict[int, tuple[str, int, int]]:
    """Image id -> (file name, height, width), validated."""
    images: dict[int, tuple[str, int, int]] = {}
    for index, info in enumerate(_entries(data, "images", source)):
        where = f"{source}: images[{index}] (id {info.get('id')!r})"
        missing = {"id", "file_name", "height", "width"} - set(info)
        if missing:
            raise DatasetError(f"{where} lacks {sorted(missing)}")
        image_id = _integer(info["id"], f"{where}: 'id'")
        if image_id in images:
            raise DatasetError(f"{where}: duplicate image id {image_id}")
        height = _integer(info["height"], f"{where}: 'height'")
        width = _integer(info["width"], f"{where}: 'width'")
        if height < 1 or width < 1 or not isinstance(info["file_name"], str):
            raise DatasetError(f"{where} needs a file_name and a positive height and width")
        images[image_id] = (info["file_name"], height, width)
    return images


def _build_table(
    data: dict[str, Any], category_id_to_label: dict[int, int], source: str
) -> tuple[_AnnotationTable, Counter[str]]:
    """Every image (sorted by id) with its objects, and counts of clipped / dropped boxes."""
    images = _image_entries(data, source)
    per_image: dict[int, list[tuple[int, dict[str, Any]]]] = {image_id: [] for image_id in images}
    counts: Counter[str] = Counter()
    for index, annotation in enumerate(_entries(data, "annotations", source)):
        where = f"{source}: annotations[{index}] (id {annotation.get('id')!r})"
        if "image_id" not in annotation:
            raise DatasetError(f"{where} has no 'image_id'")
        image_id = _integer(annotation["image_id"], f"{where}: 'image_id'")
        if image_id not in per_image:
            counts["dropped (image id not among the images)"] += 1
        elif not annotation.get("iscrowd", 0):
            per_image[image_id].append((index, annotation))
    image_ids = sorted(images)
    sizes = np.array([images[i][1:] for i in image_ids], dtype=np.int64).reshape(-1, 2)
    boxes, labels = [], []
    for image_id, (height, width) in zip(image_ids, sizes.tolist()):
        image_boxes, image_labels = _image_boxes(
            per_image[image_id], height, width, category_id_to_label, counts, source
        )
        boxes.append(image_boxes)
        labels.append(image_labels)
    table = _AnnotationTable(
        image_ids=np.array(image_ids, dtype=np.int64),
        file_names=np.array([images[i][0] for i in image_ids], dtype=np.str_),
        sizes=sizes,
        offsets=np.concatenate([[0], np.cumsum([len(x) for x in labels])]).astype(np.int64),
        boxes_xyxy=np.concatenate([np.zeros((0, 4), np.float32), *boxes]),
        labels=np.concatenate([np.zeros(0, np.int64), *labels]),
    )
    return table, counts


def _bbox(annotation: Mapping[str, Any], where: str) -> tuple[float, float, float, float]:
    """The annotation's ``[x, y, width, height]``: 4 finite numbers."""
    if "bbox" not in annotation:
        raise DatasetError(f"{where} has no 'bbox'")
    bbox = annotation["bbox"]
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox)
        or not all(math.isfinite(v) for v in bbox)
    ):
        raise DatasetError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    x, y, width, height = (float(v) for v in bbox)
    return x, y, width, height


def _image_boxes(
    annotations: list[tuple[int, dict[str, Any]]],
    height: int,
    width: int,
    category_id_to_label: dict[int, int],
    counts: Counter[str],
    source: str,
) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 4]`` float32 xyxy boxes clipped to ``height x width`` and ``[n]`` int64 labels."""
    boxes, labels = [], []
    for index, annotation in annotations:
        where = f"{source}: annotations[{index}] (id {annotation.get('id')!r})"
        if "category_id" not in annotation:
            raise DatasetError(f"{where} has no 'category_id'")
        category_id = _integer(annotation["category_id"], f"{where}: 'category_id'")
        x0, y0, box_width, box_height = _bbox(annotation, where)
        label = category_id_to_label.get(category_id)
        if label is None:
            counts["dropped (category not among the labels)"] += 1
            continue
        corners = (x0, y0, x0 + box_width, y0 + box_height)
        clipped = tuple(
            min(max(value, 0.0), limit) for value, limit in zip(corners, (width, height) * 2)
        )
        if min(clipped[2] - clipped[0], clipped[3] - clipped[1]) <= EMPTY_BOX_THRESHOLD:
            counts["dropped (empty or outside the image)"] += 1
            continue
        if clipped != corners:
            counts["clipped to the image"] += 1
        boxes.append(clipped)
        labels.append(label)
    boxes_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return boxes_array, np.asarray(labels, dtype=np.int64)


def _warn_about_boxes(counts: Counter[str], source: str) -> None:
    """One warning summarising every clipped or dropped annotation of the file."""
    if not counts:
        return
    parts = [f"{counts[key]} {key}" for key in sorted(counts)]
    warnings.warn(
        f"{source}: boxes of non-crowd annotations: {', '.join(parts)}",
        stacklevel=3,
    )
