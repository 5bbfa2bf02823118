"""Find the splits of a dataset folder (COCO layout) and the built-in synthetic dataset.

A COCO-format folder holds ``ROOT/annotations/instances_<split>.json`` and ``ROOT/<split>/``
images, with splits ``train2017``/``val2017`` or ``train``/``val``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: (training split, validation split) names tried in this order.
SPLIT_PAIRS = (("train2017", "val2017"), ("train", "val"))


@dataclass(frozen=True)
class SplitFiles:
    """Images folder and ``instances`` annotation file of one split."""

    images: Path
    annotations: Path


def find_split(root: str | os.PathLike[str], split: str) -> SplitFiles:
    """``ROOT/<split>/`` and ``ROOT/annotations/instances_<split>.json``.

    Raises:
        FileNotFoundError: naming what is missing.
    """
    root = Path(root)
    files = SplitFiles(root / split, root / "annotations" / f"instances_{split}.json")
    if not files.annotations.is_file():
        raise FileNotFoundError(f"no annotation file {files.annotations}")
    if not files.images.is_dir():
        raise FileNotFoundError(f"no image folder {files.images}")
    return files


def discover_splits(root: str | os.PathLike[str]) -> tuple[SplitFiles, SplitFiles | None]:
    """The training split and the validation split (None if absent) of a COCO-format folder.

    Raises:
        FileNotFoundError: the folder does not exist or has no training split.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    for train_split, val_split in SPLIT_PAIRS:
        annotations = root / "annotations" / f"instances_{train_split}.json"
        if annotations.is_file():
            train = find_split(root, train_split)
            try:
                return train, find_split(root, val_split)
            except FileNotFoundError:
                return train, None
    expected = " or ".join(f"annotations/instances_{t}.json" for t, _ in SPLIT_PAIRS)
    raise FileNotFoundError(
        f"{root} is not a COCO-format folder: expected {expected} (or give --train-images and "
        f"--train-annotations)"
    )


def evaluation_split(root: str | os.PathLike[str], split: str | None = None) -> SplitFiles:
    """The split to evaluate on: ``split`` if given, else ``val2017`` or ``val``."""
    if split is not None:
        return find_split(root, split)
    for _, val_split in SPLIT_PAIRS:
        if (Path(root) / "annotations" / f"instances_{val_split}.json").is_file():
            return find_split(root, val_split)
    raise FileNotFoundError(
        f"no annotations/instances_val2017.json or instances_val.json in {root}; use --split"
    )
