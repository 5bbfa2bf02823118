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
- ``grid_sample`` (same module): the per-level ``F.grid_sample`` reference, and the default
  under export (ONNX ``GridSample``; see :data:`EXPORT_BACKEND`);
- ``corner_gather`` (same module): ``torch.gather`` per level and bilinear corner, standard
  ONNX ops only;
- ``triton`` (:mod:`~focus_detr.ops.deformable_attention_triton`): fused kernels, the default
  for CUDA tensors when Triton is importable. float64 always runs the gather path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from focus_detr.ops.deformable_attention_torch import (
    deformable_attention_corner_gather,
    deformable_attention_gather,
    deformable_attention_grid_sample,
)

__all__ = [
    "BACKENDS",
    "EXPORTABLE_BACKENDS",
    "EXPORT_BACKEND",
    "multi_scale_deformable_attention",
    "resolve_backend",
    "triton_available",
]

BACKENDS = ("auto", "gather", "grid_sample", "corner_gather", "triton")

#: Backends that ``torch.export`` (and so the ONNX exporter) can trace.
EXPORTABLE_BACKENDS = ("grid_sample", "corner_gather")

#: What the other backends become under export: ONNX Runtime runs one ``GridSample`` per level
#: faster than the gathers (docs/deploy.md has the measurements).
EXPORT_BACKEND = "grid_sample"


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    backend: str = "auto",
    *,
    level_shapes: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """Deformable attention with the implementation named by ``backend`` (see :data:`BACKENDS`).

    ``auto`` picks the Triton kernel for CUDA tensors when Triton is available, else the
    gather path. The Triton kernels do not take float64: float64 inputs run the gather path
    whatever the backend asked for (the float64 parity checks rely on it). Under
    ``torch.export`` a backend outside :data:`EXPORTABLE_BACKENDS` becomes
    :data:`EXPORT_BACKEND`. ``level_shapes`` (the values of ``spatial_shapes`` as Python ints)
    spares a device-to-host copy; under export the ``grid_sample`` backend needs it.
    """
    backend = resolve_backend(backend, value, sampling_locations)
    if backend == "triton":
        from focus_detr.ops.deformable_attention_triton import deformable_attention_triton

        return deformable_attention_triton(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    if backend == "grid_sample":
        return deformable_attention_grid_sample(
            value, spatial_shapes, sampling_locations, attention_weights, level_shapes=level_shapes
        )
    if backend == "corner_gather":
        return deformable_attention_corner_gather(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return deformable_attention_gather(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


def resolve_backend(backend: str, value: Tensor, sampling_locations: Tensor | None = None) -> str:
    """The implementation :func:`multi_scale_deformable_attention` runs for ``backend`` on
    these tensors (see its docstring for the rules)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown deformable attention backend {backend!r}; use one of {BACKENDS}")
    if torch.compiler.is_exporting() and backend not in EXPORTABLE_BACKENDS:
        backend = EXPORT_BACKEND
    if backend == "auto":
        backend = "triton" if value.is_cuda and triton_available() else "gather"
    dtypes = (
        [value.dtype] if sampling_locations is None else [value.dtype, sampling_locations.dtype]
    )
    if backend == "triton" and torch.float64 in dtypes:
        backend = "gather"
    return backend


def triton_available() -> bool:
    """True when the Triton kernels can run here (Triton importable; CUDA or its interpreter)."""
    try:
        from focus_detr.ops.deformable_attention_triton import is_available
    except ImportError:
        return False
    return is_available()
