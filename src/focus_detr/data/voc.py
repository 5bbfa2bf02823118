"""Pascal VOC detection datasets, read into the COCO dict that every format shares.

Layout::

    Annotations/<id>.xml           one file per image: <size>, <object> with <name>,
                                   <difficult> and <bndbox> (xmin, ymin, xmax, ymax; 1-based)
    JPEGImages/<id>.jpg
    ImageSets/Main/train.txt       the image ids of each split, one a line (also val,
                                   trainval, test)
    classes.txt (optional)         the class names in label order, one a line

Classes: ``classes.txt`` (or ``labels.txt``) when present; else, when every name found is one
of the 20 VOC classes, the standard VOC order; else the names found, sorted. Boxes become
``[xmin - 1, ymin - 1, xmax, ymax]`` in 0-based pixels (detectron2's reading). ``difficult``
objects are kept as crowd regions (``iscrowd=1``): left out of the training targets, and
ignored by the COCO evaluation (a detection on one is neither a hit nor a false positive).

XML is parsed with ``defusedxml``, which refuses entity declarations and external references
(the billion-laughs and external-entity attacks). A file that cannot be parsed is an error
naming it; objects that cannot be used (unknown class, missing or non-numeric box corners) are
counted in one warning per split.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

from focus_detr.data.image_check import UnreadableImageError, read_image_size
from focus_detr.errors import DatasetError
from focus_detr.io import IMAGE_EXTENSIONS

VOC_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 Pascal VOC classes in their standard order."""

CLASS_FILES = ("classes.txt", "labels.txt")
_EXAMPLES = 5


def is_voc_folder(root: str | os.PathLike[str]) -> bool:
    root = Path(root)
    return (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir()


def split_file(root: str | os.PathLike[str], split: str) -> Path:
    """``ROOT/ImageSets/Main/<split>.txt``."""
    return Path(root) / "ImageSets" / "Main" / f"{split}.txt"


@dataclass(frozen=True)
class _VocObject:
    name: str
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1; None if malformed
    difficult: bool


@dataclass(frozen=True)
class _VocImage:
    file_name: str
    size: tuple[int, int] | None  # (height, width) stated by the XML
    objects: list[_VocObject]


def read_voc_split(
    root: str | os.PathLike[str], split: str, *, class_names: Sequence[str] | None = None
) -> tuple[dict[str, Any], Path]:
    """The split as a COCO dict, and the folder its ``file_name`` entries are relative to.

    Args:
        root: the VOC folder (holding ``Annotations``, ``JPEGImages``, ``ImageSets``).
        split: name of a list in ``ImageSets/Main`` (``train``, ``val``, ``test``...).
        class_names: the classes in label order (default: see the module docstring);
            objects of other classes are counted as unusable.
    """
    root = Path(root)
    list_file = split_file(root, split)
    ids = _image_ids(list_file)
    images = {image_id: _read_xml(root / "Annotations" / f"{image_id}.xml") for image_id in ids}
    names = list(class_names) if class_names is not None else _class_names(root, images)
    category_of = {name: index + 1 for index, name in enumerate(names)}
    rejected: Counter[str] = Counter()
    examples: list[str] = []
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for number, (image_id, entry) in enumerate(images.items(), start=1):
        file_name = _image_file(root / "JPEGImages", image_id, entry.file_name)
        height, width = entry.size or _size_from_file(root / "JPEGImages" / file_name)
        coco_images.append({"id": number, "file_name": file_name, "height": height, "width": width})
        for obj in entry.objects:
            if obj.name not in category_of or obj.box is None:
                rejected["unknown class" if obj.name not in category_of else "bad boxes"] += 1
                if len(examples) < _EXAMPLES:
                    examples.append(f"{root / 'Annotations' / image_id}.xml: {obj.name!r}")
                continue
            x0, y0, x1, y1 = obj.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": category_of[obj.name],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": max(x1 - x0, 0.0) * max(y1 - y0, 0.0),
                    "iscrowd": int(obj.difficult),
                }
            )
    _warn_about_objects(rejected, examples, list_file, names)
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(names)]
    info = {"description": f"converted from {root} ({split})"}
    data = {"info": info, "images": coco_images, "annotations": annotations}
    return {**data, "categories": categories}, root / "JPEGImages"


def _image_ids(list_file: Path) -> list[str]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read the VOC split list {list_file}: {error}") from error
    ids = [line.split()[0] for line in lines if line.strip()]
    return list(dict.fromkeys(ids))


def _read_xml(path: Path) -> _VocImage:
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, parse

    try:
        tree = parse(path)
    except FileNotFoundError as error:
        raise DatasetError(f"VOC annotation file not found: {path}") from error
    except (ParseError, DefusedXmlException, OSError) as error:
        raise DatasetError(f"cannot read VOC annotation {path}: {error}") from error
    annotation = tree.getroot()
    if annotation is None or annotation.tag != "annotation":
        raise DatasetError(f"{path} is not a VOC annotation (no <annotation> root)")
    objects = [_read_object(element) for element in annotation.findall("object")]
    return _VocImage(
        file_name=(annotation.findtext("filename") or "").strip(),
        size=_stated_size(annotation.find("size")),
        objects=objects,
    )


def _read_object(element: Element) -> _VocObject:
    name = (element.findtext("name") or "").strip()
    difficult = (element.findtext("difficult") or "0").strip() not in ("0", "", "false")
    box_element = element.find("bndbox")
    box = None
    if box_element is not None:
        corners = [_number(box_element.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if None not in corners:
            xmin, ymin, xmax, ymax = (float(value or 0.0) for value in corners)
            box = (xmin - 1.0, ymin - 1.0, xmax, ymax)
    return _VocObject(name=name, box=box, difficult=difficult)


def _number(text: str | None) -> float | None:
    """The finite number ``text`` holds, or None."""
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _stated_size(size: Element | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = _number(size.findtext("height")), _number(size.findtext("width"))
    if height is None or width is None or height < 1 or width < 1:
        return None
    return int(height), int(width)


def _size_from_file(path: Path) -> tuple[int, int]:
    try:
        return read_image_size(path)
    except UnreadableImageError:
        return 1, 1  # the image check reports the file, naming the reason


def _image_file(folder: Path, image_id: str, stated: str) -> str:
    """The image of ``image_id``: ``<id>.jpg``, the XML's ``<filename>``, or ``<id>.<ext>``."""
    candidates = [
        f"{image_id}.jpg",
        stated,
        *(f"{image_id}{ext}" for ext in sorted(IMAGE_EXTENSIONS)),
    ]
    for name in candidates:
        if name and (folder / name).is_file():
            return name
    return f"{image_id}.jpg"


def _class_names(root: Path, images: dict[str, _VocImage]) -> list[str]:
    for name in CLASS_FILES:
        path = root / name
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as error:
                raise DatasetError(f"cannot read the class list {path}: {error}") from error
            return [line.strip() for line in lines if line.strip()]
    found = {obj.name for image in images.values() for obj in image.objects if obj.name}
    if found <= set(VOC_CLASS_NAMES):
        return list(VOC_CLASS_NAMES)
    return sorted(found)


def _warn_about_objects(
    rejected: Counter[str], examples: list[str], list_file: Path, names: list[str]
) -> None:
    if not rejected:
        return
    parts = ", ".join(f"{count} {reason}" for reason, count in sorted(rejected.items()))
    listing = "".join(f"\n  {example}" for example in examples)
    warnings.warn(
        f"{list_file}: {sum(rejected.values())} objects ignored ({parts}; classes: "
        f"{', '.join(names)}); for example:{listing}",
        stacklevel=3,
    )
