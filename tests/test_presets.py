"""Every model-zoo preset builds on CPU and loads its architecture's detrex state dict."""

from __future__ import annotations

import pytest
import torch

import focus_detr
from focus_detr.presets import ZOO, get_preset, preset_names
from focus_detr.weights.parity import read_manifest, synthesize_state_dict
from tests.helpers import MANIFEST_OF_BACKBONE, MANIFESTS


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
    # the COCO recipes evaluate at detectron2's 800/1333 (the zoo's published AP)
    assert model.config.test_resize() == (800, 1333)


def test_predictor_resizes_to_the_recipe_of_the_model() -> None:
    from focus_detr.predict.predictor import Predictor

    tiny = focus_detr.build_model("focus_detr_tiny")  # trained and evaluated at 192/320
    image = torch.zeros(3, 300, 900, dtype=torch.uint8)
    assert tuple(Predictor(tiny)._resize(image).shape[-2:]) == (107, 320)  # long side capped
    assert tuple(Predictor(tiny)._resize(image[:, :100, :150]).shape[-2:]) == (192, 288)
    # an explicit short side keeps the recipe's long/short cap ratio unless a limit is given
    assert (Predictor(tiny, min_size=800).min_size, Predictor(tiny, min_size=800).max_size) == (
        800,
        round(800 * 320 / 192),
    )
    assert Predictor(tiny, min_size=800, max_size=900).max_size == 900
    zoo = focus_detr.build_model("focus_detr_r50_4scale_24ep")
    assert Predictor(zoo, min_size=600).max_size == 1333


def test_released_checkpoint_urls_are_https_release_assets() -> None:
    for name in preset_names():
        url = get_preset(name).weights_url
        assert url is None or (url.startswith("https://") and url.endswith((".zip", ".pth")))


def test_unknown_preset_lists_known_names() -> None:
    with pytest.raises(KeyError, match="focus_detr_r50_4scale_12ep"):
        get_preset("focus_detr_r51")
    with pytest.raises(focus_detr.ConfigError, match="unknown preset 'focus_detr_r51'"):
        focus_detr.build_model("focus_detr_r51")
