"""The optional supervision adapter: our detections as ``supervision.Detections``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import focus_detr


def test_importing_the_adapter_does_not_import_supervision() -> None:
    code = "import sys, focus_detr.integrations.supervision; print('supervision' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.stdout.strip() == "False", completed.stderr


def test_detections_convert_with_class_names() -> None:
    supervision = pytest.importorskip("supervision")
    detections = {
        "boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 6.0, 7.0, 8.0]]),
        "scores": torch.tensor([0.9, 0.4]),
        "labels": torch.tensor([2, 7]),
    }
    converted = focus_detr.to_supervision(detections, ["a", "b", "c"])
    assert isinstance(converted, supervision.Detections) and len(converted) == 2
    np.testing.assert_array_equal(converted.xyxy, detections["boxes"].numpy())
    np.testing.assert_allclose(converted.confidence, [0.9, 0.4])
    assert converted.class_id.tolist() == [2, 7]
    assert converted.data["class_name"].tolist() == ["c", "7"]  # a label without a name: number
    assert converted[converted.confidence > 0.5].class_id.tolist() == [2]
    empty = {key: value[:0] for key, value in detections.items()}
    assert len(focus_detr.to_supervision(empty)) == 0
