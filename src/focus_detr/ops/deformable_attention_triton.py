"""Fused multi-scale deformable attention in Triton (forward and backward).

Computes exactly the function of :func:`~focus_detr.ops.deformable_attention_torch.
deformable_attention_gather` (bilinear sampling, zero outside each map, ``align_corners=False``
pixel convention, attention-weighted sum; shapes documented in
:mod:`focus_detr.ops.deformable_attention_dispatch`) with one kernel launch per direction.

One program handles one (head, block of ``block_queries`` queries, batch element): for every
level and point it loads the sampling location and attention weight of each query, then the
``head_dim`` contiguous channels of the four bilinear corners, accumulating in float32.

The backward kernel recomputes the corners and returns, for every sample, the gradients of the
attention weight and of the (x, y) location, which each program owns; ``grad_value`` is
scattered with atomic adds into a float32 buffer (cast to the value dtype at the end), so it is
not bit-wise deterministic from run to run.

float32, bfloat16 and float16 run in the kernels; float64 is refused (the dispatcher sends it
to the PyTorch gather path). The kernels run on CUDA tensors, or on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1`` set before this module is imported), which is how the tests
check them on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    triton = None
    tl = None

__all__ = ["deformable_attention_triton", "is_available"]

MAX_HEAD_DIM = 128
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Launch configuration, chosen from the compiled code for sm_90 (no GPU was at hand to time
# it): float32 elements of a program's [block_queries, block_dim] tile (head_dim 32 -> 32
# queries; about 62 / 96 registers per thread forward / backward, no spills) and the grid size
# under which query blocks shrink.
_TILE_ELEMENTS = 1024
_NUM_WARPS = 4
_MIN_PROGRAMS = 1024


def _interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available() -> bool:
    """True when Triton is importable and the kernels can run (CUDA present, or interpreter)."""
    if triton is None:
        return False
    return torch.cuda.is_available() or _interpreter_enabled()


def _jit(fn: Any) -> Any:
    return triton.jit(fn) if triton is not None else fn


@_jit
def _program_rows(num_queries, num_heads, block_queries, block_dim, head_dim):
    """This program's head, batch, ``[block_queries]`` query rows and ``[block_dim]`` channels.

    Query rows index the ``(batch, query, head)`` rows of the locations, weights and output.
    """
    head = tl.program_id(0)
    batch = tl.program_id(2).to(tl.int64)
    queries = tl.program_id(1) * block_queries + tl.arange(0, block_queries)
    query_mask = queries < num_queries
    channels = tl.arange(0, block_dim)
    query_rows = (batch * num_queries + queries) * num_heads + head
    return head, batch, query_rows, query_mask, channels, channels < head_dim


@_jit
def _level_geometry(spatial_shapes_ptr, level_start_ptr, level):
    """Height, width and first flat token (int32 scalars) of one level."""
    height = tl.load(spatial_shapes_ptr + 2 * level).to(tl.int32)
    width = tl.load(spatial_shapes_ptr + 2 * level + 1).to(tl.int32)
    return height, width, tl.load(level_start_ptr + level).to(tl.int32)


@_jit
def _load_sample(locations_ptr, weights_ptr, sample, query_mask, width, height):
    """Attention weight, floor corner (int32) and fractions of one sample per query.

    ``sample`` is the ``[block_queries]`` flat index into ``[..., num_levels, num_points]``.
    Far-away samples are clamped to [-2, size + 1] so the integer conversion cannot overflow;
    all their corners are outside the map either way.
    """
    attn = tl.load(weights_ptr + sample, mask=query_mask, other=0.0).to(tl.float32)
    loc_x = tl.load(locations_ptr + 2 * sample, mask=query_mask, other=0.0).to(tl.float32)
    loc_y = tl.load(locations_ptr + 2 * sample + 1, mask=query_mask, other=0.0).to(tl.float32)
    x = tl.minimum(tl.maximum(loc_x * width.to(tl.float32) - 0.5, -2.0), width + 1.0)
    y = tl.minimum(tl.maximum(loc_y * height.to(tl.float32) - 0.5, -2.0), height + 1.0)
    x0 = tl.floor(x)
    y0 = tl.floor(y)
    return attn, x0.to(tl.int32), y0.to(tl.int32), x - x0, y - y0


@_jit
def _corner(
    x0, y0, fx, fy, width, height, level_start, batch, head, num_values, query_mask, channels,
    channel_mask, dx: tl.constexpr, dy: tl.constexpr, num_heads: tl.constexpr,
    head_dim: tl.constexpr,
):  # fmt: skip
    """Corner ``(x0 + dx, y0 + dy)``: value offsets and mask ``[block_queries, block_dim]``,
    and bilinear weight factors ``wx, wy`` ``[block_queries]``.

    The mask is False for corners outside the map (zero padding), padded queries and padded
    channels; the ``token < num_values`` guard only keeps inconsistent ``spatial_shapes`` from
    reading out of bounds.
    """
    corner_x = x0 + dx
    corner_y = y0 + dy
    inside = (corner_x >= 0) & (corner_x < width) & (corner_y >= 0) & (corner_y < height)
    token = level_start + corner_y * width + corner_x
    valid = inside & query_mask & (token < num_values)
    row = (batch * num_values + tl.where(valid, token, 0)) * num_heads + head
    offsets = row[:, None] * head_dim + channels[None, :]
    wx = fx if dx == 1 else 1.0 - fx
    wy = fy if dy == 1 else 1.0 - fy
    return offsets, valid[:, None] & channel_mask[None, :], wx, wy


@_jit
def _forward_kernel(
    value_ptr, spatial_shapes_ptr, level_start_ptr, locations_ptr, weights_ptr, output_ptr,
    num_values, num_queries, num_heads: tl.constexpr, head_dim: tl.constexpr,
    num_levels: tl.constexpr, num_points: tl.constexpr, block_queries: tl.constexpr,
    block_dim: tl.constexpr,
):  # fmt: skip
    """``output[b, q, h * head_dim + d] = sum_{l,p,corner} w * value[b, token, h, d]``."""
    head, batch, query_rows, query_mask, channels, channel_mask = _program_rows(
        num_queries, num_heads, block_queries, block_dim, head_dim
    )
    acc = tl.zeros((block_queries, block_dim), dtype=tl.float32)
    for level in range(num_levels):
        height, width, level_start = _level_geometry(spatial_shapes_ptr, level_start_ptr, level)
        for point in range(num_points):
            sample = query_rows * (num_levels * num_points) + (level * num_points + point)
            attn, x0, y0, fx, fy = _load_sample(
                locations_ptr, weights_ptr, sample, query_mask, width, height
            )
            for corner in tl.static_range(4):
                offsets, mask, wx, wy = _corner(
                    x0, y0, fx, fy, width, height, level_start, batch, head, num_values,
                    query_mask, channels, channel_mask, corner % 2, corner // 2, num_heads,
                    head_dim,
                )  # fmt: skip
                corner_value = tl.load(value_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
                acc += (attn * wx * wy)[:, None] * corner_value
    out_offsets = query_rows[:, None] * head_dim + channels[None, :]
    out_mask = query_mask[:, None] & channel_mask[None, :]
    tl.store(output_ptr + out_offsets, acc.to(output_ptr.dtype.element_ty), mask=out_mask)


@_jit
def _backward_kernel(
    value_ptr, spatial_shapes_ptr, level_start_ptr, locations_ptr, weights_ptr, grad_output_ptr,
    grad_value_ptr, grad_locations_ptr, grad_weights_ptr, num_values, num_queries,
    num_heads: tl.constexpr, head_dim: tl.constexpr, num_levels: tl.constexpr,
    num_points: tl.constexpr, block_queries: tl.constexpr, block_dim: tl.constexpr,
    compute_grad_value: tl.constexpr,
):  # fmt: skip
    """Gradients of every sample's weight and (x, y), plus atomic scatter of ``grad_value``.

    With ``dot_c = <grad_output, value[corner c]>`` over the head's channels and bilinear
    weights ``w_c(fx, fy)``: ``d attn = sum_c w_c dot_c``, ``d fx = attn sum_c dw_c/dfx dot_c``
    and ``d loc_x = width * d fx`` (likewise for y), ``d value[corner c] += attn w_c grad_out``.
    """
    head, batch, query_rows, query_mask, channels, channel_mask = _program_rows(
        num_queries, num_heads, block_queries, block_dim, head_dim
    )
    out_offsets = query_rows[:, None] * head_dim + channels[None, :]
    out_mask = query_mask[:, None] & channel_mask[None, :]
    grad_out = tl.load(grad_output_ptr + out_offsets, mask=out_mask, other=0.0).to(tl.float32)
    for level in range(num_levels):
        height, width, level_start = _level_geometry(spatial_shapes_ptr, level_start_ptr, level)
        for point in range(num_points):
            sample = query_rows * (num_levels * num_points) + (level * num_points + point)
            attn, x0, y0, fx, fy = _load_sample(
                locations_ptr, weights_ptr, sample, query_mask, width, height
            )
            grad_attn = tl.zeros_like(fx)
            grad_fx = tl.zeros_like(fx)
            grad_fy = tl.zeros_like(fx)
            for corner in tl.static_range(4):
                offsets, mask, wx, wy = _corner(
                    x0, y0, fx, fy, width, height, level_start, batch, head, num_values,
                    query_mask, channels, channel_mask, corner % 2, corner // 2, num_heads,
                    head_dim,
                )  # fmt: skip
                corner_value = tl.load(value_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
                dot = tl.sum(grad_out * corner_value, axis=1)
                grad_attn += wx * wy * dot
                # d wx / d fx is +1 for the right corners, -1 for the left ones (same for y)
                grad_fx += (wy * dot) if corner % 2 == 1 else -(wy * dot)
                grad_fy += (wx * dot) if corner // 2 == 1 else -(wx * dot)
                if compute_grad_value:
                    contribution = (attn * wx * wy)[:, None] * grad_out
                    tl.atomic_add(grad_value_ptr + offsets, contribution, mask=mask, sem="relaxed")
            weight_dtype = grad_weights_ptr.dtype.element_ty
            location_dtype = grad_locations_ptr.dtype.element_ty
            grad_x = attn * grad_fx * width.to(tl.float32)
            grad_y = attn * grad_fy * height.to(tl.float32)
            tl.store(grad_weights_ptr + sample, grad_attn.to(weight_dtype), mask=query_mask)
            tl.store(grad_locations_ptr + 2 * sample, grad_x.to(location_dtype), mask=query_mask)
            tl.store(
                grad_locations_ptr + 2 * sample + 1, grad_y.to(location_dtype), mask=query_mask
            )


def _launch_meta(
    value: Tensor, sampling_locations: Tensor
) -> tuple[tuple[int, int, int], dict[str, int]]:
    """Grid ``(heads, query blocks, batch)`` and constexpr arguments of either kernel.

    A program holds ``block_queries x block_dim`` float32 tiles of about ``_TILE_ELEMENTS``
    (register pressure); the block shrinks (down to 16) while the grid would have fewer than
    ``_MIN_PROGRAMS`` programs, so the 900-query decoder still fills the GPU.
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    block_dim = triton.next_power_of_2(head_dim)
    block_queries = min(128, max(16, _TILE_ELEMENTS // block_dim))
    while (
        block_queries > 16
        and num_heads * batch * triton.cdiv(num_queries, block_queries) < _MIN_PROGRAMS
    ):
        block_queries //= 2
    grid = (num_heads, triton.cdiv(num_queries, block_queries), batch)
    meta = {
        "num_heads": num_heads,
        "head_dim": head_dim,
        "num_levels": num_levels,
        "num_points": num_points,
        "block_queries": block_queries,
        "block_dim": block_dim,
    }
    return grid, meta


def _device_of(tensor: Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s GPU current: Triton launches on the current CUDA device."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


class _DeformableAttentionFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels (inputs already validated and contiguous)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
    ) -> Tensor:
        batch, num_values, num_heads, head_dim = value.shape
        num_queries = sampling_locations.shape[1]
        output = value.new_empty(batch, num_queries, num_heads * head_dim)
        if output.numel() > 0:
            grid, meta = _launch_meta(value, sampling_locations)
            with _device_of(value):
                _forward_kernel[grid](
                    value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights, output, num_values, num_queries,
                    num_warps=_NUM_WARPS, enable_fp_fusion=True, **meta,
                )  # fmt: skip
        ctx.save_for_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
            ctx.saved_tensors
        )
        need_value, _, _, need_locations, need_weights = ctx.needs_input_grad
        num_values = value.shape[1]
        num_queries = sampling_locations.shape[1]
        # float32 accumulator of the atomic adds (a 1-element placeholder when not needed)
        grad_value_shape = value.shape if need_value else (1,)
        grad_value_fp32 = torch.zeros(grad_value_shape, dtype=torch.float32, device=value.device)
        grad_locations = torch.empty_like(sampling_locations)
        grad_weights = torch.empty_like(attention_weights)
        if grad_output.numel() > 0:
            grid, meta = _launch_meta(value, sampling_locations)
            with _device_of(value):
                _backward_kernel[grid](
                    value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights, grad_output.contiguous(), grad_value_fp32, grad_locations,
                    grad_weights, num_values, num_queries, compute_grad_value=bool(need_value),
                    num_warps=_NUM_WARPS, enable_fp_fusion=True, **meta,
                )  # fmt: skip
        else:
            grad_locations.zero_()
            grad_weights.zero_()
        return (
            grad_value_fp32.to(value.dtype) if need_value else None,
            None,
            None,
            grad_locations if need_locations else None,
            grad_weights if need_weights else None,
        )


def _check_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> None:
    """Raise ``ValueError`` on shapes, dtypes or devices the kernels cannot take."""
    if value.dim() != 4:
        raise ValueError(
            f"value must be [batch, num_values, num_heads, head_dim], got {tuple(value.shape)}"
        )
    batch, _, num_heads, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "sampling_locations must be [batch, num_queries, num_heads, num_levels, num_points, 2]"
            f", got {tuple(sampling_locations.shape)}"
        )
    loc_batch, num_queries, loc_heads, num_levels, num_points, _ = sampling_locations.shape
    if loc_batch != batch or loc_heads != num_heads:
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value "
            f"{tuple(value.shape)} in batch or num_heads"
        )
    expected_weights = (batch, num_queries, num_heads, num_levels, num_points)
    if tuple(attention_weights.shape) != expected_weights:
        raise ValueError(
            f"attention_weights must have shape {expected_weights}, "
            f"got {tuple(attention_weights.shape)}"
        )
    if tuple(spatial_shapes.shape) != (num_levels, 2):
        raise ValueError(
            f"spatial_shapes must be [num_levels={num_levels}, 2], "
            f"got {tuple(spatial_shapes.shape)}"
        )
    if tuple(level_start_index.shape) != (num_levels,):
        raise ValueError(
            f"level_start_index must be [num_levels={num_levels}], "
            f"got {tuple(level_start_index.shape)}"
        )
    if spatial_shapes.is_floating_point() or level_start_index.is_floating_point():
        raise ValueError("spatial_shapes and level_start_index must be integer tensors")
    for name, tensor in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if tensor.dtype not in _KERNEL_DTYPES:
            raise ValueError(
                f"{name} must be float32, bfloat16 or float16, got {tensor.dtype} (float64 runs "
                "the 'gather' backend)"
            )
    devices = {
        t.device
        for t in (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    }
    if len(devices) != 1:
        raise ValueError(f"all deformable attention inputs must be on one device, got {devices}")


def deformable_attention_triton(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention with the fused Triton kernels; differentiable.

    Args:
        value: ``[batch, num_values, num_heads, head_dim]``, ``head_dim <= 128``.
        spatial_shapes: ``[num_levels, 2]`` integer (height, width) of each level.
        level_start_index: ``[num_levels]`` integer offset of each level in ``num_values``.
        sampling_locations: ``[batch, num_queries, num_heads, num_levels, num_points, 2]``,
            (x, y) normalised to [0, 1].
        attention_weights: ``[batch, num_queries, num_heads, num_levels, num_points]``.

    Returns:
        ``[batch, num_queries, num_heads * head_dim]`` in ``value``'s dtype. Gradients are
        returned in each input's dtype (accumulated in float32).

    Raises:
        ValueError: on inconsistent shapes, unsupported dtypes (float64 included), mixed
            devices, ``head_dim``
            above 128, CPU tensors outside Triton's interpreter, or Triton not installed.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if triton is None:
        raise ValueError("the triton deformable attention backend needs the triton package")
    if value.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(
            f"head_dim {value.shape[-1]} exceeds {MAX_HEAD_DIM}; use the 'gather' backend"
        )
    if not value.is_cuda and not _interpreter_enabled():
        raise ValueError(
            "the triton deformable attention backend needs CUDA tensors (or TRITON_INTERPRET=1 "
            f"set before import), got {value.device}; use the 'gather' backend on CPU"
        )
    return _DeformableAttentionFunction.apply(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )
