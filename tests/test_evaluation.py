"""COCO box evaluation: same numbers as pycocotools, and the corner cases."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from focus_detr.engine.coco_metrics import (
    STAT_NAMES,
    evaluate_detections,
    to_coco_results,
    write_results_json,
)


def _ann(ann_id, image_id, category_id, bbox, iscrowd=0):
    annotation = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox}
    return {**annotation, "area": float(bbox[2] * bbox[3]), "iscrowd": iscrowd}


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


@pytest.fixture
def ground_truth() -> dict:
    """4 images (one without objects), 3 categories (``bird`` without objects), a crowd."""
    return {
        "images": [
            {"id": 1, "file_name": "1.png", "height": 100, "width": 100},
            {"id": 2, "file_name": "2.png", "height": 150, "width": 200},
            {"id": 3, "file_name": "3.png", "height": 50, "width": 50},
            {"id": 4, "file_name": "4.png", "height": 300, "width": 300},
        ],
        "annotations": [
            _ann(1, 1, 1, [10, 10, 20, 20]),
            _ann(2, 1, 2, [50, 50, 40, 40]),
            _ann(3, 1, 1, [55, 0, 45, 45], iscrowd=1),
            _ann(4, 2, 2, [0, 0, 120, 100]),
            _ann(5, 2, 1, [100, 100, 30, 30]),
            _ann(6, 4, 1, [10, 10, 150, 150]),
            _ann(7, 4, 2, [200, 200, 50, 60]),
            _ann(8, 4, 2, [250, 20, 10, 12]),
        ],
        "categories": [
            {"id": 1, "name": "cat"},
            {"id": 2, "name": "dog"},
            {"id": 5, "name": "bird"},
        ],
    }


@pytest.fixture
def detections() -> list[dict]:
    return [
        _det(1, 1, [11, 11, 19, 20], 0.9),
        _det(1, 1, [12, 9, 22, 21], 0.6),  # duplicate: false positive
        _det(1, 2, [48, 52, 40, 38], 0.8),
        _det(1, 2, [5, 5, 10, 10], 0.3),
        _det(1, 1, [60, 5, 20, 20], 0.5),  # inside the crowd region: ignored
        _det(2, 2, [5, 0, 110, 100], 0.7),
        _det(2, 1, [100, 100, 30, 30], 0.95),
        _det(2, 5, [0, 0, 10, 10], 0.4),  # bird: a category without ground truth
        _det(2, 99, [1, 1, 5, 5], 0.99),  # category unknown to the ground truth
        _det(3, 1, [0, 0, 20, 20], 0.85),  # image without objects
        _det(4, 1, [15, 12, 140, 150], 0.65),
        _det(4, 2, [200, 200, 50, 60], 0.55),
        _det(4, 2, [190, 190, 60, 70], 0.55),  # same score as the previous one
        _det(4, 2, [252, 21, 10, 12], 0.45),
    ]


def _pycocotools(
    gt: dict, results: list[dict], image_ids=None
) -> tuple[np.ndarray, list, COCOeval]:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    lines = [line for line in output.getvalue().splitlines() if line.startswith(" Average")]
    return evaluator.stats, lines, evaluator


def _assert_same_stats(ours, reference: np.ndarray) -> None:
    for name, expected in zip(STAT_NAMES, reference):
        value = getattr(ours, name)
        if expected == -1:
            assert math.isnan(value), name
        else:
            assert value == pytest.approx(expected, abs=1e-12), name


def test_matches_pycocotools(ground_truth, detections):
    ours = evaluate_detections(detections, ground_truth, per_class=True)
    reference, lines, evaluator = _pycocotools(ground_truth, detections)
    _assert_same_stats(ours, reference)
    assert 0 < ours.AP < 1 and not math.isnan(ours.APs)
    assert ours.format_table().splitlines()[:12] == lines
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    for k, category_id in enumerate([1, 2, 5]):
        values = precision[:, :, k][precision[:, :, k] > -1]
        expected = values.mean() if values.size else math.nan
        assert ours.per_class_ap[category_id] == pytest.approx(expected, nan_ok=True, abs=1e-12)
    assert math.isnan(ours.per_class_ap[5])
    assert ours.num_images == 4 and ours.num_detections == len(detections)
    assert "dog" in ours.format_table()


def test_matches_pycocotools_on_random_detections():
    rng = np.random.default_rng(0)
    images, annotations, results = [], [], []
    for image_id in range(1, 21):
        images.append({"id": image_id, "height": 240, "width": 320})
        for _ in range(int(rng.integers(0, 6))):
            side = float(np.exp(rng.uniform(np.log(8), np.log(200))))
            box = [
                float(rng.uniform(0, 320 - side * 0.5)),
                float(rng.uniform(0, 120)),
                side,
                side * 0.6,
            ]
            category = int(rng.integers(1, 4))
            annotations.append(_ann(len(annotations) + 1, image_id, category, box))
            for _ in range(int(rng.integers(0, 3))):
                noisy = [v + float(rng.normal(0, 0.08 * side)) for v in box]
                noisy[2:] = [max(v, 1.0) for v in noisy[2:]]
                label = int(rng.integers(1, 4)) if rng.random() < 0.2 else category
                results.append(_det(image_id, label, noisy, float(rng.random())))
    categories = [{"id": i, "name": str(i)} for i in (1, 2, 3)]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    _assert_same_stats(evaluate_detections(results, gt), _pycocotools(gt, results)[0])
    subset = [2, 3, 5, 8, 13]
    _assert_same_stats(
        evaluate_detections(results, gt, image_ids=subset), _pycocotools(gt, results, subset)[0]
    )


def test_image_subset_matches_pycocotools(ground_truth, detections):
    ours = evaluate_detections(detections, ground_truth, image_ids=[1, 3])
    _assert_same_stats(ours, _pycocotools(ground_truth, detections, [1, 3])[0])
    assert ours.num_images == 2 and ours.num_detections == 6


def test_no_detections_gives_zero(ground_truth):
    result = evaluate_detections([], ground_truth, per_class=True)
    assert all(value == 0.0 for value in result.as_dict().values())
    assert result.per_class_ap[1] == 0.0 and math.isnan(result.per_class_ap[5])


def test_ground_truth_without_annotations_is_undefined(ground_truth, detections):
    ground_truth["annotations"] = []
    result = evaluate_detections(detections, ground_truth)
    assert all(math.isnan(value) for value in result.as_dict().values())
    assert "= -1.000" in result.format_table()
    bare = {"images": [{"id": 1, "height": 5, "width": 5}]}
    assert math.isnan(evaluate_detections([], bare).AP)
    assert math.isnan(evaluate_detections([], {"images": [], "categories": []}).AR100)


def test_inputs_are_not_modified(ground_truth, detections, tmp_path):
    gt_before, results_before = copy.deepcopy(ground_truth), copy.deepcopy(detections)
    from_dict = evaluate_detections(detections, ground_truth)
    assert ground_truth == gt_before and detections == results_before
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(ground_truth))
    assert evaluate_detections(detections, path).as_dict() == from_dict.as_dict()


def test_bad_input_raises(ground_truth, detections):
    with pytest.raises(ValueError, match="unknown"):
        evaluate_detections([_det(42, 1, [0, 0, 1, 1], 0.5)], ground_truth)
    with pytest.raises(ValueError, match="not a COCO detection"):
        evaluate_detections([{"image_id": 1, "bbox": [0, 0, 1, 1]}], ground_truth)
    with pytest.raises(ValueError, match="bad bbox"):
        evaluate_detections([_det(1, 1, [0, 0, 1, float("nan")], 0.5)], ground_truth)
    with pytest.raises(ValueError, match="image_ids"):
        evaluate_detections(detections, ground_truth, image_ids=[1, 77])


def test_to_coco_results_converts_boxes_and_labels():
    results = to_coco_results(
        7,
        torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 1.5, 2.5]]),
        torch.tensor([0.9, 0.1]),
        torch.tensor([1, 0]),
        category_ids=[3, 8],
    )
    assert results == [
        {
            "image_id": 7,
            "category_id": 8,
            "bbox": [10.0, 20.0, 20.0, 40.0],
            "score": pytest.approx(0.9),
        },
        {
            "image_id": 7,
            "category_id": 3,
            "bbox": [0.0, 0.0, 1.5, 2.5],
            "score": pytest.approx(0.1),
        },
    ]
    assert (
        to_coco_results(1, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), [1])
        == []
    )
    with pytest.raises(ValueError, match="labels"):
        to_coco_results(1, torch.zeros(1, 4), torch.zeros(1), torch.tensor([2]), [1, 2])


def test_write_results_json_is_atomic_and_plain(tmp_path, detections):
    path = tmp_path / "out" / "results.json"
    write_results_json(path, detections)
    assert json.loads(path.read_text()) == detections
    numpy_results = [
        _det(np.int64(1), np.int32(2), np.array([1, 2, 3, 4], np.float32), np.float32(0.5))
    ]
    write_results_json(path, numpy_results)
    assert json.loads(path.read_text()) == [_det(1, 2, [1.0, 2.0, 3.0, 4.0], 0.5)]
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
