"""Sine position embeddings: of feature-map positions (encoder) and of boxes (decoder queries)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _frequencies(
    num_feats: int, temperature: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    dim_t = torch.arange(num_feats, dtype=dtype, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(angles: Tensor) -> Tensor:
    """``[..., F]`` angles -> ``[..., F]`` with sin on even and cos on odd channels."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_position_embedding(
    valid_sizes: Tensor,
    height: int,
    width: int,
    *,
    num_feats: int = 128,
    temperature: float = 10000.0,
    offset: float = -0.5,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DETR's normalised sine embedding of a ``height x width`` map -> ``[B, 2*num_feats, H, W]``.

    Positions are counted from 1 and normalised by each image's valid extent
    (``(pos + offset) / (extent + 1e-6) * 2*pi``), exactly what DETR's cumulative sum over the
    padding mask computes; channels are the y embedding then the x embedding. Values in the
    padding are meaningless.

    Args:
        valid_sizes: ``[B, 2]`` valid (height, width) of each image at this resolution.
    """
    pos_y, pos_x = sine_position_factors(
        valid_sizes, height, width, num_feats=num_feats, temperature=temperature, offset=offset,
        dtype=dtype,
    )  # fmt: skip
    return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2)


def sine_position_factors(
    valid_sizes: Tensor,
    height: int,
    width: int,
    *,
    num_feats: int,
    temperature: float,
    offset: float,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """The two halves of :func:`sine_position_embedding` as ``[B, H, W, num_feats]``
    expanded views: the y embedding of each row and the x embedding of each column."""
    device = valid_sizes.device
    scale = 2 * math.pi
    eps = 1e-6
    rows = torch.arange(1, height + 1, dtype=dtype, device=device)
    cols = torch.arange(1, width + 1, dtype=dtype, device=device)
    extent_h = valid_sizes[:, 0].to(dtype)[:, None]
    extent_w = valid_sizes[:, 1].to(dtype)[:, None]
    y_embed = (rows[None] + offset) / (extent_h + eps) * scale  # [B, H]
    x_embed = (cols[None] + offset) / (extent_w + eps) * scale  # [B, W]
    dim_t = _frequencies(num_feats, temperature, dtype, device)
    pos_y = _interleave_sin_cos(y_embed[:, :, None] / dim_t)  # [B, H, F]
    pos_x = _interleave_sin_cos(x_embed[:, :, None] / dim_t)  # [B, W, F]
    batch = valid_sizes.shape[0]
    pos_y = pos_y[:, :, None, :].expand(batch, height, width, num_feats)
    pos_x = pos_x[:, None, :, :].expand(batch, height, width, num_feats)
    return pos_y, pos_x


def box_sine_embedding(boxes: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of ``[..., 4]`` (cx, cy, w, h) boxes -> ``[..., 4*num_feats]``.

    Each coordinate is scaled by 2*pi and embedded like a position; the order of the four
    embeddings is (cy, cx, w, h) (detrex's ``get_sine_pos_embed`` with ``exchange_xy``).
    """
    dim_t = _frequencies(num_feats, temperature, boxes.dtype, boxes.device)
    angles = boxes[..., None] * (2 * math.pi) / dim_t  # [..., 4, F]
    embedded = _interleave_sin_cos(angles)
    cx, cy, w, h = embedded.unbind(-2)
    return torch.cat((cy, cx, w, h), dim=-1)
