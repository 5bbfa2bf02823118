"""Training losses: Hungarian matcher, set criterion, foreground token supervision."""

from __future__ import annotations

from focus_detr.losses.criterion import (
    BASE_LOSS_WEIGHTS,
    FOREGROUND_LOSS_NAME,
    SetCriterion,
    average_num_boxes,
    build_criterion,
    default_weight_dict,
    prepare_targets,
)
from focus_detr.losses.focal import sigmoid_focal_loss
from focus_detr.losses.foreground import (
    default_level_ranges,
    foreground_loss,
    foreground_targets,
)
from focus_detr.losses.matcher import HungarianMatcher, MatchIndices

__all__ = [
    "BASE_LOSS_WEIGHTS",
    "FOREGROUND_LOSS_NAME",
    "HungarianMatcher",
    "MatchIndices",
    "SetCriterion",
    "average_num_boxes",
    "build_criterion",
    "default_level_ranges",
    "default_weight_dict",
    "foreground_loss",
    "foreground_targets",
    "prepare_targets",
    "sigmoid_focal_loss",
]
