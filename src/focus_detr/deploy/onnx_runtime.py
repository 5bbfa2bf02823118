"""Run an exported graph with ONNX Runtime, behind the interface of the PyTorch detector.

:class:`OnnxRuntimeDetector` is what :func:`focus_detr.load_model` returns for a ``.onnx``
file: :class:`~focus_detr.Predictor`, :func:`~focus_detr.evaluate` and the CLI use it as they
use a :class:`~focus_detr.FocusDETR` (``config``, ``device``, ``eval()``, ``model(images)``
returning one dict of ``boxes`` / ``scores`` / ``labels`` per image).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focus_detr.config import ModelConfig
from focus_detr.deploy.onnx_contract import INPUT_NAMES, DeploymentMetadata, OnnxModelError
from focus_detr.errors import MissingDependencyError
from focus_detr.structures import ImageBatch

__all__ = ["OnnxModelError", "OnnxRuntimeDetector"]

_CUDA_PROVIDER = "CUDAExecutionProvider"
_CPU_PROVIDER = "CPUExecutionProvider"


class OnnxRuntimeDetector(nn.Module):
    """An exported Focus-DETR graph run by ONNX Runtime. Open one with :meth:`open`.

    Call it with a list of ``uint8 [3, H, W]`` RGB tensors (any sizes) or an
    :class:`~focus_detr.ImageBatch` of uint8 pixels; it returns one dict per image with
    ``boxes`` ``[K, 4]`` (xyxy pixels of that image), ``scores`` ``[K]`` and ``labels`` ``[K]``,
    exactly as :class:`~focus_detr.FocusDETR` does. Inputs and outputs live on the CPU
    (``device``); the session itself runs on CUDA when opened with a CUDA device and
    ONNX Runtime has the CUDA provider.

    Attributes:
        config: the model's configuration, rebuilt from the file's metadata (keep ratio,
            cascade and test resize of the graph).
        metadata: everything the file records (:class:`DeploymentMetadata`).
        source: the file.
    """

    def __init__(self, session: Any, metadata: DeploymentMetadata, source: str) -> None:
        super().__init__()
        self.session = session
        self.metadata = metadata
        self.config: ModelConfig = metadata.config.model
        self.source = source
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
            OnnxModelError: the file is not a Focus-DETR ONNX export.
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
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise OnnxModelError(
                f"{source} is not a usable ONNX model: {type(error).__name__}: {first_line}"
            ) from None
        metadata = DeploymentMetadata.from_props(
            session.get_modelmeta().custom_metadata_map, source
        )
        names = tuple(i.name for i in session.get_inputs())
        if names != INPUT_NAMES:
            raise OnnxModelError(f"{source} takes inputs {names}, expected {INPUT_NAMES}")
        return cls(session, metadata, source)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def keep_ratio(self) -> float:
        return self.config.keep_ratio

    @property
    def cascade(self) -> tuple[float, ...]:
        return self.config.cascade

    @property
    def providers(self) -> list[str]:
        """The ONNX Runtime execution providers of the session, in order of preference."""
        return list(self.session.get_providers())

    def set_keep_ratio(self, keep_ratio: float, cascade: Sequence[float] | None = None) -> None:
        """Not possible: the token budget is part of the exported graph."""
        raise ValueError(
            f"the keep ratio of {self.source} is fixed at export ({self.keep_ratio}); export "
            "again with `focus-detr export --keep-ratio ...`"
        )

    def forward(self, images: ImageBatch | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detect objects; see the class docstring."""
        batch = _as_batch(images)
        pixels, sizes = self._fit_canvas(batch)
        feeds = {"images": pixels.numpy(), "image_sizes": sizes.numpy()}
        outputs = dict(zip(self._output_names, self.session.run(None, feeds)))
        valid = outputs["valid"]
        return [
            {
                "boxes": torch.from_numpy(np.ascontiguousarray(outputs["boxes"][b][valid[b]])),
                "scores": torch.from_numpy(np.ascontiguousarray(outputs["scores"][b][valid[b]])),
                "labels": torch.from_numpy(np.ascontiguousarray(outputs["labels"][b][valid[b]])),
            }
            for b in range(len(batch))
        ]

    def _fit_canvas(self, batch: ImageBatch) -> tuple[Tensor, Tensor]:
        """Pad the batch to the canvas the graph takes (padding changes no result)."""
        height, width = batch.pixels.shape[-2:]
        static = self.metadata.static_size
        if static is not None:
            if height > static[0] or width > static[1]:
                raise ValueError(
                    f"{self.source} takes images up to {static[0]}x{static[1]} (a static "
                    f"export); got {height}x{width}. Resize them smaller, or export again "
                    "with a larger --static size"
                )
            target = static
        else:
            smallest = self.metadata.input_min_side
            target = (max(height, smallest), max(width, smallest))
        pixels = batch.pixels
        if (height, width) != target:
            pixels = F.pad(pixels, (0, target[1] - width, 0, target[0] - height))
        return pixels.contiguous(), batch.image_sizes.to(torch.int64)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, providers={self.providers}"


def _as_batch(images: ImageBatch | Sequence[Tensor]) -> ImageBatch:
    """A CPU uint8 :class:`ImageBatch` of ``images`` (a clear error for anything else)."""
    if isinstance(images, Tensor):
        images = [images] if images.dim() == 3 else list(images.unbind(0))
    if isinstance(images, ImageBatch):
        batch = images.to("cpu")
    else:
        if not isinstance(images, Sequence) or len(images) == 0:
            raise ValueError("images must be a non-empty list of [3, H, W] tensors or ImageBatch")
        for index, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"image {index} must be a [3, H, W] RGB tensor")
        batch = ImageBatch.from_images([image.cpu() for image in images])
    if batch.pixels.dtype != torch.uint8:
        raise ValueError(
            f"an ONNX Focus-DETR graph takes uint8 images (0-255), got {batch.pixels.dtype}"
        )
    return batch


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
