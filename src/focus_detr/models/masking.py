"""Padding bookkeeping that makes batched inference equal to one-image inference.

A padded batch gives every image the result it gets alone when (a) every spatial operation
reads zeros (or nothing) where the lone image would read its own zero padding, (b) statistics
are taken over each image's valid area, and (c) feature-map validity follows the network's own
arithmetic: every stride-2 stage of the backbones maps a valid extent ``n`` to ``ceil(n / 2)``,
so at stride ``s`` an image of ``n`` pixels covers ``ceil(n / s)`` positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from focus_detr.models.export_mode import is_exporting


def valid_sizes_at_stride(image_sizes: Tensor, stride: int) -> Tensor:
    """``[B, 2]`` valid (height, width) at ``stride`` for images of ``image_sizes`` pixels."""
    return torch.div(image_sizes + (stride - 1), stride, rounding_mode="floor")


def optional_valid_sizes(image_sizes: Tensor | None, stride: int) -> Tensor | None:
    """:func:`valid_sizes_at_stride`, passing ``None`` (no padding anywhere) through."""
    return None if image_sizes is None else valid_sizes_at_stride(image_sizes, stride)


def padding_mask_from_sizes(valid_sizes: Tensor, height: int, width: int) -> Tensor:
    """``[B, height, width]`` bool, True outside each image's ``[h, w]`` valid top-left area."""
    rows = torch.arange(height, device=valid_sizes.device)
    cols = torch.arange(width, device=valid_sizes.device)
    outside_rows = rows[None, :, None] >= valid_sizes[:, 0, None, None]
    outside_cols = cols[None, None, :] >= valid_sizes[:, 1, None, None]
    return outside_rows | outside_cols


def needs_masking(valid_sizes: Tensor | None, height: int, width: int) -> bool:
    """False when no image of the batch has padding at this resolution (fast path).

    Always True under export when sizes are given: the graph cannot know the batch's sizes.
    """
    if valid_sizes is None:
        return False
    if is_exporting():
        return True
    return bool(((valid_sizes[:, 0] < height) | (valid_sizes[:, 1] < width)).any())


def zero_padding(features: Tensor, valid_sizes: Tensor | None) -> Tensor:
    """Zero ``[B, C, H, W]`` features outside each image's valid area (no-op without padding)."""
    height, width = features.shape[-2:]
    if not needs_masking(valid_sizes, height, width):
        return features
    assert valid_sizes is not None
    keep = ~padding_mask_from_sizes(valid_sizes, height, width)
    return features * keep[:, None].to(features.dtype)


def masked_group_norm(
    features: Tensor, norm: torch.nn.GroupNorm, valid_sizes: Tensor | None
) -> Tensor:
    """GroupNorm whose statistics cover only each image's valid area.

    Identical to ``norm(features)`` when nothing is padded; padded positions of the result are 0.
    """
    batch, channels, height, width = features.shape
    if not needs_masking(valid_sizes, height, width):
        return norm(features)
    assert valid_sizes is not None
    groups = norm.num_groups
    keep_map = (~padding_mask_from_sizes(valid_sizes, height, width)).to(features.dtype)
    keep_map = keep_map[:, None]  # [B, 1, H, W]
    keep = keep_map[:, :, None]  # [B, 1, 1, H, W]
    grouped = features.view(batch, groups, channels // groups, height, width)
    count = keep.sum(dim=(2, 3, 4), keepdim=True) * (channels // groups)
    mean = (grouped * keep).sum(dim=(2, 3, 4), keepdim=True) / count
    centred = (grouped - mean) * keep
    var = (centred * centred).sum(dim=(2, 3, 4), keepdim=True) / count
    normed = (centred * torch.rsqrt(var + norm.eps)).view(batch, channels, height, width)
    if norm.affine:
        normed = normed * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    return normed * keep_map
