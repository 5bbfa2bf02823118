"""YOLO and Pascal VOC folders: read into the same dataset as COCO, same AP, detection,
conversion, ``difficult`` objects, and the warnings and errors about bad labels and files."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from focus_detr.cli import main
from focus_detr.data import CocoDetection, detect_format, discover_splits, load_dataset
from focus_detr.data.synthetic import SyntheticYoloPaths, generate_synthetic_yolo
from focus_detr.engine.coco_metrics import evaluate_detections
from focus_detr.errors import DatasetError
from tests.helpers import stub_detections, write_voc


@pytest.fixture(scope="module")
def yolo(tmp_path_factory) -> SyntheticYoloPaths:
    """The fine-tuning example's classes in YOLO layout (6 training, 5 validation images)."""
    root = tmp_path_factory.mktemp("yolo") / "shapes"
    return generate_synthetic_yolo(
        root, num_train=6, num_val=5, image_size_range=(64, 96), max_objects=3, seed=2
    )


@pytest.fixture(scope="module")
def converted(yolo, tmp_path_factory) -> Path:
    """``focus-detr convert`` of the YOLO folder: ``instances_train.json`` and ``_val``."""
    out = tmp_path_factory.mktemp("converted")
    assert main(["convert", str(yolo.root), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def voc(yolo, converted, tmp_path_factory) -> Path:
    """The validation split as a VOC folder (written from the converted COCO file)."""
    coco = json.loads((converted / "instances_val.json").read_text())
    return write_voc(coco, yolo.val_images, tmp_path_factory.mktemp("voc") / "VOC")


def _stats(evaluation) -> np.ndarray:
    return np.array([v for v in evaluation.as_dict().values()])


def test_yolo_voc_and_converted_coco_give_the_same_dataset_and_ap(yolo, converted, voc):
    coco = CocoDetection(yolo.val_images, converted / "instances_val.json")
    from_yolo = load_dataset(yolo.root)  # the validation split by default
    from_voc = load_dataset(voc)
    detections = stub_detections(json.loads((converted / "instances_val.json").read_text()))
    expected = evaluate_detections(detections, coco.ground_truth, image_ids=coco.image_ids)
    assert 0.2 < expected.AP < 0.9  # a non-trivial case
    for dataset in (from_yolo, from_voc):
        assert dataset.category_names == list(yolo.category_names) == coco.category_names
        assert dataset.image_ids == coco.image_ids
        for index in range(len(coco)):
            _, target = dataset[index]
            _, reference = coco[index]
            torch.testing.assert_close(target["boxes"], reference["boxes"], atol=1e-3, rtol=0)
            assert torch.equal(target["labels"], reference["labels"])
        found = evaluate_detections(detections, dataset.ground_truth, image_ids=dataset.image_ids)
        np.testing.assert_allclose(_stats(found), _stats(expected), atol=1e-6)


def test_voc_class_order_can_follow_the_training_split(yolo, voc):
    from focus_detr.data.discovery import evaluation_split, load_split

    names = list(reversed(yolo.category_names))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every object keeps a class
        dataset = load_split(evaluation_split(voc), class_names=names)
    assert dataset.category_names == names
    reference = load_dataset(voc)
    _, target = dataset[0]
    _, expected = reference[0]
    assert target["labels"].tolist() == [5 - label for label in expected["labels"].tolist()]


def test_formats_are_detected_and_forced(yolo, converted, voc, tmp_path):
    assert detect_format(yolo.root) == "yolo" and detect_format(yolo.data_yaml) == "yolo"
    assert detect_format(voc) == "voc"
    train, val = discover_splits(yolo.root)
    assert (train.format, train.name, val.name) == ("yolo", "train", "val")
    assert train.images == yolo.train_images
    both = tmp_path / "both"
    (both / "annotations").mkdir(parents=True)
    (both / "train").mkdir()
    (both / "annotations" / "instances_train.json").write_text("{}")
    (both / "data.yaml").write_text(yolo.data_yaml.read_text())
    with pytest.raises(DatasetError, match="coco and yolo; choose with --format"):
        detect_format(both)
    assert discover_splits(both, "coco")[0].format == "coco"
    with pytest.raises(DatasetError, match=r"YOLO \(data\.yaml\) or Pascal VOC"):
        detect_format(tmp_path)


def test_yolo_names_as_a_mapping_lists_of_images_and_missing_label_files(tmp_path):
    images, labels = tmp_path / "pics" / "images", tmp_path / "pics" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in ("a", "b"):
        PIL.Image.new("RGB", (50, 40)).save(images / f"{name}.jpg")
    (labels / "a.txt").write_text("2 0.5 0.5 0.2 0.5\n0 0.1 0.1 0.3 0.1 0.3 0.3\n")  # + polygon
    (tmp_path / "train.txt").write_text("./pics/images/a.jpg\npics/images/b.jpg\n")
    (tmp_path / "data.yaml").write_text(
        "path: .\ntrain: train.txt\nval: train.txt\nnames:\n  0: cat\n  2: dog\n"
    )
    dataset = load_dataset(tmp_path, "train")
    assert dataset.category_ids == [1, 3] and dataset.category_names == ["cat", "dog"]
    assert len(dataset) == 2 and dataset.num_annotations == 2  # b.jpg: no label file
    _, target = dataset[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[20.0, 10, 30, 30], [5, 4, 15, 12]]))
    assert target["labels"].tolist() == [1, 0]
    _, target = dataset[1]
    assert target["boxes"].shape == (0, 4)


