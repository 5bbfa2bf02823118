"""Exported runtimes beside PyTorch in ``focus-detr benchmark --backend onnxruntime openvino``.

The model (at the variant's keep ratio) is exported once to a temporary ONNX file, which each
runtime opens (as many CPU threads as PyTorch uses); :func:`~focus_detr.predict.load_model`'s
runtime table decides how, so a new runtime needs nothing here. Each runtime is timed end to
end on the same images as PyTorch: padding, the graph and the per-image results, what
``predict`` and ``eval`` do with it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from focus_detr.models.detector import FocusDETR

__all__ = ["ExportedTiming", "exported_runtimes"]


@dataclass
class ExportedTiming:
    """One variant under one exported runtime.

    Attributes:
        runtime: its name (``onnxruntime``, ``openvino``).
        export_s: seconds to export the ONNX file (shared by the runtimes).
        file_mb: its size in MiB.
        latency_s: end-to-end seconds of each timed run.
        detail: how the runtime ran it (e.g. ONNX Runtime's execution providers).
    """

    runtime: str
    export_s: float
    file_mb: float
    latency_s: list[float] = field(default_factory=list)
    detail: str = ""


@contextlib.contextmanager
def exported_runtimes(
    model: FocusDETR, images: Sequence[torch.Tensor], runtimes: Sequence[str], device: torch.device
) -> Iterator[dict[str, tuple[ExportedTiming, Callable[[], object]]]]:
    """Export ``model`` once and open it with each of ``runtimes``: per runtime, its
    (timing record to fill, call detecting ``images``). The file is deleted on exit."""
    from focus_detr.deploy.onnx_export import export_onnx
    from focus_detr.predict.detector import RUNTIMES

    if not runtimes:
        yield {}
        return
    cpu_images = [image.cpu() for image in images]
    with tempfile.TemporaryDirectory(prefix="focus_detr_export_") as folder:
        report = export_onnx(model, Path(folder) / "model.onnx")
        opened = {}
        for name in runtimes:
            detector = RUNTIMES[name].open(
                report.path, device=device, threads=torch.get_num_threads()
            )
            timing = ExportedTiming(
                runtime=name,
                export_s=report.seconds,
                file_mb=report.size_bytes / 2**20,
                detail=repr(detector),
            )
            opened[name] = (timing, _caller(detector, cpu_images))
        yield opened


def _caller(detector: Callable[[list[torch.Tensor]], object], images: list[torch.Tensor]):
    return lambda: detector(images)
