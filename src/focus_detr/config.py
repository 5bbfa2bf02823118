"""Typed, validated configuration of the detector and of its training recipe.

Only :func:`focus_detr.models.build_model` reads a :class:`ModelConfig`; submodules receive
plain typed arguments. Configs are frozen dataclasses; :func:`apply_overrides` derives a new one
from dotted ``key=value`` strings (the CLI's ``--set``).
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_type_hints

BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "swin_tiny",
    "swin_small",
    "swin_base",
    "swin_large",
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Focus-DETR model. The defaults are the published R-50 12-epoch model.

    Attributes:
        backbone: one of :data:`BACKBONES`; ResNets use the detectron2 layout (FrozenBN).
        backbone_width: channels of the ResNet stem (64 for the standard networks); smaller
            values give the light backbones of the CPU presets.
        backbone_norm: ResNet normalisation: ``frozen_bn`` (released models, ImageNet
            initialised) or ``bn`` (trainable BatchNorm, for training from scratch).
        swin_window_size: Swin attention window (7 for the 224 models, 12 for 384).
        swin_pretrain_size: ImageNet resolution of the Swin weights (informative only).
        backbone_frozen_stages: ResNet stages frozen during training (1 = stem, as detrex).
        backbone_drop_path: Swin stochastic depth rate during training.
        num_classes: number of object categories (80 for COCO).
        embed_dim: transformer width.
        num_heads: attention heads of every attention layer.
        num_levels: feature levels (backbone levels + one extra stride-2 level).
        num_points: deformable attention sampling points per head and level.
        num_encoder_layers / num_decoder_layers: depths.
        feedforward_dim: hidden width of the transformer FFNs.
        dropout: dropout of attention and FFN layers (0 in every published model).
        num_queries: decoder queries chosen from the two-stage proposals.
        position_temperature / position_offset: sine position embedding settings (the 24/36
            epoch ResNet checkpoints were trained with 20 / 0.0).
        keep_ratio: fraction of each image's tokens the encoder updates (the paper's rho).
        cascade: per encoder layer, the fraction of the kept tokens that layer updates; one
            entry per encoder layer, non-increasing. ``keep_ratio=1`` with a cascade of ones is
            the dense baseline.
        num_dual_attention_tokens: tokens per layer (top multi-category scores) that run
            self-attention before deformable attention.
        num_detections: detections returned per image (top scores over query-class pairs).
        num_denoising_queries: contrastive denoising queries in training (0 disables).
        label_noise_ratio / box_noise_scale: denoising noise.
        pixel_mean / pixel_std: RGB normalisation on the 0-255 scale.
    """

    backbone: str = "resnet50"
    backbone_width: int = 64
    backbone_norm: str = "frozen_bn"
    swin_window_size: int = 7
    swin_pretrain_size: int = 224
    backbone_frozen_stages: int = 1
    backbone_drop_path: float = 0.1
    num_classes: int = 80
    embed_dim: int = 256
    num_heads: int = 8
    num_levels: int = 4
    num_points: int = 4
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    feedforward_dim: int = 2048
    dropout: float = 0.0
    num_queries: int = 900
    position_temperature: float = 10000.0
    position_offset: float = -0.5
    keep_ratio: float = 0.5
    cascade: tuple[float, ...] = (1.0, 0.8, 0.6, 0.6, 0.4, 0.2)
    num_dual_attention_tokens: int = 300
    num_detections: int = 300
    num_denoising_queries: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self) -> None:
        _check(
            self.backbone in BACKBONES,
            f"backbone must be one of {BACKBONES}, got {self.backbone!r}",
        )
        _check(self.backbone_width > 0, "backbone_width must be positive")
        _check(self.backbone_norm in ("frozen_bn", "bn"), "backbone_norm must be frozen_bn or bn")
        _check(self.num_classes >= 1, "num_classes must be >= 1")
        _check(self.embed_dim % self.num_heads == 0, "embed_dim must be divisible by num_heads")
        _check(self.embed_dim % 32 == 0, "embed_dim must be a multiple of 32 (GroupNorm groups)")
        _check(
            self.embed_dim % 4 == 0, "embed_dim must be divisible by 4 (4-d query sine embedding)"
        )
        _check(self.num_levels >= 2, "num_levels must be >= 2")
        _check(
            self.num_encoder_layers >= 1 and self.num_decoder_layers >= 1, "need >= 1 layer each"
        )
        _check(
            len(self.cascade) == self.num_encoder_layers,
            f"cascade has {len(self.cascade)} entries but there are "
            f"{self.num_encoder_layers} encoder layers",
        )
        _check(0.0 < self.keep_ratio <= 1.0, "keep_ratio must be in (0, 1]")
        _check(all(0.0 < c <= 1.0 for c in self.cascade), "cascade entries must be in (0, 1]")
        _check(
            all(a >= b for a, b in zip(self.cascade, self.cascade[1:])),
            "cascade must be non-increasing (each layer keeps a subset of the previous one)",
        )
        _check(self.num_queries >= 1, "num_queries must be >= 1")
        _check(self.num_detections >= 1, "num_detections must be >= 1")
        _check(self.num_dual_attention_tokens >= 1, "num_dual_attention_tokens must be >= 1")
        _check(self.num_denoising_queries >= 0, "num_denoising_queries must be >= 0")
        _check(
            len(self.pixel_mean) == 3 and len(self.pixel_std) == 3, "pixel mean/std need 3 values"
        )
        _check(all(s > 0 for s in self.pixel_std), "pixel_std must be positive")

    @property
    def is_swin(self) -> bool:
        return self.backbone.startswith("swin")

    @property
    def is_dense(self) -> bool:
        """True when every token is updated by every encoder layer (the dense baseline)."""
        return self.keep_ratio == 1.0 and all(c == 1.0 for c in self.cascade)


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe (the detrex defaults for Focus-DETR).

    The schedule is given in epochs and turned into iterations from the dataset size and the
    total batch (``total_batch_size`` stays the same whatever the number of processes and
    ``grad_accumulation`` steps). Augmentation: random horizontal flip, then with probability
    ``1 - crop_probability`` resize the short side to one of ``train_min_sizes`` (long side at
    most ``train_max_size``), else resize to one of ``crop_resize_sizes``, crop a random
    ``crop_size_range`` region and resize as in the first branch. Test: short side
    ``test_min_size``, long side at most ``test_max_size``.
    """

    epochs: float = 12.0
    lr_drop_epochs: tuple[float, ...] = (11.0,)
    lr: float = 1e-4
    backbone_lr_factor: float = 0.1
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad_norm: float = 0.1
    total_batch_size: int = 16
    grad_accumulation: int = 1
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    amp: str = "none"
    num_workers: int = 4
    eval_every_epochs: float = 1.0
    checkpoint_every_iters: int = 5000
    log_every_iters: int = 20
    max_nonfinite_steps: int = 20
    seed: int = 42
    train_min_sizes: tuple[int, ...] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    train_max_size: int = 1333
    crop_probability: float = 0.5
    crop_resize_sizes: tuple[int, ...] = (400, 500, 600)
    crop_size_range: tuple[int, int] = (384, 600)
    test_min_size: int = 800
    test_max_size: int = 1333
    filter_empty: bool = True

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "epochs must be positive")
        _check(self.lr > 0, "lr must be positive")
        _check(self.total_batch_size >= 1, "total_batch_size must be >= 1")
        _check(self.grad_accumulation >= 1, "grad_accumulation must be >= 1")
        _check(self.amp in ("none", "bf16", "fp16"), "amp must be none, bf16 or fp16")
        _check(0.0 <= self.crop_probability <= 1.0, "crop_probability must be in [0, 1]")
        _check(
            all(0 < e <= self.epochs for e in self.lr_drop_epochs), "lr drops must lie in the run"
        )
        _check(
            self.test_min_size > 0 and self.test_max_size >= self.test_min_size, "bad test sizes"
        )


@dataclass(frozen=True)
class Config:
    """A model and its training recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """A configuration value is invalid."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Return ``config`` with dotted overrides applied, e.g. ``["model.keep_ratio=0.3"]``.

    Values are parsed as Python literals when possible (``0.3``, ``(1.0, 0.5)``, ``True``) and
    kept as strings otherwise; they are then converted to the field's type.
    """
    updates: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        section, _, name = key.strip().partition(".")
        if section not in updates or not name:
            raise ConfigError(f"override key {key!r} must start with 'model.' or 'train.'")
        target = getattr(config, section)
        fields = {f.name for f in dataclasses.fields(target)}
        if name not in fields:
            raise ConfigError(f"unknown {section} setting {name!r}; known: {sorted(fields)}")
        updates[section][name] = _convert(raw.strip(), get_type_hints(type(target))[name], key)
    return Config(
        model=dataclasses.replace(config.model, **updates["model"]),
        train=dataclasses.replace(config.train, **updates["train"]),
    )


def _convert(raw: str, annotation: Any, key: str) -> Any:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    origin = getattr(annotation, "__origin__", None)
    try:
        if annotation is bool:
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if annotation in (int, float, str):
            return annotation(value)
        if origin is tuple:
            items = value if isinstance(value, (list, tuple)) else (value,)
            args = annotation.__args__
            item_type = args[0]
            return tuple(item_type(v) for v in items)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"cannot convert {raw!r} for {key}: {error}") from error
    return value


def config_to_dict(config: Config | ModelConfig | TrainConfig) -> dict[str, Any]:
    """Plain dict (JSON-serialisable) of a config."""
    return dataclasses.asdict(config)


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """Inverse of ``config_to_dict`` for a model config; unknown keys are an error."""
    known = {f.name: f for f in dataclasses.fields(ModelConfig)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown model settings {sorted(unknown)}")
    hints = get_type_hints(ModelConfig)
    converted = {}
    for name, value in values.items():
        if getattr(hints[name], "__origin__", None) is tuple:
            value = tuple(value)
        converted[name] = value
    return ModelConfig(**converted)
