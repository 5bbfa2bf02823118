"""Parity with the official detrex code (float64 fixtures computed by the original)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import focus_detr
from focus_detr.weights.parity import (
    compare_with_reference,
    preset_for_config,
    read_manifest,
    synthesize_state_dict,
    synthesize_tensor,
)
from tests.helpers import DATA, MANIFESTS


@pytest.fixture(scope="module")
def reference(dog_image: torch.Tensor) -> dict[str, np.ndarray]:
    arrays = dict(np.load(DATA / "parity_r50_dog_f64.npz"))
    arrays["image"] = dog_image.permute(1, 2, 0).numpy()
    return arrays


def test_r50_matches_official_float64_outputs(r50_float64, reference) -> None:
    report = compare_with_reference(r50_float64, reference)
    assert report.passed, "\n" + report.format()
    names = {check.name for check in report.checks}
    # the comparison really covered every stage
    for required in (
        "backbone_res5_slice",
        "neck_l3_chanmean",
        "temp_backbone_mask_prediction",
        "foreground_inds_l5",
        "oesm_select_token_ids_l0",
        "enc_topk_proposals",
        "enc_outputs_pred_logits",
        "decoder_inter_references",
        "aux_pred_logits",
        "pred_logits",
        "pred_boxes",
        "det_boxes_f64",
        "det_labels",
    ):
        assert required in names


def test_token_budgets_match_official_counts(r50_float64, dog_image, reference) -> None:
    with torch.no_grad():
        output = r50_float64([dog_image.double() / 255], raw=True)
    counts = output.encoder.token_counts[0].tolist()
    assert counts == reference["encoder_k_per_layer"].tolist()
    assert output.tokens.valid_token_counts.tolist() == reference["valid_token_nums"].tolist()


def test_comparison_detects_a_wrong_weight(r50_float64, reference) -> None:
    """The parity check is sensitive: one perturbed decoder weight makes it fail."""
    layer = r50_float64.decoder.layers[3].ffn.linear2
    original = layer.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.weight[0, 0] += 1e-3
        report = compare_with_reference(r50_float64, reference)
    finally:
        with torch.no_grad():
            layer.weight.copy_(original)
    failed = {check.name for check in report.failures()}
    assert "pred_logits" in failed
    assert "temp_backbone_mask_prediction" not in failed


def test_synthetic_weights_follow_the_fixture_rule() -> None:
    manifest = read_manifest(MANIFESTS / "focus_detr_r50.json.gz")
    assert manifest["num_entries"] == 705
    running_var = synthesize_tensor("backbone.stem.conv1.norm.running_var", (64,))
    assert bool(((running_var >= 1.0) & (running_var < 1.1)).all())
    weight = synthesize_tensor("neck.convs.0.conv.weight", (256, 512, 1, 1))
    assert abs(float(weight.std()) * 512**0.5 - 1.0) < 0.02
    again = synthesize_tensor("neck.convs.0.conv.weight", (256, 512, 1, 1))
    assert torch.equal(weight, again)


# Fixtures the original code computed (float64, its float32 constants promoted) on inputs and
# configurations that the R-50 dog fixture does not cover: Swin-T 12 ep on a 448x400 crop of
# another photo (matplotlib's public-domain grace_hopper.jpg), and R-50 24 ep (position
# temperature 20, offset 0) on an odd-sized 437x611 crop of the dog photo.
OTHER_FIXTURES = [
    ("parity_swin_tiny_hopper_f64.npz", "focus_detr_swin_tiny_224.json.gz"),
    ("parity_r50_24ep_dogcrop_f64.npz", "focus_detr_r50.json.gz"),
]


def _other_reference(fixture: str, dog_image: torch.Tensor) -> dict[str, np.ndarray]:
    reference = dict(np.load(DATA / fixture))
    if "image_crop_yyxx" in reference:  # a crop of the dog photo, not stored twice
        y0, y1, x0, x1 = reference["image_crop_yyxx"].tolist()
        reference["image"] = dog_image[:, y0:y1, x0:x1].permute(1, 2, 0).numpy()
    return reference


def _float64_model(preset: str, manifest: str) -> focus_detr.FocusDETR:
    model = focus_detr.build_model(preset, dtype=torch.float64).eval()
    focus_detr.load_checkpoint(model, synthesize_state_dict(read_manifest(MANIFESTS / manifest)))
    return model


@pytest.mark.parametrize(("fixture", "manifest"), OTHER_FIXTURES)
def test_other_images_and_presets_match_the_original(fixture, manifest, dog_image) -> None:
    reference = _other_reference(fixture, dog_image)
    preset = preset_for_config(reference["config"])
    assert preset == str(reference["config"])  # the fixture names a zoo config
    report = compare_with_reference(_float64_model(preset, manifest), reference)
    assert report.passed, "\n" + report.format()
    names = {check.name for check in report.checks}
    stage = "backbone_p3_slice" if "swin" in preset else "backbone_res5_slice"
    for required in (stage, "temp_backbone_mask_prediction", "pred_logits", "det_boxes_f64"):
        assert required in names


def test_24_epoch_position_settings_matter(dog_image) -> None:
    """The 12-epoch preset (temperature 10000, offset -0.5) does not reproduce the 24-epoch run."""
    fixture, manifest = OTHER_FIXTURES[1]
    reference = _other_reference(fixture, dog_image)
    report = compare_with_reference(
        _float64_model("focus_detr_r50_4scale_12ep", manifest), reference
    )
    failed = {check.name for check in report.failures()}
    assert "backbone_res5_slice" not in failed
    assert {"temp_backbone_mask_prediction", "pred_logits"} <= failed


def test_fixture_config_names_map_to_presets() -> None:
    upstream = "projects/focus_detr/configs/focus_detr_resnet/focus_detr_r101_4scale_24ep.py"
    assert preset_for_config(upstream) == "focus_detr_r101_4scale_24ep"
    assert (
        preset_for_config("focus_detr_swin_large_384_4scale_36ep")
        == "focus_detr_swin_large_384_4scale_22k_36ep"
    )
    # an unknown fixture config falls back to the manifest's model config
    assert preset_for_config("my_run", "focus_detr_swin_tiny_224") == (
        "focus_detr_swin_tiny_224_4scale_12ep"
    )
    assert preset_for_config("my_run", None) is None
