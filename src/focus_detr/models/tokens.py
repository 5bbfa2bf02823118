"""Multi-scale feature maps -> one token sequence with positions, references and padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from focus_detr.models.attention import inference_fast_path
from focus_detr.models.export_mode import is_exporting
from focus_detr.models.masking import padding_mask_from_sizes, valid_sizes_at_stride
from focus_detr.models.position_encoding import sine_position_embedding, sine_position_factors
from focus_detr.models.query_selection import TokenProposals, token_proposals
from focus_detr.structures import TokenLayout


@dataclass
class Tokens:
    """Flattened multi-scale tokens and their geometry.

    Attributes:
        level_shapes: (height, width) of each level of the padded batch, as Python ints
            (symbolic sizes under export), the same values as ``layout.spatial_shapes``.
        features: ``[B, N, D]`` neck features, level 0 (finest) first, row-major.
        positions: ``[B, N, D]`` sine position embedding + learned level embedding.
        references: ``[B, N, 2]`` (x, y) cell centres in each image's valid coordinates.
        layout: shapes, level starts, per-image valid sizes, padding mask, strides.
        valid_ratios: ``[B, L, 2]`` (w, h) valid fraction of each padded level, or None when
            nothing is padded.
        padding_mask: ``[B, N]`` True on padding, or None when nothing is padded.
        proposals: two-stage grid proposals of every token.
    """

    level_shapes: tuple[tuple[int, int], ...]
    features: Tensor
    positions: Tensor
    references: Tensor
    layout: TokenLayout
    valid_ratios: Tensor | None
    padding_mask: Tensor | None
    proposals: TokenProposals


def flatten_levels(
    levels: list[Tensor],
    image_sizes: Tensor,
    strides: tuple[int, ...],
    level_embeddings: Tensor,
    *,
    temperature: float,
    offset: float,
) -> Tokens:
    """Flatten ``[B, D, H_l, W_l]`` levels into tokens (see :class:`Tokens`).

    ``image_sizes`` ``[B, 2]`` are the images' pixel sizes; level ``l`` of stride ``s`` covers
    ``ceil(size / s)`` positions of each image.
    """
    device, dtype = levels[0].device, levels[0].dtype
    # plain ints in eager mode, symbols under export (never int(): it would freeze them)
    shapes = tuple((level.shape[-2], level.shape[-1]) for level in levels)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
    areas = spatial_shapes.prod(dim=1)
    level_start_index = torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))
    valid_sizes = torch.stack([valid_sizes_at_stride(image_sizes, s) for s in strides], dim=1)
    padded = is_exporting() or bool((valid_sizes != spatial_shapes[None]).any())
    features, references, masks = [], [], []
    for level, (feature, (height, width)) in enumerate(zip(levels, shapes)):
        valid = valid_sizes[:, level]
        features.append(feature.flatten(2).transpose(1, 2))
        references.append(_cell_centres(valid, height, width, dtype))
        masks.append(padding_mask_from_sizes(valid, height, width).flatten(1))
    padding_mask = torch.cat(masks, dim=1)
    layout = TokenLayout(spatial_shapes, level_start_index, valid_sizes, padding_mask, strides)
    valid_ratios = None
    if padded:
        valid_ratios = (valid_sizes.to(dtype) / spatial_shapes[None].to(dtype)).flip(-1)
    used_mask = padding_mask if padded else None
    embedding = _PositionEmbedding(level_embeddings, temperature, offset, dtype)
    return Tokens(
        level_shapes=shapes,
        features=torch.cat(features, dim=1),
        positions=embedding(shapes, valid_sizes),
        references=torch.cat(references, dim=1),
        layout=layout,
        valid_ratios=valid_ratios,
        padding_mask=used_mask,
        proposals=token_proposals(shapes, valid_sizes, used_mask, dtype),
    )


@dataclass(frozen=True)
class _PositionEmbedding:
    """Sine position embedding of every token plus its level's learned embedding."""

    level_embeddings: Tensor
    temperature: float
    offset: float
    dtype: torch.dtype

    def __call__(self, shapes: Sequence[tuple[int, int]], valid_sizes: Tensor) -> Tensor:
        """``[B, N, D]`` positions of the tokens of levels of ``shapes`` (finest first)."""
        if inference_fast_path(self.level_embeddings):
            return self._written_in_place(shapes, valid_sizes)
        positions = []
        for level, (height, width) in enumerate(shapes):
            position = sine_position_embedding(
                valid_sizes[:, level], height, width, **self._settings()
            )
            positions.append(position.flatten(2).transpose(1, 2) + self.level_embeddings[level])
        return torch.cat(positions, dim=1)

    def _written_in_place(self, shapes: Sequence[tuple[int, int]], valid_sizes: Tensor) -> Tensor:
        """Inference: the same sums written straight into one ``[B, N, D]`` tensor (no
        per-level embedding, sum or concatenation copies)."""
        batch, dim = valid_sizes.shape[0], self.level_embeddings.shape[1]
        half = dim // 2
        total = sum(height * width for height, width in shapes)
        dtype = torch.promote_types(self.dtype, self.level_embeddings.dtype)  # as the sum's
        positions = self.level_embeddings.new_empty(batch, total, dim, dtype=dtype)
        start = 0
        for level, (height, width) in enumerate(shapes):
            pos_y, pos_x = sine_position_factors(
                valid_sizes[:, level], height, width, **self._settings()
            )
            out = positions[:, start : start + height * width].view(batch, height, width, dim)
            embedding = self.level_embeddings[level]
            torch.add(pos_y, embedding[:half], out=out[..., :half])
            torch.add(pos_x, embedding[half:], out=out[..., half:])
            start += height * width
        return positions

    def _settings(self) -> dict[str, Any]:
        return {
            "num_feats": self.level_embeddings.shape[1] // 2,
            "temperature": self.temperature,
            "offset": self.offset,
            "dtype": self.dtype,
        }


def _cell_centres(valid_sizes: Tensor, height: int, width: int, dtype: torch.dtype) -> Tensor:
    """``[B, h*w, 2]`` (x, y) cell centres normalised by each image's valid extent."""
    ys = torch.arange(height, dtype=dtype, device=valid_sizes.device) + 0.5
    xs = torch.arange(width, dtype=dtype, device=valid_sizes.device) + 0.5
    y = ys[None, :, None] / valid_sizes[:, 0, None, None].to(dtype)
    x = xs[None, None, :] / valid_sizes[:, 1, None, None].to(dtype)
    batch = valid_sizes.shape[0]
    grid = torch.stack((x.expand(batch, height, width), y.expand(batch, height, width)), dim=-1)
    return grid.view(batch, height * width, 2)
