"""Run an exported graph with ONNX Runtime: a :class:`~focus_detr.predict.Detector`.

:class:`OnnxRuntimeDetector` is what :func:`focus_detr.load_model` returns for a ``.onnx``
file: :class:`~focus_detr.Predictor`, :func:`~focus_detr.evaluate` and the CLI use it as they
use a :class:`~focus_detr.FocusDETR`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from focus_detr.deploy.exported import ExportedDetector
from focus_detr.deploy.onnx_contract import (
    DeploymentMetadata,
    ExportedModelError,
    first_line,
)
from focus_detr.errors import MissingDependencyError
from focus_detr.structures import Capabilities

__all__ = ["ExportedModelError", "OnnxRuntimeDetector"]

_CUDA_PROVIDER = "CUDAExecutionProvider"
_CPU_PROVIDER = "CPUExecutionProvider"


class OnnxRuntimeDetector(ExportedDetector):
    """An exported Focus-DETR graph run by ONNX Runtime. Open one with :meth:`open`.

    It detects as :class:`~focus_detr.deploy.exported.ExportedDetector` describes; the session
    runs on CUDA when opened with a CUDA device and ONNX Runtime has the CUDA provider (inputs
    and outputs stay on the CPU).
    """

    capabilities: ClassVar[Capabilities] = Capabilities("onnxruntime")

    def __init__(self, session: Any, metadata: DeploymentMetadata, source: str) -> None:
        super().__init__(metadata, source)
        self.session = session
        self._output_names = [output.name for output in session.get_outputs()]

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        threads: int | None = None,
    ) -> OnnxRuntimeDetector:
        """Load ``path`` into an ONNX Runtime session.

        Args:
            device: ``cpu``, or ``cuda`` to use ONNX Runtime's CUDA provider when it has one
                (a warning, and the CPU, when it has not).
            threads: intra-op threads (default: ONNX Runtime's, one per physical core).

        Raises:
            FileNotFoundError: no such file.
            MissingDependencyError: onnxruntime is not installed.
            ExportedModelError: the file is not a Focus-DETR ONNX export.
        """
        ort = _import_onnxruntime()
        source = str(path)
        if not Path(source).is_file():
            raise FileNotFoundError(f"no such ONNX model: {source}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no notes about constant folding
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(
                source, options, providers=_providers(ort, torch.device(device))
            )
        except Exception as error:  # ONNX Runtime raises its own types for a bad file
            raise ExportedModelError(
                f"{source} is not a usable ONNX model: {first_line(error)}"
            ) from None
        metadata = cls.checked_metadata(
            session.get_modelmeta().custom_metadata_map,
            [i.name for i in session.get_inputs()],
            source,
        )
        return cls(session, metadata, source)

    @property
    def providers(self) -> list[str]:
        """The ONNX Runtime execution providers of the session, in order of preference."""
        return list(self.session.get_providers())

    def run_graph(self, pixels: np.ndarray, image_sizes: np.ndarray) -> Mapping[str, np.ndarray]:
        outputs = self.session.run(None, {"images": pixels, "image_sizes": image_sizes})
        return dict(zip(self._output_names, outputs))

    def __repr__(self) -> str:
        return f"OnnxRuntimeDetector(source={self.source!r}, providers={self.providers})"


def _providers(ort: Any, device: torch.device) -> list[str]:
    if device.type != "cuda":
        return [_CPU_PROVIDER]
    if _CUDA_PROVIDER in ort.get_available_providers():
        return [_CUDA_PROVIDER, _CPU_PROVIDER]
    warnings.warn(
        "this onnxruntime has no CUDA provider (install onnxruntime-gpu); running on the CPU",
        stacklevel=3,
    )
    return [_CPU_PROVIDER]


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            'running a .onnx model needs onnxruntime: pip install "focus-detr[onnx]"'
        ) from None
    return onnxruntime
