"""Built-in synthetic COCO-format dataset for the laptop quick-start.

Images show 1-6 coloured shapes of eight classes (circle, square, triangle, ring, cross, star,
diamond, bar; each class with its own jittered hue) at small, medium and large sizes (COCO area
buckets 32^2 and 96^2) over textured,
noisy backgrounds. Shapes are bright and saturated, backgrounds dull and darker, so the task is
learnable by a small DETR on a CPU, while textures, scales, several objects and some overlap keep
it from being trivial. Every image is drawn from its own seed stream ``(seed, split, index)``:
the output is byte-identical across runs, and the validation split never shares a stream with
the training split.

Layout written under ``root``::

    train/000000.png ...          val/000000.png ...
    annotations/instances_train.json   annotations/instances_val.json
    synthetic.json                (generation settings; marks a complete dataset)
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

CATEGORY_NAMES = ("circle", "square", "triangle", "ring", "cross", "star", "diamond", "bar")
_GENERATOR_VERSION = 2
_SPLITS = {"train": 0, "val": 1}
_META_FILE = "synthetic.json"


@dataclass(frozen=True)
class SyntheticPaths:
    """Where a generated synthetic dataset lives.

    Attributes:
        root: dataset folder.
        train_images / val_images: image folders of the two splits.
        train_annotations / val_annotations: COCO ``instances`` JSON files.
        category_names: class names, label ``i`` has COCO category id ``i + 1``.
    """

    root: Path
    train_images: Path
    val_images: Path
    train_annotations: Path
    val_annotations: Path
    category_names: tuple[str, ...] = CATEGORY_NAMES

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> SyntheticPaths:
        root = Path(root)
        return cls(
            root=root,
            train_images=root / "train",
            val_images=root / "val",
            train_annotations=root / "annotations" / "instances_train.json",
            val_annotations=root / "annotations" / "instances_val.json",
        )


@dataclass(frozen=True)
class _Settings:
    num_train: int
    num_val: int
    height_range: tuple[int, int]
    width_range: tuple[int, int]
    max_objects: int
    seed: int
    version: int = _GENERATOR_VERSION


def generate_synthetic_coco(
    root: str | os.PathLike[str],
    *,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: tuple[int, int] | None = None,
    image_size_range: tuple[int, int] = (160, 256),
    max_objects: int = 6,
    seed: int = 0,
) -> SyntheticPaths:
    """Write the synthetic dataset under ``root`` (which must be absent or empty).

    Args:
        root: output folder.
        num_train / num_val: images per split.
        image_size: fixed ``(height, width)`` of every image; when None each side is drawn
            uniformly from ``image_size_range`` (inclusive).
        image_size_range: ``(min, max)`` side length when ``image_size`` is None.
        max_objects: at most this many objects per image (at least 1).
        seed: base seed; the same settings give byte-identical files.

    Returns:
        The paths of the generated files.
    """
    settings = _make_settings(num_train, num_val, image_size, image_size_range, max_objects, seed)
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; use ensure_synthetic_dataset to reuse it")
    _write_dataset(root, settings)
    return SyntheticPaths.under(root)


def ensure_synthetic_dataset(
    root: str | os.PathLike[str],
    *,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: tuple[int, int] | None = None,
    image_size_range: tuple[int, int] = (160, 256),
    max_objects: int = 6,
    seed: int = 0,
) -> SyntheticPaths:
    """Return the dataset under ``root``, generating it first if missing, incomplete or stale.

    Generation goes to a temporary sibling folder that is renamed into place, so an interrupted
    run never leaves a half-written dataset behind, and concurrent callers (several training
    processes) end up sharing one complete copy. An existing ``root`` that is not a synthetic
    dataset written by this module is never deleted (``FileExistsError``).
    Arguments as :func:`generate_synthetic_coco`.
    """
    settings = _make_settings(num_train, num_val, image_size, image_size_range, max_objects, seed)
    root = Path(root)
    if _is_complete(root, settings):
        return SyntheticPaths.under(root)
    if root.exists() and any(root.iterdir()) and not (root / _META_FILE).is_file():
        raise FileExistsError(f"{root} exists and does not hold a synthetic dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_dataset(staging, settings)
        _replace_folder(staging, root, settings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SyntheticPaths.under(root)


def _make_settings(
    num_train: int,
    num_val: int,
    image_size: tuple[int, int] | None,
    image_size_range: tuple[int, int],
    max_objects: int,
    seed: int,
) -> _Settings:
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got {num_train}, {num_val}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if image_size is not None:
        height_range = (int(image_size[0]), int(image_size[0]))
        width_range = (int(image_size[1]), int(image_size[1]))
    else:
        height_range = width_range = (int(image_size_range[0]), int(image_size_range[1]))
    if min(height_range + width_range) < 32 or height_range[0] > height_range[1]:
        raise ValueError(f"image sides must be >= 32 and min <= max, got {image_size_range}")
    return _Settings(num_train, num_val, height_range, width_range, max_objects, seed)


def _is_complete(root: Path, settings: _Settings) -> bool:
    try:
        stored = json.loads((root / _META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stored != json.loads(json.dumps(asdict(settings))):
        return False
    paths = SyntheticPaths.under(root)
    counts = {paths.train_images: settings.num_train, paths.val_images: settings.num_val}
    annotations_present = paths.train_annotations.is_file() and paths.val_annotations.is_file()
    return annotations_present and all(
        folder.is_dir() and sum(1 for _ in folder.glob("*.png")) == count
        for folder, count in counts.items()
    )


def _replace_folder(staging: Path, root: Path, settings: _Settings) -> None:
    """Move ``staging`` to ``root``; a stale synthetic ``root`` is moved aside and deleted."""
    if _is_complete(root, settings):  # another process finished first: keep its copy
        return
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        try:
            root.rename(old)
        except OSError:
            old = None  # another process moved it first
    try:
        staging.rename(root)
    except OSError:
        if not _is_complete(root, settings):  # lost the race to a different dataset
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_dataset(root: Path, settings: _Settings) -> None:
    paths = SyntheticPaths.under(root)
    paths.train_annotations.parent.mkdir(parents=True, exist_ok=True)
    for split, folder, annotation_file, count in (
        ("train", paths.train_images, paths.train_annotations, settings.num_train),
        ("val", paths.val_images, paths.val_annotations, settings.num_val),
    ):
        folder.mkdir(parents=True, exist_ok=True)
        coco = _write_split(split, folder, count, settings)
        _write_json(annotation_file, coco)
    _write_json(root / _META_FILE, asdict(settings))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


def _write_split(split: str, folder: Path, count: int, settings: _Settings) -> dict[str, Any]:
    """Draw and save ``count`` images; returns the split's COCO dictionary."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(count):
        rng = np.random.default_rng(
            np.random.SeedSequence(settings.seed % 2**63, spawn_key=(_SPLITS[split], index))
        )
        height = int(rng.integers(settings.height_range[0], settings.height_range[1] + 1))
        width = int(rng.integers(settings.width_range[0], settings.width_range[1] + 1))
        pixels, objects = draw_synthetic_image(rng, height, width, settings.max_objects)
        file_name = f"{index:06d}.png"
        PIL.Image.fromarray(pixels).save(folder / file_name, compress_level=1)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for label, bbox, area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(CATEGORY_NAMES)
    ]
    info = {"description": f"focus-detr synthetic shapes ({split})", "version": "1"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def draw_synthetic_image(
    rng: np.random.Generator, height: int, width: int, max_objects: int = 6
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
        placed = _place_object(rng, height, width, boxes)
        if placed is None:
            continue
        label, (x0, y0, x1, y1) = placed
        mask = _shape_mask(label, x1 - x0, y1 - y0)
        instance_map[y0:y1, x0:x1][mask] = len(boxes) + 1
        pixels[y0:y1, x0:x1][mask] = _object_colour(rng, label, mask.shape)[mask]
        boxes.append((x0, y0, x1, y1))
        labels.append(label)
    pixels += rng.integers(-4, 5, size=pixels.shape, dtype=np.int16)
    image = np.clip(pixels, 0, 255).astype(np.uint8)
    return image, _visible_objects(instance_map, labels)


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


def _object_colour(rng: np.random.Generator, label: int, shape: tuple[int, int]) -> np.ndarray:
    """Bright saturated colour with a mild linear shading, int16 ``[h, w, 3]``.

    Each class has its own hue (jittered), so that a small model learns the classes quickly;
    the shape still matters (neighbouring hues are close).
    """
    hue = (label / len(CATEGORY_NAMES) + rng.uniform(-0.04, 0.04)) % 1.0
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
    attempts: int = 20,
) -> tuple[int, tuple[int, int, int, int]] | None:
    """Class and box ``(x0, y0, x1, y1)`` of a new object overlapping the others little."""
    for _ in range(attempts):
        label = int(rng.integers(len(CATEGORY_NAMES)))
        low, high = _SIDE_RANGES[int(rng.choice(3, p=_SIZE_PROBABILITIES))]
        high = min(high, 0.85 * min(height, width))
        low = min(low, high)
        side = math.exp(rng.uniform(math.log(low), math.log(high)))
        aspect = rng.uniform(0.85, 1.15)
        if CATEGORY_NAMES[label] == "bar":
            aspect = rng.uniform(2.5, 4.0) ** (1 if rng.random() < 0.5 else -1)
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


def _shape_mask(label: int, width: int, height: int) -> np.ndarray:
    """Boolean ``[height, width]`` mask of a shape filling its box."""
    canvas = PIL.Image.new("L", (width, height), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    w, h = width - 1, height - 1
    name = CATEGORY_NAMES[label]
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
    return np.asarray(canvas, dtype=bool)


def _star_points(w: float, h: float) -> list[tuple[float, float]]:
    """Five-pointed star inscribed in the box (point up, outer radius fits the width)."""
    angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
    radii = np.array([1.0 if k % 2 == 0 else 0.45 for k in range(10)])
    xs = radii * np.array([math.cos(a) for a in angles])
    ys = radii * np.array([math.sin(a) for a in angles])
    xs = (xs - xs.min()) / (xs.max() - xs.min()) * w
    ys = (ys - ys.min()) / (ys.max() - ys.min()) * h
    return list(zip(xs.tolist(), ys.tolist()))


def _visible_objects(
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
