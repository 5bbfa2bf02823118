"""Named presets: every row of the Focus-DETR model zoo, plus small models for CPUs.

Each preset carries the architecture, the training recipe, the upstream download URL of its
released detrex checkpoint (``None`` where upstream published none) and the COCO val2017 box AP
published for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from focus_detr.config import Config, ConfigError, ModelConfig, TrainConfig

_RELEASES = "https://github.com/linxid/Focus-DETR-mindspore/releases/download/Focus-DETR"


@dataclass(frozen=True)
class Preset:
    """A named model configuration.

    Attributes:
        name: preset name (the config name of the upstream model zoo for the zoo rows).
        config: architecture and training recipe.
        weights_url: released checkpoint (``.zip`` or ``.pth``), or ``None``.
        coco_ap: published COCO val2017 box AP (percent), or ``None``.
        backbone_weights: file name of the ImageNet weights the recipe starts from.
        description: one line for listings.
    """

    name: str
    config: Config
    weights_url: str | None
    coco_ap: float | None
    backbone_weights: str | None
    description: str


def _schedule(epochs: int) -> TrainConfig:
    drops = {12: (11.0,), 24: (20.0,), 36: (30.0,)}[epochs]
    return TrainConfig(epochs=float(epochs), lr_drop_epochs=drops)


def _resnet(depth: int, epochs: int, url: str | None, ap: float) -> Preset:
    # The 24 and 36 epoch ResNet models were trained with DAB-DETR's position embedding.
    long_schedule = epochs > 12
    model = ModelConfig(
        backbone=f"resnet{depth}",
        position_temperature=20.0 if long_schedule else 10000.0,
        position_offset=0.0 if long_schedule else -0.5,
    )
    return Preset(
        name=f"focus_detr_r{depth}_4scale_{epochs}ep",
        config=Config(model=model, train=_schedule(epochs)),
        weights_url=url,
        coco_ap=ap,
        backbone_weights=f"torchvision R-{depth} (resnet{depth}-*.pth)",
        description=f"Focus-DETR R-{depth}, 4 scales, {epochs} epochs, IN1k backbone",
    )


_SWIN_ARCH = {
    # name: (backbone, window, pretrain size, drop path)
    "tiny_224": ("swin_tiny", 7, 224, 0.1),
    "base_384": ("swin_base", 12, 384, 0.2),
    "large_384": ("swin_large", 12, 384, 0.2),
}


def _swin(arch: str, epochs: int, in22k: bool, url: str | None, ap: float) -> Preset:
    backbone, window, size, drop_path = _SWIN_ARCH[arch]
    model = ModelConfig(
        backbone=backbone,
        swin_window_size=window,
        backbone_drop_path=drop_path,
    )
    tag = "_22k" if in22k else ""
    pretrain = "IN22k->1k" if in22k else "IN1k"
    weights = {
        ("tiny_224", False): "swin_tiny_patch4_window7_224.pth",
        ("tiny_224", True): "swin_tiny_patch4_window7_224_22kto1k_finetune.pth",
        ("base_384", True): "swin_base_patch4_window12_384_22k.pth",
        ("large_384", True): "swin_large_patch4_window12_384_22k.pth",
    }[(arch, in22k)]
    return Preset(
        name=f"focus_detr_swin_{arch}_4scale{tag}_{epochs}ep",
        config=Config(model=model, train=_schedule(epochs)),
        weights_url=url,
        coco_ap=ap,
        backbone_weights=weights,
        description=(
            f"Focus-DETR Swin-{arch[0].upper()}-{size}, 4 scales, {epochs} epochs, {pretrain}"
        ),
    )


ZOO: tuple[Preset, ...] = (
    _resnet(50, 12, f"{_RELEASES}/focus_detr_r50_4scale_12ep.zip", 48.8),
    _resnet(50, 24, f"{_RELEASES}/focus_detr_r50_4scale_24ep.zip", 50.3),
    _resnet(50, 36, f"{_RELEASES}/focus_detr_r50_4scale_36ep_v3.zip", 50.4),
    _resnet(101, 12, f"{_RELEASES}/focus_detr_r101_4scale_12ep.zip", 50.8),
    _resnet(101, 24, f"{_RELEASES}/focus_detr_r101_4scale_24ep.zip", 51.2),
    # Upstream's config for this row forgets to set depth=101; the released weights are R-101.
    _resnet(101, 36, f"{_RELEASES}/focus_detr_r101_4scale_36ep_v2.zip", 51.4),
    _swin("tiny_224", 12, False, f"{_RELEASES}/focus_detr_swin_tiny_224_4scale_12ep.zip", 50.0),
    _swin("tiny_224", 24, False, f"{_RELEASES}/focus_detr_swin_tiny_224_4scale_24ep.zip", 51.2),
    _swin(
        "tiny_224",
        36,
        False,
        "https://github.com/IDEA-Research/detrex-storage/releases/download/v0.1.1/"
        "focus_detr_swin_tiny_224_4scale_12ep.pth",
        52.5,
    ),
    # Upstream lists this row without a download link.
    _swin("tiny_224", 36, True, None, 53.2),
    _swin("base_384", 36, True, f"{_RELEASES}/focus_detr_swin_base_384_4scale_22k_36ep.pth", 56.2),
    # Upstream lists this row without a download link.
    _swin("large_384", 36, True, None, 56.3),
)

# Small models that train on a CPU (the built-in synthetic dataset's quick start).
SMALL: tuple[Preset, ...] = (
    Preset(
        name="focus_detr_tiny",
        config=Config(
            model=ModelConfig(
                backbone="resnet18",
                backbone_width=32,
                backbone_norm="bn",
                backbone_frozen_stages=0,
                num_classes=8,
                embed_dim=128,
                num_heads=4,
                num_encoder_layers=3,
                num_decoder_layers=3,
                feedforward_dim=512,
                num_queries=100,
                cascade=(1.0, 0.8, 0.6),
                num_dual_attention_tokens=100,
                num_detections=100,
                num_denoising_queries=50,
                test_min_size=192,
                test_max_size=320,
            ),
            # Tuned to learn the built-in synthetic set in under 15 minutes on 2 CPU cores
            # (docs/quickstart.md): a short schedule, a high learning rate, small scales.
            train=TrainConfig(
                epochs=6.0,
                lr_drop_epochs=(5.0,),
                lr=5e-4,
                backbone_lr_factor=1.0,
                total_batch_size=8,
                warmup_iters=50,
                num_workers=2,
                eval_every_epochs=6.0,
                checkpoint_every_iters=100,
                train_min_sizes=(144, 160, 176, 192, 208, 224),
                train_max_size=320,
                crop_resize_sizes=(144, 176, 208),
                crop_size_range=(112, 176),
            ),
        ),
        weights_url=None,
        coco_ap=None,
        backbone_weights=None,
        description="light ResNet-18 (width 32), 3+3 layers of width 128, trains on a CPU",
    ),
)


def _by_name() -> dict[str, Preset]:
    return {p.name: p for p in (*ZOO, *SMALL)}


def preset_names() -> list[str]:
    """Names of all presets, model-zoo rows first."""
    return list(_by_name())


class UnknownPresetError(ConfigError, KeyError):
    """No preset has that name (a ``KeyError`` too, as for a mapping)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        UnknownPresetError: listing the known names.
    """
    presets = _by_name()
    if name not in presets:
        known = "\n  ".join(presets)
        raise UnknownPresetError(f"unknown preset {name!r}; known presets:\n  {known}")
    return presets[name]
