"""Every model-zoo preset builds on CPU and loads its architecture's detrex state dict."""

from __future__ import annotations

import pytest
import torch

import focus_detr
from focus_detr.parity import read_manifest, synthesize_state_dict
from focus_detr.presets import ZOO, get_preset
from tests.conftest import MANIFEST_OF_BACKBONE, MANIFESTS


@pytest.mark.parametrize("name", [preset.name for preset in ZOO])
def test_preset_loads_detrex_state_dict_strictly(name: str) -> None:
    model = focus_detr.build_model(name)
    manifest = read_manifest(MANIFESTS / MANIFEST_OF_BACKBONE[model.config.backbone])
    # values do not matter here: a distinct constant per entry keeps aliases checkable
    state = synthesize_state_dict(manifest, make=lambda key, shape: torch.full(shape, 0.5))
    report = focus_detr.load_checkpoint(model, state, strict=True)
    assert report.layout == "detrex"
    assert report.aliases_checked == manifest["num_alias_entries"] == 80
    assert not (report.missing or report.unexpected or report.mismatched)
    unique_parameters = sum(p.numel() for p in model.parameters())
    assert unique_parameters == manifest["num_params"]
    assert all(float(p.detach().flatten()[0]) == 0.5 for p in model.parameters())
    assert model.test_size == (800, 1333)  # the COCO recipes' test resize


def test_predictor_resizes_to_the_recipe_of_the_model() -> None:
    from focus_detr.inference import Predictor, recipe_test_size

    tiny = focus_detr.build_model("focus_detr_tiny")
    recipe = get_preset("focus_detr_tiny").config.train
    assert tiny.test_size == (recipe.test_min_size, recipe.test_max_size) != (800, 1333)
    image = torch.zeros(3, 300, 900, dtype=torch.uint8)
    predictor = Predictor(tiny)
    assert tuple(predictor._resize(image).shape[-2:]) == (
        round(300 * recipe.test_max_size / 900),
        recipe.test_max_size,
    )
    # an explicit short side keeps the recipe's long/short cap ratio unless a limit is given
    assert Predictor(tiny, min_size=800).max_size == round(
        800 * recipe.test_max_size / recipe.test_min_size
    )
    assert Predictor(tiny, min_size=800, max_size=900).max_size == 900
    assert recipe_test_size(None) == (800, 1333)
    assert recipe_test_size({"train": {"test_min_size": 64, "test_max_size": 96}}, "x") == (64, 96)
    assert recipe_test_size({}, "focus_detr_tiny") == tiny.test_size


def test_zoo_table() -> None:
    assert len(ZOO) == 12
    names = [preset.name for preset in ZOO]
    assert len(set(names)) == 12
    for preset in ZOO:
        assert preset.coco_ap is not None and 45 < preset.coco_ap < 60
        assert preset.weights_url is None or preset.weights_url.startswith("https://")
        model = preset.config.model
        long_resnet = model.backbone.startswith("resnet") and preset.config.train.epochs > 12
        assert model.position_temperature == (20.0 if long_resnet else 10000.0)
        assert model.position_offset == (0.0 if long_resnet else -0.5)
    assert get_preset("focus_detr_r101_4scale_36ep").config.model.backbone == "resnet101"
    assert get_preset("focus_detr_r50_4scale_36ep").config.train.lr_drop_epochs == (30.0,)
    assert (
        get_preset("focus_detr_swin_large_384_4scale_22k_36ep").config.model.swin_window_size == 12
    )


def test_unknown_preset_lists_known_names() -> None:
    with pytest.raises(KeyError, match="focus_detr_r50_4scale_12ep"):
        get_preset("focus_detr_r51")
