"""Multi-scale deformable attention: the one entry point that picks an implementation.

Given per-level value maps flattened into one sequence, every query samples ``num_points``
locations on each of ``num_levels`` maps per head (bilinear, zero outside the map,
``align_corners=False`` pixel convention) and returns the attention-weighted sum.

Shapes (shared by every implementation):

- ``value``: ``[batch, num_values, num_heads, head_dim]``, levels concatenated in order;
- ``spatial_shapes``: ``[num_levels, 2]`` integer (height, width) of each level;
- ``level_start_index``: ``[num_levels]`` offset of each level in ``num_values``;
- ``sampling_locations``: ``[batch, num_queries, num_heads, num_levels, num_points, 2]``,
  (x, y) normalised to [0, 1] over each level's map;
- ``attention_weights``: ``[batch, num_queries, num_heads, num_levels, num_points]``;
- returns ``[batch, num_queries, num_heads * head_dim]``.

Implementations (none of them imports this module):

- ``gather`` (:mod:`~focus_detr.ops.deformable_attention_torch`): the default on CPU;
- ``grid_sample`` (same module): the per-level ``F.grid_sample`` reference;
- ``triton`` (:mod:`~focus_detr.ops.deformable_attention_triton`): fused kernels, the default
  for CUDA tensors when Triton is importable. float64 always runs the gather path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from focus_detr.ops.deformable_attention_torch import (
    deformable_attention_gather,
    deformable_attention_grid_sample,
)

__all__ = ["BACKENDS", "multi_scale_deformable_attention", "triton_available"]

BACKENDS = ("auto", "gather", "grid_sample", "triton")


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    backend: str = "auto",
) -> Tensor:
    """Deformable attention with the implementation named by ``backend`` (see :data:`BACKENDS`).

    ``auto`` picks the Triton kernel for CUDA tensors when Triton is available, else the
    gather path. The Triton kernels do not take float64: float64 inputs run the gather path
    whatever the backend asked for (the float64 parity checks rely on it).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown deformable attention backend {backend!r}; use one of {BACKENDS}")
    if backend == "auto":
        backend = "triton" if value.is_cuda and triton_available() else "gather"
    if backend == "triton" and torch.float64 in (value.dtype, sampling_locations.dtype):
        backend = "gather"
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


def triton_available() -> bool:
    """True when the Triton kernels can run here (Triton importable; CUDA or its interpreter)."""
    try:
        from focus_detr.ops.deformable_attention_triton import is_available
    except ImportError:
        return False
    return is_available()
