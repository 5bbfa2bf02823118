"""Drawing detections on images, and saving images atomically.

Boxes get one colour per class and a "name 0.87" label on a filled background in that colour.
Line width and font size grow with the image, so the drawing is readable on thumbnails and on
4K photos alike; labels are moved to stay inside the image. Only Pillow's built-in font is used.
"""

from __future__ import annotations

import colorsys
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from focus_detr.io import atomic_write_bytes

__all__ = ["class_color", "draw_detections", "save_image"]

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


@dataclass(frozen=True)
class _Detection:
    """One box to draw, in pixel coordinates clipped to the image."""

    box_xyxy: tuple[float, float, float, float]
    label: int
    score: float


def class_color(label: int) -> tuple[int, int, int]:
    """A saturated RGB colour for ``label``; neighbouring labels get distant hues."""
    hue = (int(label) * _GOLDEN_RATIO_CONJUGATE) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def draw_detections(
    image: Tensor | Image.Image,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.0,
) -> Image.Image:
    """Draw detection boxes and "name score" labels on a copy of ``image``.

    Boxes are drawn from the lowest score to the highest (best on top), then all labels, so
    labels are never hidden by other boxes. Boxes with non-finite coordinates, ``x2 < x1`` or
    ``y2 < y1``, or entirely outside the image are skipped; boxes partly outside are clipped to
    the image, so the side on the border marks where the box was cut.

    Args:
        image: ``uint8`` tensor ``[3, height, width]`` (RGB, any device) or a PIL image (any
            mode; converted to RGB). The input is not modified.
        boxes: ``[num_boxes, 4]`` absolute ``x1, y1, x2, y2`` pixel coordinates.
        labels: ``[num_boxes]`` integer class labels.
        scores: ``[num_boxes]`` confidence scores.
        class_names: name of each label; labels without a name are shown as their number.
        threshold: boxes with ``score >= threshold`` are drawn.

    Returns:
        A new RGB PIL image of the same size as ``image``.

    Raises:
        ValueError: wrong image dtype/shape, or boxes/labels/scores shapes that do not match.
    """
    canvas = _to_pil_rgb(image)
    detections = _select_detections(boxes, labels, scores, threshold, canvas.size)
    if not detections:
        return canvas
    width, height = canvas.size
    scale = (width * height) ** 0.5
    line_width = max(1, round(scale * 0.003))
    font = ImageFont.load_default(size=max(11, round(scale * 0.02)))
    draw = ImageDraw.Draw(canvas)
    for detection in detections:
        draw.rectangle(detection.box_xyxy, outline=class_color(detection.label), width=line_width)
    for detection in detections:
        text = f"{_class_name(detection.label, class_names)} {detection.score:.2f}"
        _draw_label(draw, text, detection, font, canvas.size)
    return canvas


def _to_pil_rgb(image: Tensor | Image.Image) -> Image.Image:
    """A new RGB PIL image from a ``uint8 [3, H, W]`` tensor or any PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
    if not isinstance(image, Tensor):
        raise ValueError(f"image must be a uint8 tensor or a PIL image, got {type(image)}")
    if image.dtype != torch.uint8:
        raise ValueError(
            f"image tensor must be uint8 (0..255), got {image.dtype}; "
            "convert with (image * 255).round().clamp(0, 255).to(torch.uint8) if it is 0..1"
        )
    if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image tensor must be [3, H, W] with H, W > 0, got {list(image.shape)}")
    pixels = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(pixels)


def _select_detections(
    boxes: Tensor, labels: Tensor, scores: Tensor, threshold: float, size: tuple[int, int]
) -> list[_Detection]:
    """Validate the inputs and return the drawable detections, lowest score first."""
    boxes, labels, scores = (torch.as_tensor(t).detach().cpu() for t in (boxes, labels, scores))
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [num_boxes, 4] (x1, y1, x2, y2), got {list(boxes.shape)}")
    num_boxes = boxes.shape[0]
    if labels.shape != (num_boxes,) or scores.shape != (num_boxes,):
        raise ValueError(
            f"labels and scores must be [{num_boxes}] to match boxes, "
            f"got {list(labels.shape)} and {list(scores.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    width, height = size
    boxes_np = boxes.to(torch.float64).numpy()
    scores_np = scores.to(torch.float64).numpy()
    keep = (
        np.isfinite(boxes_np).all(axis=1)
        & (scores_np >= threshold)
        & (boxes_np[:, 2] >= boxes_np[:, 0])
        & (boxes_np[:, 3] >= boxes_np[:, 1])
        & (boxes_np[:, 2] >= 0)
        & (boxes_np[:, 3] >= 0)
        & (boxes_np[:, 0] < width)
        & (boxes_np[:, 1] < height)
    )
    # Clip to the canvas: a box running off the image keeps all four sides visible (the side
    # on the border marks the cut), and huge coordinates cannot overflow Pillow's integers.
    boxes_np[:, 0::2] = boxes_np[:, 0::2].clip(0, width - 1)
    boxes_np[:, 1::2] = boxes_np[:, 1::2].clip(0, height - 1)
    detections = []
    for i in np.argsort(scores_np, kind="stable"):
        if keep[i]:
            x1, y1, x2, y2 = (float(v) for v in boxes_np[i])
            detections.append(_Detection((x1, y1, x2, y2), int(labels[i]), float(scores_np[i])))
    return detections


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    """``class_names[label]``, or the label number when there is no such name."""
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    detection: _Detection,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    size: tuple[int, int],
) -> None:
    """Draw ``text`` on a filled box above the detection, or just inside it if no room."""
    width, height = size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    padding = max(1, round((bottom - top) * 0.15))
    label_width = right - left + 2 * padding
    label_height = bottom - top + 2 * padding
    x1, y1 = detection.box_xyxy[0], detection.box_xyxy[1]
    x = min(max(x1, 0.0), max(width - label_width, 0))
    y = y1 - label_height if y1 - label_height >= 0 else max(y1, 0.0)
    y = min(y, max(height - label_height, 0))
    color = class_color(detection.label)
    draw.rectangle((x, y, x + label_width - 1, y + label_height - 1), fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    text_color = (0, 0, 0) if luminance > 150 else (255, 255, 255)
    draw.text((x + padding - left, y + padding - top), text, fill=text_color, font=font)


def save_image(image: Tensor | Image.Image, path: str | os.PathLike[str]) -> None:
    """Save an image atomically; the format comes from the file suffix.

    Args:
        image: ``uint8`` tensor ``[3, height, width]`` (RGB) or a PIL image.
        path: destination (``.jpg``, ``.png``, ``.webp``, ...); missing folders are created.

    Raises:
        ValueError: unknown suffix, or an image that is not a uint8 ``[3, H, W]`` tensor.
    """
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"cannot save {path}: unknown image file suffix {path.suffix!r}")
    pil_image = image if isinstance(image, Image.Image) else _to_pil_rgb(image)
    if image_format == "JPEG" and pil_image.mode not in ("RGB", "L", "CMYK"):
        pil_image = pil_image.convert("RGB")  # JPEG has no alpha channel
    options = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
    buffer = io.BytesIO()
    pil_image.save(buffer, format=image_format, **options)
    atomic_write_bytes(path, buffer.getvalue())
