"""``focus-detr convert``: write a YOLO or Pascal VOC dataset's splits as COCO JSON files.

The files are what ``focus-detr train`` and ``eval`` read from those folders in memory; each
image's ``file_name`` is relative to the split's image folder, which the command prints (give
it to ``--train-images`` / ``--val-images`` with the JSON as ``--train-annotations`` ...).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from focus_detr.cli import common
from focus_detr.data.discovery import FORMATS

NAME = "convert"
HELP = "write a YOLO or Pascal VOC dataset as COCO JSON (one file per split)"
DESCRIPTION = (
    "Convert the splits of a dataset folder (YOLO data.yaml, Pascal VOC or COCO) to COCO "
    "instances JSON. --out FILE.json writes one split; --out FOLDER writes "
    "FOLDER/instances_<split>.json for each."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="dataset folder (or a YOLO data.yaml)")
    parser.add_argument("--out", required=True, help="a .json file (one split) or a folder")
    parser.add_argument("--format", choices=FORMATS, help="dataset format (default: detected)")
    parser.add_argument(
        "--split",
        action="append",
        dest="splits",
        help="split to convert (repeatable; default: the training and validation splits)",
    )


def run(args: argparse.Namespace) -> int:
    from focus_detr.data.discovery import discover_splits, find_split, read_split
    from focus_detr.io import atomic_write_bytes

    if args.splits:
        splits = [find_split(args.data, name, args.format) for name in args.splits]
    else:
        train, val = discover_splits(args.data, args.format)
        splits = [train] if val is None else [train, val]
    out = Path(args.out)
    to_file = out.suffix == ".json"
    if to_file and len(splits) > 1:
        names = ", ".join(split.name for split in splits)
        raise common.UsageError(
            f"{args.data} has several splits ({names}): give one --split for a .json --out, or "
            "a folder"
        )
    class_names = None
    for split in splits:
        annotations, image_dir = read_split(split, class_names=class_names)
        data = _as_dict(annotations)
        if split.format == "voc":  # the later splits keep the first one's class order
            class_names = [c["name"] for c in data["categories"]]
        target = out if to_file else out / f"instances_{split.name}.json"
        atomic_write_bytes(target, json.dumps(data).encode())
        print(
            f"wrote {target}: {split.name}, {len(data['images'])} images, "
            f"{len(data['annotations'])} objects, {len(data['categories'])} categories; "
            f"file names are relative to {image_dir}"
        )
    return 0


def _as_dict(annotations: Path | dict[str, Any]) -> dict[str, Any]:
    from focus_detr.data.coco import load_coco_json

    return annotations if isinstance(annotations, dict) else load_coco_json(annotations)
