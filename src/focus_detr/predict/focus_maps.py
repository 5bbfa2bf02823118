"""Where Focus-DETR's encoder looks: foreground scores and the tokens each layer updated.

The Foreground Token Selector scores every token of the multi-scale feature maps; the encoder
layers then update only the best-scoring tokens (a cascade of shrinking, nested sets), and
among those the dual attention runs on the few with the best multi-category scores. A
:class:`FocusMap` holds all of that for one image as NumPy arrays on each level's token grid;
:func:`focus_detr.predict.draw_focus.draw_focus_map` turns it into a picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from focus_detr.data.transforms import resize_image, resize_shortest_edge_size
from focus_detr.structures import FocusDETROutput, TokenLayout

if TYPE_CHECKING:
    from focus_detr.predict.detector import Detector

__all__ = ["FocusMap", "compute_focus_maps", "focus_maps_from_output"]


@dataclass(frozen=True)
class FocusMap:
    """The encoder's focus on one image, per feature level ``l`` (token grid ``h_l x w_l``).

    Token ``(row, col)`` of level ``l`` covers the input pixels ``[row * s, (row + 1) * s)`` x
    ``[col * s, (col + 1) * s)`` with ``s = strides[l]``; the input is the image resized to
    ``input_size``.

    Attributes:
        image_size: (height, width) of the original image.
        input_size: (height, width) of the image the model saw (after the test resize).
        strides: pixel stride of each level in the input.
        foreground: per level, ``float32 [h_l, w_l]`` foreground probability of every token
            (sigmoid of the selector's score).
        updated: per encoder layer, per level, ``bool [h_l, w_l]``: the tokens it updated.
        dual_attention: per encoder layer, per level, ``bool [h_l, w_l]``: the tokens that
            ran the dual attention (self-attention among the best multi-category scores).
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    strides: tuple[int, ...]
    foreground: tuple[np.ndarray, ...]
    updated: tuple[tuple[np.ndarray, ...], ...]
    dual_attention: tuple[tuple[np.ndarray, ...], ...]

    @property
    def num_tokens(self) -> int:
        return sum(int(level.size) for level in self.foreground)

    def merged_foreground(self) -> np.ndarray:
        """``[h_0, w_0]`` the best foreground score over the levels at each finest-level cell
        (coarser levels repeated over the cells they cover)."""
        height, width = self.foreground[0].shape
        merged = self.foreground[0].copy()
        for level, scores in enumerate(self.foreground[1:], start=1):
            factor = self.strides[level] // self.strides[0]
            upsampled = np.repeat(np.repeat(scores, factor, axis=0), factor, axis=1)
            merged = np.maximum(merged, upsampled[:height, :width])
        return merged


def compute_focus_maps(
    model: Detector,
    images: Sequence[Tensor],
    *,
    min_size: int | None = None,
    max_size: int | None = None,
) -> list[FocusMap]:
    """Focus maps of ``uint8 [3, H, W]`` images (any sizes, one batched forward).

    Images are resized like :class:`~focus_detr.Predictor` does (the model's test resize unless
    ``min_size`` / ``max_size`` are given). ``model`` is a :class:`~focus_detr.FocusDETR` (a
    detector whose ``capabilities.raw_outputs``): the maps come from its raw outputs
    (``model(images, raw=True)``).
    """
    _check_raw_outputs(model)
    short, limit = model.config.test_resize(min_size, max_size)
    resized = []
    for image in images:
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"images must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}"
            )
        height, width = resize_shortest_edge_size(
            int(image.shape[1]), int(image.shape[2]), short, limit
        )
        resized.append(resize_image(image.cpu(), height, width))
    sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
    return focus_maps_of_inputs(model, resized, sizes)


def _check_raw_outputs(model: object) -> None:
    from focus_detr.predict.detector import capabilities_of

    if not capabilities_of(model).raw_outputs:
        raise TypeError("focus maps need the PyTorch FocusDETR model (its raw outputs)")


def focus_maps_of_inputs(
    model: Detector, inputs: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
) -> list[FocusMap]:
    """Focus maps of images already resized for the model (``image_sizes``: the originals)."""
    _check_raw_outputs(model)
    raw_forward: Callable[..., FocusDETROutput] = model  # raw_outputs: it takes raw=True
    with torch.inference_mode():
        output = raw_forward([image.to(model.device) for image in inputs], raw=True)
    return focus_maps_from_output(output, image_sizes)


def focus_maps_from_output(
    output: FocusDETROutput, image_sizes: Sequence[tuple[int, int]] | None = None
) -> list[FocusMap]:
    """Focus maps from raw outputs (``model(images, raw=True)``), one per image of the batch.

    ``image_sizes`` are the original sizes when the model saw resized images (default: the
    sizes the model saw).
    """
    layout = output.tokens
    inputs = [(int(h), int(w)) for h, w in output.image_sizes.tolist()]
    originals = list(image_sizes) if image_sizes is not None else inputs
    trace = output.encoder
    foreground = output.foreground_logits.detach().float().sigmoid().cpu()
    maps = []
    for b, (input_size, image_size) in enumerate(zip(inputs, originals)):
        grids = _level_grids(layout, b)
        updated = tuple(
            _token_masks(ids[b, : int(trace.token_counts[b, layer])], layout, grids)
            for layer, ids in enumerate(trace.token_indices)
        )
        dual = tuple(
            _token_masks(ids[b, : int(trace.dual_attention_counts[b, layer])], layout, grids)
            for layer, ids in enumerate(trace.dual_attention_indices)
        )
        maps.append(
            FocusMap(
                image_size=(int(image_size[0]), int(image_size[1])),
                input_size=input_size,
                strides=tuple(int(s) for s in layout.strides),
                foreground=_level_scores(foreground[b], layout, grids),
                updated=updated,
                dual_attention=dual,
            )
        )
    return maps


def _level_grids(layout: TokenLayout, b: int) -> list[tuple[int, int, int, int]]:
    """Per level: (first token id, padded width, valid height, valid width) of image ``b``."""
    starts = layout.level_start_index.tolist()
    widths = layout.spatial_shapes[:, 1].tolist()
    valid = layout.valid_sizes[b].tolist()
    return [(s, w, h_valid, w_valid) for s, w, (h_valid, w_valid) in zip(starts, widths, valid)]


def _level_scores(
    scores: Tensor, layout: TokenLayout, grids: list[tuple[int, int, int, int]]
) -> tuple[np.ndarray, ...]:
    levels = []
    for (start, padded_width, height, width), (padded_height, _) in zip(
        grids, layout.spatial_shapes.tolist()
    ):
        grid = scores[start : start + padded_height * padded_width].view(
            padded_height, padded_width
        )
        levels.append(grid[:height, :width].numpy().astype(np.float32))
    return tuple(levels)


def _token_masks(
    token_ids: Tensor, layout: TokenLayout, grids: list[tuple[int, int, int, int]]
) -> tuple[np.ndarray, ...]:
    """Per level, a boolean grid that is True on the given (batch-layout) token ids."""
    ids = token_ids.cpu()
    starts = layout.level_start_index.cpu()
    levels = torch.searchsorted(starts, ids, right=True) - 1
    masks = []
    for level, (start, padded_width, height, width) in enumerate(grids):
        local = ids[levels == level] - start
        mask = np.zeros((height, width), dtype=bool)
        rows, cols = (local // padded_width).numpy(), (local % padded_width).numpy()
        inside = (rows < height) & (cols < width)
        mask[rows[inside], cols[inside]] = True
        masks.append(mask)
    return tuple(masks)
