"""Multi-scale deformable attention in plain PyTorch (Zhu et al., Deformable DETR, eq. 3).

Three implementations of the function documented in
:mod:`focus_detr.ops.deformable_attention_dispatch` (which chooses between them and the Triton
kernel; this module imports neither):

- :func:`deformable_attention_gather`: one fused gather-and-weighted-sum
  (``F.embedding_bag``) over all heads, levels, points and bilinear corners. It reads each
  sampled row of ``head_dim`` contiguous values once and never builds per-level images.
- :func:`deformable_attention_grid_sample`: the classic per-level ``F.grid_sample``
  formulation (detrex's ``multi_scale_deformable_attn_pytorch``), kept as the reference the
  fast paths are tested against; exports to ONNX ``GridSample`` (opset >= 16).
- :func:`deformable_attention_corner_gather`: one ``torch.gather`` per level and bilinear
  corner and a weighted sum (ONNX ``GatherElements``, ``Mul``, ``ReduceSum``): standard ops
  only, for exporters and runtimes without ``GridSample``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BorderedLayout",
    "BorderedTokens",
    "ChannelFirstTokens",
    "border_tokens",
    "bordered_values",
    "channel_first_tokens",
    "corner_rows_and_weights",
    "deformable_attention_corner_gather",
    "deformable_attention_from_table",
    "deformable_attention_gather",
    "deformable_attention_grid_sample",
    "grid_sample_levels",
]


# Each level's value map gets a zero border (1 before, 2 after, on both axes) so that the four
# bilinear corners of any sample clamped to [-1, size] exist: no validity masks are needed and a
# corner outside the map reads a zero, exactly grid_sample's zero padding.
_BORDER_BEFORE = 1
_BORDER_AFTER = 2


def bordered_values(value: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
    """``[B, S, heads, dim]`` -> the maps with zero borders, flattened ``[B, S', heads, dim]``.

    One copy into a zero-initialised table (``torch.nn.functional.pad`` + ``cat`` would copy
    twice); differentiable.
    """
    batch, _, num_heads, head_dim = value.shape
    border = _BORDER_BEFORE + _BORDER_AFTER
    total = sum((h + border) * (w + border) for h, w in spatial_shapes)
    table = value.new_zeros(batch, total, num_heads, head_dim)
    source = target = 0
    for height, width in spatial_shapes:
        level = value[:, source : source + height * width].view(
            batch, height, width, num_heads, head_dim
        )
        padded = table[:, target : target + (height + border) * (width + border)].view(
            batch, height + border, width + border, num_heads, head_dim
        )
        inner = padded[:, _BORDER_BEFORE : _BORDER_BEFORE + height]
        inner[:, :, _BORDER_BEFORE : _BORDER_BEFORE + width] = level
        source += height * width
        target += (height + border) * (width + border)
    return table


@dataclass(frozen=True)
class BorderedLayout:
    """Where every level's map lies in the gather path's zero-bordered table."""

    level_shapes: tuple[tuple[int, int], ...]

    @property
    def padded_shapes(self) -> list[tuple[int, int]]:
        """(height, width) of each level with its border."""
        border = _BORDER_BEFORE + _BORDER_AFTER
        return [(h + border, w + border) for h, w in self.level_shapes]

    @property
    def num_rows(self) -> int:
        """Tokens of one image in the table (``S'``)."""
        return sum(h * w for h, w in self.padded_shapes)

    def level_starts(self) -> list[int]:
        """First row of each bordered level in ``S'``."""
        starts = [0]
        for height, width in self.padded_shapes[:-1]:
            starts.append(starts[-1] + height * width)
        return starts


@dataclass(frozen=True)
class BorderedTokens:
    """Tokens laid out as the gather path's table: every level's map with its zero border.

    Inference-only (see :func:`border_tokens`). Each row holds a token and a last column of
    1, or only zeros where the table must read zero (the borders, and padding tokens, whose
    projection the plain path masks to zero): one product with ``[weight | bias]`` then
    gives the bordered table of any linear map of the tokens, zero rows included, with no
    copy and no separate bias pass. Every value projection of the attention layers that read
    these tokens costs that one product.

    Attributes:
        tokens: ``[B, S', C + 1]`` the tokens and their 1 (zero rows on borders and padding).
        layout: the level shapes and their places in ``S'``.
        scratch: per output width, the ``[B * S', C_out]`` buffer that every projection of
            these tokens overwrites (the layers run one after the other and use their table
            only inside their forward; one buffer is faulted in once instead of one per layer).
    """

    tokens: Tensor
    layout: BorderedLayout
    scratch: dict[int, Tensor] = field(default_factory=dict)

    def project(self, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``[B, S', C_out]`` bordered table of ``linear(tokens)`` (written into ``scratch``)."""
        batch, rows, channels = self.tokens.shape
        width = weight.shape[0]
        if width not in self.scratch:
            self.scratch[width] = self.tokens.new_empty(batch * rows, width)
        table = self.scratch[width]
        column = weight.new_zeros(width, 1) if bias is None else bias[:, None]
        augmented = torch.cat((weight, column), dim=1)
        torch.mm(self.tokens.view(batch * rows, channels), augmented.t(), out=table)
        return table.view(batch, rows, width)


@dataclass(frozen=True)
class ChannelFirstTokens:
    """Value tokens laid out for the exported graph (see :func:`channel_first_tokens`).

    ``[B, C + 1, S]``: the tokens channel first, zero on padding, with a last row of ones
    (zero on padding). One ``MatMul`` with ``[weight | bias]`` then gives a layer's projected
    values channel first, zero on padding: the bias and the padding mask cost no pass of
    their own, and each level's values are a slice away from the ``[B * heads, head_dim, h,
    w]`` maps of ``GridSample``, with no transpose per level and layer.

    Attributes:
        tokens: ``[B, C + 1, S]``.
        level_shapes: (height, width) of each level (symbols under export).
        spatial_shapes: ``[L, 2]`` the same as a tensor.
    """

    tokens: Tensor
    level_shapes: Sequence[tuple[int, int]]
    spatial_shapes: Tensor

    def project(self, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``[B, C_out, S]`` ``linear(tokens)`` channel first, zero on padding."""
        column = weight.new_zeros(weight.shape[0], 1) if bias is None else bias[:, None]
        return torch.matmul(torch.cat((weight, column), dim=1), self.tokens)


def channel_first_tokens(
    tokens: Tensor,
    level_shapes: Sequence[tuple[int, int]],
    spatial_shapes: Tensor,
    padding_mask: Tensor | None,
) -> ChannelFirstTokens:
    """``[B, S, C]`` tokens (``padding_mask`` ``[B, S]``, True on padding) ->
    :class:`ChannelFirstTokens` (built once, read by every layer's value projection)."""
    if padding_mask is None:
        ones = tokens.new_ones(tokens.shape[0], tokens.shape[1], 1)
        augmented = torch.cat((tokens, ones), dim=-1)
    else:
        keep = (~padding_mask).to(tokens.dtype)[..., None]
        augmented = torch.cat((tokens * keep, keep), dim=-1)
    return ChannelFirstTokens(augmented.transpose(1, 2), level_shapes, spatial_shapes)


def border_tokens(
    tokens: Tensor, level_shapes: Sequence[tuple[int, int]], padding_mask: Tensor | None
) -> BorderedTokens:
    """``[B, S, C]`` tokens of ``level_shapes`` maps (``padding_mask`` ``[B, S]``, True on
    padding) -> :class:`BorderedTokens` (one copy of the tokens)."""
    batch, _, channels = tokens.shape
    layout = BorderedLayout(tuple((int(h), int(w)) for h, w in level_shapes))
    table = tokens.new_zeros(batch, layout.num_rows, channels + 1)
    source = 0
    for (height, width), (padded_height, padded_width), target in zip(
        layout.level_shapes, layout.padded_shapes, layout.level_starts()
    ):
        level = table[:, target : target + padded_height * padded_width]
        level = level.view(batch, padded_height, padded_width, channels + 1)
        inner = level[:, _BORDER_BEFORE : _BORDER_BEFORE + height]
        inner = inner[:, :, _BORDER_BEFORE : _BORDER_BEFORE + width]
        count = height * width
        inner[..., :channels] = tokens[:, source : source + count].view(batch, height, width, -1)
        if padding_mask is None:
            inner[..., channels] = 1.0
        else:
            padding = padding_mask[:, source : source + count].view(batch, height, width, 1)
            inner[..., channels:] = ~padding
            inner.masked_fill_(padding, 0.0)
        source += count
    return BorderedTokens(table, layout)


def corner_rows_and_weights(
    pixels: Tensor, attention_weights: Tensor, layout: BorderedLayout, num_points: int
) -> tuple[Tensor, Tensor]:
    """Rows and weights of the 4 bilinear corners of every sample, from pixel coordinates.

    ``pixels`` ``[B, Q, heads, 2, levels * points]``: (x row, y row) per head, in pixels of
    each level's *bordered* map (``align_corners=False`` coordinate + 1); clamped in place and
    turned into the fractional parts. ``attention_weights`` ``[B, Q, heads, levels * points]``.
    Returns int32 rows into ``table.view(-1, head_dim)`` of a ``[B, S', heads, head_dim]`` table
    and their weights (attention folded in), both ``[B * Q * heads, 4 * levels * points]``,
    corners ordered (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1) per sample block.
    Every pass runs over contiguous runs of ``levels * points`` values.
    """
    batch, num_queries, num_heads, _, samples = pixels.shape
    device, dtype = pixels.device, pixels.dtype
    sizes = torch.tensor(layout.level_shapes, device=device, dtype=dtype)  # [L, (h, w)]
    per_sample = sizes.repeat_interleave(num_points, dim=0)  # [L * P, (h, w)]
    # the border keeps both neighbours of any coordinate in [0, size + 1] inside the table
    upper = (per_sample.flip(-1).t() + 1).expand(num_heads, 2, samples)
    pixels.clamp_(min=torch.zeros_like(upper), max=upper)
    low = pixels.to(torch.int32)  # truncation is the floor: coordinates are >= 0
    fractions = pixels.frac_()  # pixels - low, exactly
    x1, y1 = fractions[:, :, :, 0], fractions[:, :, :, 1]
    ax1 = x1 * attention_weights
    ax0 = attention_weights - ax1
    y0 = 1 - y1
    weights = pixels.new_empty(batch, num_queries, num_heads, 4, samples)
    torch.mul(y0, ax0, out=weights[:, :, :, 0])
    torch.mul(y0, ax1, out=weights[:, :, :, 1])
    torch.mul(y1, ax0, out=weights[:, :, :, 2])
    torch.mul(y1, ax1, out=weights[:, :, :, 3])
    rows = _corner_rows(low, layout, num_points)
    bags = batch * num_queries * num_heads
    return rows.view(bags, -1), weights.view(bags, -1)


def _corner_rows(low: Tensor, layout: BorderedLayout, num_points: int) -> Tensor:
    """``[B, Q, heads, 4, L * P]`` int32 table rows of the corners of ``low`` (see above).

    The row of (image b, bordered token t, head h) is ``(b * S' + t) * heads + h``.
    """
    batch, num_queries, num_heads, _, samples = low.shape
    device = low.device
    total = layout.num_rows
    widths = torch.tensor([w for _, w in layout.padded_shapes], device=device, dtype=torch.int32)
    starts = torch.tensor(layout.level_starts(), device=device, dtype=torch.int32)
    row_step = (widths * num_heads).repeat_interleave(num_points)  # [L * P]
    base = (
        torch.arange(batch, device=device, dtype=torch.int32).view(batch, 1, 1) * total
        + starts.repeat_interleave(num_points).view(1, 1, samples)
    ) * num_heads + torch.arange(num_heads, device=device, dtype=torch.int32).view(1, -1, 1)
    rows = low.new_empty(batch, num_queries, num_heads, 4, samples)
    first = rows[:, :, :, 0]
    torch.mul(low[:, :, :, 1], row_step, out=first)
    first.add_(low[:, :, :, 0], alpha=num_heads).add_(base[:, None])
    torch.add(first, num_heads, out=rows[:, :, :, 1])
    torch.add(first, row_step, out=rows[:, :, :, 2])
    torch.add(rows[:, :, :, 2], num_heads, out=rows[:, :, :, 3])
    return rows


def deformable_attention_from_table(table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    """Weighted sums of the ``rows`` of a ``[B, S', heads, head_dim]`` bordered table.

    ``rows`` / ``weights`` ``[B * Q * heads, K]`` from :func:`corner_rows_and_weights`;
    returns ``[B, Q, heads * head_dim]``.
    """
    batch, _, num_heads, head_dim = table.shape
    out = F.embedding_bag(rows, table.reshape(-1, head_dim), per_sample_weights=weights, mode="sum")
    return out.view(batch, -1, num_heads * head_dim)


def bilinear_corner_indices_and_weights(
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_heads: int,
) -> tuple[Tensor, Tensor]:
    """Rows and weights of the 4 bilinear corners of every sample, in the bordered table.

    Returns two ``[batch * num_queries * num_heads, num_levels * num_points * 4]`` tensors
    (int32 rows into ``bordered_values(...).reshape(-1, head_dim)``, weights with the
    attention weight folded in). Every full-size result is written once, in place.
    """
    batch, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    device, dtype = sampling_locations.device, sampling_locations.dtype
    sizes = torch.tensor(spatial_shapes, device=device, dtype=torch.int32)
    padded = sizes + (_BORDER_BEFORE + _BORDER_AFTER)
    areas = padded.prod(dim=1)
    starts = torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1].to(torch.int32)))
    total = int(areas.sum())
    heights = sizes[:, 0].to(dtype).view(1, 1, 1, num_levels, 1)
    widths = sizes[:, 1].to(dtype).view(1, 1, 1, num_levels, 1)
    x0, wx1 = _axis(sampling_locations[..., 0], widths)
    y0, wy1 = _axis(sampling_locations[..., 1], heights)
    wx1 = wx1 * attention_weights
    wx0 = attention_weights - wx1
    wy0 = 1 - wy1
    shape = (batch, num_queries, num_heads, num_levels, num_points, 4)
    # corners ordered (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)
    if torch.is_grad_enabled() and (wx1.requires_grad or wy1.requires_grad):
        weights = torch.stack((wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1), dim=-1)
    else:  # the same values, written in place (no stacked temporaries)
        weights = torch.empty(shape, device=device, dtype=dtype)
        torch.mul(wy0, wx0, out=weights[..., 0])
        torch.mul(wy0, wx1, out=weights[..., 1])
        torch.mul(wy1, wx0, out=weights[..., 2])
        torch.mul(wy1, wx1, out=weights[..., 3])
    # row of (batch b, token t, head h) is (b * S' + t) * heads + h, in int32
    padded_width = padded[:, 1].view(1, 1, 1, num_levels, 1)
    base = (
        torch.arange(batch, device=device, dtype=torch.int32).view(batch, 1, 1, 1, 1)
        * (total * num_heads)
        + torch.arange(num_heads, device=device, dtype=torch.int32).view(1, 1, num_heads, 1, 1)
        + (starts.view(1, 1, 1, num_levels, 1) + _BORDER_BEFORE * (padded_width + 1)) * num_heads
    )
    row00 = (y0 * padded_width).add_(x0).mul_(num_heads).add_(base)
    step_y = padded_width * num_heads
    rows = torch.empty(shape, device=device, dtype=torch.int32)
    rows[..., 0] = row00
    torch.add(row00, num_heads, out=rows[..., 1])
    torch.add(row00, step_y, out=rows[..., 2])
    torch.add(rows[..., 2], num_heads, out=rows[..., 3])
    bags = batch * num_queries * num_heads
    return rows.view(bags, -1), weights.view(bags, -1)


def _axis(normalised: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
    """Integer (int32) low neighbour and the high neighbour's weight along one axis.

    Pixel coordinates follow align_corners=False; they are clamped to [-1, size], where every
    neighbour lies in the zero border when the sample is outside the map.
    """
    pixel = torch.minimum((normalised * size - 0.5).clamp(min=-1.0), size)
    low = pixel.floor()
    return low.to(torch.int32), pixel - low


def deformable_attention_gather(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Deformable attention as one weighted gather (``F.embedding_bag``); differentiable."""
    batch, _, num_heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    if batch * num_queries == 0:
        return value.new_zeros(batch, num_queries, num_heads * head_dim)
    del level_start_index  # the bordered table has its own level offsets
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    table = bordered_values(value, shapes).reshape(-1, head_dim)
    rows, weights = bilinear_corner_indices_and_weights(
        shapes, sampling_locations, attention_weights, num_heads
    )
    weights = weights.to(table.dtype)
    if _needs_float32_backward(table, weights):
        out = F.embedding_bag(rows, table.float(), per_sample_weights=weights.float(), mode="sum")
        return out.to(value.dtype).view(batch, num_queries, num_heads * head_dim)
    out = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
    return out.view(batch, num_queries, num_heads * head_dim)


def _needs_float32_backward(table: Tensor, weights: Tensor) -> bool:
    """CUDA's ``embedding_bag`` has no bfloat16 backward for ``per_sample_weights`` (PyTorch
    2.11-2.14): such a differentiable call runs in float32 and casts back."""
    return (
        table.is_cuda
        and table.dtype == torch.bfloat16
        and torch.is_grad_enabled()
        and (table.requires_grad or weights.requires_grad)
    )


def deformable_attention_grid_sample(
    value: Tensor,
    spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    level_shapes: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """Reference implementation: one ``F.grid_sample`` per level (as in Deformable DETR).

    ``level_shapes``: the values of ``spatial_shapes`` as Python ints (symbols under export);
    read from ``spatial_shapes`` when not given. Levels are weighted and summed one at a time
    (no stacked copy of every level's samples).

    The layouts are chosen for the exported graph (this is the export backend): each level's
    values become channel-first by an NHWC -> NCHW permutation (OpenVINO runs it as a oneDNN
    reorder, 6x faster than the ``[B, h*w, C] -> [B, C, h*w]`` transpose), and the samples of
    a level are ``[batch * heads, dim, points, queries]``, queries innermost, so that the
    weighting and the sum over points run on long contiguous rows (4x faster in OpenVINO than
    with the 4 points innermost).
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if level_shapes is None:
        level_shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    # [batch, queries, heads, levels, points, 2] -> [batch * heads, levels, points, queries, 2]
    grids = (2 * sampling_locations - 1).permute(0, 2, 3, 4, 1, 5).flatten(0, 1)
    # [batch, queries, heads, levels, points] -> [batch * heads, 1, levels, points, queries]
    weights = attention_weights.permute(0, 2, 3, 4, 1).reshape(
        batch * num_heads, 1, num_levels, num_points, num_queries
    )
    levels = []
    start = 0
    for height, width in level_shapes:
        # [batch, h*w, heads, dim] -> [batch, heads * dim, h, w] -> [batch * heads, dim, h, w]
        levels.append(
            value[:, start : start + height * width]
            .reshape(batch, height, width, num_heads * head_dim)
            .permute(0, 3, 1, 2)
            .reshape(batch * num_heads, head_dim, height, width)
        )
        start = start + height * width
    out = grid_sample_levels(levels, grids, weights)
    return out.view(batch, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()


def grid_sample_levels(levels: Sequence[Tensor], grids: Tensor, weights: Tensor) -> Tensor:
    """The weighted bilinear samples of every level, summed: ``[G, D, Q]``.

    Args:
        levels: per level, the ``[G, D, h, w]`` values of ``G`` = batch * heads maps.
        grids: ``[G, L, P, Q, 2]`` sampling locations in ``grid_sample``'s [-1, 1]
            (``align_corners=False``).
        weights: ``[G, 1, L, P, Q]`` attention weights.
    """
    out = None
    for level, level_value in enumerate(levels):
        sampled = F.grid_sample(
            level_value, grids[:, level], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [G, D, P, Q]
        term = (sampled * weights[:, :, level]).sum(-2)
        out = term if out is None else out + term
    assert out is not None, "no levels"
    return out


def deformable_attention_corner_gather(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Deformable attention from ``torch.gather`` calls: per level and bilinear corner, the
    corner rows of every sample and their weighted sum. Level sizes are read as tensors, so
    the traced graph holds no Python shape."""
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    groups = batch * num_heads
    rows = value.transpose(1, 2).reshape(groups, -1, head_dim)  # [B * heads, S, dim]
    # [B, Q, heads, L, P, ...] -> [B * heads, Q, L, P, ...]
    locations = sampling_locations.transpose(1, 2).reshape(
        groups, num_queries, num_levels, num_points, 2
    )
    weights = attention_weights.transpose(1, 2).reshape(groups, num_queries, num_levels, num_points)
    sizes = spatial_shapes.to(locations.dtype)
    output = rows.new_zeros(groups, num_queries, head_dim)
    for level in range(num_levels):
        height, width = spatial_shapes[level, 0], spatial_shapes[level, 1]
        # align_corners=False pixel coordinates, as grid_sample
        x = locations[:, :, level, :, 0] * sizes[level, 1] - 0.5
        y = locations[:, :, level, :, 1] * sizes[level, 0] - 0.5
        x0, y0 = x.floor(), y.floor()
        x_weights = (1 - (x - x0), x - x0)
        y_weights = (1 - (y - y0), y - y0)
        for dy in (0, 1):
            for dx in (0, 1):
                column, row = x0.long() + dx, y0.long() + dy
                inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
                weight = x_weights[dx] * y_weights[dy] * weights[:, :, level] * inside
                index = (
                    level_start_index[level]
                    + row.clamp(min=0).minimum(height - 1) * width
                    + column.clamp(min=0).minimum(width - 1)
                )
                corners = rows.gather(
                    1, index.reshape(groups, -1, 1).expand(-1, -1, head_dim)
                ).view(groups, num_queries, num_points, head_dim)
                output = output + (corners * weight[..., None]).sum(dim=2)
    output = output.view(batch, num_heads, num_queries, head_dim).transpose(1, 2)
    return output.reshape(batch, num_queries, num_heads * head_dim)
