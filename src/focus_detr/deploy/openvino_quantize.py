"""INT8 post-training quantization of an OpenVINO Focus-DETR graph with NNCF.

:func:`quantize_openvino` runs ``nncf.quantize`` on the converted ``openvino.Model``: it feeds
calibration images through the graph exactly as :class:`~focus_detr.deploy.openvino_runtime.
OpenVinoDetector` does at inference (the recipe's test resize, then the canvas of the graph),
records activation ranges and inserts INT8 quantize/dequantize pairs around the convolutions
(backbone, neck) and the transformer's feed-forward layers, where most of the arithmetic is
(``model_type=TRANSFORMER``: SmoothQuant). OpenVINO's CPU plugin then runs those in INT8 (AMX
or AVX-512 VNNI where the CPU has them).

Every other matrix product stays in float32 (:data:`QUANTIZED_MATMULS`): attention projections,
sampling offsets and weights, value projections, foreground scorer, class and box heads, and
with them the token selection and the deformable sampling. On the trained quick-start model
that costs 0.4 AP point (0.566 -> 0.562) where quantizing every product costs 2.4 (0.542);
on R-50 at 800x1333 it is 1.6x faster than float32 where quantizing every product is 2.0x
(docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
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
#: matrix products quantized besides the convolutions: those whose weight's name matches (the
#: names of the model's parameters): the feed-forward layers
QUANTIZED_MATMULS = r"\.ffn\.linear[12]\.weight$"


def quantize_openvino(
    model: Any,
    metadata: DeploymentMetadata,
    images: Sequence[str | os.PathLike[str]],
    *,
    subset_size: int = DEFAULT_CALIBRATION_SIZE,
    quantized_matmuls: str = QUANTIZED_MATMULS,
) -> Any:
    """The INT8 version of the ``openvino.Model`` ``model`` (a Focus-DETR graph with
    ``metadata``), calibrated on the first ``subset_size`` of ``images`` (files).

    ``quantized_matmuls``: a regular expression; matrix products whose weight's name matches
    are quantized, the others stay float32 (``"."`` quantizes them all). Convolutions are.

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

    float32 = [
        node.get_friendly_name()
        for node in model.get_ordered_ops()
        if node.get_type_name() == "MatMul" and not re.search(quantized_matmuls, _weight_name(node))
    ]
    with _quiet_logger("nncf"):  # else one INFO line per matrix product left in float32
        return nncf.quantize(
            model,
            nncf.Dataset(files, graph_inputs),
            subset_size=len(files),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(names=float32, validate=False),
        )


def _weight_name(matmul: Any) -> str:
    """The name of the constant a ``MatMul`` multiplies by (its parameter's name, as the ONNX
    file has it), or "" for a product of two activations."""
    source = matmul.input_value(1).get_node()
    while source.get_type_name() in ("Convert", "Transpose", "Reshape"):
        source = source.input_value(0).get_node()
    return str(source.get_friendly_name()) if source.get_type_name() == "Constant" else ""


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Only warnings and errors from the logger ``name`` inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def import_nncf() -> Any:
    """The ``nncf`` module, or an error that names the extra to install."""
    try:
        import nncf
    except ImportError:
        raise MissingDependencyError(
            'INT8 quantization needs NNCF (nncf is not installed): pip install "focus-detr[int8]"'
        ) from None
    return nncf
