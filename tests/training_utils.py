"""Helpers shared by the training tests: a tiny recipe, a tiny synthetic dataset, CLI flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from focus_detr.config import Config, TrainConfig
from focus_detr.data.coco import CocoDetection
from focus_detr.data.synthetic import SyntheticPaths, generate_synthetic_coco
from focus_detr.data.transforms import build_train_transforms
from focus_detr.presets import get_preset
from tests.conftest import tiny_config

BASE_PRESET = "focus_detr_tiny"


def tiny_recipe(model: dict | None = None, **train: object) -> Config:
    """The conftest tiny model (8 synthetic classes) with small images and a short schedule."""
    settings: dict[str, object] = dict(
        epochs=4.0,
        lr_drop_epochs=(3.0,),
        lr=1e-4,
        backbone_lr_factor=0.1,
        total_batch_size=4,
        num_workers=0,
        eval_every_epochs=0.0,
        checkpoint_every_iters=1000,
        log_every_iters=1,
        train_min_sizes=(64, 72, 80),
        train_max_size=112,
        crop_resize_sizes=(72, 80),
        crop_size_range=(48, 64),
        test_min_size=80,
        test_max_size=112,
    )
    settings.update(train)
    model_settings: dict[str, object] = {"num_classes": 8, **(model or {})}
    return Config(model=tiny_config(**model_settings), train=TrainConfig(**settings))  # type: ignore[arg-type]


def make_synthetic(
    root: Path, num_train: int = 8, num_val: int = 4, image_size: tuple[int, int] | None = None
) -> SyntheticPaths:
    """A small synthetic COCO-format dataset (images of 64-96 pixels, 1-3 objects)."""
    return generate_synthetic_coco(
        root,
        num_train=num_train,
        num_val=num_val,
        image_size=image_size,
        image_size_range=(64, 96),
        max_objects=3,
        seed=0,
    )


def same_size_recipe(**train: object) -> dict[str, object]:
    """Train settings that resize every (square) image to 64x64: batches without padding.

    Padding changes the valid ratios by one rounding step, and at initialisation the deformable
    sampling points sit exactly on bilinear kinks (integer offsets from cell centres), where a
    one-ulp change flips the one-sided derivative of the sampling offsets. Equal sizes keep
    comparisons of different batch splits at float round-off.
    """
    return {
        "train_min_sizes": (64,),
        "train_max_size": 64,
        "crop_probability": 0.0,
        "test_min_size": 64,
        "test_max_size": 64,
        **train,
    }


def train_set(paths: SyntheticPaths, config: Config) -> CocoDetection:
    return CocoDetection(
        paths.train_images,
        paths.train_annotations,
        build_train_transforms(config.train),
        filter_empty=True,
    )


def val_set(paths: SyntheticPaths) -> CocoDetection:
    return CocoDetection(paths.val_images, paths.val_annotations)


def cli_overrides(config: Config) -> list[str]:
    """``--set`` flags turning the base preset into ``config``."""
    base = get_preset(BASE_PRESET).config
    flags: list[str] = []
    for section, target, reference in (
        ("model", config.model, base.model),
        ("train", config.train, base.train),
    ):
        for item in dataclasses.fields(target):
            value = getattr(target, item.name)
            if value != getattr(reference, item.name):
                flags += ["--set", f"{section}.{item.name}={value!r}"]
    return flags


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model state of ``run_dir/model_final.pth``."""
    payload = torch.load(run_dir / "model_final.pth", map_location="cpu", weights_only=True)
    return payload["model"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(
        float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
        for k in a
        if a[k].is_floating_point()
    )
