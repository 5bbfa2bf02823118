"""Comparisons of ONNX Runtime detections with PyTorch ones, shared by the ONNX tests."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

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


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in sizes
    ]
