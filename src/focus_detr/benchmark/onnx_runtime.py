"""ONNX Runtime beside PyTorch in ``focus-detr benchmark --backend onnxruntime``.

The model (at the variant's keep ratio) is exported to a temporary file, opened with ONNX
Runtime (as many intra-op threads as PyTorch uses) and timed end to end on the same images as
PyTorch: padding, the session run and the per-image results, what
:class:`~focus_detr.deploy.onnx_runtime.OnnxRuntimeDetector` does for ``predict`` and ``eval``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from focus_detr.benchmark.timing import measure_latency
from focus_detr.models.detector import FocusDETR


@dataclass
class OnnxRuntimeTiming:
    """One variant under ONNX Runtime.

    Attributes:
        export_s: seconds to export the ONNX file.
        file_mb: its size in MiB.
        latency_s: end-to-end seconds of each timed run.
        providers: ONNX Runtime execution providers of the session.
    """

    export_s: float
    file_mb: float
    latency_s: list[float] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)


def measure_onnx_runtime(
    model: FocusDETR,
    images: list[torch.Tensor],
    *,
    device: torch.device,
    warmup: int,
    runs: int,
) -> OnnxRuntimeTiming:
    """Export ``model``, then time ONNX Runtime on ``images`` (uint8, any device)."""
    from focus_detr.deploy.onnx_export import export_onnx
    from focus_detr.deploy.onnx_runtime import OnnxRuntimeDetector

    cpu_images = [image.cpu() for image in images]
    with tempfile.TemporaryDirectory(prefix="focus_detr_onnx_") as folder:
        report = export_onnx(model, Path(folder) / "model.onnx")
        detector = OnnxRuntimeDetector.open(
            report.path, device=device, threads=torch.get_num_threads()
        )
        latency = measure_latency(
            lambda: detector(cpu_images), torch.device("cpu"), warmup=warmup, repeats=runs
        )
    return OnnxRuntimeTiming(
        export_s=report.seconds,
        file_mb=report.size_bytes / 2**20,
        latency_s=latency.runs,
        providers=detector.providers,
    )
