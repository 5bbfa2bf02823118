"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", 2017).

Written on logits with ``binary_cross_entropy_with_logits`` so that saturated logits give a
finite loss and gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from focus_detr.config import LossConfig


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = LossConfig.focal_alpha,
    gamma: float = LossConfig.focal_gamma,
) -> Tensor:
    """Element-wise focal loss, no reduction.

    ``loss = alpha_t * (1 - p_t) ** gamma * BCE(logits, targets)`` with ``p = sigmoid(logits)``,
    ``p_t = p`` on positives and ``1 - p`` on negatives, ``alpha_t = alpha`` on positives and
    ``1 - alpha`` on negatives (``alpha < 0`` disables the weighting, as in detrex).

    Args:
        logits: ``[...]`` raw scores.
        targets: ``[...]`` same shape, 1 for positive and 0 for negative (soft values allowed).
        alpha: weight of the positives.
        gamma: focusing exponent.

    Returns:
        ``[...]`` the loss of every element, in float32 for half-precision inputs.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape, got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    targets = targets.to(logits.dtype)
    probs = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = cross_entropy * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss
