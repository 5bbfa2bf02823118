"""Parity with the official detrex code (float64 fixtures computed by the original)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focus_detr.parity import compare_with_reference, read_manifest, synthesize_tensor
from tests.conftest import DATA, MANIFESTS


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
