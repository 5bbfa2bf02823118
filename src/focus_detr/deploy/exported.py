"""An exported graph behind the :class:`~focus_detr.predict.Detector` interface.

:class:`ExportedDetector` does what every runtime of an exported graph shares: it checks and
pads the images into the canvas the graph takes (:mod:`~focus_detr.deploy.onnx_contract`),
rebuilds the configuration from the file's metadata, refuses to change the token budget, and
turns the graph's padded outputs into one dict per image. A runtime subclass only opens the
file and runs it (:meth:`ExportedDetector.run_graph`): ONNX Runtime
(:mod:`~focus_detr.deploy.onnx_runtime`) and OpenVINO (:mod:`~focus_detr.deploy.openvino_runtime`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from focus_detr.config import ModelConfig
from focus_detr.deploy.onnx_contract import INPUT_NAMES, DeploymentMetadata, ExportedModelError
from focus_detr.structures import Capabilities, ImageBatch

__all__ = ["ExportedDetector", "as_uint8_batch"]


class ExportedDetector:
    """A Focus-DETR graph exported by ``focus-detr export``, run by some runtime.

    Call it with a list of ``uint8 [3, H, W]`` RGB tensors (any sizes) or an
    :class:`~focus_detr.ImageBatch` of uint8 pixels; it returns one dict per image with
    ``boxes`` ``[K, 4]`` (xyxy pixels of that image), ``scores`` ``[K]`` and ``labels``
    ``[K]``, exactly as :class:`~focus_detr.FocusDETR` does. Inputs and outputs live on the CPU.

    Attributes:
        config: the model's configuration, rebuilt from the file's metadata (keep ratio,
            cascade and test resize of the graph).
        metadata: everything the file records (:class:`DeploymentMetadata`).
        source: the file.
    """

    capabilities: ClassVar[Capabilities] = Capabilities("exported")

    def __init__(self, metadata: DeploymentMetadata, source: str) -> None:
        self.metadata = metadata
        self.config: ModelConfig = metadata.config.model
        self.source = source

    @staticmethod
    def checked_metadata(
        props: Mapping[str, str], input_names: Sequence[str], source: str
    ) -> DeploymentMetadata:
        """The metadata of the graph ``source`` (its ``metadata_props`` entries ``props``),
        once its inputs (``input_names``) are checked against the contract.

        Raises:
            ExportedModelError: no Focus-DETR metadata, or other inputs.
        """
        metadata = DeploymentMetadata.from_props(props, source)
        if tuple(input_names) != INPUT_NAMES:
            raise ExportedModelError(
                f"{source} takes inputs {tuple(input_names)}, expected {INPUT_NAMES}"
            )
        return metadata

    def run_graph(self, pixels: np.ndarray, image_sizes: np.ndarray) -> Mapping[str, np.ndarray]:
        """Run the graph on ``uint8 [B, 3, H, W]`` and ``int64 [B, 2]``: its outputs by name."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def set_keep_ratio(self, keep_ratio: float, cascade: Sequence[float] | None = None) -> None:
        """Not possible: the token budget is part of the exported graph."""
        raise ValueError(
            f"the keep ratio of {self.source} is fixed at export ({self.config.keep_ratio}); "
            "export again with `focus-detr export --keep-ratio ...`"
        )

    def __call__(self, images: ImageBatch | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detect objects; see the class docstring."""
        batch = as_uint8_batch(images, type(self).capabilities.runtime)
        pixels, sizes = self.fit_canvas(batch)
        outputs = self.run_graph(pixels.numpy(), sizes.numpy())
        valid = outputs["valid"].astype(bool)
        return [
            {
                name: torch.from_numpy(np.ascontiguousarray(outputs[name][b][valid[b]]))
                for name in ("boxes", "scores", "labels")
            }
            for b in range(len(batch))
        ]

    def fit_canvas(self, batch: ImageBatch) -> tuple[Tensor, Tensor]:
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r})"


def as_uint8_batch(images: ImageBatch | Sequence[Tensor], runtime: str) -> ImageBatch:
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
            f"an exported Focus-DETR graph ({runtime}) takes uint8 images (0-255), got "
            f"{batch.pixels.dtype}"
        )
    return batch
