"""DINO decoder: deformable cross-attention with iterative box refinement.

Each layer: self-attention, deformable cross-attention (the reference box steers the sampling),
FFN, each followed by LayerNorm; the query position is an MLP of the sine embedding of the
reference box. After each layer the layer's box head refines the reference; "look forward
twice" (DINO Sec. 3.5): the refined box of layer ``l`` is predicted from the undetached
reference, while the next layer receives it detached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from focus_detr.models.attention import MLP, FeedForward, LayerSettings, MultiheadAttention
from focus_detr.models.deformable_attention import MultiScaleDeformableAttention, SharedValues
from focus_detr.models.position_encoding import box_sine_embedding
from focus_detr.ops.boxes import inverse_sigmoid


@dataclass
class DecoderMemory:
    """The encoder output the decoder attends to (see :class:`MultiScaleDeformableAttention`).

    ``level_shapes`` holds the (height, width) of each level as Python ints (symbols under
    export), the values of ``spatial_shapes``. ``shared_values``: ``tokens`` prepared once for
    every layer's cross-attention (:meth:`MultiScaleDeformableAttention.shared_values`; set
    by :class:`Decoder`).
    """

    tokens: Tensor
    level_shapes: Sequence[tuple[int, int]]
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor | None
    padding_mask: Tensor | None
    shared_values: SharedValues | None = None


class DecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention and FFN (post-norm)."""

    def __init__(self, settings: LayerSettings) -> None:
        super().__init__()
        dim, dropout = settings.embed_dim, settings.dropout
        self.self_attention = MultiheadAttention(dim, settings.num_heads, dropout)
        self.self_attention_norm = nn.LayerNorm(dim)
        self.cross_attention = MultiScaleDeformableAttention.from_settings(settings)
        self.cross_attention_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, settings.feedforward_dim, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        queries: Tensor,
        query_positions: Tensor,
        references: Tensor,
        memory: DecoderMemory,
        self_attention_mask: Tensor | None,
        query_padding_mask: Tensor | None,
    ) -> Tensor:
        q = queries + query_positions
        attended = self.self_attention(
            q,
            q,
            queries,
            key_padding_mask=query_padding_mask,
            attn_mask=self_attention_mask,
        )
        queries = self.self_attention_norm(queries + self.dropout(attended))
        if memory.shared_values is not None:
            attended = self.cross_attention.attend_shared(
                queries + query_positions, references, memory.shared_values, memory.valid_ratios
            )
        else:
            attended = self.cross_attention(
                queries + query_positions,
                references,
                memory.tokens,
                memory.spatial_shapes,
                memory.level_start_index,
                memory.valid_ratios,
                memory.padding_mask,
                level_shapes=memory.level_shapes,
            )
        queries = self.cross_attention_norm(queries + attended)
        return self.ffn_norm(queries + self.ffn(queries))


@dataclass
class DecoderOutput:
    """Per-layer decoder results.

    Attributes:
        hidden: ``[L, B, Q, D]`` each layer's output after the shared output norm.
        references: ``[L, B, Q, 4]`` refined reference boxes (undetached) after each layer.
    """

    hidden: Tensor
    references: Tensor


class Decoder(nn.Module):
    """Stack of :class:`DecoderLayer` with box refinement by the per-layer box heads."""

    def __init__(self, num_layers: int, settings: LayerSettings) -> None:
        super().__init__()
        embed_dim = settings.embed_dim
        self.embed_dim = embed_dim
        self.layers = nn.ModuleList(DecoderLayer(settings) for _ in range(num_layers))
        self.query_position_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.output_norm = nn.LayerNorm(embed_dim)

    def forward(
        self,
        queries: Tensor,
        references: Tensor,
        memory: DecoderMemory,
        box_heads: nn.ModuleList,
        self_attention_mask: Tensor | None = None,
        query_padding_mask: Tensor | None = None,
    ) -> DecoderOutput:
        """``queries`` ``[B, Q, D]``, ``references`` ``[B, Q, 4]`` cxcywh in [0, 1].

        ``query_padding_mask`` ``[B, Q]`` marks filler queries (never attended to);
        ``self_attention_mask`` ``[Q, Q]`` blocks pairs (denoising groups).
        """
        hidden, refined = [], []
        layers: list[DecoderLayer] = list(self.layers)  # type: ignore[arg-type]
        if layers:
            shared = layers[0].cross_attention.shared_values(
                memory.tokens, memory.level_shapes, memory.spatial_shapes, memory.padding_mask
            )
            memory = dataclasses.replace(memory, shared_values=shared)
        for layer, box_head in zip(layers, box_heads):
            # The sine embedding uses the reference in the image's own coordinates (detrex
            # scales it by the level-0 valid ratio: identical without padding, batch-dependent
            # with it).
            query_positions = self.query_position_head(
                box_sine_embedding(references, num_feats=self.embed_dim // 2)
            )
            queries = layer(
                queries,
                query_positions,
                references,
                memory,
                self_attention_mask,
                query_padding_mask,
            )
            new_references = (box_head(queries) + inverse_sigmoid(references)).sigmoid()
            hidden.append(self.output_norm(queries))
            refined.append(new_references)
            references = new_references.detach()
        return DecoderOutput(hidden=torch.stack(hidden), references=torch.stack(refined))
