"""Ready-to-use inference: load a model from weights, resize like detectron2, map boxes back."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from focus_detr.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from focus_detr.coco_metadata import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from focus_detr.config import ModelConfig, model_config_from_dict
from focus_detr.convert import describe_architecture, is_detrex_layout
from focus_detr.data.transforms import resize_image, resize_shortest_edge_size
from focus_detr.models.build import build_model
from focus_detr.models.detector import FocusDETR
from focus_detr.presets import get_preset


@dataclass(frozen=True)
class Categories:
    """Names and dataset ids (e.g. COCO ids) of a model's contiguous labels."""

    names: tuple[str, ...]
    ids: tuple[int, ...]

    @classmethod
    def default(cls, num_classes: int) -> Categories:
        if num_classes == len(COCO_CLASS_NAMES):
            return cls(tuple(COCO_CLASS_NAMES), tuple(COCO_CATEGORY_IDS))
        return cls(
            tuple(f"class {i}" for i in range(num_classes)), tuple(range(1, num_classes + 1))
        )

    @classmethod
    def from_metadata(cls, entries: object, num_classes: int) -> Categories:
        if not isinstance(entries, Sequence) or len(entries) != num_classes:
            return cls.default(num_classes)
        return cls(tuple(str(e["name"]) for e in entries), tuple(int(e["id"]) for e in entries))


def load_model(
    weights: str | os.PathLike[str] | Mapping[str, Tensor] | None = None,
    *,
    preset: str | None = None,
    device: torch.device | str = "cpu",
    keep_ratio: float | None = None,
    **overrides: object,
) -> tuple[FocusDETR, Categories]:
    """A model in eval mode with its weights, plus the names and ids of its classes.

    The configuration (architecture, preprocessing, test resize) comes from ``preset`` or, for
    checkpoints written by this package, from the checkpoint itself. detrex releases need
    ``preset`` (their files do not record e.g. the position-embedding settings).

    A ``.onnx`` file (``focus-detr export``) gives an ONNX Runtime detector that works like
    the model for :class:`Predictor` and :func:`~focus_detr.evaluate` (see
    :class:`~focus_detr.deploy.onnx_runtime.OnnxRuntimeDetector`).
    """
    if isinstance(weights, (str, os.PathLike)) and str(weights).lower().endswith(".onnx"):
        return _load_onnx(weights, preset, device, keep_ratio, overrides)
    checkpoint = read_checkpoint(weights) if weights is not None else None
    config = _model_config(checkpoint, preset)
    if overrides:
        config = dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
    model = build_model(config)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    if keep_ratio is not None:
        model.set_keep_ratio(keep_ratio)
    model = model.to(device).eval()
    categories = Categories.from_metadata(
        checkpoint.metadata.get("categories") if checkpoint else None, config.num_classes
    )
    return model, categories


def _load_onnx(
    path: str | os.PathLike[str],
    preset: str | None,
    device: torch.device | str,
    keep_ratio: float | None,
    overrides: Mapping[str, object],
) -> tuple[FocusDETR, Categories]:
    """The ONNX Runtime detector of an exported graph, whose settings are fixed."""
    from focus_detr.deploy.onnx_runtime import OnnxModelError, OnnxRuntimeDetector

    detector = OnnxRuntimeDetector.open(path, device=device)
    recorded = detector.metadata.preset
    if preset is not None and recorded and preset != recorded:
        raise OnnxModelError(f"{path} was exported from preset {recorded}, not {preset}")
    if keep_ratio is not None and keep_ratio != detector.keep_ratio:
        raise OnnxModelError(
            f"{path} computes keep ratio {detector.keep_ratio:g} (fixed at export); export "
            f"again with --keep-ratio {keep_ratio:g}"
        )
    if overrides:
        raise OnnxModelError(f"{path} cannot change its settings {sorted(overrides)}")
    categories = Categories.from_metadata(detector.metadata.categories, detector.config.num_classes)
    # a stand-in with the interface that Predictor and evaluate() use (see its docstring)
    return cast("FocusDETR", detector), categories


def _model_config(checkpoint, preset: str | None) -> ModelConfig:
    stored = checkpoint.metadata.get("config") if checkpoint is not None else None
    if preset is not None:
        return get_preset(preset).config.model
    if isinstance(stored, Mapping) and isinstance(stored.get("model"), Mapping):
        return model_config_from_dict(dict(stored))
    if checkpoint is None:
        raise CheckpointError("give a preset or weights that record their configuration")
    layout = "detrex release" if is_detrex_layout(checkpoint.state_dict) else "checkpoint"
    raise CheckpointError(
        f"this {layout} does not record its configuration; name its preset (--preset). "
        f"It looks like: {describe_architecture(checkpoint.state_dict)}"
    )


class Predictor:
    """Detect objects in images of any size with detectron2's test-time resizing.

    Each image is resized so that its short side is ``min_size`` (long side at most
    ``max_size``; both default to the model's recipe, see
    :meth:`~focus_detr.config.ModelConfig.test_resize`), run through the model in batches of
    ``batch_size`` (results do not depend on the batch), and its boxes are scaled back to the
    original pixels and clipped.
    """

    def __init__(
        self,
        model: FocusDETR,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        batch_size: int = 1,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.min_size, self.max_size = model.config.test_resize(min_size, max_size)
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype

    @torch.inference_mode()
    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """``uint8`` ``[3, H, W]`` RGB images -> detections in each image's own pixels."""
        results: list[dict[str, Tensor]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            resized = [self._resize(image) for image in chunk]
            device = self.model.device
            with torch.autocast(
                device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ):
                detections = self.model([image.to(device) for image in resized])
            for original, scaled, found in zip(chunk, resized, detections):
                results.append(_to_original_size(found, scaled.shape[-2:], original.shape[-2:]))
        return results

    def _resize(self, image: Tensor) -> Tensor:
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}"
            )
        height, width = int(image.shape[1]), int(image.shape[2])
        new_height, new_width = resize_shortest_edge_size(
            height, width, self.min_size, self.max_size
        )
        return resize_image(image.cpu(), new_height, new_width)


def _to_original_size(
    detections: dict[str, Tensor], resized: Sequence[int], original: Sequence[int]
) -> dict[str, Tensor]:
    """detectron2's ``detector_postprocess``: scale, clip to the image, drop empty boxes."""
    height, width = int(original[0]), int(original[1])
    scale_x = width / int(resized[1])
    scale_y = height / int(resized[0])
    boxes = detections["boxes"].float().clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {
        "boxes": boxes[keep].cpu(),
        "scores": detections["scores"][keep].float().cpu(),
        "labels": detections["labels"][keep].cpu(),
    }
