"""Two-stage query selection (DINO): every token proposes a box; the best become queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from focus_detr.models.attention import MLP, inference_fast_path
from focus_detr.models.export_mode import is_exporting, traced_size

#: proposals with a coordinate outside ``(MARGIN, 1 - MARGIN)`` are invalid (DINO)
MARGIN = 0.01


@dataclass
class TokenProposals:
    """Grid proposals of all tokens.

    Attributes:
        box_logits: ``[B, N, 4]`` inverse-sigmoid cxcywh proposal of every token (+inf where
            invalid: padding or a coordinate outside (0.01, 0.99)).
        valid: ``[B, N]`` bool, True where the proposal is valid.
    """

    box_logits: Tensor
    valid: Tensor


def token_proposals(
    level_shapes: Sequence[tuple[int, int]],
    valid_sizes: Tensor,
    padding_mask: Tensor | None,
    dtype: torch.dtype,
) -> TokenProposals:
    """Cell centres with size ``0.05 * 2**level``, normalised to each image's valid area.

    ``level_shapes``: (height, width) of each level of the padded batch.
    """
    device = valid_sizes.device
    batch = valid_sizes.shape[0]
    proposals = []
    for level, (height, width) in enumerate(level_shapes):
        ys = torch.arange(height, dtype=dtype, device=device)
        xs = torch.arange(width, dtype=dtype, device=device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((grid_x, grid_y), dim=-1).view(1, -1, 2)  # [1, h*w, 2]
        scale = valid_sizes[:, level].flip(-1).to(dtype).view(batch, 1, 2)
        centres = (grid + 0.5) / scale
        sizes = torch.full_like(centres, 0.05 * (2.0**level))
        proposals.append(torch.cat((centres, sizes), dim=-1))
    boxes = torch.cat(proposals, dim=1)
    if is_exporting():
        valid = _inside_margins(level_shapes, valid_sizes)
    else:
        valid = ((boxes > MARGIN) & (boxes < 1 - MARGIN)).all(dim=-1)
    if padding_mask is not None:
        valid = valid & ~padding_mask
    box_logits = torch.log(boxes / (1 - boxes))
    box_logits = box_logits.masked_fill(~valid[..., None], float("inf"))
    return TokenProposals(box_logits=box_logits, valid=valid)


def _inside_margins(level_shapes: Sequence[tuple[int, int]], valid_sizes: Tensor) -> Tensor:
    """``[B, N]``: the proposal lies inside ``(0.01, 0.99)``, decided in integers.

    A centre ``(i + 0.5) / n`` is exactly 0.99 (or 0.01) for the last (first) cell of a level
    that is 50 cells long. Eager PyTorch divides and compares in float32, and the two sides
    round alike (invalid); a runtime free to divide differently (OpenVINO multiplies by the
    reciprocal: 0.98999995) puts the whole row on the other side and changes detections. The
    integer test ``0.01 < (2i + 1) / 2n < 0.99``, i.e. ``n < 50 (2i + 1) < 99 n``, is exact,
    and equals the float32 one: a centre that is not exactly 0.99 or 0.01 is at least
    ``1 / (200 n)`` away from it, far more than a float32 rounding for any level size here.
    The sizes (``0.05 * 2**level``) are constants.
    """
    device = valid_sizes.device
    inside = []
    for level, (height, width) in enumerate(level_shapes):
        size_ok = MARGIN < 0.05 * 2.0**level < 1 - MARGIN

        def axis_ok(length: int, valid: Tensor) -> Tensor:
            twice = 2 * torch.arange(length, device=device) + 1  # 2i + 1
            scaled = (twice * 50)[None, :]
            return (scaled > valid[:, None]) & (scaled < 99 * valid[:, None])

        rows = axis_ok(height, valid_sizes[:, level, 0])
        cols = axis_ok(width, valid_sizes[:, level, 1])
        level_ok = (rows[:, :, None] & cols[:, None, :]).flatten(1)
        inside.append(level_ok if size_ok else torch.zeros_like(level_ok))
    return torch.cat(inside, dim=1)


class TokenProjection(nn.Module):
    """Linear + LayerNorm applied to tokens whose proposal is valid (others are zeroed first).

    The same module serves the foreground scorer (on features + positions) and the two-stage
    heads (on the encoder memory), as in the released models.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """``[B, N, D]`` tokens, ``[B, N]`` validity -> ``[B, N, D]``."""
        if inference_fast_path(tokens):
            # linear(0) is exactly the bias: project the tokens as they are and overwrite the
            # few invalid rows (border proposals), instead of copying every token to mask them
            projected = self.linear(tokens)
            projected[~valid] = self.linear.bias.to(projected.dtype)  # autocast: bf16
            return self.norm(projected)
        return self.norm(self.linear(tokens.masked_fill(~valid[..., None], 0.0)))


