"""Multi-scale deformable attention core (Zhu et al., Deformable DETR, eq. 3).

Given per-level value maps flattened into one sequence, every query samples ``num_points``
locations on each of ``num_levels`` maps per head (bilinear, zero outside the map,
``align_corners=False`` pixel convention) and returns the attention-weighted sum.

Shapes (shared by every implementation here):

- ``value``: ``[batch, num_values, num_heads, head_dim]``, levels concatenated in order;
- ``spatial_shapes``: ``[num_levels, 2]`` integer (height, width) of each level;
- ``level_start_index``: ``[num_levels]`` offset of each level in ``num_values``;
- ``sampling_locations``: ``[batch, num_queries, num_heads, num_levels, num_points, 2]``,
  (x, y) normalised to [0, 1] over each level's map;
- ``attention_weights``: ``[batch, num_queries, num_heads, num_levels, num_points]``;
- returns ``[batch, num_queries, num_heads * head_dim]``.

Implementations:

- :func:`deformable_attention_gather` (default on CPU): one fused gather-and-weighted-sum
  (``F.embedding_bag``) over all heads, levels, points and bilinear corners. It reads each
  sampled row of ``head_dim`` contiguous values once and never builds per-level images.
- :func:`deformable_attention_grid_sample`: the classic per-level ``F.grid_sample``
  formulation (detrex's ``multi_scale_deformable_attn_pytorch``), kept as the reference the
  fast paths are tested against.
- a fused Triton kernel for CUDA (:mod:`focus_detr.ops.deformable_attention_triton`), used
  automatically on GPU when Triton is importable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "deformable_attention_gather",
    "deformable_attention_grid_sample",
    "multi_scale_deformable_attention",
]

_BACKENDS = ("auto", "gather", "grid_sample", "triton")


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    backend: str = "auto",
) -> Tensor:
    """Dispatch to an implementation; ``backend`` is one of ``auto|gather|grid_sample|triton``.

    ``auto`` picks the Triton kernel for CUDA tensors when Triton is available, else the
    gather path.
    """
    if backend not in _BACKENDS:
        raise ValueError(
            f"unknown deformable attention backend {backend!r}; use one of {_BACKENDS}"
        )
    if backend == "auto":
        backend = "triton" if value.is_cuda and _triton_available() else "gather"
    if backend == "triton":
        from focus_detr.ops.deformable_attention_triton import deformable_attention_triton

        return deformable_attention_triton(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    if backend == "grid_sample":
        return deformable_attention_grid_sample(
            value, spatial_shapes, sampling_locations, attention_weights
        )
    return deformable_attention_gather(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


def _triton_available() -> bool:
    try:
        from focus_detr.ops.deformable_attention_triton import is_available
    except ImportError:
        return False
    return is_available()


def bilinear_corner_indices_and_weights(
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_values: int,
) -> tuple[Tensor, Tensor]:
    """Flat value-row indices and weights of the 4 bilinear corners of every sample.

    Returns two ``[batch * num_queries * num_heads, num_levels * num_points * 4]`` tensors:
    rows index ``value.reshape(batch * num_values * num_heads, head_dim)``; a corner outside
    its level's map gets weight 0 (zero padding) and a harmless in-range index.
    """
    batch, num_queries, num_heads, num_levels, _, _ = sampling_locations.shape
    dtype = sampling_locations.dtype
    heights = spatial_shapes[:, 0].to(dtype).view(1, 1, 1, num_levels, 1)
    widths = spatial_shapes[:, 1].to(dtype).view(1, 1, 1, num_levels, 1)
    # Pixel coordinates with the align_corners=False convention; clamping keeps far-away
    # samples (all corners outside, weight 0) from overflowing the integer conversion.
    x = (sampling_locations[..., 0] * widths - 0.5).clamp(min=-2.0).minimum(widths + 1)
    y = (sampling_locations[..., 1] * heights - 0.5).clamp(min=-2.0).minimum(heights + 1)
    x0 = x.floor()
    y0 = y.floor()
    fx = x - x0
    fy = y - y0
    # corners ordered (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)
    corner_x = torch.stack((x0, x0 + 1, x0, x0 + 1), dim=-1)
    corner_y = torch.stack((y0, y0, y0 + 1, y0 + 1), dim=-1)
    wx = torch.stack((1 - fx, fx, 1 - fx, fx), dim=-1)
    wy = torch.stack((1 - fy, 1 - fy, fy, fy), dim=-1)
    w_l = widths.unsqueeze(-1)
    h_l = heights.unsqueeze(-1)
    inside = (corner_x >= 0) & (corner_x < w_l) & (corner_y >= 0) & (corner_y < h_l)
    weights = wx * wy * attention_weights.unsqueeze(-1) * inside

    cx = corner_x.long().clamp(min=0)
    cy = corner_y.long().clamp(min=0)
    starts = level_start_index.view(1, 1, 1, num_levels, 1, 1)
    token = starts + cy * spatial_shapes[:, 1].view(1, 1, 1, num_levels, 1, 1) + cx
    token = torch.where(inside, token, torch.zeros_like(token))
    batch_offset = torch.arange(batch, device=token.device).view(batch, 1, 1, 1, 1, 1)
    head = torch.arange(num_heads, device=token.device).view(1, 1, num_heads, 1, 1, 1)
    rows = (batch_offset * num_values + token) * num_heads + head
    bags = batch * num_queries * num_heads
    return rows.reshape(bags, -1), weights.reshape(bags, -1)


def deformable_attention_gather(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Deformable attention as one weighted gather (``F.embedding_bag``); differentiable."""
    batch, num_values, num_heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    if batch * num_queries == 0:
        return value.new_zeros(batch, num_queries, num_heads * head_dim)
    rows, weights = bilinear_corner_indices_and_weights(
        spatial_shapes, level_start_index, sampling_locations, attention_weights, num_values
    )
    table = value.reshape(batch * num_values * num_heads, head_dim)
    out = F.embedding_bag(rows, table, per_sample_weights=weights.to(table.dtype), mode="sum")
    return out.view(batch, num_queries, num_heads * head_dim)


def deformable_attention_grid_sample(
    value: Tensor,
    spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Reference implementation: one ``F.grid_sample`` per level (as in Deformable DETR)."""
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_per_level = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        # [batch, h*w, heads, dim] -> [batch * heads, dim, h, w]
        level_value = (
            value_per_level[level]
            .flatten(2)
            .transpose(1, 2)
            .reshape(batch * num_heads, head_dim, height, width)
        )
        # [batch, queries, heads, points, 2] -> [batch * heads, queries, points, 2]
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(
                level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )
    # [batch, queries, heads, levels, points] -> [batch * heads, 1, queries, levels * points]
    weights = attention_weights.transpose(1, 2).reshape(
        batch * num_heads, 1, num_queries, num_levels * num_points
    )
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()
