"""Detection augmentations with detectron2's exact arithmetic, on ``torchvision.transforms.v2``.

A transform is called as ``transform(image, target)`` where ``image`` is a
``tv_tensors.Image`` (uint8 ``[3, H, W]``) and ``target["boxes"]`` a ``tv_tensors.BoundingBoxes``
in XYXY pixels; boxes follow every geometric step. Randomness comes only from torch's global RNG
(``torch.rand`` / ``torch.randint``), so seeding torch makes a sample reproducible.

Interpolation: uint8 images on the CPU are resized with PIL ``Image.BILINEAR`` exactly as
detectron2's ``ResizeTransform`` does (bit-identical pixels); float or non-CPU images use
torchvision's antialiased bilinear resize (within one grey level of PIL).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from focus_detr.config import TrainConfig

# detectron2's ``filter_empty_instances`` keeps boxes whose sides are both above this (pixels).
EMPTY_BOX_THRESHOLD = 1e-5


def resize_shortest_edge_size(
    height: int, width: int, short_edge: int, max_size: int = sys.maxsize
) -> tuple[int, int]:
    """Output size of detectron2's ``ResizeShortestEdge`` (same float steps and rounding).

    The short side becomes ``short_edge`` unless the long side would then exceed ``max_size``,
    in which case the long side becomes ``max_size``; both sides are rounded with
    ``int(x + 0.5)``.

    Args:
        height: input height in pixels.
        width: input width in pixels.
        short_edge: target length of the shorter side.
        max_size: upper bound of the longer side.

    Returns:
        ``(new_height, new_width)``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if short_edge <= 0 or max_size <= 0:
        raise ValueError(f"short_edge and max_size must be positive, got {short_edge}, {max_size}")
    size = short_edge * 1.0
    scale = size / min(height, width)
    if height < width:
        new_height, new_width = size, scale * width
    else:
        new_height, new_width = scale * height, size
    if max(new_height, new_width) > max_size:
        scale = max_size * 1.0 / max(new_height, new_width)
        new_height = new_height * scale
        new_width = new_width * scale
    return int(new_height + 0.5), int(new_width + 0.5)


def resize_image(image: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of a ``[3, H, W]`` image to ``[3, height, width]`` (same dtype).

    uint8 CPU images go through PIL ``Image.BILINEAR`` (what detectron2 does, antialiased when
    shrinking); other images use ``torchvision`` bilinear with antialias.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got {tuple(image.shape)}")
    if tuple(image.shape[-2:]) == (height, width):
        return image.clone()
    if image.dtype == torch.uint8 and image.device.type == "cpu" and image.shape[0] in (1, 3):
        # Planes go through PIL's merge/split: much cheaper than permuted tensor copies.
        planes = [PIL.Image.fromarray(plane) for plane in image.numpy()]
        pil_image = planes[0] if len(planes) == 1 else PIL.Image.merge("RGB", planes)
        resized = pil_image.resize((width, height), PIL.Image.Resampling.BILINEAR)
        return torch.from_numpy(np.stack([np.asarray(plane) for plane in resized.split()]))
    return F.resize(
        image, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True
    )


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """(height, width) of the image among a transform's inputs (or the boxes' canvas)."""
    for item in flat_inputs:
        if isinstance(item, (tv_tensors.Image, PIL.Image.Image)):
            height, width = F.get_size(item)
            return int(height), int(width)
    for item in flat_inputs:
        if isinstance(item, Tensor) and not isinstance(item, tv_tensors.TVTensor):
            return int(item.shape[-2]), int(item.shape[-1])
        if isinstance(item, tv_tensors.BoundingBoxes):
            return int(item.canvas_size[0]), int(item.canvas_size[1])
    raise ValueError("transform inputs contain no image")


class ResizeShortestEdge(v2.Transform):
    """detectron2 ``ResizeShortestEdge`` with ``sample_style="choice"``.

    Args:
        short_edges: candidate short-side lengths; one is drawn uniformly per call.
        max_size: upper bound of the long side (unbounded by default, as detectron2).
    """

    def __init__(self, short_edges: Sequence[int] | int, max_size: int = sys.maxsize) -> None:
        super().__init__()
        edges = (short_edges,) if isinstance(short_edges, int) else tuple(short_edges)
        if not edges or any(int(e) <= 0 for e in edges):
            raise ValueError(f"short_edges must be positive lengths, got {short_edges!r}")
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.short_edges = tuple(int(e) for e in edges)
        self.max_size = int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        index = int(torch.randint(len(self.short_edges), (1,)).item())
        size = resize_shortest_edge_size(height, width, self.short_edges[index], self.max_size)
        return {"size": size}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = params["size"]
        if isinstance(inpt, PIL.Image.Image):
            return inpt.resize((width, height), PIL.Image.Resampling.BILINEAR)
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(resize_image(inpt.as_subclass(Tensor), height, width), like=inpt)
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return F.resize(inpt, [height, width])
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, [height, width], interpolation=InterpolationMode.NEAREST)
        if isinstance(inpt, Tensor) and not isinstance(inpt, tv_tensors.TVTensor):
            return resize_image(inpt, height, width)
        return inpt


