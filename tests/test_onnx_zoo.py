"""ONNX exports with dynamic sizes: zoo presets (synthesised release weights) and the quick-start
model; and the corner-gather backend (slow: each export takes minutes on a CPU).

The zoo weights are the parity fixtures' synthetic values, not trained ones: scores are close
together, which makes the comparison strict (a small numerical change reorders detections).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import focus_detr
from focus_detr.deploy.onnx_export import export_onnx
from focus_detr.deploy.onnx_runtime import OnnxRuntimeDetector
from focus_detr.parity import read_manifest, synthesize_state_dict, synthesize_tensor
from tests.helpers import DATA, MANIFEST_OF_BACKBONE, MANIFESTS, randomize_
from tests.onnx_checks import MIN_MATCHED, matched_fraction, random_images

pytestmark = pytest.mark.slow


def _photo(height: int, width: int) -> torch.Tensor:
    photo = Image.open(DATA / "dog.png").convert("RGB").resize((width, height))
    return torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).contiguous()


def _zoo_model(preset: str) -> focus_detr.FocusDETR:
    model = focus_detr.build_model(preset).eval()
    manifest = read_manifest(MANIFESTS / MANIFEST_OF_BACKBONE[model.config.backbone])
    state = synthesize_state_dict(manifest, make=lambda k, s: synthesize_tensor(k, s).float())
    focus_detr.load_checkpoint(model, state)
    return model


def _assert_matches(model: focus_detr.FocusDETR, detector: OnnxRuntimeDetector, images) -> None:
    with torch.no_grad():
        expected = model(images)
    found = detector(images)
    for image, want, got in zip(images, expected, found):
        assert matched_fraction(want, got) >= MIN_MATCHED, tuple(image.shape)


@pytest.mark.parametrize(
    "preset",
    [
        "focus_detr_r50_4scale_12ep",
        "focus_detr_swin_tiny_224_4scale_12ep",
        "focus_detr_swin_base_384_4scale_22k_36ep",
    ],
)
def test_zoo_export_computes_the_token_scores_of_pytorch_at_unseen_sizes(preset, tmp_path) -> None:
    """Backbone, neck and foreground scorer of the zoo architectures, at sizes the export never
    saw: every token's foreground logit as PyTorch computes it (float32 rounding apart).

    The detections themselves are not compared here: with synthetic (or random) weights the
    scores of these deep models are near ties (0.9776 against 0.9775), and the top-k selections
    flip on float32 rounding, PyTorch's own included: its float32 detections match its float64
    ones by the issue's criterion for only 48-64% of the top 50 on some of these images, while
    ONNX Runtime's token scores agree with PyTorch's to 2e-6. End-to-end detections are compared
    on a trained model (docs/deploy.md) and on the quick-start architecture with random weights,
    whose scores are not tied (``test_onnx_export.py``, ``test_dynamic_export_...`` below).
    """
    model = _zoo_model(preset)
    report = export_onnx(model, tmp_path / "model.onnx", preset=preset, foreground_scores=True)
    detector = OnnxRuntimeDetector.open(report.path)
    assert detector.metadata.preset == preset
    assert detector.metadata.outputs[-1] == "foreground_logits"
    for size in [(333, 517), (517, 333), (401, 602)]:
        photo = _photo(*size)
        with torch.no_grad():
            expected = model([photo], raw=True).foreground_logits[0]
        pixels = photo[None].numpy()
        sizes = np.array([size], dtype=np.int64)
        feeds = {"images": pixels, "image_sizes": sizes}
        (found,) = detector.session.run(["foreground_logits"], feeds)
        scale = float(expected.abs().max())
        torch.testing.assert_close(torch.from_numpy(found[0]), expected, rtol=0, atol=1e-4 * scale)
        detections = detector([photo])[0]
        assert 0 < len(detections["scores"]) <= model.config.num_detections


def test_dynamic_export_matches_pytorch_at_unseen_sizes(tmp_path) -> None:
    """The quick-start model with dynamic batch, height and width: token budgets, cascade and
    masks come from the inputs at every size (the export traced 293x357 and 243x267)."""
    model = randomize_(focus_detr.build_model("focus_detr_tiny"), seed=4).eval()
    report = export_onnx(model, tmp_path / "dynamic.onnx")
    detector = OnnxRuntimeDetector.open(report.path)
    assert detector.metadata.static_size is None
    for size in [(333, 517), (20, 31), (600, 901), (128, 128), (97, 1000)]:
        _assert_matches(model, detector, random_images([size], seed=size[0]))
    images = random_images([(333, 517), (211, 150), (64, 700)], seed=5)
    _assert_matches(model, detector, images)  # a padded batch against PyTorch's
    for image, in_batch in zip(images, detector(images)):
        assert matched_fraction(detector([image])[0], in_batch) == 1.0


def test_corner_gather_backend_matches_pytorch(tmp_path) -> None:
    model = randomize_(focus_detr.build_model("focus_detr_tiny"), seed=6).eval()
    report = export_onnx(model, tmp_path / "gather.onnx", deformable_attention="corner_gather")
    detector = OnnxRuntimeDetector.open(report.path)
    _assert_matches(model, detector, random_images([(213, 300), (150, 170)], seed=7))
