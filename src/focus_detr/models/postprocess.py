"""Turn raw predictions into detections: top-k (query, class) pairs, boxes in pixels."""

from __future__ import annotations

import torch
from torch import Tensor

from focus_detr.ops.boxes import box_cxcywh_to_xyxy


def postprocess(
    logits: Tensor,
    boxes: Tensor,
    image_sizes: Tensor,
    num_detections: int,
    query_mask: Tensor | None = None,
) -> list[dict[str, Tensor]]:
    """Top ``num_detections`` sigmoid scores over all (query, class) pairs of each image.

    Args:
        logits: ``[B, Q, C]`` class logits.
        boxes: ``[B, Q, 4]`` cxcywh in [0, 1] of each image.
        image_sizes: ``[B, 2]`` (height, width) in pixels the boxes are scaled to.
        num_detections: detections per image (fewer if the image has fewer real pairs).
        query_mask: ``[B, Q]`` False for filler queries, which are never returned.

    Returns:
        One dict per image: ``boxes`` ``[K, 4]`` xyxy pixels clipped to the image,
        ``scores`` ``[K]``, ``labels`` ``[K]`` int64; boxes that are empty after clipping are
        dropped (detectron2's ``detector_postprocess``).
    """
    batch, num_queries, num_classes = logits.shape
    scores = logits.sigmoid()
    if query_mask is not None:
        scores = scores.masked_fill(~query_mask[..., None], -1.0)
    k = min(num_detections, num_queries * num_classes)
    top_scores, top_index = scores.view(batch, -1).topk(k, dim=1)
    query_index = torch.div(top_index, num_classes, rounding_mode="floor")
    labels = top_index % num_classes
    chosen = boxes.gather(1, query_index[..., None].expand(batch, k, 4))
    xyxy = box_cxcywh_to_xyxy(chosen)
    heights = image_sizes[:, 0].to(xyxy.dtype)
    widths = image_sizes[:, 1].to(xyxy.dtype)
    scale = torch.stack((widths, heights, widths, heights), dim=-1)[:, None, :]
    xyxy = xyxy * scale
    upper = scale
    xyxy = torch.maximum(torch.minimum(xyxy, upper), torch.zeros_like(xyxy))
    keep = (xyxy[..., 2] > xyxy[..., 0]) & (xyxy[..., 3] > xyxy[..., 1]) & (top_scores >= 0)
    return [
        {"boxes": xyxy[b][keep[b]], "scores": top_scores[b][keep[b]], "labels": labels[b][keep[b]]}
        for b in range(batch)
    ]
