"""Build a :class:`FocusDETR` from a preset name or a :class:`ModelConfig`."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from focus_detr.config import ModelConfig
from focus_detr.models.attention import LayerSettings
from focus_detr.models.backbone_resnet import ResNet
from focus_detr.models.backbone_swin import SwinTransformer, swin_config
from focus_detr.models.decoder import Decoder
from focus_detr.models.deformable_attention import MultiScaleDeformableAttention
from focus_detr.models.detector import FocusDETR
from focus_detr.models.focus_encoder import FocusEncoder
from focus_detr.models.neck import ChannelMapper
from focus_detr.presets import get_preset


def build_backbone(config: ModelConfig) -> ResNet | SwinTransformer:
    """The backbone named by ``config.backbone`` (randomly initialised)."""
    if config.is_swin:
        return SwinTransformer(
            **swin_config(config.backbone),
            window_size=config.swin_window_size,
            drop_path_rate=config.backbone_drop_path,
        )
    depth = int(config.backbone.removeprefix("resnet"))
    return ResNet(
        depth,
        width=config.backbone_width,
        norm=config.backbone_norm,
        frozen_stages=config.backbone_frozen_stages,
    )


def build_model(
    preset: str | ModelConfig = "focus_detr_r50_4scale_12ep",
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **overrides: object,
) -> FocusDETR:
    """Build a randomly initialised Focus-DETR.

    Args:
        preset: a preset name (see :func:`focus_detr.preset_names`) or a model config.
        dtype: parameter dtype (e.g. ``torch.float64`` for parity checks).
        device: where to put the model.
        overrides: model settings to change, e.g. ``num_classes=3`` or ``keep_ratio=0.3``.

    The model keeps its configuration (preprocessing and test resize included) as
    ``model.config``.
    """
    config = get_preset(preset).config.model if isinstance(preset, str) else preset
    if overrides:
        config = dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
    model = _assemble(config)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model


def _assemble(config: ModelConfig) -> FocusDETR:
    backbone = build_backbone(config)
    neck = ChannelMapper(
        tuple(backbone.out_channels),
        tuple(backbone.strides),
        out_channels=config.embed_dim,
        num_levels=config.num_levels,
    )
    layers = LayerSettings(
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        num_levels=config.num_levels,
        num_points=config.num_points,
        feedforward_dim=config.feedforward_dim,
        dropout=config.dropout,
    )
    encoder = FocusEncoder(
        config.num_encoder_layers,
        layers,
        num_dual_attention_tokens=config.num_dual_attention_tokens,
    )
    decoder = Decoder(config.num_decoder_layers, layers)
    model = FocusDETR(backbone=backbone, neck=neck, encoder=encoder, decoder=decoder, config=config)
    _init_transformer(model)
    return model


def _init_transformer(model: FocusDETR) -> None:
    """detrex's initialisation of the transformer part (xavier, then deformable-specific)."""
    parts: tuple[nn.Module, ...] = (
        model.encoder,
        model.decoder,
        model.token_projection,
        model.foreground_scorer,
    )
    for part in parts:
        for parameter in part.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
    for module in model.modules():
        if isinstance(module, MultiScaleDeformableAttention):
            module.reset_parameters()
