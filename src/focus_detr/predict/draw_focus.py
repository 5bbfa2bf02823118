"""A picture of a :class:`~focus_detr.predict.focus_maps.FocusMap`: where the encoder looked.

Six panels on a white sheet, each titled with what it shows and how many tokens:

    image (+ detections)    foreground score, best level    foreground score per level | bar
    updated by layer 1      updated by the last layer       dual attention, last layer

Scores use a perceptually uniform map (viridis) with a colour bar. Token panels show one small
picture per feature level (stacking levels would hide the fine tokens under the coarse ones):
the image dimmed to grey, each chosen token's cell lit in amber. Panels are scaled so the
image's long side is 320-480 pixels, which keeps the text readable for thumbnails and photos
alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from focus_detr.predict.draw import draw_detections
from focus_detr.predict.focus_maps import FocusMap

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
_HIGHLIGHT = (255, 176, 0)  # amber: chosen tokens, readable over any dimmed grey image
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
    long_side = min(480, max(320, max(base.size)))
    scale = long_side / max(base.size)
    size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
    photo = base.resize(size, Image.Resampling.BILINEAR)
    font = ImageFont.load_default(size=13)
    first = photo
    if detections is not None:
        boxes = detections["boxes"].float() * scale  # drawn at panel size: readable labels
        first = draw_detections(
            photo, boxes, detections["labels"], detections["scores"], class_names
        )
    last = len(focus.updated)
    dual = focus.dual_attention[-1]
    panels = [
        ("image" + (" and detections" if detections is not None else ""), first),
        (
            "foreground score, best level",
            _heat(photo, focus.merged_foreground(), focus.strides[0], focus),
        ),
        ("foreground score per level", _per_level(photo, focus, font, focus.foreground, _heat)),
        (
            _count_title("updated by layer 1", focus.updated[0], focus),
            _per_level(photo, focus, font, focus.updated[0], _tokens),
        ),
        (
            _count_title(f"updated by layer {last} (last)", focus.updated[-1], focus),
            _per_level(photo, focus, font, focus.updated[-1], _tokens),
        ),
        (
            _count_title(f"dual attention in layer {last} (last)", dual, focus),
            _per_level(photo, focus, font, dual, _tokens),
        ),
    ]
    return _sheet(panels, size, font)


def _tensor_to_pil(image: Tensor) -> Image.Image:
    if image.dtype.is_floating_point or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
    return Image.fromarray(image.detach().cpu().permute(1, 2, 0).contiguous().numpy())


def _count_title(text: str, masks: Sequence[np.ndarray], focus: FocusMap) -> str:
    count = sum(int(mask.sum()) for mask in masks)
    return f"{text}: {count} tokens ({100 * count / focus.num_tokens:.0f}%)"


def _grid_to_panel(
    grid: Image.Image, stride: int, focus: FocusMap, size: tuple[int, int]
) -> Image.Image:
    """A token grid (one pixel per token) stretched over ``size``: each token fills its cell."""
    cell = stride * size[0] / focus.input_size[1]
    stretched = grid.resize(
        (max(1, round(grid.width * cell)), max(1, round(grid.height * cell))),
        Image.Resampling.NEAREST,
    )
    canvas = Image.new(grid.mode, size, 0)
    canvas.paste(stretched, (0, 0))
    return canvas


def _heat(photo: Image.Image, scores: np.ndarray, stride: int, focus: FocusMap) -> Image.Image:
    """Scores in [0, 1] in viridis, over a faint grey copy of the photo."""
    indices = np.clip(np.rint(scores * 255), 0, 255).astype(np.uint8)
    stretched = np.asarray(
        _grid_to_panel(Image.fromarray(indices, mode="L"), stride, focus, photo.size)
    )
    grey = np.asarray(photo.convert("L"), dtype=np.float32)[:, :, None]
    return Image.fromarray((0.8 * _VIRIDIS[stretched] + 0.2 * grey).astype(np.uint8))


def _tokens(photo: Image.Image, mask: np.ndarray, stride: int, focus: FocusMap) -> Image.Image:
    """The photo dimmed to grey, the chosen tokens' cells lit in amber."""
    grey = np.asarray(photo.convert("L"), dtype=np.float32)[:, :, None]
    chosen = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    lit = np.asarray(_grid_to_panel(chosen, stride, focus, photo.size))[:, :, None] > 0
    dimmed = np.repeat(0.4 * grey, 3, axis=2)
    highlighted = 0.35 * grey + 0.65 * np.array(_HIGHLIGHT, dtype=np.float32)
    return Image.fromarray(np.where(lit, highlighted, dimmed).astype(np.uint8))


def _per_level(
    photo: Image.Image,
    focus: FocusMap,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    grids: Sequence[np.ndarray],
    render: Callable[[Image.Image, np.ndarray, int, FocusMap], Image.Image],
) -> Image.Image:
    """One small picture per level in a near-square grid, each labelled with its stride."""
    count = len(grids)
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    gap = 4
    width = (photo.width - gap * (columns - 1)) // columns
    height = (photo.height - gap * (rows - 1)) // rows
    small = photo.resize((max(1, width), max(1, height)), Image.Resampling.BILINEAR)
    panel = Image.new("RGB", photo.size, (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for level, grid in enumerate(grids):
        x, y = (level % columns) * (width + gap), (level // columns) * (height + gap)
        panel.paste(render(small, grid, focus.strides[level], focus), (x, y))
        label = f"stride {focus.strides[level]}"
        if grid.dtype == bool:
            label += f": {int(grid.sum())}/{grid.size}"
        box = draw.textbbox((x + 3, y + 2), label, font=font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(255, 255, 255))
        draw.text((x + 3, y + 2), label, fill=(0, 0, 0), font=font)
    return panel


def _sheet(
    panels: list[tuple[str, Image.Image]],
    size: tuple[int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> Image.Image:
    """Panels in two rows of three under their titles, the colour bar right of the first row."""
    width, height = size
    column_width = max(width, 300)
    row_height = _TITLE_HEIGHT + height + _MARGIN
    sheet = Image.new(
        "RGB", (3 * column_width + 4 * _MARGIN + _BAR_WIDTH, _MARGIN + 2 * row_height), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for index, (title, panel) in enumerate(panels):
        x = _MARGIN + (index % 3) * (column_width + _MARGIN)
        y = _MARGIN + (index // 3) * row_height
        draw.text((x, y + 3), title, fill=(0, 0, 0), font=font)
        sheet.paste(panel, (x, y + _TITLE_HEIGHT))
    bar_origin = (3 * (column_width + _MARGIN) + _MARGIN, _MARGIN + _TITLE_HEIGHT)
    _colour_bar(draw, bar_origin, height, font)
    return sheet


def _colour_bar(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    height: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """Viridis from 0 (bottom) to 1 (top) with ticks, titled with what it measures."""
    x, y = origin
    for row in range(height):
        value = 1.0 - row / max(1, height - 1)
        colour = tuple(int(c) for c in _VIRIDIS[round(value * 255)])
        draw.line((x, y + row, x + 16, y + row), fill=colour)
    draw.rectangle((x, y, x + 16, y + height - 1), outline=(0, 0, 0))
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        tick_y = y + round((1.0 - value) * (height - 1))
        draw.line((x + 16, tick_y, x + 20, tick_y), fill=(0, 0, 0))
        draw.text((x + 23, tick_y - 7), f"{value:.2f}", fill=(0, 0, 0), font=font)
    draw.text((x - 4, y - _TITLE_HEIGHT + 3), "P(fg)", fill=(0, 0, 0), font=font)
