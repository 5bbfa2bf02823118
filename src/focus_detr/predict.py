"""``focus-detr predict``: detections for image files, as COCO results and annotated copies."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from focus_detr.inference import Categories, Predictor
from focus_detr.io import ImageReadError, atomic_write_bytes, list_image_files, read_image
from focus_detr.visualize import draw_detections, save_image

_KEEP_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class PredictionRun:
    """What :func:`predict_files` did."""

    num_images: int = 0
    num_detections: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    results_path: Path | None = None


def predict_files(
    predictor: Predictor,
    categories: Categories,
    inputs: list[str],
    out_dir: str | Path,
    *,
    threshold: float = 0.3,
    progress: bool = True,
) -> PredictionRun:
    """Detect objects in every image of ``inputs`` (files or folders).

    Writes ``out_dir/predictions.json`` (COCO results with ``file_name``, ``category_id``,
    ``bbox`` [x, y, w, h] and ``score``, for detections with ``score >= threshold``) and an
    annotated copy of each image under ``out_dir/annotated/``. A file that cannot be read is
    reported and skipped; the others are processed.
    """
    out_dir = Path(out_dir)
    files = list_image_files(inputs)
    annotated_dir = out_dir / "annotated"
    names = _output_names(files)
    run = PredictionRun()
    results: list[dict[str, object]] = []
    for path in tqdm(files, desc="predict", unit="image", disable=not progress):
        try:
            image = read_image(path)
        except ImageReadError as error:
            run.failed[str(path)] = str(error)
            tqdm.write(f"error: skipped {path}: {error}", file=sys.stderr)
            continue
        detections = predictor([image])[0]
        keep = detections["scores"] >= threshold
        boxes, scores, labels = (detections[k][keep] for k in ("boxes", "scores", "labels"))
        results.extend(_coco_results(str(path), boxes, scores, labels, categories))
        drawing = draw_detections(image, boxes, labels, scores, class_names=categories.names)
        save_image(drawing, annotated_dir / names[path])
        run.num_images += 1
        run.num_detections += int(keep.sum())
    run.results_path = out_dir / "predictions.json"
    atomic_write_bytes(run.results_path, json.dumps(results, indent=1).encode())
    return run


def _coco_results(
    file_name: str,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    categories: Categories,
) -> list[dict[str, object]]:
    results = []
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        x1, y1, x2, y2 = box
        results.append(
            {
                "file_name": file_name,
                "category_id": categories.ids[label],
                "category_name": categories.names[label],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": score,
            }
        )
    return results


def _output_names(files: list[Path]) -> dict[Path, str]:
    """A unique file name per input for its annotated copy (same suffix when common)."""
    names: dict[Path, str] = {}
    used: set[str] = set()
    for path in files:
        suffix = path.suffix.lower() if path.suffix.lower() in _KEEP_SUFFIXES else ".png"
        candidate = f"{path.stem}{suffix}"
        counter = 1
        while candidate in used:
            candidate = f"{path.stem}_{counter}{suffix}"
            counter += 1
        used.add(candidate)
        names[path] = candidate
    return names
