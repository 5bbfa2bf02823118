"""The built-in synthetic shapes dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from focus_detr.data import (
    SYNTHETIC_CATEGORY_NAMES,
    CocoDetection,
    ensure_synthetic_dataset,
    generate_synthetic_coco,
)
from focus_detr.data.shapes import SHAPES, SHAPES_FINETUNE, shape_mask, visible_objects
from focus_detr.data.synthetic import generate_synthetic_yolo


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "shapes"
    generate_synthetic_coco(root, num_train=48, num_val=8, seed=7)
    return root


def test_generation_is_byte_identical(dataset_root, tmp_path):
    again = generate_synthetic_coco(tmp_path / "again", num_train=48, num_val=8, seed=7)
    assert _files(dataset_root) == _files(again.root)
    other = generate_synthetic_coco(tmp_path / "other", num_train=2, num_val=0, seed=8)
    assert (other.train_images / "000000.png").read_bytes() != (
        dataset_root / "train" / "000000.png"
    ).read_bytes()


def test_layout_and_coco_fields(dataset_root):
    for split, count in (("train", 48), ("val", 8)):
        data = json.loads((dataset_root / "annotations" / f"instances_{split}.json").read_text())
        assert len(data["images"]) == count == len(list((dataset_root / split).glob("*.png")))
        assert [c["name"] for c in data["categories"]] == list(SYNTHETIC_CATEGORY_NAMES)
        assert [c["id"] for c in data["categories"]] == list(range(1, 9))
        for annotation in data["annotations"]:
            assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd"} <= set(annotation)


def test_boxes_inside_images_with_classes_and_sizes_spread(dataset_root):
    data = json.loads((dataset_root / "annotations" / "instances_train.json").read_text())
    images = {image["id"]: image for image in data["images"]}
    per_image: dict[int, int] = {}
    for annotation in data["annotations"]:
        image = images[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        assert w >= 2 and h >= 2 and x >= 0 and y >= 0
        assert x + w <= image["width"] and y + h <= image["height"]
        assert 0 < annotation["area"] <= w * h
        per_image[annotation["image_id"]] = per_image.get(annotation["image_id"], 0) + 1
    assert set(per_image) == set(images)  # every image has an object
    assert max(per_image.values()) > 2 and max(per_image.values()) <= 6
    assert len({a["category_id"] for a in data["annotations"]}) == 8
    areas = np.array([a["area"] for a in data["annotations"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any()
    assert (areas >= 96**2).any()
    sides = [min(i["height"], i["width"]) for i in data["images"]]
    assert min(sides) >= 160 and max(max(i["height"], i["width"]) for i in data["images"]) <= 256


def test_objects_stand_out_from_the_background(dataset_root):
    data = json.loads((dataset_root / "annotations" / "instances_train.json").read_text())
    annotation = max(data["annotations"], key=lambda a: a["area"])
    image = np.asarray(
        PIL.Image.open(dataset_root / "train" / f"{annotation['image_id'] - 1:06d}.png")
    )
    x, y, w, h = (int(v) for v in annotation["bbox"])
    inside = image[y : y + h, x : x + w].max(axis=2)
    # Shapes are bright (value >= 200 before shading and noise); backgrounds stay dull.
    assert np.median(image.max(axis=2)) < 170 and (inside > 170).mean() > 0.3


@pytest.mark.parametrize("name", sorted({*SHAPES.names, *SHAPES_FINETUNE.names}))
def test_shapes_fill_their_box(name):
    for width, height in [(12, 12), (40, 31), (90, 100)]:
        mask = shape_mask(name, width, height)
        assert mask.shape == (height, width)
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()


def test_visible_objects_are_tight_boxes_of_visible_pixels():
    instance_map = np.zeros((20, 30), dtype=np.int16)
    instance_map[2:9, 3:12] = 1
    instance_map[5:15, 10:25] = 2  # occludes part of object 1
    instance_map[0, 0] = 3  # too small: skipped
    objects = visible_objects(instance_map, [4, 6, 1])
    assert objects == [
        (4, [3.0, 2.0, 9.0, 7.0], 7 * 9 - 4 * 2),
        (6, [10.0, 5.0, 15.0, 10.0], 150.0),
    ]


def test_loads_as_coco_dataset(dataset_root):
    dataset = CocoDetection(
        dataset_root / "val", dataset_root / "annotations" / "instances_val.json"
    )
    assert dataset.category_names == list(SYNTHETIC_CATEGORY_NAMES)
    image, target = dataset[0]
    assert image.dtype == torch.uint8 and image.shape[1:] == target["orig_size"]
    assert len(target["boxes"]) >= 1 and target["labels"].max() < 8


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_synthetic_coco(tmp_path, num_train=1, num_val=1)


def test_ensure_generates_once_and_repairs(tmp_path):
    root = tmp_path / "data" / "shapes"
    settings = {"num_train": 4, "num_val": 2, "image_size": (64, 80), "seed": 1}
    paths = ensure_synthetic_dataset(root, **settings)
    assert paths.train_annotations.is_file() and len(list(paths.val_images.glob("*.png"))) == 2
    first = _files(root)
    marker = paths.train_images / "000000.png"
    stamp = marker.stat().st_mtime_ns
    ensure_synthetic_dataset(root, **settings)
    assert marker.stat().st_mtime_ns == stamp  # reused, not regenerated
    (paths.train_images / "000003.png").unlink()  # incomplete -> regenerated
    ensure_synthetic_dataset(root, **settings)
    assert _files(root) == first
    ensure_synthetic_dataset(root, **{**settings, "num_train": 5})  # other settings
    assert len(list(paths.train_images.glob("*.png"))) == 5
    assert sorted(p.name for p in root.parent.iterdir()) == ["shapes"]  # no temporary leftovers
    image = PIL.Image.open(marker)
    assert image.size == (80, 64) and image.mode == "RGB"


def test_ensure_never_deletes_foreign_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        ensure_synthetic_dataset(tmp_path, num_train=1, num_val=1)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_yolo_layout_of_the_fine_tuning_set(tmp_path):
    paths = generate_synthetic_yolo(tmp_path / "yolo", num_train=6, num_val=2, seed=3)
    assert paths.category_names == ("circle", "triangle", "star", "heart", "arrow", "hexagon")
    assert set(paths.category_names) & set(SYNTHETIC_CATEGORY_NAMES) == {
        "circle",
        "triangle",
        "star",
    }
    images = sorted(paths.train_images.glob("*.png"))
    assert len(images) == 6 and len(list(paths.val_images.glob("*.png"))) == 2
    text = paths.data_yaml.read_text()
    assert "train: images/train" in text and "5: hexagon" in text
    for image in images:
        label_file = paths.root / "labels" / "train" / f"{image.stem}.txt"
        rows = [line.split() for line in label_file.read_text().splitlines()]
        assert rows and all(len(row) == 5 and 0 <= int(row[0]) < 6 for row in rows)
        assert all(0 <= float(v) <= 1 for row in rows for v in row[1:])
    again = generate_synthetic_yolo(tmp_path / "again", num_train=6, num_val=2, seed=3)
    assert _files(paths.root) == _files(again.root)
