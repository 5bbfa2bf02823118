"""Drawing the synthetic shape images: backgrounds, shapes, colours, placement.

A :class:`ShapeSet` names the classes of a synthetic dataset; each class has an outline (its
name selects it) and a hue. Two sets are built in:

- :data:`SHAPES`, the quick-start set: circle, square, triangle, ring, cross, star, diamond,
  bar, with hues evenly spread over the colour wheel;
- :data:`SHAPES_FINETUNE`, the fine-tuning example's set: circle, triangle and star (the same
  outline and hue as in :data:`SHAPES`) and three classes :data:`SHAPES` does not have, heart,
  arrow and hexagon, painted with the hues of square, ring and diamond, so that a model trained
  on :data:`SHAPES` must learn the new outlines.

Every random number comes from the generator passed in; drawing avoids transcendental functions
on pixel grids (whose last bits vary between CPUs), so the bytes are the same on every machine.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw


@dataclass(frozen=True)
class ShapeClass:
    """One class of a synthetic dataset: its outline (named by ``name``) and hue in [0, 1)."""

    name: str
    hue: float


@dataclass(frozen=True)
class ShapeSet:
    """The classes of a synthetic dataset, label ``i`` being ``classes[i]``."""

    name: str
    classes: tuple[ShapeClass, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)


def _evenly_coloured(names: tuple[str, ...]) -> tuple[ShapeClass, ...]:
    return tuple(ShapeClass(name, label / len(names)) for label, name in enumerate(names))


SHAPES = ShapeSet(
    "shapes",
    _evenly_coloured(("circle", "square", "triangle", "ring", "cross", "star", "diamond", "bar")),
)
"""The quick-start classes (the built-in dataset of ``focus-detr train``)."""

_HUE = {c.name: c.hue for c in SHAPES.classes}

SHAPES_FINETUNE = ShapeSet(
    "shapes-finetune",
    (
        ShapeClass("circle", _HUE["circle"]),
        ShapeClass("triangle", _HUE["triangle"]),
        ShapeClass("star", _HUE["star"]),
        ShapeClass("heart", _HUE["square"]),
        ShapeClass("arrow", _HUE["ring"]),
        ShapeClass("hexagon", _HUE["diamond"]),
    ),
)
"""The fine-tuning example's classes: three shared with :data:`SHAPES`, three new."""

SHAPE_SETS = {s.name: s for s in (SHAPES, SHAPES_FINETUNE)}

_OUTLINES = frozenset(
    {"circle", "square", "triangle", "ring", "cross", "star", "diamond", "bar"}
    | {"heart", "arrow", "hexagon"}
)


def shape_set(name: str) -> ShapeSet:
    """The built-in class set called ``name`` (``shapes`` or ``shapes-finetune``)."""
    if name not in SHAPE_SETS:
        raise ValueError(f"unknown shape set {name!r}; known: {', '.join(SHAPE_SETS)}")
    return SHAPE_SETS[name]


