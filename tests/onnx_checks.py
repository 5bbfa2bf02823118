"""Comparisons of exported-graph detections (ONNX Runtime, OpenVINO) with PyTorch ones, shared
by the ONNX and OpenVINO tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torchvision.ops import box_iou

import focus_detr
from focus_detr.config import config_to_dict
from focus_detr.data.synthetic import CATEGORY_NAMES
from focus_detr.engine.training_checkpoint import save_model
from focus_detr.presets import get_preset
from tests.helpers import randomize_

#: the quick-start architecture, with the built-in data's classes (so that eval matches them)
PRESET = "focus_detr_tiny"
CLASS_NAMES = tuple(CATEGORY_NAMES)

# the acceptance criterion
TOP = 50
MIN_IOU = 0.98
MAX_SCORE_DIFFERENCE = 2e-3
MIN_MATCHED = 0.95


def matched_fraction(
    reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], top: int = TOP
) -> float:
    """Fraction of ``reference``'s ``top`` best detections that ``candidate`` also has: the same
    label, IoU >= 0.98 and a score within 2e-3 (1.0 when ``reference`` has none)."""
    boxes, scores, labels = (reference[k][:top].float() for k in ("boxes", "scores", "labels"))
    if len(scores) == 0:
        return 1.0
    if len(candidate["scores"]) == 0:
        return 0.0
    iou = box_iou(boxes, candidate["boxes"].float())
    same_label = labels[:, None] == candidate["labels"][None, :].float()
    close_score = (scores[:, None] - candidate["scores"][None, :].float()).abs()
    found = same_label & (iou >= MIN_IOU) & (close_score <= MAX_SCORE_DIFFERENCE)
    return float(found.any(dim=1).float().mean())


def random_checkpoint(folder: Path) -> tuple[focus_detr.FocusDETR, Path]:
    """The quick-start model with random weights, and its checkpoint as ``focus-detr train``
    writes it (configuration and class names inside) at ``folder/tiny.pth``."""
    model = randomize_(focus_detr.build_model(PRESET), seed=3).eval()
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASS_NAMES)]
    config = config_to_dict(get_preset(PRESET).config)
    return model, save_model(folder / "tiny.pth", model.state_dict(), config, categories)


def assert_matches_pytorch(
    model: focus_detr.FocusDETR, detector: Callable, sizes: Sequence[tuple[int, int]]
) -> None:
    """At each size (random pixels), ``detector`` finds every one of the top-50 PyTorch
    detections (:func:`matched_fraction`), with PyTorch's dtypes."""
    for image in random_images(list(sizes), seed=1):
        with torch.no_grad():
            expected = model([image])[0]
        found = detector([image])[0]
        assert len(expected["scores"]) > 0
        assert matched_fraction(expected, found) >= MIN_MATCHED, tuple(image.shape)
        assert found["boxes"].dtype == torch.float32 and found["labels"].dtype == torch.int64


def assert_batch_gives_single_image_results(
    detector: Callable, images: Sequence[torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """A padded batch gives each image what it gets alone; the batch's results."""
    batched = detector(list(images))
    for image, in_batch in zip(images, batched):
        alone = detector([image])[0]
        assert torch.equal(alone["labels"], in_batch["labels"])
        torch.testing.assert_close(alone["scores"], in_batch["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone["boxes"], in_batch["boxes"], atol=1e-3, rtol=0)
    return batched


def modules_imported_by(code: str, modules: Sequence[str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    script = f"import sys\n{code}\nprint([m for m in {list(modules)!r} if m in sys.modules])"
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(completed.stdout.strip().replace("'", '"'))


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in sizes
    ]


def assert_same_predictions(reference: Path, candidate: Path, threshold: float) -> None:
    """Two ``focus-detr predict`` output folders hold the same files, and every detection of
    ``reference`` is in ``candidate`` (same class, score within 2e-3, box within 0.1 pixel),
    except where a score within 2e-3 of ``threshold`` fell on the other side of it."""
    files = {p.relative_to(reference) for p in reference.rglob("*")}
    assert files == {p.relative_to(candidate) for p in candidate.rglob("*")}
    expected = json.loads((reference / "predictions.json").read_text())
    found = json.loads((candidate / "predictions.json").read_text())
    assert expected  # not a comparison of nothing
    by_file: dict[str, list[dict]] = {}
    for entry in found:
        by_file.setdefault(entry["file_name"], []).append(entry)
    for entry in expected:
        candidates = [
            c
            for c in by_file.get(entry["file_name"], [])
            if c["category_id"] == entry["category_id"]
            and abs(c["score"] - entry["score"]) <= MAX_SCORE_DIFFERENCE
            and max(abs(a - b) for a, b in zip(c["bbox"], entry["bbox"])) <= 0.1
        ]
        assert candidates or abs(entry["score"] - threshold) <= MAX_SCORE_DIFFERENCE, entry


def first_ap(table: str) -> float:
    """The AP (IoU 0.50:0.95) of a COCO evaluation table printed by ``focus-detr eval``."""
    line = next(line for line in table.splitlines() if "Average Precision" in line)
    return float(line.rsplit("=", 1)[1])
