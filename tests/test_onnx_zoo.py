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
def test_zoo_export_matches_pytorch_at_unseen_sizes(preset, tmp_path) -> None:
    model = _zoo_model(preset)
    report = export_onnx(model, tmp_path / "model.onnx", preset=preset)
    detector = OnnxRuntimeDetector.open(report.path)
    assert detector.metadata.preset == preset
    sizes = [(333, 517), (517, 333), (401, 602)]
    for photo in (_photo(*size) for size in sizes):
        _assert_matches(model, detector, [photo])
    # a batch of different sizes: each image its single-image result
    images = [_photo(333, 517), _photo(257, 190)]
    batched = detector(images)
    for image, in_batch in zip(images, batched):
        assert matched_fraction(detector([image])[0], in_batch) == 1.0


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
