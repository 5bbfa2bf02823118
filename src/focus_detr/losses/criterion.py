"""Training losses of Focus-DETR: the DETR set criterion plus the foreground token loss.

Loss groups (all unweighted in :meth:`SetCriterion.forward`, named exactly as detrex logs them):

- final decoder layer, Hungarian-matched: ``loss_class``, ``loss_bbox``, ``loss_giou``;
- auxiliary decoder layers ``i = 0 .. L-2``: the same names with suffix ``_i``;
- two-stage proposals: suffix ``_enc``;
- denoising queries (no matching, the positive query of group ``g`` for target ``j`` is
  ``g * group_size + j``): suffix ``_dn`` for the last layer and ``_dn_i`` for the others;
- foreground token scores: ``select_loss``.

``loss_class`` is the sigmoid focal loss summed over classes and queries divided by
``num_boxes`` (detrex writes it ``mean over queries, sum, / num_boxes, * num_queries``);
``loss_bbox`` is the L1 distance of matched cxcywh boxes and ``loss_giou`` is ``1 - GIoU``,
both summed over matched pairs and divided by ``num_boxes`` (``num_boxes * num_groups`` for
denoising).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focus_detr.config import LossConfig
from focus_detr.losses.focal import sigmoid_focal_loss
from focus_detr.losses.foreground import LevelRanges, foreground_loss, foreground_targets
from focus_detr.losses.matcher import HungarianMatcher, MatchIndices
from focus_detr.ops.boxes import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    elementwise_generalized_box_iou,
)
from focus_detr.structures import DenoisingOutput, FocusDETROutput

if TYPE_CHECKING:
    from focus_detr.config import ModelConfig

BASE_LOSS_WEIGHTS: dict[str, float] = {
    "loss_class": LossConfig.class_weight,
    "loss_bbox": LossConfig.box_weight,
    "loss_giou": LossConfig.giou_weight,
}
FOREGROUND_LOSS_NAME = "select_loss"


def default_weight_dict(
    num_decoder_layers: int = 6,
    foreground_weight: float = LossConfig.foreground_weight,
    *,
    class_weight: float = LossConfig.class_weight,
    box_weight: float = LossConfig.box_weight,
    giou_weight: float = LossConfig.giou_weight,
) -> dict[str, float]:
    """The single loss-weight table: the same class / L1 / GIoU weights (LossConfig's default)
    for every group (final, auxiliary, two-stage, denoising), and the foreground weight."""
    suffixes = ["", "_enc", "_dn"]
    suffixes += [f"_{i}" for i in range(num_decoder_layers - 1)]
    suffixes += [f"_dn_{i}" for i in range(num_decoder_layers - 1)]
    weights = {"loss_class": class_weight, "loss_bbox": box_weight, "loss_giou": giou_weight}
    table = {name + suffix: weight for suffix in suffixes for name, weight in weights.items()}
    table[FOREGROUND_LOSS_NAME] = foreground_weight
    return table


def prepare_targets(
    raw_targets: Sequence[Mapping[str, Tensor]],
    image_sizes: Tensor | Sequence[Sequence[int]],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[dict[str, Tensor]]:
    """Convert data-pipeline targets to the criterion's format.

    Args:
        raw_targets: per image ``{"boxes": [n, 4] xyxy absolute pixels, "labels": [n]}``.
        image_sizes: ``[B, 2]`` (height, width) in pixels of each (unpadded) input image.
        device: where the results go (default: where each raw target is).
        dtype: floating dtype of the boxes.

    Returns:
        per image ``{"labels": int64 [n], "boxes": [n, 4] cxcywh normalised by the image size}``.
    """
    sizes = torch.as_tensor(image_sizes).tolist()
    if len(sizes) != len(raw_targets):
        raise ValueError(f"{len(raw_targets)} targets for {len(sizes)} image sizes")
    prepared = []
    for image_index, (raw, (height, width)) in enumerate(zip(raw_targets, sizes)):
        if "boxes" not in raw or "labels" not in raw:
            raise ValueError(f"target {image_index} needs 'boxes' and 'labels' entries")
        target_device = raw["boxes"].device if device is None else device
        boxes = raw["boxes"].to(device=target_device, dtype=dtype)
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        labels = raw["labels"].to(device=target_device, dtype=torch.int64).reshape(-1)
        if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != labels.shape[0]:
            raise ValueError(
                f"target {image_index}: boxes must be [n, 4] with n = len(labels), got "
                f"{tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
        scale = torch.tensor([width, height, width, height], dtype=dtype, device=target_device)
        prepared.append({"labels": labels, "boxes": box_xyxy_to_cxcywh(boxes / scale)})
    return prepared


def average_num_boxes(targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> float:
    """Number of target boxes per process, averaged over the distributed group, at least 1.

    With ``N`` processes each loss is divided by ``total_boxes / N``; averaging the gradients
    over processes then gives exactly the loss of one process holding the whole batch.
    """
    count = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        world_size = torch.distributed.get_world_size()
    return float(torch.clamp(count / world_size, min=1).item())


class SetCriterion(nn.Module):
    """All Focus-DETR training losses.

    Args:
        num_classes: number of object classes (no background class).
        matcher: query-to-target assignment (default :class:`HungarianMatcher` with the
            Focus-DETR costs of :class:`~focus_detr.config.LossConfig`).
        weight_dict: loss name -> weight; default :func:`default_weight_dict`.
        focal_alpha: focal loss weight of positives (classification and foreground).
        focal_gamma: focal loss focusing exponent.
        foreground_weight: weight of ``select_loss`` in the default table.
        num_decoder_layers: number of decoder layers the default table covers.
        level_ranges: per feature level, the ``(low, high]`` object scale its foreground
            tokens supervise (default :func:`~focus_detr.losses.default_level_ranges`).

    :func:`build_criterion` makes one from a :class:`~focus_detr.config.LossConfig`.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        *,
        weight_dict: Mapping[str, float] | None = None,
        focal_alpha: float = LossConfig.focal_alpha,
        focal_gamma: float = LossConfig.focal_gamma,
        foreground_weight: float = LossConfig.foreground_weight,
        num_decoder_layers: int = 6,
        level_ranges: LevelRanges | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        if weight_dict is None:
            weight_dict = default_weight_dict(num_decoder_layers, foreground_weight)
        self.weight_dict: dict[str, float] = dict(weight_dict)
        self.level_ranges = level_ranges

    def forward(
        self,
        outputs: FocusDETROutput,
        targets: Sequence[Mapping[str, Tensor]],
        *,
        num_boxes: float | None = None,
        num_images: int | None = None,
    ) -> dict[str, Tensor]:
        """Compute every loss, unweighted.

        Args:
            outputs: raw model outputs.
            targets: per image ``{"labels": int64 [n], "boxes": [n, 4] cxcywh normalised}``
                (see :func:`prepare_targets`).
            num_boxes: normaliser of the box and class losses; default
                :func:`average_num_boxes` of ``targets``. Gradient accumulation passes the
                value of the whole optimisation step, so that summing the micro-batch losses
                gives the loss of the full batch.
            num_images: normaliser of the per-image foreground loss (default: this batch's
                size), likewise.

        Returns:
            loss name -> scalar tensor (see the module docstring for the names).
        """
        self._check_targets(outputs, targets)
        if num_boxes is None:
            num_boxes = average_num_boxes(targets, outputs.logits.device)
        num_layers = int(outputs.logits.shape[0])
        losses: dict[str, Tensor] = {}
        for layer in range(num_layers):
            suffix = "" if layer == num_layers - 1 else f"_{layer}"
            layer_losses = self._matched_losses(
                outputs.logits[layer], outputs.boxes[layer], targets, outputs.query_mask, num_boxes
            )
            losses.update({name + suffix: value for name, value in layer_losses.items()})
        proposal_losses = self._matched_losses(
            outputs.proposal_logits, outputs.proposal_boxes, targets, outputs.query_mask, num_boxes
        )
        losses.update({name + "_enc": value for name, value in proposal_losses.items()})
        losses.update(
            self._denoising_losses(
                outputs.denoising, targets, num_boxes, num_layers, outputs.logits.device
            )
        )
        losses[FOREGROUND_LOSS_NAME] = self._foreground_loss(outputs, targets, num_images)
        return losses

    def weighted_total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Sum of ``weight_dict[name] * loss`` over the given losses.

        Raises:
            KeyError: if a loss has no weight in the table (nothing is silently dropped).
        """
        unknown = sorted(name for name in losses if name not in self.weight_dict)
        if unknown:
            raise KeyError(f"losses without a weight in weight_dict: {unknown}")
        if not losses:
            raise ValueError("no losses to sum")
        return sum(self.weight_dict[name] * value for name, value in losses.items())  # type: ignore[return-value]

    def _matched_losses(
        self,
        logits: Tensor,
        boxes: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        query_mask: Tensor | None,
        num_boxes: float,
    ) -> dict[str, Tensor]:
        """Class, L1 and GIoU losses of ``[B, Q, C]`` / ``[B, Q, 4]`` after Hungarian matching."""
        indices = self.matcher(logits, boxes, targets, query_mask)
        return {
            "loss_class": self._class_loss(logits, targets, indices, num_boxes, query_mask),
            **self._box_losses(boxes, targets, indices, num_boxes),
        }

    def _class_loss(
        self,
        logits: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        indices: MatchIndices,
        num_boxes: float,
        query_mask: Tensor | None = None,
    ) -> Tensor:
        """Focal loss of ``[B, Q, C]`` logits: matched queries positive for their target class.

        Queries with ``query_mask`` False contribute zero; the ``* num_queries`` factor keeps
        detrex's numbers (the loss is the sum over valid queries divided by ``num_boxes``).
        """
        batch_index, query_index = _prediction_indices(indices, logits.device)
        matched_labels = _matched_target_values(targets, indices, "labels", logits.device)
        one_hot = torch.zeros_like(logits)
        one_hot[batch_index, query_index, matched_labels] = 1
        loss = sigmoid_focal_loss(logits, one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma)
        if query_mask is not None:
            loss = loss * query_mask[..., None].to(loss.dtype)
        return loss.mean(1).sum() / num_boxes * logits.shape[1]

    def _box_losses(
        self,
        boxes: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        indices: MatchIndices,
        num_boxes: float,
    ) -> dict[str, Tensor]:
        """L1 and ``1 - GIoU`` over matched ``(query, target)`` pairs, divided by ``num_boxes``."""
        batch_index, query_index = _prediction_indices(indices, boxes.device)
        predicted = boxes[batch_index, query_index]
        matched = _matched_target_values(targets, indices, "boxes", boxes.device).to(boxes.dtype)
        loss_bbox = F.l1_loss(predicted, matched, reduction="none").sum() / num_boxes
        giou = elementwise_generalized_box_iou(
            box_cxcywh_to_xyxy(predicted), box_cxcywh_to_xyxy(matched)
        )
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def _denoising_losses(
        self,
        denoising: DenoisingOutput | None,
        targets: Sequence[Mapping[str, Tensor]],
        num_boxes: float,
        num_layers: int,
        device: torch.device,
    ) -> dict[str, Tensor]:
        """Losses of the positive denoising queries against the targets they were built from.

        Without denoising output every ``_dn`` loss is a zero, so that logs stay aligned.
        """
        suffixes = ["_dn"] + [f"_dn_{layer}" for layer in range(num_layers - 1)]
        if denoising is None:
            zero = torch.zeros((), device=device)
            return {name + suffix: zero for suffix in suffixes for name in BASE_LOSS_WEIGHTS}
        indices = _denoising_indices(targets, denoising.num_groups, denoising.group_size)
        normaliser = num_boxes * denoising.num_groups
        dn_layers = int(denoising.logits.shape[0])
        losses: dict[str, Tensor] = {}
        for layer in range(dn_layers):
            suffix = "_dn" if layer == dn_layers - 1 else f"_dn_{layer}"
            logits, boxes = denoising.logits[layer], denoising.boxes[layer]
            losses["loss_class" + suffix] = self._class_loss(logits, targets, indices, normaliser)
            layer_losses = self._box_losses(boxes, targets, indices, normaliser)
            losses.update({name + suffix: value for name, value in layer_losses.items()})
        return losses

    def _foreground_loss(
        self,
        outputs: FocusDETROutput,
        targets: Sequence[Mapping[str, Tensor]],
        num_images: int | None,
    ) -> Tensor:
        """Focal loss of the foreground token scores (``select_loss``)."""
        boxes_xyxy = []
        for target, (height, width) in zip(targets, outputs.image_sizes.tolist()):
            boxes = target["boxes"].to(outputs.foreground_logits.device)
            scale = torch.tensor(
                [width, height, width, height], dtype=boxes.dtype, device=boxes.device
            )
            # Scale then convert, in this order, as detrex does (same float rounding).
            boxes_xyxy.append(box_cxcywh_to_xyxy(boxes * scale))
        labels01 = foreground_targets(outputs.tokens, boxes_xyxy, self.level_ranges)
        return foreground_loss(
            outputs.foreground_logits,
            labels01,
            outputs.tokens.padding_mask,
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            num_images=num_images,
        )

    def _check_targets(
        self, outputs: FocusDETROutput, targets: Sequence[Mapping[str, Tensor]]
    ) -> None:
        batch_size = int(outputs.logits.shape[1])
        if len(targets) != batch_size:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
        labels = [t["labels"] for t in targets if len(t["labels"]) > 0]
        if labels:
            all_labels = torch.cat([label.reshape(-1) for label in labels])
            low, high = int(all_labels.min()), int(all_labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"target labels must lie in [0, {self.num_classes}), got [{low}, {high}]"
                )


def _prediction_indices(indices: MatchIndices, device: torch.device) -> tuple[Tensor, Tensor]:
    """(image index, query index) of every matched pair, both ``[num_matched]`` int64."""
    batch_index = torch.cat(
        [torch.full_like(query, image) for image, (query, _) in enumerate(indices)]
    )
    query_index = torch.cat([query for query, _ in indices])
    return batch_index.to(device), query_index.to(device)


def _matched_target_values(
    targets: Sequence[Mapping[str, Tensor]], indices: MatchIndices, key: str, device: torch.device
) -> Tensor:
    """``targets[b][key][target_index]`` of every matched pair, concatenated over images."""
    return torch.cat(
        [
            target[key].to(device)[target_index.to(device)]
            for target, (_, target_index) in zip(targets, indices)
        ]
    )


def _denoising_indices(
    targets: Sequence[Mapping[str, Tensor]], num_groups: int, group_size: int
) -> MatchIndices:
    """Fixed assignment of the positive denoising queries, group-major as in detrex."""
    indices: MatchIndices = []
    for image_index, target in enumerate(targets):
        num_targets = len(target["labels"])
        if 2 * num_targets > group_size:
            raise ValueError(
                f"image {image_index} has {num_targets} targets but the denoising groups hold "
                f"{group_size // 2}: the denoising queries were built from other targets"
            )
        target_index = torch.arange(num_targets).repeat(num_groups)
        group_offset = torch.arange(num_groups).repeat_interleave(num_targets) * group_size
        indices.append((group_offset + target_index, target_index))
    return indices


def build_criterion(loss: LossConfig, model: ModelConfig) -> SetCriterion:
    """The criterion of a :class:`~focus_detr.config.LossConfig` for a model of ``model``'s
    classes, decoder depth and feature levels (the defaults give detrex's criterion)."""
    matcher = HungarianMatcher(
        loss.match_class_cost,
        loss.match_box_cost,
        loss.match_giou_cost,
        alpha=loss.focal_alpha,
        gamma=loss.focal_gamma,
    )
    weights = default_weight_dict(
        model.num_decoder_layers,
        loss.foreground_weight,
        class_weight=loss.class_weight,
        box_weight=loss.box_weight,
        giou_weight=loss.giou_weight,
    )
    return SetCriterion(
        model.num_classes,
        matcher,
        weight_dict=weights,
        focal_alpha=loss.focal_alpha,
        focal_gamma=loss.focal_gamma,
        level_ranges=loss.level_ranges(model.num_levels),
    )
