"""Standard multi-head attention, the feed-forward block, small MLP heads and the settings
every transformer layer shares."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focus_detr.models.export_mode import is_exporting


@dataclass(frozen=True)
class LayerSettings:
    """Widths shared by the encoder and decoder layers.

    Attributes:
        embed_dim: token width.
        num_heads: attention heads (self-attention and deformable attention).
        num_levels: feature levels the deformable attention samples.
        num_points: deformable sampling points per head and level.
        feedforward_dim: hidden width of the FFN.
        dropout: dropout of attention and FFN outputs.
    """

    embed_dim: int
    num_heads: int
    num_levels: int
    num_points: int
    feedforward_dim: int
    dropout: float


def inference_fast_path(x: Tensor) -> bool:
    """True where an inference-only formulation (``out=`` buffers, in-place updates) may run:
    no gradient is recorded, ``torch.export`` is not tracing (it needs the plain ops), and
    ``x`` is a CPU tensor outside autocast. These paths save memory traffic on CPU caches; on
    a GPU their blocked products only add kernel launches, and ``out=`` products escape
    autocast's casts."""
    return (
        not torch.is_grad_enabled()
        and not is_exporting()
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
    )


class MultiheadAttention(nn.Module):
    """Multi-head attention with packed input projections (``nn.MultiheadAttention`` layout).

    Parameters are ``in_proj_weight [3D, D]``, ``in_proj_bias [3D]`` and ``out_proj``, so
    checkpoints of ``nn.MultiheadAttention`` load unchanged; the product runs through
    ``F.scaled_dot_product_attention``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``[B, Q, D]``, ``[B, S, D]``, ``[B, S, D]`` -> ``[B, Q, D]``.

        Args:
            key_padding_mask: ``[B, S]`` bool, True = this key is ignored.
            attn_mask: ``[Q, S]`` bool, True = query may not attend to this key.
            Every query must keep at least one key.
        """
        batch, num_queries, dim = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        if query is key and inference_fast_path(query):
            # self-attention: queries and keys in one product (the input is read once)
            packed = F.linear(query, self.in_proj_weight[: 2 * dim], self.in_proj_bias[: 2 * dim])
            packed = packed.view(batch, num_queries, 2, self.num_heads, -1)
            q, k = packed.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self._split_heads(F.linear(query, w_q, b_q))
            k = self._split_heads(F.linear(key, w_k, b_k))
        v = self._split_heads(F.linear(value, w_v, b_v))
        allowed = None
        if key_padding_mask is not None:
            allowed = ~key_padding_mask[:, None, None, :]
        if attn_mask is not None:
            allowed_pairs = ~attn_mask[None, None]
            allowed = allowed_pairs if allowed is None else allowed & allowed_pairs
        if allowed is not None and is_exporting():
            # an additive mask is added to the scores as it broadcasts; ONNX's lowering of a
            # boolean one expands it to [B, heads, Q, S] first (measured: 3x slower in ORT)
            allowed = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
                ~allowed, float("-inf")
            )
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, num_queries, dim)
        return self.out_proj(out)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)


class FeedForward(nn.Module):
    """``linear2(dropout(relu(linear1(x))))`` (the residual is added by the caller)."""

    #: Rows per block of the inference path: a ``[1024, hidden]`` block (8 MB for 2048) stays
    #: in cache between the two products, where a full ``[tokens, hidden]`` one (91 MB for the
    #: 11k tokens of an R-50 800x1333 encoder layer) goes to memory and back.
    inference_block_rows = 1024

    def __init__(self, embed_dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(embed_dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., D]`` -> ``[..., D]``."""
        if inference_fast_path(x) and not (self.training and self.dropout.p > 0):
            return self._blocked_forward(x)
        return self.dropout(self.linear2(self.dropout(F.relu_(self.linear1(x)))))

    def _blocked_forward(self, x: Tensor) -> Tensor:
        """The same products, ``inference_block_rows`` rows at a time through one reused
        hidden buffer, written into one output (no full-size hidden tensor is allocated)."""
        flat = x.reshape(-1, x.shape[-1])
        rows = flat.shape[0]
        out = flat.new_empty(rows, self.linear2.out_features)
        hidden = flat.new_empty(min(rows, self.inference_block_rows), self.linear1.out_features)
        w1, w2 = self.linear1.weight.t(), self.linear2.weight.t()
        for start in range(0, rows, self.inference_block_rows):
            stop = min(rows, start + self.inference_block_rows)
            block = hidden[: stop - start]
            torch.addmm(self.linear1.bias, flat[start:stop], w1, out=block)
            torch.addmm(self.linear2.bias, block.relu_(), w2, out=out[start:stop])
        return out.view(*x.shape[:-1], self.linear2.out_features)


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's box head and query-position head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu_(x)
        return x
