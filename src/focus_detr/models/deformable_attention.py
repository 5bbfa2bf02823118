"""Multi-scale deformable attention module (projections around the core op)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from focus_detr.models.attention import LayerSettings, inference_fast_path
from focus_detr.models.export_mode import is_exporting
from focus_detr.ops.deformable_attention_dispatch import (
    multi_scale_deformable_attention,
    resolve_backend,
)
from focus_detr.ops.deformable_attention_torch import (
    BorderedLayout,
    BorderedTokens,
    ChannelFirstTokens,
    border_tokens,
    bordered_values,
    channel_first_tokens,
    corner_rows_and_weights,
    deformable_attention_from_table,
    grid_sample_levels,
)

#: Value tokens prepared once for all the layers that read them (see
#: :meth:`MultiScaleDeformableAttention.shared_values`).
SharedValues = BorderedTokens | ChannelFirstTokens


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention of Deformable DETR over ``num_levels`` flattened feature maps.

    Reference points are given in each image's *valid* normalised coordinates: ``[B, Q, 2]``
    points (x, y) or ``[B, Q, 4]`` boxes (cx, cy, w, h). Offsets of points are in pixels of the
    sampled level; offsets of boxes are fractions of the half box size per point (DINO).
    ``valid_ratios`` ``[B, L, 2]`` (valid width / padded width, valid height / padded height)
    maps valid coordinates onto each padded level.

    Args:
        embed_dim: width of queries and values.
        num_heads: attention heads.
        num_levels: feature levels.
        num_points: sampling points per head and level.
        dropout: dropout on the output.
        backend: core implementation, see :func:`multi_scale_deformable_attention`.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @classmethod
    def from_settings(cls, settings: LayerSettings) -> MultiScaleDeformableAttention:
        """The deformable attention of a transformer layer with these settings."""
        return cls(
            settings.embed_dim,
            settings.num_heads,
            settings.num_levels,
            settings.num_points,
            settings.dropout,
        )

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: points start on rings around the reference."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for point in range(self.num_points):
            grid[:, :, point, :] *= point + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def project_value(self, value: Tensor, value_padding_mask: Tensor | None) -> Tensor:
        """``[B, S, D]`` -> ``[B, S, heads, D/heads]`` projected values, zero on padding."""
        projected = self.value_proj(value)
        if value_padding_mask is not None:
            projected = projected.masked_fill(value_padding_mask[..., None], 0.0)
        batch, length, _ = projected.shape
        return projected.view(batch, length, self.num_heads, -1)

    def forward(
        self,
        query: Tensor,
        reference: Tensor,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor | None = None,
        value_padding_mask: Tensor | None = None,
        projected_value: Tensor | None = None,
        level_shapes: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        """Attend from ``query`` ``[B, Q, D]`` (position already added) into ``value``.

        ``projected_value`` (from :meth:`project_value`) may be passed instead of projecting
        ``value`` again. ``level_shapes``: the values of ``spatial_shapes`` as Python ints
        (needed under export, where they are symbols). Returns ``[B, Q, D]`` without the
        residual.
        """
        if self.uses_fast_path(query):
            shapes = _level_shapes(spatial_shapes, level_shapes)
            if projected_value is None:
                source = border_tokens(value, shapes, value_padding_mask)
                return self.attend_bordered(query, reference, source, valid_ratios)
            table = bordered_values(projected_value, shapes)
            return self._attend_table(query, reference, table, BorderedLayout(shapes), valid_ratios)
        batch, num_queries, _ = query.shape
        if projected_value is None:
            projected_value = self.project_value(value, value_padding_mask)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.num_heads, self.num_levels * self.num_points
        )
        weights = weights.softmax(-1).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points
        )
        locations = self._sampling_locations(reference, offsets, spatial_shapes, valid_ratios)
        output = multi_scale_deformable_attention(
            projected_value,
            spatial_shapes,
            level_start_index,
            locations,
            weights,
            self.backend,
            level_shapes=level_shapes,
        )
        return self.dropout(self.output_proj(output))

    def uses_fast_path(self, query: Tensor) -> bool:
        """True when the inference-only gather formulation (:meth:`attend_bordered`) runs:
        no gradient recorded, not under export, and the gather backend chosen."""
        return inference_fast_path(query) and resolve_backend(self.backend, query) == "gather"

    def shared_values(
        self,
        tokens: Tensor,
        level_shapes: Sequence[tuple[int, int]],
        spatial_shapes: Tensor,
        padding_mask: Tensor | None,
    ) -> SharedValues | None:
        """``tokens`` prepared once for every layer like this one that attends into them, or
        None where the layers project their values themselves: the bordered table of the
        inference gather path, or channel-first tokens under export with ``GridSample``
        (:func:`channel_first_tokens`)."""
        if self.uses_fast_path(tokens):
            return border_tokens(tokens, level_shapes, padding_mask)
        if is_exporting() and resolve_backend(self.backend, tokens) == "grid_sample":
            return channel_first_tokens(tokens, level_shapes, spatial_shapes, padding_mask)
        return None

    def attend_shared(
        self,
        query: Tensor,
        reference: Tensor,
        source: SharedValues,
        valid_ratios: Tensor | None,
    ) -> Tensor:
        """:meth:`forward` on values from :meth:`shared_values`."""
        if isinstance(source, BorderedTokens):
            return self.attend_bordered(query, reference, source, valid_ratios)
        return self.attend_channel_first(query, reference, source, valid_ratios)

    def attend_channel_first(
        self,
        query: Tensor,
        reference: Tensor,
        source: ChannelFirstTokens,
        valid_ratios: Tensor | None,
    ) -> Tensor:
        """:meth:`forward` as the exported graph runs it: values projected channel first by
        one product (bias and padding included), sampling grids by one multiply-add from the
        offsets, one ``GridSample`` per level."""
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = source.project(self.value_proj.weight, self.value_proj.bias)  # [B, D, S]
        head_dim = value.shape[1] // heads
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        scale, shift = self._grid_transform(reference, source.spatial_shapes, valid_ratios)
        # [B, heads, L, P, Q, 2]: grid_sample's [-1, 1] coordinates, queries innermost but one
        grids = offsets.permute(0, 2, 3, 4, 1, 5) * scale + shift
        grids = grids.reshape(batch * heads, levels, points, num_queries, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).permute(0, 2, 3, 1)  # [B, heads, L * P, Q]
        weights = weights.reshape(batch * heads, 1, levels, points, num_queries)
        maps, start = [], 0
        for height, width in source.level_shapes:
            level = value[:, :, start : start + height * width]
            maps.append(level.reshape(batch * heads, head_dim, height, width))
            start = start + height * width
        out = grid_sample_levels(maps, grids, weights)  # [B * heads, head_dim, Q]
        out = out.view(batch, heads * head_dim, num_queries).transpose(1, 2)
        return self.dropout(self.output_proj(out))

    def _grid_transform(
        self, reference: Tensor, spatial_shapes: Tensor, valid_ratios: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Offsets -> ``grid_sample`` coordinates: ``grid = offset * scale + shift``, both
        broadcastable to ``[B, heads, L, P, Q, 2]``: :meth:`_sampling_locations` mapped to
        [-1, 1] (``2 * location - 1``), with the per-query, per-level factors folded."""
        centre = reference[..., :2]  # [B, Q, 2]
        if valid_ratios is None:
            shift = 2 * centre[:, :, None] - 1  # [B, Q, 1, 2]
        else:
            shift = 2 * centre[:, :, None] * valid_ratios[:, None] - 1  # [B, Q, L, 2]
        if reference.shape[-1] == 2:
            # pixels of the level: the valid ratio of the extent cancels the one of the location
            scale = (2 / spatial_shapes.flip(-1).to(reference.dtype))[None, None]  # [1, 1, L, 2]
        elif reference.shape[-1] == 4:
            scale = reference[:, :, None, 2:] / self.num_points  # [B, Q, 1, 2]
            if valid_ratios is not None:
                scale = scale * valid_ratios[:, None]
        else:
            raise ValueError(f"reference must end in 2 or 4 values, got {reference.shape[-1]}")

        def placed(factor: Tensor) -> Tensor:  # [b, q, l, 2] -> [b, 1, l, 1, q, 2]
            return factor.permute(0, 2, 1, 3)[:, None, :, None]

        return placed(scale), placed(shift)

    def attend_bordered(
        self,
        query: Tensor,
        reference: Tensor,
        source: BorderedTokens,
        valid_ratios: Tensor | None,
    ) -> Tensor:
        """:meth:`forward` at inference on values given as bordered (unprojected) tokens,
        shared by the layers that read the same tokens (see :func:`border_tokens`)."""
        batch, rows, _ = source.tokens.shape
        table = source.project(self.value_proj.weight, self.value_proj.bias)
        table = table.view(batch, rows, self.num_heads, -1)
        return self._attend_table(query, reference, table, source.layout, valid_ratios)

    def _attend_table(
        self,
        query: Tensor,
        reference: Tensor,
        table: Tensor,
        layout: BorderedLayout,
        valid_ratios: Tensor | None,
    ) -> Tensor:
        """``[B, Q, D]`` queries sampling a ``[B, S', heads, head_dim]`` bordered value table."""
        batch, num_queries, dim = query.shape
        heads, samples = self.num_heads, self.num_levels * self.num_points
        weight, bias = self._fused_sampling_projection()
        projected = torch.addmm(bias, query.reshape(-1, dim), weight.t())
        projected = projected.view(batch, num_queries, heads, 3, samples)
        pixels = projected[:, :, :, :2]
        scale, shift = self._pixel_transform(reference, layout, valid_ratios)
        if scale is not None:
            pixels.mul_(scale)
        pixels.add_(shift)
        attention = projected[:, :, :, 2].softmax(-1)
        rows, weights = corner_rows_and_weights(pixels, attention, layout, self.num_points)
        output = deformable_attention_from_table(table, rows, weights.to(table.dtype))
        return self.dropout(self.output_proj(output))

    def _fused_sampling_projection(self) -> tuple[Tensor, Tensor]:
        """Offsets and attention logits as one ``[heads * 3 * L * P, D]`` product.

        Output rows per head: the x offsets of its ``L * P`` samples, their y offsets, their
        attention logits (the parameters keep their own layout; this copy is 100 kB).
        """
        heads, samples = self.num_heads, self.num_levels * self.num_points
        dim = self.embed_dim
        offsets = self.sampling_offsets.weight.view(heads, samples, 2, dim).transpose(1, 2)
        logits = self.attention_weights.weight.view(heads, 1, samples, dim)
        weight = torch.cat((offsets, logits), dim=1).reshape(-1, dim)
        offset_bias = self.sampling_offsets.bias.view(heads, samples, 2).transpose(1, 2)
        logit_bias = self.attention_weights.bias.view(heads, 1, samples)
        bias = torch.cat((offset_bias, logit_bias), dim=1).reshape(-1)
        return weight, bias

    def _pixel_transform(
        self, reference: Tensor, layout: BorderedLayout, valid_ratios: Tensor | None
    ) -> tuple[Tensor | None, Tensor]:
        """Offsets -> bordered pixel coordinates: ``pixel = offset * scale + shift``.

        Returns ``scale`` (None for point references, whose offsets are in pixels) and
        ``shift``, broadcastable to ``[B, Q, heads, 2, L * P]``: the same locations as
        :meth:`_sampling_locations`, in pixels of each level (``align_corners=False``) plus
        the 1-pixel border before each map.
        """
        sizes = torch.tensor(layout.level_shapes, device=reference.device, dtype=reference.dtype)
        extent = sizes.flip(-1).t()[None]  # [1, 2 (x, y), L] valid-coordinate unit, in pixels
        if valid_ratios is not None:
            extent = extent * valid_ratios.transpose(1, 2)
        extent = extent.repeat_interleave(self.num_points, dim=-1)[:, None, None]
        centre = reference[:, :, None, :2, None]  # [B, Q, 1, 2, 1]
        shift = centre * extent + 0.5
        if reference.shape[-1] == 2:
            return None, shift
        if reference.shape[-1] != 4:
            raise ValueError(f"reference must end in 2 or 4 values, got {reference.shape[-1]}")
        half_size = reference[:, :, None, 2:, None] * (0.5 / self.num_points)
        return half_size * extent, shift

    def _sampling_locations(
        self,
        reference: Tensor,
        offsets: Tensor,
        spatial_shapes: Tensor,
        valid_ratios: Tensor | None,
    ) -> Tensor:
        """``[B, Q, heads, levels, points, 2]`` locations normalised to each padded level."""
        centre = reference[:, :, None, None, None, :2]
        if reference.shape[-1] == 2:
            # offsets in pixels of each level, measured on the level's valid extent
            if valid_ratios is None:
                extent = spatial_shapes.flip(-1).to(offsets.dtype)[None, None, None, :, None]
            else:
                extent = (
                    spatial_shapes.flip(-1).to(offsets.dtype)[None, None, :, :]
                    * valid_ratios[:, None, :, :]
                )[:, :, None, :, None, :]
            locations = centre + offsets / extent
        elif reference.shape[-1] == 4:
            half_size = reference[:, :, None, None, None, 2:] * 0.5
            locations = centre + offsets / self.num_points * half_size
        else:
            raise ValueError(f"reference must end in 2 or 4 values, got {reference.shape[-1]}")
        if valid_ratios is not None:
            locations = locations * valid_ratios[:, None, None, :, None, :]
        return locations


def _level_shapes(
    spatial_shapes: Tensor, level_shapes: Sequence[tuple[int, int]] | None
) -> tuple[tuple[int, int], ...]:
    """(height, width) of each level as Python ints."""
    pairs = spatial_shapes.tolist() if level_shapes is None else level_shapes
    return tuple((int(h), int(w)) for h, w in pairs)
