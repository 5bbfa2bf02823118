"""Typed, validated configuration: the detector, its training recipe and its losses.

Only the top-level builders read these (:func:`focus_detr.build_model` a :class:`ModelConfig`,
:func:`focus_detr.losses.build_criterion` a :class:`LossConfig`, the trainer a
:class:`TrainConfig`); submodules receive plain typed arguments. Configs are frozen
dataclasses, validated when they are made, whatever the source (a preset, ``--set`` overrides,
a checkpoint's stored dict): values must have the field's type, be finite, and lie within
bounds that reject absurd sizes before anything is allocated. :func:`apply_overrides` derives a
new config from dotted ``key=value`` strings (the CLI's ``--set``); :func:`config_from_dict`
reads the dict stored in checkpoints (:func:`config_to_dict`).
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import math
import types
import typing
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

#: Largest image side (pixels) accepted for any resize setting.
MAX_IMAGE_SIDE = 16384


class ConfigError(ValueError):
    """A configuration value is invalid."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _in_range(name: str, value: float, low: float, high: float) -> None:
    """``low <= value <= high`` and finite."""
    _check(
        math.isfinite(value) and low <= value <= high,
        f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}",
    )


def _sizes_ok(name: str, sizes: tuple[int, ...]) -> None:
    _check(len(sizes) >= 1, f"{name} needs at least one size")
    for size in sizes:
        _in_range(name, size, 1, MAX_IMAGE_SIDE)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and preprocessing of a Focus-DETR model (defaults: the R-50 12-epoch model).

    Attributes:
        backbone: one of :data:`BACKBONES`; ResNets use the detectron2 layout (FrozenBN).
        backbone_width: channels of the ResNet stem (64 for the standard networks); smaller
            values give the light backbones of the CPU presets.
        backbone_norm: ResNet normalisation: ``frozen_bn`` (released models, ImageNet
            initialised) or ``bn`` (trainable BatchNorm, for training from scratch).
        swin_window_size: Swin attention window (7 for the 224 models, 12 for 384).
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
        test_min_size / test_max_size: the test-time resize of the model's recipe (short side,
            long-side limit; detectron2's ``ResizeShortestEdge``). Prediction, evaluation and
            export resize to it unless told otherwise (see :meth:`test_resize`).
    """

    backbone: str = "resnet50"
    backbone_width: int = 64
    backbone_norm: str = "frozen_bn"
    swin_window_size: int = 7
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
    test_min_size: int = 800
    test_max_size: int = 1333

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _check(
            self.backbone in BACKBONES,
            f"backbone must be one of {BACKBONES}, got {self.backbone!r}",
        )
        _check(self.backbone_norm in ("frozen_bn", "bn"), "backbone_norm must be frozen_bn or bn")
        for name, low, high in (
            ("backbone_width", 1, 512),
            ("swin_window_size", 1, 64),
            ("backbone_frozen_stages", 0, 5),
            ("num_classes", 1, 100_000),
            ("embed_dim", 32, 4096),
            ("num_heads", 1, 128),
            ("num_levels", 2, 8),
            ("num_points", 1, 64),
            ("num_encoder_layers", 1, 64),
            ("num_decoder_layers", 1, 64),
            ("feedforward_dim", 1, 65536),
            ("num_queries", 1, 100_000),
            ("num_dual_attention_tokens", 1, 100_000),
            ("num_detections", 1, 100_000),
            ("num_denoising_queries", 0, 100_000),
        ):
            _in_range(name, getattr(self, name), low, high)
        for name in ("backbone_drop_path", "dropout", "label_noise_ratio"):
            _in_range(name, getattr(self, name), 0.0, 1.0)
        _in_range("box_noise_scale", self.box_noise_scale, 0.0, 100.0)
        _in_range("position_temperature", self.position_temperature, 1e-6, 1e12)
        _in_range("position_offset", self.position_offset, -1e6, 1e6)
        _check(self.embed_dim % self.num_heads == 0, "embed_dim must be divisible by num_heads")
        _check(self.embed_dim % 32 == 0, "embed_dim must be a multiple of 32 (GroupNorm groups)")
        _check(
            len(self.cascade) == self.num_encoder_layers,
            f"cascade has {len(self.cascade)} entries but there are "
            f"{self.num_encoder_layers} encoder layers",
        )
        _check(
            math.isfinite(self.keep_ratio) and 0.0 < self.keep_ratio <= 1.0,
            f"keep_ratio must be in (0, 1], got {self.keep_ratio!r}",
        )
        _check(
            all(math.isfinite(c) and 0.0 < c <= 1.0 for c in self.cascade),
            f"cascade entries must be in (0, 1], got {self.cascade}",
        )
        _check(
            all(a >= b for a, b in itertools.pairwise(self.cascade)),
            "cascade must be non-increasing (each layer keeps a subset of the previous one)",
        )
        _check(
            len(self.pixel_mean) == 3 and len(self.pixel_std) == 3, "pixel mean/std need 3 values"
        )
        for value in self.pixel_mean:
            _in_range("pixel_mean", value, -1e4, 1e4)
        for value in self.pixel_std:
            _in_range("pixel_std", value, 1e-6, 1e4)
        _sizes_ok("test_min_size", (self.test_min_size,))
        _sizes_ok("test_max_size", (self.test_max_size,))
        _check(
            self.test_max_size >= self.test_min_size,
            f"test_max_size ({self.test_max_size}) must be >= test_min_size ({self.test_min_size})",
        )

    @property
    def is_swin(self) -> bool:
        return self.backbone.startswith("swin")

    def test_resize(
        self, min_size: int | None = None, max_size: int | None = None
    ) -> tuple[int, int]:
        """The test resize (short side, long-side limit) to use.

        The given sizes, else the recipe's ``test_min_size`` / ``test_max_size``. A short side
        given without a limit keeps the recipe's ratio of limit to short side (at least the
        recipe's limit): 600 -> 1333 for the zoo, 800 -> 1333 for a 192/320 recipe.
        """
        short = self.test_min_size if min_size is None else int(min_size)
        if max_size is None:
            limit = max(self.test_max_size, round(short * self.test_max_size / self.test_min_size))
        else:
            limit = int(max_size)
        _sizes_ok("the test short side", (short,))
        _check(
            1 <= limit <= MAX_IMAGE_SIDE,
            f"the test long-side limit must be in [1, {MAX_IMAGE_SIDE}]",
        )
        return short, limit


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe (the detrex defaults for Focus-DETR).

    The schedule is given in epochs and turned into iterations from the dataset size and the
    total batch (``total_batch_size`` stays the same whatever the number of processes and
    ``grad_accumulation`` steps). Augmentation: random horizontal flip, then with probability
    ``1 - crop_probability`` resize the short side to one of ``train_min_sizes`` (long side at
    most ``train_max_size``), else resize to one of ``crop_resize_sizes``, crop a random
    ``crop_size_range`` region and resize as in the first branch. The test resize belongs to
    the model (:attr:`ModelConfig.test_min_size`).

    ``ema``: keep an exponential moving average of the weights (:mod:`focus_detr.engine.ema`;
    decay ``ema_decay`` ramped up over ``ema_tau`` steps); it is evaluated beside the raw
    weights and is what ``model_final.pth`` / ``model_best.pth`` hold (the raw weights are
    saved beside it). ``patience``: stop after this many periodic evaluations without a better
    AP (0: never); ``model_best.pth`` keeps the best evaluated weights.
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
    filter_empty: bool = True
    ema: bool = False
    ema_decay: float = 0.999
    ema_tau: float = 200.0
    patience: int = 0

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _check(
            math.isfinite(self.epochs) and 0 < self.epochs <= 100_000,
            f"epochs must be in (0, 100000], got {self.epochs!r}",
        )
        _check(
            math.isfinite(self.lr) and 0 < self.lr <= 10.0,
            f"lr must be a finite number in (0, 10], got {self.lr!r}",
        )
        _in_range("backbone_lr_factor", self.backbone_lr_factor, 0.0, 100.0)
        _in_range("weight_decay", self.weight_decay, 0.0, 10.0)
        _check(len(self.betas) == 2, "betas needs two values")
        for beta in self.betas:
            _check(math.isfinite(beta) and 0.0 <= beta < 1.0, f"betas must be in [0, 1): {beta}")
        _check(
            not math.isnan(self.clip_grad_norm),
            "clip_grad_norm must be a number (<= 0 turns clipping off)",
        )
        for name, low, high in (
            ("total_batch_size", 1, 1 << 16),
            ("grad_accumulation", 1, 1 << 16),
            ("warmup_iters", 0, 1 << 30),
            ("num_workers", 0, 256),
            ("checkpoint_every_iters", 0, 1 << 30),
            ("log_every_iters", 1, 1 << 30),
            ("max_nonfinite_steps", 0, 1 << 30),
            ("seed", 0, 2**63 - 1),
            ("patience", 0, 1 << 30),
        ):
            _in_range(name, getattr(self, name), low, high)
        _in_range("warmup_factor", self.warmup_factor, 0.0, 1.0)
        _check(
            math.isfinite(self.ema_decay) and 0.0 <= self.ema_decay < 1.0,
            f"ema_decay must be in [0, 1), got {self.ema_decay!r}",
        )
        _in_range("ema_tau", self.ema_tau, 0.0, 1e9)
        _in_range("eval_every_epochs", self.eval_every_epochs, 0.0, 100_000.0)
        _check(self.amp in ("none", "bf16", "fp16"), "amp must be none, bf16 or fp16")
        _in_range("crop_probability", self.crop_probability, 0.0, 1.0)
        _check(
            all(math.isfinite(e) and 0 < e <= self.epochs for e in self.lr_drop_epochs),
            f"lr drops must lie in the run (0, {self.epochs}], got {self.lr_drop_epochs}",
        )
        _sizes_ok("train_min_sizes", self.train_min_sizes)
        _sizes_ok("train_max_size", (self.train_max_size,))
        _sizes_ok("crop_resize_sizes", self.crop_resize_sizes)
        _sizes_ok("crop_size_range", self.crop_size_range)
        _check(
            len(self.crop_size_range) == 2 and self.crop_size_range[0] <= self.crop_size_range[1],
            f"crop_size_range must be (low, high) with low <= high, got {self.crop_size_range}",
        )


@dataclass(frozen=True)
class LossConfig:
    """Training losses (the Focus-DETR / DINO defaults; the criterion equals detrex's).

    Every loss group (final decoder layer, auxiliary layers, two-stage proposals, denoising
    queries) uses the same per-term weights.

    Attributes:
        match_class_cost / match_box_cost / match_giou_cost: Hungarian matching costs
            (focal class cost, L1 of cxcywh boxes, negative GIoU).
        focal_alpha / focal_gamma: focal loss (classification, matching, foreground tokens).
        class_weight / box_weight / giou_weight: loss weights of the focal class, L1 and
            ``1 - GIoU`` terms.
        foreground_weight: weight of the foreground token loss (``select_loss``).
        foreground_level_bounds: largest centre-to-side distance (pixels) separating the
            foreground levels: level ``l`` supervises objects in ``(bound[l-1], bound[l]]``.
            One value fewer than the model's levels; None: ``64, 128, 256, ...`` (detrex's
            ``limit_range``).
    """

    match_class_cost: float = 2.0
    match_box_cost: float = 5.0
    match_giou_cost: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    class_weight: float = 1.0
    box_weight: float = 5.0
    giou_weight: float = 2.0
    foreground_weight: float = 1.5
    foreground_level_bounds: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _coerce_fields(self)
        for name in ("match_class_cost", "match_box_cost", "match_giou_cost"):
            _in_range(name, getattr(self, name), 0.0, 1e6)
        _check(
            self.match_class_cost + self.match_box_cost + self.match_giou_cost > 0,
            "at least one matching cost must be positive",
        )
        _in_range("focal_alpha", self.focal_alpha, 0.0, 1.0)
        _in_range("focal_gamma", self.focal_gamma, 0.0, 100.0)
        for name in ("class_weight", "box_weight", "giou_weight", "foreground_weight"):
            _in_range(name, getattr(self, name), 0.0, 1e6)
        bounds = self.foreground_level_bounds
        if bounds is not None:
            _check(
                all(math.isfinite(b) and b > 0 for b in bounds)
                and all(a < b for a, b in itertools.pairwise(bounds)),
                f"foreground_level_bounds must be increasing positive values, got {bounds}",
            )

    def level_ranges(self, num_levels: int) -> tuple[tuple[float, float], ...]:
        """``(low, high]`` range of the largest centre-to-side distance for each level."""
        if self.foreground_level_bounds is None:
            bounds = [float(2 ** (level + 6)) for level in range(num_levels - 1)]
        else:
            bounds = list(self.foreground_level_bounds)
        _check(
            len(bounds) == num_levels - 1,
            f"foreground_level_bounds needs {num_levels - 1} values for {num_levels} levels, "
            f"got {len(bounds)}",
        )
        lows = [-1.0, *bounds]
        highs = [*bounds, math.inf]
        return tuple(zip(lows, highs))


@dataclass(frozen=True)
class Config:
    """A model, its training recipe and its losses."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        self.loss.level_ranges(self.model.num_levels)  # the bounds fit the model's levels


_SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "loss": LossConfig}


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Return ``config`` with dotted overrides applied, e.g. ``["model.keep_ratio=0.3"]``.

    Values are parsed as Python literals when possible (``0.3``, ``(1.0, 0.5)``, ``True``,
    ``None``) and kept as strings otherwise; they must then fit the field's type.
    """
    updates: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        section, _, name = key.strip().partition(".")
        if section not in updates or not name:
            raise ConfigError(
                f"override key {key!r} must start with one of "
                + ", ".join(f"'{s}.'" for s in _SECTIONS)
            )
        fields = {f.name for f in dataclasses.fields(_SECTIONS[section])}
        if name not in fields:
            raise ConfigError(f"unknown {section} setting {name!r}; known: {sorted(fields)}")
        updates[section][name] = _parse_literal(raw.strip())
    try:
        return Config(
            **{
                section: dataclasses.replace(getattr(config, section), **changes)
                for section, changes in updates.items()
            }
        )
    except ConfigError as error:
        raise ConfigError(f"--set: {error}") from error


def _parse_literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def config_to_dict(config: Config | ModelConfig | TrainConfig | LossConfig) -> dict[str, Any]:
    """Plain dict (JSON-serialisable) of a config."""
    return dataclasses.asdict(config)


# Settings that older checkpoints stored and that no longer exist (dropped silently).
_RETIRED_MODEL_KEYS = ("swin_pretrain_size",)


def config_from_dict(values: Any) -> Config:
    """Inverse of :func:`config_to_dict` for a whole config (missing sections keep defaults).

    Checkpoints written before the test resize moved from ``train`` to ``model`` are read too.

    Raises:
        ConfigError: unknown settings, wrong types or values out of bounds.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"a stored configuration must be a dict, got {type(values).__name__}")
    sections = {name: dict(values.get(name) or {}) for name in _SECTIONS}
    unknown_sections = set(values) - set(_SECTIONS)
    if unknown_sections:
        raise ConfigError(f"unknown configuration sections {sorted(unknown_sections)}")
    for key in _RETIRED_MODEL_KEYS:
        sections["model"].pop(key, None)
    for key in ("test_min_size", "test_max_size"):
        if key in sections["train"]:
            sections["model"].setdefault(key, sections["train"].pop(key))
    return Config(
        **{name: _section_from_dict(_SECTIONS[name], sections[name], name) for name in _SECTIONS}
    )


def model_config_from_dict(values: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a stored ``{"model": ...}`` dict or of a bare model dict."""
    if isinstance(values, dict) and "model" in values and isinstance(values["model"], dict):
        return config_from_dict(values).model
    return config_from_dict({"model": values}).model


def _section_from_dict(cls: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown {section} settings {sorted(unknown)}")
    return cls(**values)


def _coerce_fields(config: Any) -> None:
    """Check every field's value against its type (ints, floats, tuples...), converting lists
    to tuples and ints to floats where the field is a float; runs in ``__post_init__``."""
    hints = get_type_hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        converted = _coerce(value, hints[item.name], item.name)
        if converted is not value:
            object.__setattr__(config, item.name, converted)


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        return _coerce(value, inner[0], name)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # "inf", "nan": parsed, then refused by the bounds
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else (value,)
        args = typing.get_args(annotation)
        item_types = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(items):
            raise ConfigError(f"{name} needs {len(item_types)} values, got {value!r}")
        converted = tuple(_coerce(v, t, name) for v, t in zip(items, item_types))
        return converted
    return value
