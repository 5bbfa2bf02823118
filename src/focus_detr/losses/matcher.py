"""Hungarian matching between predicted queries and ground-truth objects (DETR, Carion et al.).

The cost of assigning query ``i`` to target ``j`` is
``cost_class * focal_cost + cost_bbox * L1(box_i, box_j) - cost_giou * GIoU(box_i, box_j)``,
where the focal cost is the focal loss of the target class if positive minus its focal loss if
negative (the DINO / Deformable-DETR form). One cost matrix is computed for the whole batch and
solved image by image with :func:`scipy.optimize.linear_sum_assignment` on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from focus_detr.config import LossConfig
from focus_detr.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou

MatchIndices = list[tuple[Tensor, Tensor]]


class HungarianMatcher:
    """One-to-one assignment of queries to targets minimising the matching cost.

    Args:
        cost_class: weight of the focal classification cost.
        cost_bbox: weight of the L1 distance between cxcywh boxes.
        cost_giou: weight of the negative generalized IoU.
        alpha: focal cost weight of positives.
        gamma: focal cost focusing exponent.

    Raises:
        ValueError: if a weight is negative or all weights are zero.
    """

    def __init__(
        self,
        cost_class: float = LossConfig.match_class_cost,
        cost_bbox: float = LossConfig.match_box_cost,
        cost_giou: float = LossConfig.match_giou_cost,
        alpha: float = LossConfig.focal_alpha,
        gamma: float = LossConfig.focal_gamma,
    ) -> None:
        if min(cost_class, cost_bbox, cost_giou) < 0:
            raise ValueError("matching cost weights must be >= 0")
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one matching cost weight must be non-zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.alpha = alpha
        self.gamma = gamma

    def __repr__(self) -> str:
        return (
            f"HungarianMatcher(cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, alpha={self.alpha}, gamma={self.gamma})"
        )

    def cost_matrix(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[Mapping[str, Tensor]]
    ) -> Tensor:
        """Matching cost of every query of the batch against every target of the batch.

        Args:
            logits: ``[B, Q, C]`` class logits.
            boxes: ``[B, Q, 4]`` predicted cxcywh boxes.
            targets: per image ``{"labels": [n_b], "boxes": [n_b, 4] cxcywh}``.

        Returns:
            ``[B, Q, sum(n_b)]`` cost; image ``b``'s own block is the ``n_b`` columns starting at
            ``sum(n_0 .. n_{b-1})``.
        """
        batch_size, num_queries = logits.shape[:2]
        if logits.dtype in (torch.float16, torch.bfloat16):  # half-precision costs tie too often
            logits, boxes = logits.float(), boxes.float()
        probs = logits.flatten(0, 1).sigmoid()
        pred_boxes = boxes.flatten(0, 1)
        target_labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes)

        # Focal cost as in detrex: the 1e-8 inside the logs is part of the reference numbers.
        negative_cost = (1 - self.alpha) * (probs**self.gamma) * (-(1 - probs + 1e-8).log())
        positive_cost = self.alpha * ((1 - probs) ** self.gamma) * (-(probs + 1e-8).log())
        class_cost = positive_cost[:, target_labels] - negative_cost[:, target_labels]
        bbox_cost = torch.cdist(pred_boxes, target_boxes, p=1)
        giou_cost = -generalized_box_iou(
            box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes)
        )
        cost = (
            self.cost_bbox * bbox_cost + self.cost_class * class_cost + self.cost_giou * giou_cost
        )
        return cost.view(batch_size, num_queries, -1)

    @torch.no_grad()
    def __call__(
        self,
        logits: Tensor,
        boxes: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        query_mask: Tensor | None = None,
    ) -> MatchIndices:
        """Match the queries of every image to its targets.

        Args:
            logits: ``[B, Q, C]`` class logits.
            boxes: ``[B, Q, 4]`` predicted cxcywh boxes.
            targets: ``B`` dicts with ``"labels"`` int64 ``[n_b]`` and ``"boxes"`` ``[n_b, 4]``
                cxcywh normalised.
            query_mask: ``[B, Q]`` bool, False on queries that must never be matched.

        Returns:
            per image ``(query_indices, target_indices)``, two int64 CPU tensors of length
            ``min(n_b, valid queries)``, sorted by query index.

        Raises:
            ValueError: on inconsistent shapes, or if a cost among the valid queries is NaN or
                infinite (non-finite predictions are a training bug that must not be hidden).
        """
        from scipy.optimize import linear_sum_assignment  # SciPy loads on first use

        _check_inputs(logits, boxes, targets, query_mask)
        sizes = [len(t["labels"]) for t in targets]
        if sum(sizes) == 0:
            return [_empty_match() for _ in targets]
        cost = self.cost_matrix(logits, boxes, targets)
        if query_mask is not None:
            cost = cost.masked_fill(~query_mask[..., None], 0.0)
        if not bool(torch.isfinite(cost).all()):
            raise ValueError(
                "the matching cost has NaN or infinite entries: the predicted logits or boxes "
                "are not finite"
            )
        cost = cost.cpu()
        indices: MatchIndices = []
        for image_index, image_cost in enumerate(cost.split(sizes, dim=-1)):
            image_cost = image_cost[image_index]
            if sizes[image_index] == 0:
                indices.append(_empty_match())
                continue
            if query_mask is None:
                valid_queries = torch.arange(image_cost.shape[0])
            else:
                valid_queries = query_mask[image_index].cpu().nonzero().squeeze(1)
            rows, cols = linear_sum_assignment(image_cost[valid_queries].numpy())
            indices.append(
                (
                    valid_queries[torch.as_tensor(rows, dtype=torch.int64)],
                    torch.as_tensor(cols, dtype=torch.int64),
                )
            )
        return indices


def _empty_match() -> tuple[Tensor, Tensor]:
    return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)


def _check_inputs(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[Mapping[str, Tensor]],
    query_mask: Tensor | None,
) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, Q, C], got {tuple(logits.shape)}")
    if boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"boxes must be [{logits.shape[0]}, {logits.shape[1]}, 4], got {tuple(boxes.shape)}"
        )
    if len(targets) != logits.shape[0]:
        raise ValueError(f"got {len(targets)} targets for a batch of {logits.shape[0]} images")
    if query_mask is not None and query_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"query_mask must be {tuple(logits.shape[:2])}, got {tuple(query_mask.shape)}"
        )
    for image_index, target in enumerate(targets):
        labels, target_boxes = target["labels"], target["boxes"]
        if labels.dim() != 1 or target_boxes.shape != (labels.shape[0], 4):
            raise ValueError(
                f"target {image_index}: labels must be [n] and boxes [n, 4], got "
                f"{tuple(labels.shape)} and {tuple(target_boxes.shape)}"
            )
