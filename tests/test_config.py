"""Configuration: validation from every source, overrides, the loss section, stored configs."""

from __future__ import annotations

import math

import pytest
import torch

import focus_detr
from focus_detr.config import (
    Config,
    ConfigError,
    LossConfig,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from focus_detr.losses import build_criterion


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_queries=1000000000000", "num_queries"),
        ("model.num_queries=10**12", "num_queries must be an integer"),
        ("model.embed_dim=200", "multiple of 32"),
        ("model.num_classes=3.5", "num_classes must be an integer"),
        ("model.keep_ratio=nan", "keep_ratio"),
        ("model.test_min_size=0", "test_min_size"),
        ("model.test_max_size=100000", "test_max_size"),
        ("train.lr=inf", "lr must be a finite number"),
        ("train.lr=-1", "lr must be a finite number"),
        ("train.total_batch_size=0", "total_batch_size"),
        ("train.filter_empty=maybe", "True or False"),
        ("train.betas=(0.9,)", "betas needs 2 values"),
        ("loss.focal_alpha=2", "focal_alpha"),
        ("loss.giou_weight=-1", "giou_weight"),
        ("loss.match_class_cost=0", None),  # alone it is fine: the others are positive
        ("loss.foreground_level_bounds=(64, 32, 16)", "increasing"),
        ("loss.foreground_level_bounds=(64, 128)", "needs 3 values for 4 levels"),
        ("loss.nonsense=1", "unknown loss setting"),
        ("optimizer.lr=1", "must start with one of"),
    ],
)
def test_overrides_are_validated(override: str, message: str | None) -> None:
    if message is None:
        apply_overrides(Config(), [override])
        return
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


def test_stored_configurations_are_validated_before_use() -> None:
    """A checkpoint's config is refused before anything is allocated from it."""
    stored = config_to_dict(Config())
    stored["model"]["num_queries"] = 10**12
    with pytest.raises(ConfigError, match="num_queries"):
        config_from_dict(stored)
    stored["model"]["num_queries"] = "900"
    with pytest.raises(ConfigError, match="num_queries must be an integer"):
        config_from_dict(stored)
    with pytest.raises(ConfigError, match="unknown model settings"):
        config_from_dict({"model": {"layers": 3}})


def test_config_round_trips_through_its_dict() -> None:
    config = apply_overrides(
        Config(),
        ["model.test_min_size=600", "loss.foreground_level_bounds=(32, 96, 200)", "train.lr=2e-4"],
    )
    assert config_from_dict(config_to_dict(config)) == config


def test_configs_of_older_checkpoints_are_read() -> None:
    """Before the test resize moved to the model, checkpoints stored it in the train section
    (and a Swin setting that no longer exists)."""
    stored = config_to_dict(Config())
    del stored["loss"]
    for key in ("test_min_size", "test_max_size"):
        del stored["model"][key]
    stored["train"].update(test_min_size=192, test_max_size=320)
    stored["model"]["swin_pretrain_size"] = 224
    config = config_from_dict(stored)
    assert config.model.test_resize() == (192, 320)
    assert config.loss == LossConfig()


def test_loss_overrides_change_the_criterion() -> None:
    model = ModelConfig(num_classes=5, num_decoder_layers=2)
    default = build_criterion(LossConfig(), model)
    changed = build_criterion(
        apply_overrides(
            Config(model=model),
            ["loss.giou_weight=3.5", "loss.foreground_weight=0.5", "loss.focal_gamma=1.0"],
        ).loss,
        model,
    )
    assert default.weight_dict["loss_giou_0"] == 2.0 and changed.weight_dict["loss_giou_0"] == 3.5
    assert default.weight_dict["select_loss"] == 1.5 and changed.weight_dict["select_loss"] == 0.5
    assert changed.focal_gamma == 1.0 and changed.matcher.gamma == 1.0
    bounds = build_criterion(LossConfig(foreground_level_bounds=(10, 20, 30)), model)
    assert bounds.level_ranges == ((-1, 10), (10, 20), (20, 30), (30, math.inf))


def test_set_keep_ratio_keeps_the_config_true_and_validates() -> None:
    model = focus_detr.build_model("focus_detr_tiny")
    model.set_keep_ratio(0.25)
    assert model.config.keep_ratio == 0.25 == model.keep_ratio
    with pytest.raises(ConfigError, match="keep_ratio"):
        model.set_keep_ratio(1.5)
    assert model.config.keep_ratio == 0.25


def test_a_checkpoint_with_an_absurd_configuration_is_refused_before_allocation(
    tmp_path, capsys
) -> None:
    from focus_detr.cli import main

    stored = config_to_dict(Config())
    stored["model"]["num_queries"] = 10**12  # would ask for petabytes
    torch.save({"model": {"w": torch.zeros(1)}, "config": stored}, tmp_path / "bad.pth")
    (tmp_path / "image.png").write_bytes(b"")
    arguments = ["predict", str(tmp_path / "image.png"), "--weights", str(tmp_path / "bad.pth")]
    assert main([*arguments, "--out", str(tmp_path / "out")]) == 2
    assert "num_queries must be a finite number in [1, 100000]" in capsys.readouterr().err