def draw_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_objects: int = 6,
    shapes: ShapeSet = SHAPES,
) -> tuple[np.ndarray, list[tuple[int, list[float], float]]]:
    """Draw one image.

    Returns:
        ``(pixels, objects)``: ``pixels`` uint8 ``[height, width, 3]`` RGB; ``objects`` a list of
        ``(label, [x, y, w, h], area)`` with the box tight around the visible pixels of the
        shape and ``area`` their count.
    """
    pixels = _background(rng, height, width)
    instance_map = np.zeros((height, width), dtype=np.int16)
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        placed = _place_object(rng, height, width, boxes, shapes)
        if placed is None:
            continue
        label, (x0, y0, x1, y1) = placed
        mask = shape_mask(shapes.classes[label].name, x1 - x0, y1 - y0)
        instance_map[y0:y1, x0:x1][mask] = len(boxes) + 1
        colour = _object_colour(rng, shapes.classes[label].hue, mask.shape)
        pixels[y0:y1, x0:x1][mask] = colour[mask]
        boxes.append((x0, y0, x1, y1))
        labels.append(label)
    pixels += rng.integers(-4, 5, size=pixels.shape, dtype=np.int16)
    image = np.clip(pixels, 0, 255).astype(np.uint8)
    return image, visible_objects(instance_map, labels)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dull textured background, int16 ``[H, W, 3]`` in 0-255."""
    base = (rng.uniform(40, 120, size=3) * rng.uniform(0.7, 1.0)).astype(np.int16)
    texture = np.zeros((height, width, 3), dtype=np.int16)
    for cell, amplitude, channels in ((32, 30, 1), (8, 14, 1), (48, 12, 3)):
        texture += _smooth_noise(rng, height, width, cell, channels) * amplitude // 128
    if rng.random() < 0.5:  # stripes: a triangle wave (no transcendental functions, whose
        # last bits vary between CPUs, so that the bytes are the same on every machine)
        period = np.float32(rng.uniform(6, 24))
        angle = rng.uniform(0, math.pi)
        ys = np.arange(height, dtype=np.float32) * np.float32(math.sin(angle))
        xs = np.arange(width, dtype=np.float32) * np.float32(math.cos(angle))
        wave = np.abs(np.add.outer(ys, xs) / period % np.float32(1) - np.float32(0.5))
        texture += (40 * wave - 10).astype(np.int16)[:, :, None]
    return base[None, None, :] + texture


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, cell: int, channels: int
) -> np.ndarray:
    """Bilinearly upsampled random grid (one value per ``cell`` pixels), int16 in [-128, 127]."""
    grid = rng.integers(
        0, 256, size=(height // cell + 2, width // cell + 2, channels), dtype=np.uint8
    )
    image = PIL.Image.fromarray(grid[:, :, 0] if channels == 1 else grid)
    resized = image.resize((width, height), PIL.Image.Resampling.BILINEAR)
    smooth = np.asarray(resized).astype(np.int16) - 128
    return smooth[:, :, None] if channels == 1 else smooth


def _object_colour(rng: np.random.Generator, hue: float, shape: tuple[int, int]) -> np.ndarray:
    """Bright saturated colour around ``hue`` with a mild linear shading, int16 ``[h, w, 3]``.

    Each class has its own hue (jittered), so that a small model learns the classes quickly;
    the shape still matters (neighbouring hues are close).
    """
    hue = (hue + rng.uniform(-0.04, 0.04)) % 1.0
    saturation, value = rng.uniform(0.55, 1.0), rng.uniform(200, 255)
    rgb = colorsys.hsv_to_rgb(hue, saturation, 1.0)
    colour = np.array(rgb, dtype=np.float32) * np.float32(value)
    ramp_y = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    ramp_x = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    direction = rng.uniform(-1, 1, size=2).astype(np.float32)
    shade = 1.0 + 0.12 * (direction[0] * ramp_y + direction[1] * ramp_x)
    return np.clip(colour[None, None, :] * shade[:, :, None], 0, 255).astype(np.int16)


# Box side ranges (pixels) of the small / medium / large objects and how often each is drawn.
_SIDE_RANGES = ((10.0, 28.0), (44.0, 110.0), (130.0, 1e9))
_SIZE_PROBABILITIES = (0.3, 0.4, 0.3)


def _place_object(
    rng: np.random.Generator,
    height: int,
    width: int,
    boxes: list[tuple[int, int, int, int]],
    shapes: ShapeSet,
    attempts: int = 20,
) -> tuple[int, tuple[int, int, int, int]] | None:
    """Class and box ``(x0, y0, x1, y1)`` of a new object overlapping the others little."""
    for _ in range(attempts):
        label = int(rng.integers(len(shapes.classes)))
        low, high = _SIDE_RANGES[int(rng.choice(3, p=_SIZE_PROBABILITIES))]
        high = min(high, 0.85 * min(height, width))
        low = min(low, high)
        side = math.exp(rng.uniform(math.log(low), math.log(high)))
        aspect = rng.uniform(0.85, 1.15)
        name = shapes.classes[label].name
        if name == "bar":
            aspect = rng.uniform(2.5, 4.0) ** (1 if rng.random() < 0.5 else -1)
        elif name == "arrow":  # pointing right: wider than tall
            aspect = rng.uniform(1.4, 2.2)
        box_width, box_height = side * math.sqrt(aspect), side / math.sqrt(aspect)
        shrink = min(1.0, width / box_width, height / box_height)  # keep the aspect ratio
        box_width = max(6, min(width, round(box_width * shrink)))
        box_height = max(6, min(height, round(box_height * shrink)))
        x0 = int(rng.integers(0, width - box_width + 1))
        y0 = int(rng.integers(0, height - box_height + 1))
        box = (x0, y0, x0 + box_width, y0 + box_height)
        if all(_overlap_fraction(box, other) <= 0.2 for other in boxes):
            return label, box
    return None


def _overlap_fraction(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter_w * inter_h / smaller


def shape_mask(name: str, width: int, height: int) -> np.ndarray:
    """Boolean ``[height, width]`` mask of the outline ``name`` filling its box."""
    if name not in _OUTLINES:
        raise ValueError(f"no outline called {name!r}; known: {', '.join(sorted(_OUTLINES))}")
    canvas = PIL.Image.new("L", (width, height), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    w, h = width - 1, height - 1
    if name == "circle":
        draw.ellipse((0, 0, w, h), fill=1)
    elif name in ("square", "bar"):
        draw.rectangle((0, 0, w, h), fill=1)
    elif name == "triangle":
        draw.polygon([(w / 2, 0), (w, h), (0, h)], fill=1)
    elif name == "ring":
        thickness = max(2.0, 0.22 * min(w, h))
        draw.ellipse((0, 0, w, h), fill=1)
        draw.ellipse((thickness, thickness, w - thickness, h - thickness), fill=0)
    elif name == "cross":
        draw.rectangle((w * 0.35, 0, w * 0.65, h), fill=1)
        draw.rectangle((0, h * 0.35, w, h * 0.65), fill=1)
    elif name == "star":
        draw.polygon(_star_points(w, h), fill=1)
    elif name == "diamond":
        draw.polygon([(w / 2, 0), (w, h / 2), (w / 2, h), (0, h / 2)], fill=1)
    elif name == "heart":
        draw.polygon(_heart_points(w, h), fill=1)
    elif name == "arrow":
        top, bottom, head = h * 0.32, h * 0.68, w * 0.55  # shaft edges, start of the head
        outline = [(0, top), (head, top), (head, 0), (w, h / 2), (head, h), (head, bottom)]
        draw.polygon([*outline, (0, bottom)], fill=1)
    elif name == "hexagon":
        draw.polygon(
            [(w * 0.25, 0), (w * 0.75, 0), (w, h / 2), (w * 0.75, h), (w * 0.25, h), (0, h / 2)],
            fill=1,
        )
    return np.asarray(canvas, dtype=bool)


def _fit_to_box(xs: np.ndarray, ys: np.ndarray, w: float, h: float) -> list[tuple[float, float]]:
    xs = (xs - xs.min()) / (xs.max() - xs.min()) * w
    ys = (ys - ys.min()) / (ys.max() - ys.min()) * h
    return list(zip(xs.tolist(), ys.tolist()))


def _star_points(w: float, h: float) -> list[tuple[float, float]]:
    """Five-pointed star inscribed in the box (point up, outer radius fits the width)."""
    angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
    radii = np.array([1.0 if k % 2 == 0 else 0.45 for k in range(10)])
    xs = radii * np.array([math.cos(a) for a in angles])
    ys = radii * np.array([math.sin(a) for a in angles])
    return _fit_to_box(xs, ys, w, h)


def _heart_points(w: float, h: float) -> list[tuple[float, float]]:
    """The classic heart curve (lobes up), 48 points, stretched to the box."""
    angles = [2 * math.pi * k / 48 for k in range(48)]
    xs = np.array([16 * math.sin(t) ** 3 for t in angles])
    ys = -np.array(
        [
            13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            for t in angles
        ]
    )
    return _fit_to_box(xs, ys, w, h)


def visible_objects(
    instance_map: np.ndarray, labels: list[int]
) -> list[tuple[int, list[float], float]]:
    """Tight box and pixel count of each object's visible part (hidden objects skipped)."""
    objects = []
    for index, label in enumerate(labels, start=1):
        ys, xs = np.nonzero(instance_map == index)
        if len(xs) < 4:
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
        objects.append((label, bbox, float(len(xs))))
    return objects
