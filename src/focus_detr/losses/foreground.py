"""Supervision of the foreground token scores (the paper's Foreground Token Selector).

A token is foreground when its pixel centre lies strictly inside a ground-truth box and the
largest distance from the centre to that box's four sides falls in its level's range (the
FCOS-style scale assignment that Focus-DETR uses): small objects supervise the fine levels,
large objects the coarse ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from focus_detr.config import LossConfig
from focus_detr.losses.focal import sigmoid_focal_loss
from focus_detr.structures import TokenLayout

LevelRanges = Sequence[tuple[float, float]]


def default_level_ranges(num_levels: int) -> tuple[tuple[float, float], ...]:
    """Scale ranges of the default :class:`~focus_detr.config.LossConfig`: ``(-1, 64]``,
    ``(64, 128]``, ``(128, 256]``, ..., the coarsest level unbounded above (detrex's
    ``limit_range`` for 4 levels), so that every object size has a level."""
    return LossConfig().level_ranges(num_levels)


def foreground_targets(
    tokens: TokenLayout,
    boxes_xyxy: Sequence[Tensor],
    level_ranges: LevelRanges | None = None,
) -> Tensor:
    """Binary foreground label of every token.

    The token at grid position ``(x, y)`` of a level with stride ``s`` has its pixel centre at
    ``(x * s + s // 2, y * s + s // 2)`` (integer arithmetic, as detrex's ``coords_fmap2orig``).

    Args:
        tokens: token geometry (``spatial_shapes``, ``strides``, ``padding_mask`` are used).
        boxes_xyxy: per image a ``[n_b, 4]`` tensor of ground-truth boxes in absolute pixels of
            the (unpadded) input image.
        level_ranges: per level the ``(low, high]`` range of the largest centre-to-side
            distance; default :func:`default_level_ranges`.

    Returns:
        ``[B, N]`` tensor of 0/1 in the boxes' floating dtype (float32 for integer boxes), on
        the device of ``tokens.padding_mask``. Padding tokens are labelled like any other token;
        :func:`foreground_loss` ignores them.
    """
    padding_mask = tokens.padding_mask
    batch_size, num_tokens = padding_mask.shape
    num_levels = int(tokens.spatial_shapes.shape[0])
    ranges = default_level_ranges(num_levels) if level_ranges is None else tuple(level_ranges)
    _check_targets_inputs(tokens, boxes_xyxy, ranges, batch_size, num_levels)
    dtype = _floating_dtype(boxes_xyxy)
    device = padding_mask.device
    boxes, box_valid = _pad_boxes(boxes_xyxy, dtype, device)
    if boxes.shape[1] == 0:
        return torch.zeros(batch_size, num_tokens, dtype=dtype, device=device)
    per_level = []
    for level, (height, width) in enumerate(tokens.spatial_shapes.tolist()):
        centres = _token_centres(height, width, tokens.strides[level], dtype, device)
        per_level.append(_level_foreground(centres, boxes, box_valid, ranges[level]))
    targets = torch.cat(per_level, dim=1)
    if targets.shape[1] != num_tokens:
        raise ValueError(
            f"spatial_shapes describe {targets.shape[1]} tokens but padding_mask has {num_tokens}"
        )
    return targets.to(dtype)


def foreground_loss(
    foreground_logits: Tensor,
    targets: Tensor,
    padding_mask: Tensor,
    alpha: float = LossConfig.focal_alpha,
    gamma: float = LossConfig.focal_gamma,
    num_images: int | None = None,
) -> Tensor:
    """Focal loss of the foreground scores, normalised per image by its foreground count.

    Per image: focal loss summed over its non-padding tokens, divided by its number of
    foreground non-padding tokens (at least 1); then the mean over images.

    Deviation from detrex: detrex sums the loss over padding tokens too. Padding tokens carry no
    image content and are never selected by the encoder, so they are excluded here (the two
    agree on unpadded images).

    Args:
        foreground_logits: ``[B, N]`` foreground score logits.
        targets: ``[B, N]`` 0/1 labels from :func:`foreground_targets`.
        padding_mask: ``[B, N]`` bool, True on padding tokens.
        alpha: focal weight of the foreground tokens.
        gamma: focal focusing exponent.
        num_images: the per-image losses are summed and divided by this (default ``B``: the
            mean over the batch).

    Returns:
        scalar loss.
    """
    if foreground_logits.shape != targets.shape or padding_mask.shape != targets.shape:
        raise ValueError(
            "foreground_logits, targets and padding_mask must have the same [B, N] shape, got "
            f"{tuple(foreground_logits.shape)}, {tuple(targets.shape)}, "
            f"{tuple(padding_mask.shape)}"
        )
    valid = ~padding_mask
    # Zeroing the padding logits first keeps a NaN there from reaching the gradient.
    logits = torch.where(valid, foreground_logits, torch.zeros_like(foreground_logits))
    targets = targets.to(logits.dtype) * valid
    loss = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    num_foreground = targets.sum(dim=1).clamp(min=1)
    per_image = loss.sum(dim=1) / num_foreground
    return per_image.sum() / (num_images if num_images is not None else per_image.shape[0])


def _level_foreground(
    centres: Tensor, boxes: Tensor, box_valid: Tensor, level_range: tuple[float, float]
) -> Tensor:
    """``[B, hw]`` bool: token centres ``[hw, 2]`` inside a box ``[B, M, 4]`` of this scale."""
    centre_x = centres[None, :, None, 0]
    centre_y = centres[None, :, None, 1]
    left = centre_x - boxes[:, None, :, 0]
    top = centre_y - boxes[:, None, :, 1]
    right = boxes[:, None, :, 2] - centre_x
    bottom = boxes[:, None, :, 3] - centre_y
    nearest_side = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom))
    farthest_side = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))
    low, high = level_range
    positive = (nearest_side > 0) & (farthest_side > low) & (farthest_side <= high)
    return (positive & box_valid[:, None, :]).any(dim=2)


def _token_centres(height: int, width: int, stride: int, dtype: torch.dtype, device) -> Tensor:
    """``[height * width, 2]`` (x, y) pixel centres of a level's tokens, row-major."""
    xs = torch.arange(width, device=device) * stride + stride // 2
    ys = torch.arange(height, device=device) * stride + stride // 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1).to(dtype)


def _pad_boxes(
    boxes_xyxy: Sequence[Tensor], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Stack per-image boxes into ``[B, M, 4]`` (zero filler) and a ``[B, M]`` validity mask."""
    max_boxes = max((int(b.shape[0]) for b in boxes_xyxy), default=0)
    padded = torch.zeros(len(boxes_xyxy), max_boxes, 4, dtype=dtype, device=device)
    valid = torch.zeros(len(boxes_xyxy), max_boxes, dtype=torch.bool, device=device)
    for image_index, image_boxes in enumerate(boxes_xyxy):
        count = int(image_boxes.shape[0])
        padded[image_index, :count] = image_boxes.to(device=device, dtype=dtype)
        valid[image_index, :count] = True
    return padded, valid


def _floating_dtype(boxes_xyxy: Sequence[Tensor]) -> torch.dtype:
    for boxes in boxes_xyxy:
        if boxes.is_floating_point():
            return boxes.dtype
    return torch.float32


def _check_targets_inputs(
    tokens: TokenLayout,
    boxes_xyxy: Sequence[Tensor],
    ranges: tuple[tuple[float, float], ...],
    batch_size: int,
    num_levels: int,
) -> None:
    if len(boxes_xyxy) != batch_size:
        raise ValueError(f"got boxes for {len(boxes_xyxy)} images, the tokens have {batch_size}")
    if len(tokens.strides) != num_levels:
        raise ValueError(f"{len(tokens.strides)} strides for {num_levels} levels")
    if len(ranges) < num_levels:
        raise ValueError(f"{len(ranges)} level ranges for {num_levels} levels")
    for image_index, boxes in enumerate(boxes_xyxy):
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes of image {image_index} must be [n, 4], got {boxes.shape}")
