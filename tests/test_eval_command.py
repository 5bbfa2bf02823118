"""``focus-detr eval`` and the evaluator: the table, the results file, pycocotools' numbers."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from focus_detr.cli import main
from focus_detr.config import LossConfig, ModelConfig
from focus_detr.data.coco import CocoDetection
from focus_detr.engine.coco_metrics import STAT_NAMES
from focus_detr.engine.evaluator import evaluate
from focus_detr.engine.trainer import Trainer
from tests.helpers import tiny_recipe, train_set, val_set

pytestmark = pytest.mark.usefixtures("one_thread")

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory) -> Path:
    """model_final.pth after a few steps (with the final evaluation of the trainer)."""
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    config = tiny_recipe(lr=1e-3)
    Trainer(
        config,
        train_set(synthetic, config),
        output_dir=out,
        val_dataset=val_set(synthetic),
        progress=False,
        max_iters=4,
    ).train()
    return out / "model_final.pth"


def _pycocotools_stats(annotation_file: Path, results: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        detections = ground_truth.loadRes(results) if results else COCO()
        evaluator = COCOeval(ground_truth, detections, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _as_array(evaluation) -> np.ndarray:
    return np.array([-1.0 if math.isnan(v) else v for v in evaluation.as_dict().values()])


def test_eval_command_prints_the_table_and_writes_results(trained, synthetic, tmp_path, capsys):
    results_path = tmp_path / "results.json"
    status = main(
        [
            "eval",
            "--weights",
            str(trained),
            "--data",
            str(synthetic.root),
            "--results",
            str(results_path),
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--per-class",
            "--no-progress",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith(" Average")]
    assert len(table) == 12
    assert "Per-class AP" in printed and "circle" in printed
    results = json.loads(results_path.read_text())
    val_ids = set(val_set(synthetic).image_ids)
    assert results and {r["image_id"] for r in results} <= val_ids
    assert {r["category_id"] for r in results} <= set(range(1, 9))
    expected = _pycocotools_stats(synthetic.val_annotations, results)
    shown = np.array([float(line.rsplit("=", 1)[1]) for line in table])
    np.testing.assert_allclose(shown, expected, atol=5e-4)  # printed with 3 decimals


def test_eval_command_needs_a_validation_split(trained, tmp_path, capsys):
    (tmp_path / "annotations").mkdir()
    assert main(["eval", "--weights", str(trained), "--data", str(tmp_path)]) == 2
    assert "instances_val" in capsys.readouterr().err


class _Oracle(nn.Module):
    """Returns each image's ground truth (optionally disturbed) in the resized image's pixels.

    Images arrive in dataset order; the queue holds ``(boxes_xyxy, labels, (h, w))`` of the
    original files.
    """

    def __init__(self, queue: list, noise: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = ModelConfig()  # evaluate() reads the test resize there
        self.queue = list(queue)
        self.noise = noise
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, images):
        detections = []
        for height, width in images.image_sizes.tolist():
            boxes, labels, (orig_h, orig_w) = self.queue.pop(0)
            scale = torch.tensor([width / orig_w, height / orig_h] * 2)
            boxes = boxes * scale
            scores = torch.ones(len(labels))
            if self.noise:
                boxes = boxes + self.noise * torch.randn(boxes.shape, generator=self.generator)
                scores = torch.rand(len(labels), generator=self.generator)
                flip = torch.rand(len(labels), generator=self.generator) < 0.2
                labels = torch.where(flip, (labels + 1) % 8, labels)
            detections.append({"boxes": boxes, "scores": scores, "labels": labels})
        return detections


def _ground_truth_queue(dataset: CocoDetection) -> list:
    queue = []
    for index in range(len(dataset)):
        boxes, labels = dataset._table.objects(index)
        height, width = (int(v) for v in dataset._table.sizes[index])
        queue.append((torch.from_numpy(boxes), torch.from_numpy(labels), (height, width)))
    return queue


def test_evaluator_maps_boxes_back_to_the_original_images(synthetic):
    dataset = val_set(synthetic)
    oracle = _Oracle(_ground_truth_queue(dataset))
    evaluation = evaluate(oracle, dataset, batch_size=4, min_size=200, max_size=300)
    assert math.isclose(evaluation.AP, 1.0) and math.isclose(evaluation.AR100, 1.0)
    assert evaluation.num_images == len(dataset)


class _SizeSpy(nn.Module):
    """Finds nothing; remembers the (height, width) of every image it is given."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = config
        self.seen: list[tuple[int, int]] = []

    def forward(self, images):
        self.seen += [tuple(size) for size in images.image_sizes.tolist()]
        empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
        return [dict(empty) for _ in self.seen[-len(images.image_sizes) :]]


def test_evaluator_resizes_like_the_models_recipe_by_default(synthetic):
    dataset = val_set(synthetic)
    spy = _SizeSpy(ModelConfig(test_min_size=96, test_max_size=128))
    evaluate(spy, dataset, batch_size=3)
    assert len(spy.seen) == len(dataset)
    for (height, width), original in zip(spy.seen, dataset._table.sizes.tolist()):
        short, long = sorted((height, width))
        assert short == 96 or long == 128, (height, width, original)
        assert short <= 96 and long <= 128
    spy.seen.clear()
    evaluate(spy, dataset, batch_size=3, min_size=64, max_size=64)
    assert max(max(size) for size in spy.seen) == 64


def test_evaluator_equals_pycocotools_on_the_same_detections(synthetic, tmp_path):
    dataset = val_set(synthetic)
    oracle = _Oracle(_ground_truth_queue(dataset), noise=3.0, seed=1)
    results_path = tmp_path / "results.json"
    evaluation = evaluate(
        oracle, dataset, batch_size=2, min_size=120, max_size=200, results_path=results_path
    )
    assert 0.1 < evaluation.AP < 0.9  # a non-trivial case
    results = json.loads(results_path.read_text())
    expected = _pycocotools_stats(synthetic.val_annotations, results)
    np.testing.assert_allclose(_as_array(evaluation), expected, atol=1e-9)
    assert list(evaluation.as_dict()) == list(STAT_NAMES)


def test_train_command_end_to_end(synthetic, tmp_path, capsys):
    from focus_detr.engine.metrics_log import read_metrics
    from tests.helpers import cli_overrides

    config = dataclasses.replace(
        tiny_recipe(checkpoint_every_iters=2), loss=LossConfig(giou_weight=3.0)
    )
    out = tmp_path / "run"
    arguments = ["train", "--preset", "focus_detr_tiny", "--data", str(synthetic.root)]
    arguments += ["--out", str(out), "--max-iters", "3", "--device", "cpu", "--no-progress"]
    arguments += ["--num-classes", "10", *cli_overrides(config)]
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    assert main([*arguments, "--tensorboard"] if tensorboard else arguments) == 0
    printed = capsys.readouterr().out
    assert len([line for line in printed.splitlines() if line.startswith(" Average")]) == 12
    assert f"model written to {out / 'model_final.pth'}" in printed
    assert {"last.pth", "last_previous.pth", "model_final.pth", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["format"] == "focus-detr" and final["config"]["model"]["num_classes"] == 10
    assert final["config"]["loss"]["giou_weight"] == 3.0  # --set loss.giou_weight=3.0
    assert [c["id"] for c in final["categories"]] == list(range(1, 11))
    assert [c["name"] for c in final["categories"]][7:] == ["bar", "class 8", "class 9"]
    kinds = [record["type"] for record in read_metrics(out)]
    assert kinds.count("train") == 3 and kinds[-1] == "eval"
    if tensorboard:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_train_command_rejects_too_few_classes(synthetic, tmp_path, capsys):
    arguments = ["train", "--data", str(synthetic.root), "--out", str(tmp_path)]
    assert main([*arguments, "--num-classes", "3", "--preset", "focus_detr_tiny"]) == 2
    assert "smaller than the 8 categories" in capsys.readouterr().err


@pytest.mark.slow
def test_train_without_data_uses_the_synthetic_quick_start(tmp_path, capsys):
    arguments = ["train", "--synthetic-root", str(tmp_path / "synthetic")]
    arguments += ["--out", str(tmp_path / "run"), "--max-iters", "2", "--no-progress"]
    assert main([*arguments, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "instances_val.json" in printed
    assert len([line for line in printed.splitlines() if line.startswith(" Average")]) == 12
    final = torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)
    assert final["config"]["model"]["backbone"] == "resnet18"  # the focus_detr_tiny preset
    assert [c["name"] for c in final["categories"]][:3] == ["circle", "square", "triangle"]


def test_train_command_without_any_annotation_is_a_clear_error(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "annotations").mkdir()
    (tmp_path / "train").mkdir()
    Image.new("RGB", (40, 30), (90, 120, 30)).save(tmp_path / "train" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(data))
    arguments = ["train", "--preset", "focus_detr_tiny", "--data", str(tmp_path)]
    assert main([*arguments, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "no training image has a usable annotation" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