@dataclass
class SelectedQueries:
    """Queries chosen from the two-stage proposals.

    Attributes:
        token_indices: ``[B, Q]`` token id of each query (best first).
        query_mask: ``[B, Q]`` True for real queries (an image with fewer valid tokens than
            ``Q`` has filler queries at the end).
        logits: ``[B, Q, C]`` class logits of the chosen proposals.
        box_logits: ``[B, Q, 4]`` inverse-sigmoid boxes (head output + proposal).
        hidden: ``[B, Q, D]`` projected memory at the chosen tokens.
    """

    token_indices: Tensor
    query_mask: Tensor
    logits: Tensor
    box_logits: Tensor
    hidden: Tensor


def select_queries(
    projected_memory: Tensor,
    proposals: TokenProposals,
    padding_mask: Tensor | None,
    class_head: nn.Linear,
    box_head: MLP,
    num_queries: int,
) -> SelectedQueries:
    """Score every token with the two-stage heads and keep the top ``num_queries`` per image.

    Ranking is by the largest class logit; padding tokens never rank (invalid-proposal tokens
    of the image do, as in the released models). The box head, a per-token MLP, runs on the
    chosen tokens only.
    """
    batch, num_tokens, dim = projected_memory.shape
    logits = class_head(projected_memory)
    ranking = logits.max(dim=-1).values.detach()
    valid_counts = torch.full((batch,), num_tokens, device=logits.device)
    if padding_mask is not None:
        ranking = ranking.masked_fill(padding_mask, float("-inf"))
        valid_counts = (~padding_mask).sum(dim=1)
    count = _query_count(valid_counts, num_queries, num_tokens)
    token_indices = ranking.topk(count, dim=1).indices
    query_mask = torch.arange(count, device=logits.device)[None, :] < valid_counts[:, None]
    num_classes = logits.shape[-1]
    hidden = projected_memory.gather(1, token_indices[..., None].expand(batch, count, dim))
    proposal_logits = proposals.box_logits.gather(
        1, token_indices[..., None].expand(batch, count, 4)
    )
    return SelectedQueries(
        token_indices=token_indices,
        query_mask=query_mask,
        logits=logits.gather(1, token_indices[..., None].expand(batch, count, num_classes)),
        box_logits=box_head(hidden) + proposal_logits,
        hidden=hidden,
    )


def _query_count(valid_counts: Tensor, num_queries: int, num_tokens: int) -> int:
    """Queries of the batch: ``num_queries``, or fewer when no image has that many tokens.

    Under export with a static input shape every image may fill the padded input (a constant;
    filler queries are masked); with symbolic sizes it is computed in the graph (at least 2,
    which every image has: one token per level).
    """
    if not is_exporting():
        return min(num_queries, int(valid_counts.max()))
    if isinstance(num_tokens, int):
        return min(num_queries, num_tokens)
    fewest = min(2, num_queries)
    return traced_size(
        valid_counts.max().clamp(min=fewest, max=num_queries),
        at_least=fewest,
        at_most=torch.sym_min(num_queries, num_tokens),
    )
