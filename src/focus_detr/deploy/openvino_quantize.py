"""INT8 post-training quantization of an OpenVINO Focus-DETR graph with NNCF.

:func:`quantize_openvino` runs ``nncf.quantize`` on the converted ``openvino.Model``: it feeds
calibration images through the graph exactly as :class:`~focus_detr.deploy.openvino_runtime.
OpenVinoDetector` does at inference (the recipe's test resize, then the canvas of the graph),
records activation ranges and inserts INT8 quantize/dequantize pairs around the convolutions
and matrix products (``model_type=TRANSFORMER``: SmoothQuant, no quantized softmax inputs).
OpenVINO's CPU plugin then runs those in INT8 (AMX or AVX-512 VNNI where the CPU has them).

The token selection (top-k ranking, budgets) and the deformable sampling stay in float32. The
result is no longer float32-exact: docs/deploy.md gives its agreement with float32 and its AP.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from focus_detr.data.transforms import resize_image, resize_shortest_edge_size
from focus_detr.deploy.exported import ExportedDetector
from focus_detr.deploy.onnx_contract import DeploymentMetadata
from focus_detr.errors import MissingDependencyError
from focus_detr.io import read_image
from focus_detr.structures import ImageBatch

__all__ = ["DEFAULT_CALIBRATION_SIZE", "quantize_openvino"]

#: calibration images used at most (NNCF's default subset size)
DEFAULT_CALIBRATION_SIZE = 300


def quantize_openvino(
    model: Any,
    metadata: DeploymentMetadata,
    images: Sequence[str | os.PathLike[str]],
    *,
    subset_size: int = DEFAULT_CALIBRATION_SIZE,
) -> Any:
    """The INT8 version of the ``openvino.Model`` ``model`` (a Focus-DETR graph with
    ``metadata``), calibrated on the first ``subset_size`` of ``images`` (files).

    Raises:
        MissingDependencyError: nncf is not installed.
        ValueError: no calibration images.
    """
    nncf = import_nncf()
    files = list(images)[:subset_size]
    if not files:
        raise ValueError("INT8 quantization needs calibration images; none were given")
    canvas = ExportedDetector(metadata, "calibration")
    min_size, max_size = metadata.config.model.test_resize()

    def graph_inputs(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
        image = read_image(path)
        height, width = resize_shortest_edge_size(
            int(image.shape[1]), int(image.shape[2]), min_size, max_size
        )
        batch = ImageBatch.from_images([resize_image(image, height, width)])
        pixels, sizes = canvas.fit_canvas(batch)
        return {"images": pixels.numpy(), "image_sizes": sizes.numpy()}

    return nncf.quantize(
        model,
        nncf.Dataset(files, graph_inputs),
        subset_size=len(files),
        model_type=nncf.ModelType.TRANSFORMER,
    )


def import_nncf() -> Any:
    """The ``nncf`` module, or an error that names the extra to install."""
    try:
        import nncf
    except ImportError:
        raise MissingDependencyError(
            'INT8 quantization needs NNCF (nncf is not installed): pip install "focus-detr[int8]"'
        ) from None
    return nncf
