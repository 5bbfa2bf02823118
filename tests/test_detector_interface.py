"""The one Detector interface: runtimes chosen in one place, capabilities declared."""

from __future__ import annotations

import pytest
import torch

import focus_detr
from focus_detr.cli.common import RUNTIME_NAMES
from focus_detr.errors import UsageError
from focus_detr.predict import RUNTIMES, Detector, Predictor, capabilities_of, runtime_for
from tests.helpers import tiny_config


def test_the_cli_offers_exactly_the_runtimes_of_the_table() -> None:
    assert tuple(RUNTIMES) == RUNTIME_NAMES


@pytest.mark.parametrize(
    ("weights", "runtime", "expected"),
    [
        ("model_final.pth", None, "torch"),
        ("release.zip", None, "torch"),
        ("https://example.org/r50.pth", None, "torch"),
        ("model.onnx", None, "onnxruntime"),
        ("MODEL.ONNX", None, "onnxruntime"),
        ("model.xml", None, "openvino"),
        ("model.onnx", "openvino", "openvino"),
        ("model.onnx", "onnxruntime", "onnxruntime"),
        (None, None, "torch"),
        ({"weight": torch.zeros(1)}, None, "torch"),
    ],
)
def test_runtime_for_a_weights_file(weights, runtime, expected) -> None:
    assert runtime_for(weights, runtime).name == expected


def test_pytorch_does_not_run_an_exported_graph_and_names_are_checked() -> None:
    with pytest.raises(UsageError, match="exported graph for onnxruntime"):
        runtime_for("model.onnx", "torch")
    with pytest.raises(UsageError, match="unknown runtime 'tensorrt'"):
        runtime_for("model.onnx", "tensorrt")


def test_each_runtime_declares_what_it_offers() -> None:
    torch_runtime = RUNTIMES["torch"].capabilities
    assert torch_runtime.raw_outputs and torch_runtime.adjustable_keep_ratio
    for name in ("onnxruntime", "openvino"):
        capabilities = RUNTIMES[name].capabilities
        assert capabilities.runtime == name
        assert not capabilities.raw_outputs and not capabilities.adjustable_keep_ratio


def test_the_pytorch_model_is_a_detector_with_its_capabilities() -> None:
    model = focus_detr.build_model(tiny_config()).eval()
    assert isinstance(model, Detector)
    assert capabilities_of(model) == RUNTIMES["torch"].capabilities


def test_a_detector_of_ones_own_declares_nothing_and_still_predicts() -> None:
    model = focus_detr.build_model(tiny_config()).eval()

    class Wrapper:
        def __init__(self) -> None:
            self.config, self.device = model.config, model.device

        def __call__(self, images):
            return model(images)

    assert capabilities_of(Wrapper()).runtime == "custom"
    assert not capabilities_of(Wrapper()).raw_outputs
    image = torch.randint(0, 256, (3, 100, 130), dtype=torch.uint8)
    with torch.no_grad():
        expected = Predictor(model)([image])[0]
        found = Predictor(Wrapper())([image])[0]
    torch.testing.assert_close(found["boxes"], expected["boxes"])