def test_bad_yolo_labels_are_counted_in_one_warning(yolo, tmp_path):
    root = tmp_path / "bad"
    generate_synthetic_yolo(root, num_train=2, num_val=1, image_size=(64, 64), seed=5)
    label = root / "labels" / "train" / "000000.txt"
    good = len(label.read_text().splitlines())
    bad_lines = ["6 0.5 0.5 0.1 0.1", "0 1.2 0.5 0.1 0.1", "1 0.98 0.5 0.1 0.1", "0 0.5 0.5"]
    label.write_text(label.read_text() + "\n".join(["", "x 0.5 0.5 0.1 0.1", *bad_lines]) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_dataset(root, "train")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "5 labels ignored" in messages[0]
    assert "1 class index out of range" in messages[0]
    assert "2 coordinates outside [0, 1]" in messages[0]
    assert "2 malformed lines" in messages[0]
    assert "000000.txt:" in messages[0]
    _, target = dataset[0]
    assert len(target["labels"]) == good


def test_unreadable_data_yaml_and_xml_name_the_file(tmp_path, voc, capsys):
    broken = tmp_path / "yolo"
    broken.mkdir()
    (broken / "data.yaml").write_text("train: images/train\nnames: [a, b\n")
    assert main(["train", "--data", str(broken), "--out", str(tmp_path / "run")]) == 2
    assert "data.yaml" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="no 'names'"):
        (broken / "data.yaml").write_text("train: images/train\n")
        load_dataset(broken, "train")
    xml = sorted((voc / "Annotations").glob("*.xml"))[0]
    original = xml.read_text()
    try:
        xml.write_text(original[:-5])
        with pytest.raises(DatasetError, match=xml.name):
            load_dataset(voc)
        # entity expansion (billion laughs) is refused, not expanded
        xml.write_text(
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx"><!ENTITY y "&x;&x;">]>'
            "<annotation><filename>&y;</filename></annotation>"
        )
        with pytest.raises(DatasetError, match=xml.name):
            load_dataset(voc)
    finally:
        xml.write_text(original)


def test_voc_difficult_objects_are_ignored_in_training_and_crowd_in_evaluation(tmp_path):
    PIL.Image.new("RGB", (100, 80)).save(tmp_path / "img.png")
    coco = {
        "images": [{"id": 1, "file_name": "img.png", "height": 80, "width": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 30.0, 20.0]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [55.0, 40.0, 30.0, 30.0]},
        ],
        "categories": [{"id": 1, "name": "boat"}],
    }
    root = write_voc(coco, tmp_path, tmp_path / "VOC", difficult=frozenset({2}))
    dataset = load_dataset(root)
    _, target = dataset[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 10.0, 40.0, 30.0]]))
    found = {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 30.0, 20.0], "score": 0.5}
    on_difficult = {**found, "bbox": [55.0, 40.0, 30.0, 30.0], "score": 0.9}
    for detections in ([found], [found, on_difficult]):
        evaluation = evaluate_detections(detections, dataset.ground_truth)
        # missing the difficult object is no miss, finding it no false positive
        assert math.isclose(evaluation.AP, 1.0), detections


def test_convert_writes_one_split_to_a_file(yolo, converted, tmp_path, capsys):
    target = tmp_path / "val.json"
    assert main(["convert", str(yolo.root), "--split", "val", "--out", str(target)]) == 0
    assert f"relative to {yolo.val_images}" in capsys.readouterr().out
    assert json.loads(target.read_text()) == json.loads(
        (converted / "instances_val.json").read_text()
    )
    assert main(["convert", str(yolo.root), "--out", str(tmp_path / "all.json")]) == 2
    assert "several splits" in capsys.readouterr().err


def test_eval_command_reads_every_format_alike(yolo, converted, voc, tmp_path, capsys):
    from focus_detr.config import config_to_dict
    from focus_detr.engine.training_checkpoint import save_model
    from focus_detr.models.build import build_model
    from tests.helpers import tiny_recipe

    config = tiny_recipe({"num_classes": 6, "test_min_size": 64, "test_max_size": 96})
    torch.manual_seed(0)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(yolo.category_names)]
    weights = save_model(
        tmp_path / "model.pth",
        build_model(config.model).state_dict(),
        config_to_dict(config),
        categories,
    )
    coco_root = tmp_path / "coco"
    (coco_root / "annotations").mkdir(parents=True)
    (coco_root / "annotations" / "instances_val.json").write_text(
        (converted / "instances_val.json").read_text()
    )
    (coco_root / "val").symlink_to(yolo.val_images)
    tables, results = [], []
    for data in (coco_root, yolo.root, voc):
        path = tmp_path / f"{data.name}.json"
        arguments = ["eval", "--weights", str(weights), "--data", str(data), "--device", "cpu"]
        assert main([*arguments, "--workers", "0", "--no-progress", "--results", str(path)]) == 0
        tables.append([line for line in capsys.readouterr().out.splitlines() if "=" in line])
        results.append(json.loads(path.read_text()))
    assert len(tables[0]) == 12 and results[0]
    assert tables[1] == tables[0] and tables[2] == tables[0]
    for found in results[1:]:
        assert len(found) == len(results[0])
        for a, b in zip(found, results[0]):
            assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
            np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
