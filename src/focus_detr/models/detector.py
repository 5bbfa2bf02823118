"""Focus-DETR: backbone -> neck -> foreground scoring -> Focus encoder -> queries -> decoder."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from focus_detr.config import ModelConfig
from focus_detr.models.attention import MLP
from focus_detr.models.backbone_resnet import ResNet
from focus_detr.models.backbone_swin import SwinTransformer
from focus_detr.models.decoder import Decoder, DecoderMemory
from focus_detr.models.denoising import build_denoising_queries
from focus_detr.models.export_mode import is_exporting
from focus_detr.models.focus_encoder import EncoderInputs, FocusEncoder
from focus_detr.models.foreground import ForegroundScorer
from focus_detr.models.masking import zero_padding
from focus_detr.models.neck import ChannelMapper
from focus_detr.models.postprocess import postprocess
from focus_detr.models.query_selection import (
    SelectedQueries,
    TokenProjection,
    select_queries,
)
from focus_detr.models.stages import stage
from focus_detr.models.tokens import Tokens, flatten_levels
from focus_detr.ops.boxes import inverse_sigmoid
from focus_detr.structures import (
    Capabilities,
    DenoisingOutput,
    DenoisingQueries,
    FocusDETROutput,
    ImageBatch,
)

ImagesInput = ImageBatch | Sequence[Tensor] | Tensor


@dataclass(frozen=True)
class _DecodedQueries:
    """Decoder results of the matching queries (and of the denoising queries apart)."""

    logits: Tensor
    boxes: Tensor
    initial_references: Tensor
    references: Tensor
    last_hidden: Tensor
    denoising: DenoisingOutput | None


class FocusDETR(nn.Module):
    """The Focus-DETR detector. Build it with :func:`focus_detr.build_model`.

    Call ``model(images)`` with a list of ``[3, H, W]`` RGB tensors (``uint8`` 0-255 or float
    in [0, 1], any sizes) or an :class:`~focus_detr.structures.ImageBatch`; it returns one dict
    per image with ``boxes`` ``[K, 4]`` (xyxy pixels of that image), ``scores`` ``[K]`` and
    ``labels`` ``[K]``. ``model(images, raw=True)`` returns a
    :class:`~focus_detr.structures.FocusDETROutput` with every intermediate result.
    In training, ``model(images, targets, raw=True)`` adds the denoising queries; ``targets``
    are dicts with ``labels`` and ``boxes`` (cxcywh normalised to each image).

    ``model.config`` is the :class:`~focus_detr.config.ModelConfig` the model was built from and
    the only place its settings live: the token budget (``keep_ratio``, ``cascade``; change it
    with :meth:`set_keep_ratio` at any time), the pixel normalisation and the recipe's test-time
    resize (``test_min_size`` / ``test_max_size``, which :class:`~focus_detr.Predictor`,
    :func:`~focus_detr.evaluate`, the trainer and the CLI read). Checkpoints store it.

    It is the PyTorch runtime of :class:`focus_detr.predict.Detector` (``capabilities``).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        runtime="torch", raw_outputs=True, adjustable_keep_ratio=True, torch_threads=True
    )
    backbone: ResNet | SwinTransformer
    neck: ChannelMapper
    encoder: FocusEncoder
    decoder: Decoder

    def __init__(
        self,
        *,
        backbone: ResNet | SwinTransformer,
        neck: ChannelMapper,
        encoder: FocusEncoder,
        decoder: Decoder,
        config: ModelConfig,
    ) -> None:
        super().__init__()
        embed_dim, num_classes = config.embed_dim, config.num_classes
        self.config = config
        self.backbone = backbone
        self.neck = neck
        self.level_embeddings = nn.Parameter(torch.empty(config.num_levels, embed_dim).normal_())
        self.token_projection = TokenProjection(embed_dim)
        self.foreground_scorer = ForegroundScorer(embed_dim, config.num_levels)
        self.encoder = encoder
        self.two_stage_class_head = nn.Linear(embed_dim, num_classes)
        self.two_stage_box_head = MLP(embed_dim, embed_dim, 4, 3)
        self.query_embeddings = nn.Embedding(config.num_queries, embed_dim)
        self.decoder = decoder
        num_decoder_layers = len(decoder.layers)
        self.class_heads = nn.ModuleList(
            nn.Linear(embed_dim, num_classes) for _ in range(num_decoder_layers)
        )
        self.box_heads = nn.ModuleList(
            MLP(embed_dim, embed_dim, 4, 3) for _ in range(num_decoder_layers)
        )
        self.denoising_label_embedding = nn.Embedding(num_classes, embed_dim)
        self._init_heads()

    def _init_heads(self) -> None:
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for head in [*self.class_heads, self.two_stage_class_head]:
            nn.init.constant_(head.bias, prior_bias)
        for box_head in [*self.box_heads, self.two_stage_box_head]:
            nn.init.zeros_(box_head.layers[-1].weight)
            nn.init.zeros_(box_head.layers[-1].bias)
        nn.init.xavier_uniform_(self.query_embeddings.weight)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def keep_ratio(self) -> float:
        """Fraction of each image's tokens the encoder updates (``config.keep_ratio``)."""
        return self.config.keep_ratio

    @property
    def cascade(self) -> tuple[float, ...]:
        """Per encoder layer, the fraction of the kept tokens it updates (``config.cascade``)."""
        return self.config.cascade

    def set_keep_ratio(self, keep_ratio: float, cascade: Sequence[float] | None = None) -> None:
        """Change the token budget (e.g. 1.0 and a cascade of ones for the dense baseline).

        Raises:
            ConfigError: (a ``ValueError``) for a ratio outside (0, 1] or a cascade that does
                not fit the encoder.
        """
        changes: dict[str, object] = {"keep_ratio": keep_ratio}
        if cascade is not None:
            changes["cascade"] = tuple(cascade)
        self.config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]

    @property
    def dtype(self) -> torch.dtype:
        return self.query_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.query_embeddings.weight.device

    def forward(
        self,
        images: ImagesInput,
        targets: list[dict[str, Tensor]] | None = None,
        *,
        raw: bool = False,
    ) -> list[dict[str, Tensor]] | FocusDETROutput:
        """Detect objects; see the class docstring for inputs and outputs.

        The return type depends on ``raw`` alone, never on the training mode.
        """
        if targets is not None and not raw:
            raise ValueError(
                "targets only feed the denoising queries of the raw outputs: pass raw=True"
            )
        batch = self._as_batch(images)
        pixels, image_sizes = self._normalise(batch)
        # under export the graph cannot tell whether a batch is padded: it always masks
        padded = is_exporting() or bool(
            (image_sizes != torch.tensor(pixels.shape[-2:], device=image_sizes.device)).any()
        )
        sizes_if_padded = image_sizes if padded else None
        with stage("backbone"):
            features = self.backbone(pixels, sizes_if_padded)
        with stage("neck"):
            levels = self.neck(features, sizes_if_padded)
        with stage("foreground_scoring"):
            tokens = flatten_levels(
                levels,
                image_sizes,
                self.neck.strides,
                self.level_embeddings,
                temperature=self.config.position_temperature,
                offset=self.config.position_offset,
            )
            foreground_logits = self._score_foreground(tokens)
        with stage("encoder"):
            memory, trace = self.encoder(
                EncoderInputs(
                    features=tokens.features,
                    positions=tokens.positions,
                    references=tokens.references,
                    padding_mask=tokens.padding_mask,
                    level_shapes=tokens.level_shapes,
                    spatial_shapes=tokens.layout.spatial_shapes,
                    level_start_index=tokens.layout.level_start_index,
                    valid_ratios=tokens.valid_ratios,
                ),
                foreground_logits,
                self.two_stage_class_head,
                self.keep_ratio,
                self.cascade,
            )
        with stage("query_selection"):
            selected = self._select_queries(memory, tokens)
        with stage("decoder"):
            decoded = self._decode(memory, tokens, selected, targets)
        output = FocusDETROutput(
            logits=decoded.logits,
            boxes=decoded.boxes,
            query_mask=selected.query_mask,
            proposal_logits=selected.logits,
            proposal_boxes=selected.box_logits.sigmoid(),
            proposal_token_indices=selected.token_indices,
            foreground_logits=foreground_logits,
            tokens=tokens.layout,
            image_sizes=image_sizes,
            encoder=trace,
            initial_references=decoded.initial_references,
            decoder_references=decoded.references,
            decoder_last_hidden=decoded.last_hidden,
            proposal_hidden=selected.hidden,
            memory=memory,
            denoising=decoded.denoising,
        )
        if raw:
            return output
        with stage("postprocess"):
            return postprocess(
                output.pred_logits,
                output.pred_boxes,
                image_sizes,
                self.config.num_detections,
                output.query_mask,
            )

    def _as_batch(self, images: ImagesInput) -> ImageBatch:
        if isinstance(images, ImageBatch):
            batch = images.to(self.device)
            if batch.pixels.is_floating_point():
                _check_float_pixels(batch.pixels)
            return batch
        if isinstance(images, Tensor):
            if images.dim() == 3:
                images = [images]
            elif images.dim() == 4:
                images = list(images.unbind(0))
            else:
                raise ValueError(
                    f"images must be [3, H, W] or [B, 3, H, W], got {tuple(images.shape)}"
                )
        if not isinstance(images, Sequence) or len(images) == 0:
            raise ValueError(
                "images must be a non-empty list of [3, H, W] tensors or an ImageBatch"
            )
        for index, image in enumerate(images):
            if not isinstance(image, Tensor):
                raise ValueError(f"image {index} is a {type(image).__name__}, not a tensor")
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"image {index} must be [3, H, W] RGB, got shape {tuple(image.shape)}"
                )
            if image.dtype != torch.uint8 and not image.is_floating_point():
                raise ValueError(
                    f"image {index} must be uint8 or floating point, got {image.dtype}"
                )
        if all(image.dtype == torch.uint8 for image in images):
            return ImageBatch.from_images([image.to(self.device) for image in images])
        batch = ImageBatch.from_images(
            [
                image.to(self.device, self.dtype) / 255.0
                if image.dtype == torch.uint8
                else image.to(self.device, self.dtype)
                for image in images
            ]
        )
        _check_float_pixels(batch.pixels)
        return batch

    def _normalise(self, batch: ImageBatch) -> tuple[Tensor, Tensor]:
        """(pixels - mean) / std on the 0-255 scale, zero on padding."""
        if batch.pixels.dtype == torch.uint8:
            pixels = batch.pixels.to(self.dtype)
        elif batch.pixels.is_floating_point():
            pixels = batch.pixels.to(self.dtype) * 255.0
        else:
            raise ValueError(f"ImageBatch pixels must be uint8 or float, got {batch.pixels.dtype}")
        mean = torch.tensor(self.config.pixel_mean, dtype=torch.float64).to(pixels).view(1, 3, 1, 1)
        std = torch.tensor(self.config.pixel_std, dtype=torch.float64).to(pixels).view(1, 3, 1, 1)
        image_sizes = batch.image_sizes.to(pixels.device)
        return zero_padding((pixels - mean) / std, image_sizes), image_sizes

    def _score_foreground(self, tokens: Tokens) -> Tensor:
        """Foreground logits ``[B, N]`` of the projected (feature + position) tokens."""
        projected = self.token_projection(
            tokens.features + tokens.positions, tokens.proposals.valid
        )
        return self.foreground_scorer(
            projected, tokens.level_shapes, tokens.layout.valid_sizes, tokens.padding_mask
        )

    def _select_queries(self, memory: Tensor, tokens: Tokens) -> SelectedQueries:
        """Two-stage proposals: the best ``num_queries`` tokens of the encoder memory."""
        projected = self.token_projection(memory, tokens.proposals.valid)
        return select_queries(
            projected,
            tokens.proposals,
            tokens.padding_mask,
            self.two_stage_class_head,
            self.two_stage_box_head,
            self.config.num_queries,
        )

    def _decode(
        self,
        memory: Tensor,
        tokens: Tokens,
        selected: SelectedQueries,
        targets: list[dict[str, Tensor]] | None,
    ) -> _DecodedQueries:
        """(Denoising queries,) decoder and prediction heads on the selected queries."""
        batch, count = selected.token_indices.shape
        queries = self.query_embeddings.weight[:count][None].expand(batch, count, -1)
        initial_references = selected.box_logits.detach().sigmoid()
        references = initial_references
        denoising = self._denoising_queries(targets, count)
        attention_mask = None
        num_dn = 0
        if denoising is not None:
            num_dn = denoising.num_queries
            queries = torch.cat((denoising.label_embeddings, queries), dim=1)
            references = torch.cat((denoising.box_logits.sigmoid(), references), dim=1)
            attention_mask = denoising.attention_mask
        query_padding = None
        if is_exporting() or not bool(selected.query_mask.all()):
            query_padding = torch.cat(
                (selected.query_mask.new_zeros(batch, num_dn), ~selected.query_mask), dim=1
            )
        memory_view = DecoderMemory(
            memory,
            tokens.level_shapes,
            tokens.layout.spatial_shapes,
            tokens.layout.level_start_index,
            tokens.valid_ratios,
            tokens.padding_mask,
        )
        decoded = self.decoder(
            queries, references, memory_view, self.box_heads, attention_mask, query_padding
        )
        # "look forward twice": layer l's boxes refine layer l-1's undetached boxes
        layer_inputs = torch.cat((references[None], decoded.references[:-1]), dim=0)
        logits = torch.stack([head(h) for head, h in zip(self.class_heads, decoded.hidden)])
        boxes = torch.stack(
            [
                (head(h) + inverse_sigmoid(r)).sigmoid()
                for head, h, r in zip(self.box_heads, decoded.hidden, layer_inputs)
            ]
        )
        if self.training:
            # keeps the label embedding in the graph when a batch has no targets (DDP)
            logits = logits + 0.0 * self.denoising_label_embedding.weight[0, 0]
        dn_output = None
        if denoising is not None:
            dn_output = DenoisingOutput(
                logits=logits[:, :, :num_dn],
                boxes=boxes[:, :, :num_dn],
                num_groups=denoising.num_groups,
                group_size=denoising.group_size,
            )
        return _DecodedQueries(
            logits=logits[:, :, num_dn:],
            boxes=boxes[:, :, num_dn:],
            initial_references=initial_references,
            references=decoded.references[:, :, num_dn:],
            last_hidden=decoded.hidden[-1][:, num_dn:],
            denoising=dn_output,
        )

    def _denoising_queries(
        self, targets: list[dict[str, Tensor]] | None, num_matching: int
    ) -> DenoisingQueries | None:
        config = self.config
        if targets is None or not self.training or config.num_denoising_queries == 0:
            return None
        return build_denoising_queries(
            targets,
            num_denoising_queries=config.num_denoising_queries,
            num_matching_queries=num_matching,
            num_classes=self.num_classes,
            label_embedding=self.denoising_label_embedding.weight,
            label_noise_ratio=config.label_noise_ratio,
            box_noise_scale=config.box_noise_scale,
        )


def _check_float_pixels(pixels: Tensor) -> None:
    """Refuse NaN/inf pixels and warn about float images outside [0, 1] (``pixels`` [B, 3, H, W]).

    Both would otherwise pass silently: NaN gives no detections, 0-255 floats are scaled by
    255 a second time. One min/max reduction and one device sync per batch (the zero padding
    lies inside [0, 1] and changes neither check).
    """
    low, high = pixels.flatten(1).aminmax(dim=1)
    for index, (image_low, image_high) in enumerate(zip(low.tolist(), high.tolist())):
        if not (math.isfinite(image_low) and math.isfinite(image_high)):  # NaN propagates
            raise ValueError(f"image {index} has NaN or infinite pixel values")
        if image_low < 0.0 or image_high > 1.0:
            warnings.warn(
                f"image {index} is floating point with values in [{image_low:.3g}, "
                f"{image_high:.3g}]: float images must be in [0, 1] (pass uint8 for 0-255, or "
                "divide by 255)",
                UserWarning,
                stacklevel=2,
            )
