"""Detection on images of any size: detectron2's test resize, batching, boxes mapped back."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor

from focus_detr.data.transforms import resize_image, resize_shortest_edge_size
from focus_detr.predict.detector import Detector
from focus_detr.predict.slicing import (
    DEFAULT_MERGE_IOU,
    Slicing,
    Window,
    class_wise_nms,
    merge_views,
    to_image_pixels,
)

Key = TypeVar("Key")


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the model: the views that cover it, each resized for the model.

    Attributes:
        image_size: (height, width) of the original image.
        windows: what each view shows of the image: the whole image first, then the tiles
            when slicing.
        views: ``uint8 [3, h, w]`` resized pixels of each window (on the CPU).
    """

    image_size: tuple[int, int]
    windows: tuple[Window, ...]
    views: tuple[Tensor, ...]


@dataclass
class _Pending(Generic[Key]):
    """An image whose views are being detected; ``found[i]`` is view ``i``'s output."""

    key: Key
    prepared: PreparedImage
    found: list[dict[str, Tensor] | None]


class Predictor:
    """Detect objects in images of any size with detectron2's test-time resizing.

    Each image is resized so that its short side is ``min_size`` (long side at most
    ``max_size``; both default to the model's recipe, see
    :meth:`~focus_detr.config.ModelConfig.test_resize`), run through the model in batches of
    ``batch_size`` (results do not depend on the batch), and its boxes are scaled back to the
    original pixels and clipped.

    Optional steps, both off by default so that the output is the model's own:

    - ``nms_iou``: class-wise NMS (``torchvision.ops.batched_nms``) at this IoU.
    - ``slice_size`` (``(height, width)`` or one side) and ``slice_overlap``: sliced inference
      for large images (:mod:`focus_detr.predict.slicing`): the whole image plus overlapping tiles,
      merged by class-wise NMS at ``nms_iou`` (0.5 when not given).

    ``model`` is any :class:`~focus_detr.predict.Detector`: the PyTorch model or an exported
    graph (:func:`~focus_detr.load_model`).
    """

    def __init__(
        self,
        model: Detector,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        batch_size: int = 1,
        autocast_dtype: torch.dtype | None = None,
        nms_iou: float | None = None,
        slice_size: int | tuple[int, int] | None = None,
        slice_overlap: float = 0.2,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if nms_iou is not None and not 0.0 <= nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {nms_iou}")
        self.model = model
        self.min_size, self.max_size = model.config.test_resize(min_size, max_size)
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.nms_iou = nms_iou
        self.slicing = _slicing(slice_size, slice_overlap)

    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """``uint8`` ``[3, H, W]`` RGB images -> detections in each image's own pixels."""
        prepared = ((index, self.prepare(image)) for index, image in enumerate(images))
        return [found for _, found in self.predict_prepared(prepared)]

    def prepare(self, image: Tensor) -> PreparedImage:
        """Cut and resize an image for the model (CPU work; safe to run in worker threads)."""
        _check_image(image)
        height, width = int(image.shape[1]), int(image.shape[2])
        windows = [Window.whole(height, width)]
        if self.slicing is not None:
            windows = self.slicing.windows(height, width)
        views = tuple(self._resize(window.crop(image)) for window in windows)
        return PreparedImage((height, width), tuple(windows), views)

    def predict_prepared(
        self, items: Iterable[tuple[Key, PreparedImage]]
    ) -> Iterator[tuple[Key, dict[str, Tensor]]]:
        """Detections of each ``(key, prepared image)``, in order, as soon as they are ready.

        Views of consecutive images share batches of ``batch_size``; ``items`` is read lazily,
        so it can come from a decoding thread.
        """
        waiting: deque[_Pending[Key]] = deque()
        queued: list[tuple[_Pending[Key], int]] = []
        for key, prepared in items:
            pending = _Pending(key, prepared, [None] * len(prepared.views))
            waiting.append(pending)
            queued.extend((pending, view) for view in range(len(prepared.views)))
            while len(queued) >= self.batch_size:
                self._detect_views(queued[: self.batch_size])
                del queued[: self.batch_size]
                yield from self._finished(waiting)
        for start in range(0, len(queued), self.batch_size):
            self._detect_views(queued[start : start + self.batch_size])
        yield from self._finished(waiting)

    def _detect_views(self, batch: list[tuple[_Pending[Key], int]]) -> None:
        device = self.model.device
        with (
            torch.inference_mode(),
            torch.autocast(
                device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ),
        ):
            found = self.model([p.prepared.views[view].to(device) for p, view in batch])
        for (pending, view), detections in zip(batch, found):
            pending.found[view] = detections

    def _finished(self, waiting: deque[_Pending[Key]]) -> Iterator[tuple[Key, dict[str, Tensor]]]:
        while waiting and all(found is not None for found in waiting[0].found):
            pending = waiting.popleft()
            yield pending.key, self._merge(pending.prepared, pending.found)  # type: ignore[arg-type]

    def _merge(
        self, prepared: PreparedImage, per_view: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        in_image = [
            to_image_pixels(found, window, view.shape[-2:])
            for found, window, view in zip(per_view, prepared.windows, prepared.views)
        ]
        if len(in_image) > 1:
            iou = DEFAULT_MERGE_IOU if self.nms_iou is None else self.nms_iou
            return merge_views(in_image, prepared.windows, prepared.image_size, iou)
        if self.nms_iou is not None:
            return class_wise_nms(in_image[0], self.nms_iou)
        return in_image[0]

    def _resize(self, image: Tensor) -> Tensor:
        _check_image(image)
        height, width = int(image.shape[1]), int(image.shape[2])
        new_height, new_width = resize_shortest_edge_size(
            height, width, self.min_size, self.max_size
        )
        return resize_image(image.cpu(), new_height, new_width)


def _slicing(size: int | tuple[int, int] | None, overlap: float) -> Slicing | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else size
    return Slicing(int(height), int(width), float(overlap))


def _check_image(image: Tensor) -> None:
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"images must be uint8 [3, H, W] tensors, got {shape}")
    if image.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (0-255), got {image.dtype}; convert a float image in [0, 1] "
            "with (image * 255).round().clamp(0, 255).to(torch.uint8)"
        )
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image is empty: {tuple(image.shape)}")
