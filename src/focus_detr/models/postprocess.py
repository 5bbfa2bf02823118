"""Turn raw predictions into detections: top-k (query, class) pairs, boxes in pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from focus_detr.ops.boxes import box_cxcywh_to_xyxy


@dataclass(frozen=True)
class TopDetections:
    """The best (query, class) pairs of every image, as fixed-size tensors.

    Attributes:
        boxes: ``[B, K, 4]`` xyxy pixels, clipped to each image.
        scores: ``[B, K]`` sigmoid scores, best first.
        labels: ``[B, K]`` int64 class indices.
        valid: ``[B, K]`` bool, False for pairs that are not detections (a filler query, or a
            box that is empty after clipping).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    valid: Tensor


def top_detections(
    logits: Tensor,
    boxes: Tensor,
    image_sizes: Tensor,
    num_detections: int,
    query_mask: Tensor | None = None,
) -> TopDetections:
    """Top ``num_detections`` sigmoid scores over all (query, class) pairs of each image.

    Args:
        logits: ``[B, Q, C]`` class logits.
        boxes: ``[B, Q, 4]`` cxcywh in [0, 1] of each image.
        image_sizes: ``[B, 2]`` (height, width) in pixels the boxes are scaled to.
        num_detections: pairs per image (``K``; fewer when there are fewer pairs).
        query_mask: ``[B, Q]`` False for filler queries, which are never valid.
    """
    batch, num_queries, num_classes = logits.shape
    scores = logits.sigmoid()
    if query_mask is not None:
        scores = scores.masked_fill(~query_mask[..., None], -1.0)
    k = torch.sym_min(num_detections, num_queries * num_classes)
    top_scores, top_index = scores.view(batch, -1).topk(k, dim=1)
    query_index = torch.div(top_index, num_classes, rounding_mode="floor")
    labels = top_index % num_classes
    chosen = boxes.gather(1, query_index[..., None].expand(batch, k, 4))
    xyxy = box_cxcywh_to_xyxy(chosen)
    heights = image_sizes[:, 0].to(xyxy.dtype)
    widths = image_sizes[:, 1].to(xyxy.dtype)
    scale = torch.stack((widths, heights, widths, heights), dim=-1)[:, None, :]
    xyxy = xyxy * scale
    xyxy = torch.maximum(torch.minimum(xyxy, scale), torch.zeros_like(xyxy))
    valid = (xyxy[..., 2] > xyxy[..., 0]) & (xyxy[..., 3] > xyxy[..., 1]) & (top_scores >= 0)
    return TopDetections(boxes=xyxy, scores=top_scores, labels=labels, valid=valid)


def postprocess(
    logits: Tensor,
    boxes: Tensor,
    image_sizes: Tensor,
    num_detections: int,
    query_mask: Tensor | None = None,
) -> list[dict[str, Tensor]]:
    """:func:`top_detections`, one dict per image without the pairs that are not detections.

    Returns:
        One dict per image: ``boxes`` ``[K, 4]`` xyxy pixels clipped to the image,
        ``scores`` ``[K]``, ``labels`` ``[K]`` int64; boxes that are empty after clipping are
        dropped (detectron2's ``detector_postprocess``).
    """
    found = top_detections(logits, boxes, image_sizes, num_detections, query_mask)
    keep = found.valid
    return [
        {
            "boxes": found.boxes[b][keep[b]],
            "scores": found.scores[b][keep[b]],
            "labels": found.labels[b][keep[b]],
        }
        for b in range(logits.shape[0])
    ]