class RandomCropAbsoluteRange(v2.Transform):
    """detectron2 ``RandomCrop(crop_type="absolute_range")``.

    For an ``H x W`` input, the crop height is uniform in ``[min(H, min_size), min(H, max_size)]``
    and the width in ``[min(W, min_size), min(W, max_size)]`` (integers, bounds included); the
    crop's corner is uniform over every position that fits. Boxes are shifted and clipped.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = int(min_size)
        self.max_size = int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        crop_height = _randint(min(height, self.min_size), min(height, self.max_size) + 1)
        crop_width = _randint(min(width, self.min_size), min(width, self.max_size) + 1)
        top = _randint(0, height - crop_height + 1)
        left = _randint(0, width - crop_width + 1)
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def _randint(low: int, high: int) -> int:
    """Uniform integer in ``[low, high)`` from torch's global RNG."""
    return int(torch.randint(low, high, (1,)).item())


def clip_and_remove_empty_boxes(
    target: dict[str, Any], image_size: tuple[int, int]
) -> dict[str, Any]:
    """Clip ``target["boxes"]`` (xyxy) to the image and drop degenerate boxes with their labels.

    A box is kept when both sides exceed :data:`EMPTY_BOX_THRESHOLD` after clipping (detectron2's
    ``filter_empty_instances``). Returns a new dict; ``boxes`` keeps its type
    (``BoundingBoxes`` stays ``BoundingBoxes`` with the image as canvas).
    """
    boxes = target["boxes"]
    height, width = image_size
    plain = boxes.as_subclass(Tensor) if isinstance(boxes, tv_tensors.TVTensor) else boxes
    clipped = torch.stack(
        (
            plain[:, 0].clamp(0, width),
            plain[:, 1].clamp(0, height),
            plain[:, 2].clamp(0, width),
            plain[:, 3].clamp(0, height),
        ),
        dim=1,
    )
    keep = ((clipped[:, 2] - clipped[:, 0]) > EMPTY_BOX_THRESHOLD) & (
        (clipped[:, 3] - clipped[:, 1]) > EMPTY_BOX_THRESHOLD
    )
    result = dict(target)
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        result["boxes"] = tv_tensors.BoundingBoxes(
            clipped[keep], format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(height, width)
        )
    else:
        result["boxes"] = clipped[keep]
    if "labels" in target:
        result["labels"] = target["labels"][keep]
    return result


class ClipAndRemoveEmptyBoxes(torch.nn.Module):
    """``(image, target) -> (image, target)`` step applying :func:`clip_and_remove_empty_boxes`."""

    def forward(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return image, clip_and_remove_empty_boxes(target, _image_size([image]))


def build_train_transforms(cfg: TrainConfig) -> v2.Compose:
    """detrex's DETR training augmentation (``coco_detr.py``), choices drawn from torch's RNG.

    Horizontal flip with p=0.5; then with p=0.5 a resize of the short side to one of
    ``cfg.train_min_sizes`` (long side <= ``cfg.train_max_size``), otherwise a resize to one of
    ``cfg.crop_resize_sizes`` (no long-side bound), a crop of ``cfg.crop_size_range`` pixels
    ("absolute_range") and the same resize as the first branch. Finally boxes are clipped and
    empty ones removed with their labels.
    """
    resize = ResizeShortestEdge(cfg.train_min_sizes, cfg.train_max_size)
    crop_branch = v2.Compose(
        [
            ResizeShortestEdge(cfg.crop_resize_sizes),
            RandomCropAbsoluteRange(*cfg.crop_size_range),
            ResizeShortestEdge(cfg.train_min_sizes, cfg.train_max_size),
        ]
    )
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomChoice([resize, crop_branch], p=[0.5, 0.5]),
            ClipAndRemoveEmptyBoxes(),
        ]
    )


def build_test_transforms(min_size: int = 800, max_size: int = 1333) -> v2.Compose:
    """Deterministic test-time resize (short side ``min_size``, long side <= ``max_size``)."""
    return v2.Compose([ResizeShortestEdge((min_size,), max_size), ClipAndRemoveEmptyBoxes()])
