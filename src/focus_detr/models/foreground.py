"""Foreground token selector (the paper's FTS, Sec. 3.2): score every token, top-down.

The coarsest level is scored first; every finer level is modulated by the upsampled score map
of the level above it before being scored (``x + x * up(score) * alpha_k``, Eq. 2-3).
The scoring MLP mixes per-token ("local") and per-level mean ("global") features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focus_detr.models.attention import inference_fast_path


class TokenScorer(nn.Module):
    """``[B, N_l, D]`` tokens of one level -> ``[B, N_l]`` foreground logits.

    LayerNorm, Linear, GELU; the second half of the channels is replaced by its mean over the
    level's valid tokens (``valid_mask``); then Linear D->D/2, GELU, D/2->D/4, GELU, D/4->1.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.norm = nn.LayerNorm(embed_dim)
        self.input = nn.Linear(embed_dim, embed_dim)
        self.hidden1 = nn.Linear(embed_dim, embed_dim // 2)
        self.hidden2 = nn.Linear(embed_dim // 2, embed_dim // 4)
        self.output = nn.Linear(embed_dim // 4, 1)

    def forward(self, tokens: Tensor, valid_mask: Tensor | None) -> Tensor:
        z = F.gelu(self.input(self.norm(tokens)))
        local, global_ = z.split(self.embed_dim // 2, dim=-1)
        if valid_mask is None:
            global_ = global_.mean(dim=1, keepdim=True)
        else:
            weights = valid_mask.to(z.dtype)[..., None]
            global_ = (global_ * weights).sum(dim=1, keepdim=True) / weights.sum(
                dim=1, keepdim=True
            ).clamp(min=1)
        if inference_fast_path(z):
            z = self._hidden1_of_halves(local, global_)
        else:
            z = self.hidden1(torch.cat((local, global_.expand_as(local)), dim=-1))
        z = F.gelu(self.hidden2(F.gelu(z)))
        return self.output(z).squeeze(-1)

    def _hidden1_of_halves(self, local: Tensor, global_: Tensor) -> Tensor:
        """``hidden1([local, global_])`` without building the concatenation: the global
        half is the same for every token of an image, so its product and the bias are one
        ``[B, 1, D/2]`` row added to the local half's product."""
        half = local.shape[-1]
        weight_local, weight_global = self.hidden1.weight.split(half, dim=1)
        row = F.linear(global_, weight_global, self.hidden1.bias)  # [B, 1, D/2]
        batch = local.shape[0]
        return torch.baddbmm(row, local, weight_local.t().expand(batch, -1, -1))


class ForegroundScorer(nn.Module):
    """Top-down multi-scale foreground scoring of all tokens.

    Args:
        embed_dim: token width.
        num_levels: feature levels; ``num_levels - 1`` modulation weights (alpha).
    """

    def __init__(self, embed_dim: int, num_levels: int) -> None:
        super().__init__()
        self.scorer = TokenScorer(embed_dim)
        self.top_down_weights = nn.Parameter(torch.empty(num_levels - 1).uniform_(-0.3, 0.3))

    def forward(
        self,
        tokens: Tensor,
        level_shapes: Sequence[tuple[int, int]],
        valid_sizes: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        """``[B, N, D]`` projected tokens -> ``[B, N]`` foreground logits (level 0 first).

        ``level_shapes``: (height, width) of each level of the padded batch, finest first;
        ``valid_sizes`` ``[B, L, 2]``: each image's valid (h, w) per level; ``padding_mask``
        ``[B, N]`` (None when nothing is padded).
        """
        batch = tokens.shape[0]
        num_levels = len(level_shapes)
        starts = [0]
        for height, width in level_shapes[:-1]:
            starts.append(starts[-1] + height * width)
        scores: list[Tensor] = [tokens.new_empty(0)] * num_levels
        previous: Tensor | None = None
        for step, level in enumerate(reversed(range(num_levels))):
            height, width = level_shapes[level]
            start = starts[level]
            level_tokens = tokens[:, start : start + height * width]
            level_mask = (
                None if padding_mask is None else ~padding_mask[:, start : start + height * width]
            )
            if previous is not None:
                up = upsample_valid_area(
                    previous, valid_sizes[:, level + 1], valid_sizes[:, level], (height, width)
                )
                weight = self.top_down_weights[step - 1]
                if inference_fast_path(level_tokens):  # one pass over the tokens
                    gain = (up.flatten(1) * weight)[..., None]
                    level_tokens = torch.addcmul(level_tokens, level_tokens, gain)
                else:
                    level_tokens = level_tokens + level_tokens * up.flatten(1)[..., None] * weight
            level_scores = self.scorer(level_tokens, level_mask)
            scores[level] = level_scores
            previous = level_scores.view(batch, height, width)
        return torch.cat(scores, dim=1)


def upsample_valid_area(
    maps: Tensor, source_sizes: Tensor, target_sizes: Tensor, target_shape: tuple[int, int]
) -> Tensor:
    """Bilinear ``align_corners=True`` resize of each image's valid area, batched.

    ``maps`` ``[B, h, w]``; image ``b``'s valid ``source_sizes[b]`` top-left area is resized to
    its ``target_sizes[b]`` area of a ``target_shape`` map (values outside it are meaningless).
    For an unpadded image this is ``F.interpolate(..., mode="bilinear", align_corners=True)``.
    """
    rows = _interpolation_axis(source_sizes[:, 0], target_sizes[:, 0], target_shape[0], maps.dtype)
    cols = _interpolation_axis(source_sizes[:, 1], target_sizes[:, 1], target_shape[1], maps.dtype)
    row0, row1, row_frac = rows
    col0, col1, col_frac = cols
    batch, _, width = maps.shape
    top = maps.gather(1, row0[:, :, None].expand(batch, -1, width))
    bottom = maps.gather(1, row1[:, :, None].expand(batch, -1, width))
    out_rows = target_shape[0]

    def columns(block: Tensor) -> tuple[Tensor, Tensor]:
        left = block.gather(2, col0[:, None, :].expand(batch, out_rows, -1))
        right = block.gather(2, col1[:, None, :].expand(batch, out_rows, -1))
        return left, right

    top_left, top_right = columns(top)
    bottom_left, bottom_right = columns(bottom)
    row_w1 = row_frac[:, :, None]
    col_w1 = col_frac[:, None, :]
    row_w0 = 1 - row_w1
    col_w0 = 1 - col_w1
    return row_w0 * (col_w0 * top_left + col_w1 * top_right) + row_w1 * (
        col_w0 * bottom_left + col_w1 * bottom_right
    )


def _interpolation_axis(
    source: Tensor, target: Tensor, length: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image source indices and weights of one axis (PyTorch's align_corners arithmetic)."""
    scale = torch.where(
        target > 1,
        (source - 1).to(dtype) / (target - 1).clamp(min=1).to(dtype),
        torch.zeros((), dtype=dtype, device=source.device),
    )
    positions = torch.arange(length, device=source.device, dtype=dtype)
    real = scale[:, None] * positions[None, :]
    last = (source - 1).clamp(min=0)[:, None]
    index0 = real.floor().long().clamp(min=0).minimum(last)
    index1 = (index0 + 1).minimum(last)
    frac = (real - index0.to(dtype)).clamp(min=0, max=1)
    return index0, index1, frac
