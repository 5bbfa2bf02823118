"""A model's classes (:class:`Categories`), and matching them to a dataset's categories.

Category ids are arbitrary per file (COCO numbers its 80 classes 1..90, a YOLO folder's are
its class indices plus one, a VOC folder's follow its class list), while names carry the
meaning. So a model's classes are matched to a dataset's categories by name (case-insensitive,
spaces normalised) and only by id when the names do not match; a dataset category with
objects that matches no class of the model is an error rather than a silent AP of zero.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from focus_detr.data.coco_metadata import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from focus_detr.errors import DatasetError


@dataclass(frozen=True)
class Categories:
    """Names and dataset ids (e.g. COCO ids) of a model's contiguous labels."""

    names: tuple[str, ...]
    ids: tuple[int, ...]

    @classmethod
    def default(cls, num_classes: int) -> Categories:
        """COCO's 80 classes for an 80-class model, else ``class i`` with ids ``1..n``."""
        if num_classes == len(COCO_CLASS_NAMES):
            return cls(tuple(COCO_CLASS_NAMES), tuple(COCO_CATEGORY_IDS))
        return cls(
            tuple(f"class {i}" for i in range(num_classes)), tuple(range(1, num_classes + 1))
        )

    @classmethod
    def from_metadata(cls, entries: object, num_classes: int) -> Categories:
        """From ``[{"id", "name"}]`` entries as checkpoints record them (default otherwise)."""
        if not isinstance(entries, Sequence) or len(entries) != num_classes:
            return cls.default(num_classes)
        return cls(tuple(str(e["name"]) for e in entries), tuple(int(e["id"]) for e in entries))


def name_key(name: str) -> str:
    """How class names are compared: case-insensitive, runs of spaces/underscores as one."""
    return " ".join(name.replace("_", " ").split()).casefold()


def dataset_categories(
    annotations: str | os.PathLike[str] | Mapping[str, Any],
) -> tuple[list[int], list[str], Counter[int]]:
    """``(ids, names, objects per id)`` of a COCO file or dict, in increasing id order."""
    from focus_detr.data.coco import category_table, load_coco_json

    data = dict(annotations) if isinstance(annotations, Mapping) else load_coco_json(annotations)
    source = "<COCO dict>" if isinstance(annotations, Mapping) else str(annotations)
    ids, names = category_table(data, source)
    counts: Counter[int] = Counter(
        a["category_id"]
        for a in data.get("annotations") or []
        if isinstance(a, dict) and isinstance(a.get("category_id"), int) and not a.get("iscrowd", 0)
    )
    return ids, names, counts


def match_model_categories(
    model_names: Sequence[str],
    model_ids: Sequence[int],
    dataset_ids: Sequence[int],
    dataset_names: Sequence[str],
    source: str | os.PathLike[str],
    objects: Mapping[int, int] | None = None,
) -> list[int]:
    """The dataset category id each model label is scored as (label ``i`` -> result ``[i]``).

    By name when every dataset category with objects has a model class of the same name; else
    by id when every such category id is one of the model's (a warning says the names differ);
    else an error. Model classes the dataset does not have get ids unused by it, so that their
    detections count for nothing.

    Args:
        model_names / model_ids: the model's classes (e.g. ``Categories``).
        dataset_ids / dataset_names: the dataset's categories.
        source: the dataset file, named in messages.
        objects: number of objects per dataset category id; categories without objects need
            no match (default: every category needs one).

    Raises:
        DatasetError: the classes do not match by name nor by id.
    """
    needed = [
        (cid, name)
        for cid, name in zip(dataset_ids, dataset_names)
        if objects is None or objects.get(cid, 0) > 0
    ]
    by_name = _match_by_name(model_names, dataset_ids, dataset_names)
    if by_name is not None and all(cid in by_name.values() for cid, _ in needed):
        unused = _unused_ids(dataset_ids, model_ids)
        return [
            by_name[label] if label in by_name else next(unused)
            for label in range(len(model_names))
        ]
    if all(cid in set(model_ids) for cid, _ in needed):
        model_name = dict(zip(model_ids, model_names))
        differ = [
            f"{name!r} (id {cid}) is the model's {model_name[cid]!r}"
            for cid, name in needed
            if name_key(name) != name_key(model_name[cid])
        ]
        if differ:
            warnings.warn(
                f"{source}: categories matched to the model's classes by id, but their names "
                f"differ: {', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}",
                stacklevel=2,
            )
        return [int(cid) for cid in model_ids]
    missing = [
        f"{name!r} (id {cid})"
        for cid, name in needed
        if by_name is None or cid not in by_name.values()
    ]
    shown = ", ".join(missing[:20]) + (
        f", ... ({len(missing)} in all)" if len(missing) > 20 else ""
    )
    raise DatasetError(
        f"{source}: the model's classes and the dataset's categories do not match (by name or "
        f"by id): dataset categories the model does not know: {shown}; the model's classes: "
        f"{', '.join(model_names[:20])}{', ...' if len(model_names) > 20 else ''}"
    )


def _match_by_name(
    model_names: Sequence[str], dataset_ids: Sequence[int], dataset_names: Sequence[str]
) -> dict[int, int] | None:
    """Model label -> dataset id of the same name; None when names are ambiguous."""
    model_keys = [name_key(n) for n in model_names]
    dataset_keys = [name_key(n) for n in dataset_names]
    if len(set(model_keys)) != len(model_keys) or len(set(dataset_keys)) != len(dataset_keys):
        return None
    id_of = dict(zip(dataset_keys, dataset_ids))
    return {label: int(id_of[key]) for label, key in enumerate(model_keys) if key in id_of}


def _unused_ids(*taken: Sequence[int]):
    used = {int(i) for ids in taken for i in ids}
    candidate = max(used, default=0) + 1
    while True:
        if candidate not in used:
            yield candidate
        candidate += 1
