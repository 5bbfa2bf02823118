"""A picture of a :class:`~focus_detr.focus_maps.FocusMap`: where the encoder looked.

Six panels on a white sheet, each titled with what it shows and how many tokens:

    image (+ detections)    foreground score, best level    foreground score per level | bar
    updated by layer 1      updated by the last layer       ran the dual attention (any layer)

Scores use a perceptually uniform map (viridis) with a colour bar; token panels dim the image
and fill each chosen token's cell in its level's colour (coarse levels first, finer on top),
with a legend of the levels. Panels are scaled so the image's long side is 320-480 pixels,
which keeps the text readable for thumbnails and photos alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from focus_detr.focus_maps import FocusMap
from focus_detr.visualize import draw_detections

__all__ = ["draw_focus_map"]

# viridis at nine evenly spaced points (matplotlib's values), interpolated to 256 entries
_VIRIDIS_ANCHORS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)
_VIRIDIS = np.stack(
    [
        np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_VIRIDIS_ANCHORS)), channel)
        for channel in _VIRIDIS_ANCHORS.T
    ],
    axis=1,
).astype(np.uint8)
# finest level brightest: small objects' tokens stand out on top of the coarse ones
_LEVEL_COLOURS = ((255, 226, 0), (255, 128, 0), (230, 40, 110), (140, 70, 230), (40, 160, 255))
_MARGIN = 10
_TITLE_HEIGHT = 22
_BAR_WIDTH = 70


def draw_focus_map(
    image: Tensor | Image.Image,
    focus: FocusMap,
    detections: Mapping[str, Tensor] | None = None,
    class_names: Sequence[str] | None = None,
) -> Image.Image:
    """The focus of the encoder on ``image`` (``uint8 [3, H, W]`` or PIL) as one RGB picture.

    ``detections`` (``boxes``, ``scores``, ``labels`` in the image's pixels), when given, are
    drawn on the first panel.
    """
    base = image.convert("RGB") if isinstance(image, Image.Image) else _tensor_to_pil(image)
    if base.size != (focus.image_size[1], focus.image_size[0]):
        raise ValueError(f"the image is {base.size[::-1]}, the focus map {focus.image_size}")
    if detections is not None:
        base = draw_detections(
            base, detections["boxes"], detections["labels"], detections["scores"], class_names
        )
    long_side = min(480, max(320, max(base.size)))
    scale = long_side / max(base.size)
    size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
    photo = base.resize(size, Image.Resampling.BILINEAR)
    font = ImageFont.load_default(size=13)
    last = len(focus.updated)
    panels = [
        ("image" + (" and detections" if detections is not None else ""), photo),
        ("foreground score (best level)", _heat(photo, focus.merged_foreground(), focus, 0)),
        ("foreground score per level", _levels_panel(focus, size, font)),
        (
            _count_title("updated by layer 1", focus.updated[0], focus),
            _tokens(photo, focus.updated[0], focus),
        ),
        (
            _count_title(f"updated by layer {last} (last)", focus.updated[-1], focus),
            _tokens(photo, focus.updated[-1], focus),
        ),
        (
            _count_title("ran dual attention (any layer)", _union(focus.dual_attention), focus),
            _tokens(photo, _union(focus.dual_attention), focus),
        ),
    ]
    return _sheet(panels, size, font, len(focus.strides), focus.strides)


def _tensor_to_pil(image: Tensor) -> Image.Image:
    if image.dtype.is_floating_point or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
    return Image.fromarray(image.detach().cpu().permute(1, 2, 0).contiguous().numpy())


def _union(per_layer: Sequence[Sequence[np.ndarray]]) -> tuple[np.ndarray, ...]:
    return tuple(
        np.logical_or.reduce([layer[level] for layer in per_layer])
        for level in range(len(per_layer[0]))
    )


def _count_title(text: str, masks: Sequence[np.ndarray], focus: FocusMap) -> str:
    count = sum(int(mask.sum()) for mask in masks)
    return f"{text}: {count} of {focus.num_tokens} tokens ({100 * count / focus.num_tokens:.0f}%)"


def _grid_to_panel(
    grid: Image.Image, stride: int, focus: FocusMap, size: tuple[int, int]
) -> Image.Image:
    """A token grid (one pixel per token) drawn over ``size``: each token fills its cell."""
    per_input_pixel = size[0] / focus.input_size[1]
    cell = stride * per_input_pixel
    stretched = grid.resize(
        (max(1, round(grid.width * cell)), max(1, round(grid.height * cell))),
        Image.Resampling.NEAREST,
    )
    canvas = Image.new(grid.mode, size, 0)
    canvas.paste(stretched, (0, 0))
    return canvas


def _heat(photo: Image.Image, scores: np.ndarray, focus: FocusMap, level: int) -> Image.Image:
    """Scores in [0, 1] in viridis, over a faint grey copy of the photo."""
    indices = np.clip(np.rint(scores * 255), 0, 255).astype(np.uint8)
    grid = Image.fromarray(indices, mode="L")
    stretched = np.asarray(_grid_to_panel(grid, focus.strides[level], focus, photo.size))
    coloured = _VIRIDIS[stretched].astype(np.float32)
    grey = np.asarray(photo.convert("L"), dtype=np.float32)[:, :, None]
    return Image.fromarray((0.8 * coloured + 0.2 * grey).astype(np.uint8))


def _levels_panel(
    focus: FocusMap, size: tuple[int, int], font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> Image.Image:
    """Each level's scores as a small heat map, in a near-square grid, labelled by stride."""
    count = len(focus.foreground)
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    gap = 4
    cell = ((size[0] - gap * (columns - 1)) // columns, (size[1] - gap * (rows - 1)) // rows)
    panel = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for level, scores in enumerate(focus.foreground):
        indices = np.clip(np.rint(scores * 255), 0, 255).astype(np.uint8)
        small = Image.fromarray(_VIRIDIS[indices]).resize(cell, Image.Resampling.NEAREST)
        x = (level % columns) * (cell[0] + gap)
        y = (level // columns) * (cell[1] + gap)
        panel.paste(small, (x, y))
        label = f"stride {focus.strides[level]}: {scores.shape[0]}x{scores.shape[1]}"
        box = draw.textbbox((x + 3, y + 2), label, font=font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(255, 255, 255))
        draw.text((x + 3, y + 2), label, fill=(0, 0, 0), font=font)
    return panel


def _tokens(photo: Image.Image, masks: Sequence[np.ndarray], focus: FocusMap) -> Image.Image:
    """The photo dimmed, each chosen token's cell filled in its level's colour."""
    dimmed = Image.fromarray(
        (np.asarray(photo.convert("L"), dtype=np.float32) * 0.45).astype(np.uint8)
    ).convert("RGB")
    for level in reversed(range(len(masks))):  # coarse first, finer on top
        grid = Image.fromarray(masks[level].astype(np.uint8) * 170, mode="L")
        alpha = _grid_to_panel(grid, focus.strides[level], focus, photo.size)
        colour = Image.new("RGB", photo.size, _LEVEL_COLOURS[level % len(_LEVEL_COLOURS)])
        dimmed = Image.composite(colour, dimmed, alpha)
    return dimmed


def _sheet(
    panels: list[tuple[str, Image.Image]],
    size: tuple[int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    num_levels: int,
    strides: Sequence[int],
) -> Image.Image:
    """Panels in two rows of three with titles, a colour bar right of the first row and a
    legend of the level colours under the second."""
    width, height = size
    column_width = max(width, 300)
    sheet_width = 3 * column_width + 4 * _MARGIN + _BAR_WIDTH
    row_height = _TITLE_HEIGHT + height + _MARGIN
    legend_height = 24
    sheet = Image.new(
        "RGB", (sheet_width, _MARGIN + 2 * row_height + legend_height), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    for index, (title, panel) in enumerate(panels):
        x = _MARGIN + (index % 3) * (column_width + _MARGIN)
        y = _MARGIN + (index // 3) * row_height
        draw.text((x, y + 3), title, fill=(0, 0, 0), font=font)
        sheet.paste(panel, (x, y + _TITLE_HEIGHT))
    _colour_bar(
        draw, (3 * (column_width + _MARGIN) + _MARGIN, _MARGIN + _TITLE_HEIGHT), height, font
    )
    _legend(draw, (_MARGIN, _MARGIN + 2 * row_height), num_levels, strides, font)
    return sheet


def _colour_bar(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    height: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    x, y = origin
    for row in range(height):
        value = 1.0 - row / max(1, height - 1)
        draw.line(
            (x, y + row, x + 16, y + row), fill=tuple(int(c) for c in _VIRIDIS[round(value * 255)])
        )
    draw.rectangle((x, y, x + 16, y + height - 1), outline=(0, 0, 0))
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        tick_y = y + round((1.0 - value) * (height - 1))
        draw.line((x + 16, tick_y, x + 20, tick_y), fill=(0, 0, 0))
        draw.text((x + 23, tick_y - 7), f"{value:.2f}", fill=(0, 0, 0), font=font)
    draw.text((x - 4, y - _TITLE_HEIGHT + 3), "P(fg)", fill=(0, 0, 0), font=font)


def _legend(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    num_levels: int,
    strides: Sequence[int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    x, y = origin
    draw.text((x, y + 3), "token level:", fill=(0, 0, 0), font=font)
    x += 90
    for level in range(num_levels):
        draw.rectangle(
            (x, y + 4, x + 14, y + 18),
            fill=_LEVEL_COLOURS[level % len(_LEVEL_COLOURS)],
            outline=(0, 0, 0),
        )
        label = f"stride {strides[level]}"
        draw.text((x + 19, y + 4), label, fill=(0, 0, 0), font=font)
        x += 19 + int(draw.textlength(label, font=font)) + 16
