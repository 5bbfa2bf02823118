"""Sliced inference for large images: overlapping tiles plus the whole image, merged.

A large image shrunk to the model's test size loses its small objects. Slicing runs the model
on the whole image and on overlapping tiles (each resized like any image, so a tile smaller
than the test size is zoomed in), maps every tile's boxes back to the image and merges them.

Merge rule, and why:

1. A tile box that touches a tile edge lying inside the image is dropped: it is most likely a
   fragment of an object the edge cuts. An object no larger than the overlap is whole in a
   neighbouring tile, and one larger than a tile is seen by the whole-image view.
2. Class-wise NMS (``torchvision.ops.batched_nms``) on what is left, whole-image view included.

NMS rather than box fusion (WBF): the views see an object at different zooms and their scores
are not calibrated against each other, so averaging coordinates would blur the sharpest view's
box into the coarser ones; NMS keeps one view's box and score unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Slicing", "Window", "class_wise_nms", "merge_views", "to_image_pixels"]

Detections = dict[str, Tensor]

# A tile box closer than this to an inner tile edge counts as cut (fraction of the tile side;
# models rarely put a cut object's side exactly on the border).
_CUT_MARGIN_FRACTION = 0.01
# IoU of the merge NMS when no --nms threshold is given.
DEFAULT_MERGE_IOU = 0.5


@dataclass(frozen=True)
class Window:
    """A rectangle of an image in pixels: columns ``[left, right)``, rows ``[top, bottom)``."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @classmethod
    def whole(cls, height: int, width: int) -> Window:
        return cls(0, 0, int(width), int(height))

    def crop(self, image: Tensor) -> Tensor:
        """The window's pixels of a ``[C, H, W]`` image."""
        return image[:, self.top : self.bottom, self.left : self.right]


@dataclass(frozen=True)
class Slicing:
    """Tiles of ``tile_height`` x ``tile_width`` pixels overlapping by ``overlap`` of a side.

    Attributes:
        tile_height / tile_width: tile size in pixels of the original image (clipped to the
            image when it is smaller).
        overlap: fraction in [0, 1) of a tile side shared with its neighbour; objects up to
            ``overlap * tile side`` pixels are whole in at least one tile.
    """

    tile_height: int
    tile_width: int
    overlap: float = 0.2

    def __post_init__(self) -> None:
        if self.tile_height < 1 or self.tile_width < 1:
            raise ValueError(
                f"tile size must be positive, got {self.tile_height}x{self.tile_width}"
            )
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"slice overlap must be in [0, 1), got {self.overlap}")

    def windows(self, height: int, width: int) -> list[Window]:
        """The whole image first, then the tiles row by row (none if one tile is the image)."""
        whole = Window.whole(height, width)
        tiles = [
            Window(
                left, top, min(left + self.tile_width, width), min(top + self.tile_height, height)
            )
            for top in _tile_starts(height, self.tile_height, self.overlap)
            for left in _tile_starts(width, self.tile_width, self.overlap)
        ]
        return [whole, *(tile for tile in tiles if tile != whole)]


def _tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``; the last tile ends on the border."""
    if tile >= length:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def to_image_pixels(detections: Detections, window: Window, view_size: Sequence[int]) -> Detections:
    """Boxes found in a view (the window resized to ``view_size`` (h, w)) in image pixels.

    Boxes are scaled to the window, shifted by its offset, clipped to it, and those left empty
    are dropped (detectron2's ``detector_postprocess`` for the whole-image window).
    """
    scale_x = window.width / int(view_size[1])
    scale_y = window.height / int(view_size[0])
    boxes = detections["boxes"].float().clone()
    boxes[:, 0::2] = (boxes[:, 0::2] * scale_x).clamp(0, window.width) + window.left
    boxes[:, 1::2] = (boxes[:, 1::2] * scale_y).clamp(0, window.height) + window.top
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {
        "boxes": boxes[keep].cpu(),
        "scores": detections["scores"][keep].float().cpu(),
        "labels": detections["labels"][keep].cpu(),
    }


def class_wise_nms(detections: Detections, iou_threshold: float) -> Detections:
    """Drop boxes that overlap a better box of the same class by more than ``iou_threshold``.

    The kept detections come by decreasing score.
    """
    from torchvision.ops import batched_nms  # torchvision is heavy; import on first use

    keep = batched_nms(
        detections["boxes"].float(),
        detections["scores"].float(),
        detections["labels"],
        float(iou_threshold),
    )
    return {key: value[keep] for key, value in detections.items()}


def merge_views(
    per_view: Sequence[Detections],
    windows: Sequence[Window],
    image_size: Sequence[int],
    iou_threshold: float = DEFAULT_MERGE_IOU,
) -> Detections:
    """One image's detections from those of its views (image pixels; see the module doc)."""
    height, width = int(image_size[0]), int(image_size[1])
    kept = [
        found
        if window == Window.whole(height, width)
        else _drop_cut_boxes(found, window, height, width)
        for found, window in zip(per_view, windows)
    ]
    merged = {
        key: torch.cat([found[key] for found in kept]) for key in ("boxes", "scores", "labels")
    }
    return class_wise_nms(merged, iou_threshold)


def _drop_cut_boxes(found: Detections, window: Window, height: int, width: int) -> Detections:
    """Drop boxes touching an edge of ``window`` that is not an edge of the image."""
    margin_x = max(1.0, _CUT_MARGIN_FRACTION * window.width)
    margin_y = max(1.0, _CUT_MARGIN_FRACTION * window.height)
    boxes = found["boxes"]
    cut = torch.zeros(boxes.shape[0], dtype=torch.bool)
    if window.left > 0:
        cut |= boxes[:, 0] <= window.left + margin_x
    if window.top > 0:
        cut |= boxes[:, 1] <= window.top + margin_y
    if window.right < width:
        cut |= boxes[:, 2] >= window.right - margin_x
    if window.bottom < height:
        cut |= boxes[:, 3] >= window.bottom - margin_y
    return {key: value[~cut] for key, value in found.items()}
