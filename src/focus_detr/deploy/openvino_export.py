"""Export a Focus-DETR model to OpenVINO's IR: the ONNX graph, converted, with its metadata.

:func:`export_openvino` exports the model to ONNX (:func:`~focus_detr.deploy.onnx_export.
export_onnx`, into a temporary folder) and :func:`convert_onnx_to_openvino` converts that file
(or any ONNX file written by ``focus-detr export``) with ``openvino.convert_model``: the same
graph, contract and dynamic shapes (docs/deploy.md), float32 weights, and the Focus-DETR
metadata in the IR's ``rt_info`` (section :data:`~focus_detr.deploy.openvino_runtime.
METADATA_SECTION`, the same entries as the ONNX file's ``metadata_props``).

With calibration images, the IR is quantized to INT8 before it is saved
(:func:`~focus_detr.deploy.openvino_quantize.quantize_openvino`, NNCF).

The IR is two files, ``model.xml`` (the graph) and ``model.bin`` (the weights) beside it. They
are saved into a temporary folder beside the output, read back, then renamed into place, the
``.bin`` first: an interrupted or failed conversion leaves any earlier files as they were.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focus_detr.deploy.onnx_contract import DeploymentMetadata
from focus_detr.deploy.onnx_export import export_onnx
from focus_detr.deploy.openvino_quantize import (
    DEFAULT_CALIBRATION_SIZE,
    import_nncf,
    quantize_openvino,
)
from focus_detr.deploy.openvino_runtime import (
    METADATA_SECTION,
    deployment_props,
    import_openvino,
    read_openvino_model,
)
from focus_detr.io import atomic_path
from focus_detr.models.detector import FocusDETR

__all__ = [
    "OpenVinoExportReport",
    "convert_onnx_to_openvino",
    "export_openvino",
    "ir_files",
]

#: the IR's weights are the file beside its graph (``model.xml``) with this suffix
_WEIGHTS_SUFFIX = ".bin"


@dataclass(frozen=True)
class OpenVinoExportReport:
    """What :func:`export_openvino` or :func:`convert_onnx_to_openvino` wrote.

    Attributes:
        path: the IR's ``.xml`` (the graph).
        weights_path: its ``.bin`` (the weights).
        seconds: wall time (the ONNX export included, for :func:`export_openvino`).
        size_bytes: size of both files.
        metadata: the metadata written into the IR.
        calibration_images: images the INT8 quantization was calibrated on (0: float32).
    """

    path: Path
    weights_path: Path
    seconds: float
    size_bytes: int
    metadata: DeploymentMetadata
    calibration_images: int = 0


def ir_files(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The two files of the IR ``path``: ``(model.xml, model.bin)``."""
    graph = Path(path)
    return graph, graph.with_suffix(_WEIGHTS_SUFFIX)


def export_openvino(
    model: FocusDETR,
    path: str | os.PathLike[str],
    *,
    calibration_images: Sequence[str | os.PathLike[str]] | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    **onnx_options: Any,
) -> OpenVinoExportReport:
    """Export ``model`` to an OpenVINO IR at ``path`` (``.xml``, plus the ``.bin`` beside it).

    Args:
        model: the detector (float32); its configuration is baked in, as for ONNX.
        path: the ``.xml`` to write.
        calibration_images / calibration_size: see :func:`convert_onnx_to_openvino`.
        onnx_options: keyword arguments of :func:`~focus_detr.deploy.onnx_export.export_onnx`
            (``class_names``, ``category_ids``, ``preset``, ``config``, ``opset``,
            ``static_size``, ``foreground_scores``, ``deformable_attention``).

    Raises:
        MissingDependencyError: openvino, onnx or onnxscript (or nncf, for INT8) is not
            installed.
        ConfigError: a bad ONNX option (see ``export_onnx``).
    """
    import_openvino()  # before minutes of ONNX export
    if calibration_images is not None:
        import_nncf()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="focus_detr_openvino_") as folder:
        onnx_report = export_onnx(model, Path(folder) / "model.onnx", **onnx_options)
        report = convert_onnx_to_openvino(
            onnx_report.path,
            path,
            calibration_images=calibration_images,
            calibration_size=calibration_size,
        )
    return dataclasses.replace(report, seconds=time.perf_counter() - started)


def convert_onnx_to_openvino(
    onnx_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    calibration_images: Sequence[str | os.PathLike[str]] | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
) -> OpenVinoExportReport:
    """Convert an ONNX file written by ``focus-detr export`` to an OpenVINO IR at ``path``.

    Args:
        calibration_images: image files: quantize the IR to INT8 with NNCF, calibrated on
            the first ``calibration_size`` of them. Default: float32 weights.

    Raises:
        FileNotFoundError: no such ONNX file.
        MissingDependencyError: openvino (or nncf, for INT8) is not installed.
        ExportedModelError: the file is not a Focus-DETR ONNX export.
    """
    ov = import_openvino()
    started = time.perf_counter()
    source = str(onnx_path)
    # read first with OpenVINO's ONNX reader alone: a clear error for a foreign file
    metadata = DeploymentMetadata.from_props(deployment_props(read_openvino_model(source)), source)
    converted = ov.convert_model(source)
    calibrated = 0
    if calibration_images is not None:
        files = list(calibration_images)[:calibration_size]
        converted = quantize_openvino(converted, metadata, files)
        calibrated = len(files)
    for key, value in metadata.to_props().items():
        converted.set_rt_info(value, [METADATA_SECTION, key])
    precision = f"int8 (NNCF, {calibrated} calibration images)" if calibrated else "float32"
    converted.set_rt_info(precision, [METADATA_SECTION, "precision"])
    graph, weights = ir_files(path)
    _save_ir(converted, graph)
    return OpenVinoExportReport(
        path=graph,
        weights_path=weights,
        seconds=time.perf_counter() - started,
        size_bytes=graph.stat().st_size + weights.stat().st_size,
        metadata=metadata,
        calibration_images=calibrated,
    )


def _save_ir(model: Any, path: Path) -> None:
    """Save ``model`` as the IR ``path``, atomically (module docstring); weights as they are
    (no float16 compression)."""
    ov = import_openvino()
    graph, weights = ir_files(path)
    graph.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=graph.parent, prefix=f".{graph.name}.") as folder:
        staged_graph, staged_weights = ir_files(Path(folder) / graph.name)
        ov.save_model(model, str(staged_graph), compress_to_fp16=False)
        read_openvino_model(staged_graph)  # what was written reads back
        # the inner block ends first: the .bin is renamed into place before the .xml
        with atomic_path(graph) as graph_target, atomic_path(weights) as weights_target:
            os.replace(staged_weights, weights_target)
            os.replace(staged_graph, graph_target)
