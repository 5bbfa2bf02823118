"""Data structures passed between the data pipeline, the model and the losses.

Conventions: ``padding_mask`` is True on padding; boxes are ``cxcywh`` normalised to each image's
own (unpadded) size unless a name says ``xyxy`` (absolute pixels); token order is level 0
(stride 8) first, row-major inside a level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Capabilities:
    """What a runtime of the detector offers beyond detecting (see
    :class:`focus_detr.predict.Detector`).

    Attributes:
        runtime: its name: ``torch``, ``onnxruntime``, ``openvino``.
        raw_outputs: ``model(images, raw=True)`` returns a :class:`FocusDETROutput` (every
            intermediate result: focus maps, foreground scores, the encoder's token trace).
        adjustable_keep_ratio: ``set_keep_ratio`` changes the token budget; exported graphs
            computed it at export and refuse.
        torch_threads: the work runs on PyTorch's CPU thread pool (``torch.set_num_threads``
            applies to it).
    """

    runtime: str
    raw_outputs: bool = False
    adjustable_keep_ratio: bool = False
    torch_threads: bool = False


@dataclass
class ImageBatch:
    """Images padded at the bottom/right to a common size.

    Attributes:
        pixels: ``[B, 3, H, W]`` RGB, ``uint8`` (0-255) or floating point in [0, 1].
        image_sizes: ``[B, 2]`` int64, the (height, width) of each image inside ``pixels``.
    """

    pixels: Tensor
    image_sizes: Tensor

    def __post_init__(self) -> None:
        if self.pixels.dim() != 4 or self.pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [B, 3, H, W], got {tuple(self.pixels.shape)}")
        if self.image_sizes.shape != (self.pixels.shape[0], 2):
            expected = (self.pixels.shape[0], 2)
            raise ValueError(
                f"image_sizes must be {list(expected)}, got {tuple(self.image_sizes.shape)}"
            )

    @classmethod
    def from_images(cls, images: Sequence[Tensor], size_divisibility: int = 1) -> ImageBatch:
        """Pad a list of ``[3, H, W]`` images (same dtype) into one batch."""
        if len(images) == 0:
            raise ValueError("need at least one image")
        dtypes = {img.dtype for img in images}
        if len(dtypes) != 1:
            raise ValueError(f"all images must have the same dtype, got {sorted(map(str, dtypes))}")
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"image {i} must be [3, H, W], got {tuple(img.shape)}")
            if img.shape[1] < 1 or img.shape[2] < 1:
                raise ValueError(f"image {i} is empty: {tuple(img.shape)}")
        height = max(int(img.shape[1]) for img in images)
        width = max(int(img.shape[2]) for img in images)
        if size_divisibility > 1:
            height = -(-height // size_divisibility) * size_divisibility
            width = -(-width // size_divisibility) * size_divisibility
        pixels = images[0].new_zeros((len(images), 3, height, width))
        for i, img in enumerate(images):
            pixels[i, :, : img.shape[1], : img.shape[2]].copy_(img)
        sizes = torch.tensor([[img.shape[1], img.shape[2]] for img in images], dtype=torch.long)
        return cls(pixels=pixels, image_sizes=sizes.to(pixels.device))

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(self.pixels.to(device), self.image_sizes.to(device))

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


@dataclass
class TokenLayout:
    """Where the multi-scale tokens come from.

    Attributes:
        spatial_shapes: ``[L, 2]`` int64 (height, width) of each level of the padded batch.
        level_start_index: ``[L]`` int64 index of each level's first token.
        valid_sizes: ``[B, L, 2]`` int64 (height, width) of each image's valid area per level.
        padding_mask: ``[B, N]`` bool, True on tokens that lie in padding.
        strides: pixel stride of each level (8, 16, 32, 64 for the standard models).
    """

    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_sizes: Tensor
    padding_mask: Tensor
    strides: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return int(self.padding_mask.shape[1])

    @property
    def valid_token_counts(self) -> Tensor:
        """``[B]`` number of non-padding tokens of each image."""
        return (~self.padding_mask).sum(dim=1)


@dataclass
class EncoderTrace:
    """What the Focus encoder chose, per encoder layer ``l`` (for tests and visualisation).

    Attributes:
        token_indices: list of ``[B, K_l]`` int64 token ids updated by layer ``l``, by
            decreasing foreground score; for image ``b`` only the first ``token_counts[b, l]``
            entries are real (the rest are filler that influences nothing). One entry per
            encoder layer (``K_l = 0`` for a layer with nothing to update).
        token_counts: ``[B, num_layers]`` int64 per-image number of tokens of each layer.
        category_scores: list of ``[B, K_l]`` multi-category scores
            (``max class logit * foreground logit``) of the gathered tokens.
        dual_attention_indices: list of ``[B, T_l]`` int64 token ids that ran self-attention
            (the top multi-category scores), first ``dual_attention_counts[b, l]`` real.
        dual_attention_counts: ``[B, num_layers]`` int64.
    """

    token_indices: list[Tensor]
    token_counts: Tensor
    category_scores: list[Tensor]
    dual_attention_indices: list[Tensor]
    dual_attention_counts: Tensor


@dataclass
class DenoisingQueries:
    """Contrastive denoising queries built from the targets (training only).

    Layout of the ``num_groups * group_size`` denoising queries of every image: group ``g``
    occupies ``[g * group_size, (g + 1) * group_size)``; inside a group, the first
    ``group_size // 2`` slots are positive queries (slot ``j`` = noisy copy of target ``j``),
    the next ``group_size // 2`` negative queries (slot ``group_size // 2 + j`` = a far noisy
    copy of target ``j``); slots beyond an image's number of targets are zero filler.

    Attributes:
        label_embeddings: ``[B, num_dn, embed_dim]`` content queries (embedded noisy labels).
        box_logits: ``[B, num_dn, 4]`` inverse-sigmoid of the noisy cxcywh boxes.
        attention_mask: ``[num_dn + num_queries, num_dn + num_queries]`` bool, True = blocked.
        num_groups: number of denoising groups.
        group_size: ``2 * max number of targets in the batch``.
    """

    label_embeddings: Tensor
    box_logits: Tensor
    attention_mask: Tensor
    num_groups: int
    group_size: int

    @property
    def num_queries(self) -> int:
        return self.num_groups * self.group_size


@dataclass
class DenoisingOutput:
    """Decoder predictions for the denoising queries.

    Attributes:
        logits: ``[num_decoder_layers, B, num_dn, num_classes]``.
        boxes: ``[num_decoder_layers, B, num_dn, 4]`` cxcywh.
        num_groups / group_size: as in :class:`DenoisingQueries`.
    """

    logits: Tensor
    boxes: Tensor
    num_groups: int
    group_size: int


@dataclass
class FocusDETROutput:
    """Raw outputs of :class:`focus_detr.models.FocusDETR` (``model(images, raw=True)``).

    Attributes:
        logits: ``[num_decoder_layers, B, Q, C]`` class logits of every decoder layer; the last
            layer's are the final predictions (``pred_logits``).
        boxes: ``[num_decoder_layers, B, Q, 4]`` cxcywh boxes in [0, 1] of each image's size.
        query_mask: ``[B, Q]`` bool, False for queries that do not exist because an image has
            fewer tokens than queries (they are never matched nor returned).
        proposal_logits: ``[B, Q, C]`` two-stage class logits of the chosen proposals.
        proposal_boxes: ``[B, Q, 4]`` two-stage boxes of the chosen proposals (cxcywh).
        proposal_token_indices: ``[B, Q]`` int64 token id of each proposal (query ``i`` uses
            content embedding ``i``).
        foreground_logits: ``[B, N]`` foreground score logit of every token.
        tokens: geometry of the tokens.
        image_sizes: ``[B, 2]`` (height, width) of each image in pixels.
        encoder: per-layer token selections of the Focus encoder.
        initial_references: ``[B, Q, 4]`` decoder input reference boxes.
        decoder_references: ``[num_decoder_layers, B, Q, 4]`` reference boxes after each layer.
        decoder_last_hidden: ``[B, Q, D]`` last decoder layer output after the output norm.
        proposal_hidden: ``[B, Q, D]`` projected encoder memory at the proposals.
        memory: ``[B, N, D]`` encoder output.
        denoising: predictions of the denoising queries (training with targets only).
    """

    logits: Tensor
    boxes: Tensor
    query_mask: Tensor
    proposal_logits: Tensor
    proposal_boxes: Tensor
    proposal_token_indices: Tensor
    foreground_logits: Tensor
    tokens: TokenLayout
    image_sizes: Tensor
    encoder: EncoderTrace
    initial_references: Tensor
    decoder_references: Tensor
    decoder_last_hidden: Tensor
    proposal_hidden: Tensor
    memory: Tensor
    denoising: DenoisingOutput | None = None

    @property
    def pred_logits(self) -> Tensor:
        """``[B, Q, C]`` final class logits."""
        return self.logits[-1]

    @property
    def pred_boxes(self) -> Tensor:
        """``[B, Q, 4]`` final cxcywh boxes."""
        return self.boxes[-1]
