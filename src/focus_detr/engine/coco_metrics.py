"""COCO box evaluation with faster-coco-eval (C++; the same numbers as pycocotools).

Detections are COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``;
:func:`to_coco_results` builds them from post-processed predictions. Undefined numbers (no
ground truth in a size bucket, or no annotation at all) are NaN, where pycocotools prints -1.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from focus_detr.io import atomic_open

logger = logging.getLogger(__name__)

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)

# (title, IoU, area, maxDets) of each of the 12 standard lines, as pycocotools prints them.
_TABLE_ROWS = (
    ("Average Precision  (AP)", "0.50:0.95", "all", 100),
    ("Average Precision  (AP)", "0.50", "all", 100),
    ("Average Precision  (AP)", "0.75", "all", 100),
    ("Average Precision  (AP)", "0.50:0.95", "small", 100),
    ("Average Precision  (AP)", "0.50:0.95", "medium", 100),
    ("Average Precision  (AP)", "0.50:0.95", "large", 100),
    ("Average Recall     (AR)", "0.50:0.95", "all", 1),
    ("Average Recall     (AR)", "0.50:0.95", "all", 10),
    ("Average Recall     (AR)", "0.50:0.95", "all", 100),
    ("Average Recall     (AR)", "0.50:0.95", "small", 100),
    ("Average Recall     (AR)", "0.50:0.95", "medium", 100),
    ("Average Recall     (AR)", "0.50:0.95", "large", 100),
)


@dataclass(frozen=True)
class CocoEvaluation:
    """The 12 standard COCO box metrics, as fractions in [0, 1] (NaN when undefined).

    Attributes:
        AP, AP50, AP75: AP averaged over IoU 0.50:0.95, at IoU 0.50, at IoU 0.75.
        APs, APm, APl: AP of small (< 32^2), medium and large (> 96^2) objects.
        AR1, AR10, AR100: recall with 1, 10, 100 detections per image.
        ARs, ARm, ARl: AR100 per object size.
        per_class_ap: COCO category id -> AP (IoU 0.50:0.95), when asked for; NaN for
            categories without ground truth.
        category_names: COCO category id -> name.
        num_images: images evaluated.
        num_detections: detections on those images.
    """

    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    AR1: float
    AR10: float
    AR100: float
    ARs: float
    ARm: float
    ARl: float
    per_class_ap: dict[int, float] | None = None
    category_names: dict[int, str] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0

    def as_dict(self) -> dict[str, float]:
        """The 12 numbers by name (fractions)."""
        return {name: getattr(self, name) for name in STAT_NAMES}

    def format_table(self) -> str:
        """The standard 12-line COCO summary (undefined values print as -1.000, as
        pycocotools), followed by per-class AP when available."""
        lines = []
        for name, (title, iou, area, max_dets) in zip(STAT_NAMES, _TABLE_ROWS):
            value = getattr(self, name)
            shown = -1.0 if math.isnan(value) else value
            where = f"IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d}"
            lines.append(f" {title} @[ {where} ] = {shown:0.3f}")
        if self.per_class_ap:
            width = max(len(self._name(cid)) for cid in self.per_class_ap)
            lines.append(" Per-class AP @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]")
            for category_id, value in sorted(self.per_class_ap.items()):
                shown = "   nan" if math.isnan(value) else f"{value:6.3f}"
                lines.append(f"   {self._name(category_id):<{width}}  {shown}")
        return "\n".join(lines)

    def _name(self, category_id: int) -> str:
        return self.category_names.get(category_id, str(category_id))


def evaluate_detections(
    results: Sequence[Mapping[str, Any]],
    ground_truth: str | os.PathLike[str] | Mapping[str, Any],
    *,
    per_class: bool = False,
    image_ids: Iterable[int] | None = None,
) -> CocoEvaluation:
    """COCO box AP/AR of ``results`` against ``ground_truth``.

    Args:
        results: COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh pixels,
            ``score``); an empty list is valid (AP 0 where there is ground truth).
        ground_truth: path of a COCO ``instances`` JSON file or the loaded dict (not modified).
        per_class: also compute the AP of every category.
        image_ids: evaluate on these images only (default: every image of the ground truth);
            detections on other images are ignored.

    Returns:
        The metrics. Detections of categories absent from the ground truth count for nothing.

    Raises:
        ValueError: malformed results, or image ids unknown to the ground truth.
    """
    gt_data = _load_ground_truth(ground_truth)
    known_images = {int(image["id"]) for image in gt_data["images"]}
    selected = sorted(known_images if image_ids is None else {int(i) for i in image_ids})
    unknown = set(selected) - known_images
    if unknown:
        raise ValueError(f"image_ids not in the ground truth: {sorted(unknown)[:10]}")
    detections = _clean_results(results, known_images)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt_data["categories"]}
    selected_set = set(selected)
    num_detections = sum(1 for d in detections if d["image_id"] in selected_set)
    if not selected or not names:
        return CocoEvaluation(
            **dict.fromkeys(STAT_NAMES, math.nan),
            per_class_ap=dict.fromkeys(names, math.nan) if per_class else None,
            category_names=names,
            num_images=len(selected),
            num_detections=num_detections,
        )
    from faster_coco_eval import COCO, COCOeval_faster  # loads on first use

    coco_gt = COCO(gt_data, print_function=logger.debug)
    coco_dt = coco_gt.loadRes(detections)
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=logger.debug)
    evaluator.params.imgIds = selected
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = {name: _defined(value) for name, value in zip(STAT_NAMES, evaluator.stats[:12])}
    per_class_ap = _per_class_ap(evaluator) if per_class else None
    return CocoEvaluation(
        **stats,
        per_class_ap=per_class_ap,
        category_names=names,
        num_images=len(selected),
        num_detections=num_detections,
    )


def _defined(value: float) -> float:
    return math.nan if value < 0 else float(value)


def _per_class_ap(evaluator: Any) -> dict[int, float]:
    """AP over IoU 0.50:0.95, all areas, 100 detections, of each category (detectron2's way)."""
    precision = np.asarray(evaluator.eval["precision"])  # [T, R, K, A, M]
    per_class = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[int(category_id)] = float(values.mean()) if values.size else math.nan
    return per_class


def _load_ground_truth(ground_truth: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A private copy of the ground truth with the keys the evaluator needs."""
    if isinstance(ground_truth, Mapping):
        data = copy.deepcopy(dict(ground_truth))
    else:
        path = Path(ground_truth)
        if not path.is_file():
            raise FileNotFoundError(f"ground-truth file not found: {path}")
        with path.open("r", encoding="utf-8") as handle:
            data = json.load(handle)
    if not isinstance(data.get("images"), list):
        raise ValueError("ground truth has no 'images' list")
    data["annotations"] = list(data.get("annotations") or [])
    data["categories"] = list(data.get("categories") or [])
    for annotation in data["annotations"]:
        if "area" not in annotation:  # pycocotools needs it; COCO files always have it
            annotation["area"] = float(annotation["bbox"][2]) * float(annotation["bbox"][3])
    return data


def _clean_results(
    results: Sequence[Mapping[str, Any]], known_images: set[int]
) -> list[dict[str, Any]]:
    """Fresh result dicts with plain Python numbers (the evaluator adds keys to them)."""
    cleaned = []
    for index, result in enumerate(results):
        try:
            bbox = [float(v) for v in result["bbox"]]
            item = {
                "image_id": int(result["image_id"]),
                "category_id": int(result["category_id"]),
                "bbox": bbox,
                "score": float(result["score"]),
            }
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"result {index} is not a COCO detection: {result!r}") from error
        values = [*bbox, float(result["score"])]
        if len(bbox) != 4 or not all(math.isfinite(float(v)) for v in values):
            raise ValueError(f"result {index} has a bad bbox or score: {result!r}")
        if item["image_id"] not in known_images:
            raise ValueError(f"result {index} is for image {item['image_id']}, unknown to the GT")
        cleaned.append(item)
    return cleaned


def to_coco_results(
    image_id: int,
    boxes_xyxy: Tensor,
    scores: Tensor,
    labels: Tensor,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO result dicts of one image's detections.

    Args:
        image_id: COCO image id.
        boxes_xyxy: ``[K, 4]`` boxes in pixels of the original image.
        scores: ``[K]`` confidences.
        labels: ``[K]`` contiguous labels, mapped through ``category_ids`` (label -> COCO id).
        category_ids: label -> COCO category id (``dataset.category_ids``).
    """
    if boxes_xyxy.dim() != 2 or boxes_xyxy.shape[1] != 4:
        raise ValueError(f"boxes_xyxy must be [K, 4], got {tuple(boxes_xyxy.shape)}")
    if not (len(scores) == len(labels) == len(boxes_xyxy)):
        raise ValueError("boxes, scores and labels must have the same length")
    boxes = boxes_xyxy.detach().double().cpu()
    xywh = boxes.clone()
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    label_list = labels.detach().cpu().tolist()
    if label_list and not 0 <= min(label_list) <= max(label_list) < len(category_ids):
        raise ValueError(f"labels must lie in [0, {len(category_ids)}), got {label_list}")
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[label]),
            "bbox": box,
            "score": score,
        }
        for box, score, label in zip(xywh.tolist(), scores.detach().cpu().tolist(), label_list)
    ]


def write_results_json(path: str | os.PathLike[str], results: Sequence[Mapping[str, Any]]) -> None:
    """Write COCO results as JSON atomically (:func:`focus_detr.io.atomic_path`)."""
    payload = [
        {
            "image_id": int(r["image_id"]),
            "category_id": int(r["category_id"]),
            "bbox": [float(v) for v in r["bbox"]],
            "score": float(r["score"]),
        }
        for r in results
    ]
    with atomic_open(path, "w", encoding="utf-8") as stream:
        json.dump(payload, stream)
