"""Helpers shared by the test suite: tiny models and recipes, synthetic data, random inputs.

Fixtures live in ``conftest.py``; everything a test imports lives here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from focus_detr.config import Config, ModelConfig, TrainConfig
from focus_detr.data.coco import CocoDetection
from focus_detr.data.synthetic import SyntheticPaths, generate_synthetic_coco
from focus_detr.data.transforms import build_train_transforms
from focus_detr.presets import get_preset
from focus_detr.structures import TokenLayout

DATA = Path(__file__).parent / "data"
MANIFESTS = DATA / "manifests"

# Manifest file of each backbone's released architecture.
MANIFEST_OF_BACKBONE = {
    "resnet50": "focus_detr_r50.json.gz",
    "resnet101": "focus_detr_r101_4scale_12ep.json.gz",
    "swin_tiny": "focus_detr_swin_tiny_224.json.gz",
    "swin_base": "focus_detr_swin_base_384.json.gz",
    "swin_large": "focus_detr_swin_large_384.json.gz",
}

# ------------------------------------------------------------------------------ models


def tiny_config(**changes: object) -> ModelConfig:
    """A small Focus-DETR (ResNet-18 of width 8, 2+2 layers of width 64) for fast tests."""
    settings: dict[str, object] = dict(
        backbone="resnet18",
        backbone_width=8,
        backbone_norm="frozen_bn",
        num_classes=5,
        embed_dim=64,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        feedforward_dim=128,
        num_queries=30,
        cascade=(1.0, 0.6),
        num_dual_attention_tokens=12,
        num_detections=20,
        num_denoising_queries=10,
    )
    settings.update(changes)
    return ModelConfig(**settings)  # type: ignore[arg-type]


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every float parameter and buffer non-trivial values (head biases, norms...)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith("running_var"):
                tensor.copy_(1.0 + 0.1 * noise.abs())
            elif tensor.dim() <= 1:
                tensor.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                tensor.copy_(noise / max(1.0, float(np.prod(tensor.shape[1:]))) ** 0.5)
    return model


def random_image(height: int = 70, width: int = 90, seed: int = 0) -> torch.Tensor:
    """A random uint8 ``[3, H, W]`` image."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


# ------------------------------------------------------------------------------ losses


def token_layout(
    shapes: list[tuple[int, int]], strides: tuple[int, ...], batch_size: int
) -> TokenLayout:
    """Unpadded token geometry of ``batch_size`` images whose levels have ``shapes``."""
    spatial_shapes = torch.tensor(shapes)
    counts = spatial_shapes.prod(dim=1)
    return TokenLayout(
        spatial_shapes=spatial_shapes,
        level_start_index=torch.cat((torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1])),
        valid_sizes=spatial_shapes[None].repeat(batch_size, 1, 1),
        padding_mask=torch.zeros(batch_size, int(counts.sum()), dtype=torch.bool),
        strides=strides,
    )


def random_targets(
    counts: list[int],
    num_classes: int,
    seed: int = 0,
    *,
    centre_range: tuple[float, float] = (0.25, 0.75),
    size_range: tuple[float, float] = (0.1, 0.4),
) -> list[dict[str, torch.Tensor]]:
    """Criterion-format targets: ``labels`` and cxcywh ``boxes`` normalised to the image."""
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for count in counts:
        low, high = centre_range
        centres = torch.rand(count, 2, generator=generator) * (high - low) + low
        low, high = size_range
        sizes = torch.rand(count, 2, generator=generator) * (high - low) + low
        labels = torch.randint(0, num_classes, (count,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat((centres, sizes), dim=1)})
    return targets


# ------------------------------------------------------------------ deformable attention


def level_layout(level_shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``spatial_shapes``, ``level_start_index`` and the number of values of the levels."""
    spatial_shapes = torch.tensor(level_shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(sizes.sum())


def deformable_attention_inputs(
    level_shapes: list[tuple[int, int]],
    batch: int,
    num_queries: int,
    num_heads: int,
    head_dim: int,
    num_points: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random inputs; locations span [-0.3, 1.3] so many corners fall outside their map."""
    spatial_shapes, level_start_index, num_values = level_layout(level_shapes)
    num_levels = len(level_shapes)
    generator = torch.Generator().manual_seed(seed)
    sample_shape = (batch, num_queries, num_heads, num_levels, num_points)
    locations = torch.rand(*sample_shape, 2, generator=generator, dtype=torch.float64)
    locations = locations * 1.6 - 0.3
    # keep x, y at least 0.01 pixel off integers, where the location gradient jumps: float32
    # and float64 could round to different sides of such a kink
    sizes = spatial_shapes.flip(-1).to(torch.float64).view(num_levels, 1, 2)  # (width, height)
    pixels = locations * sizes - 0.5
    pixels = pixels.floor() + (pixels - pixels.floor()).clamp(0.01, 0.99)
    locations = (pixels + 0.5) / sizes
    # a few samples far outside every map (all four corners are zero padding)
    locations.view(-1, 2)[::7] = torch.tensor([-40.0, 55.0], dtype=torch.float64)
    inputs = {
        "value": torch.randn(batch, num_values, num_heads, head_dim, generator=generator),
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": locations,
        "attention_weights": torch.rand(*sample_shape, generator=generator, dtype=torch.float64),
        "grad_output": torch.randn(batch, num_queries, num_heads * head_dim, generator=generator),
    }
    return {
        key: tensor.to(dtype) if tensor.is_floating_point() else tensor
        for key, tensor in inputs.items()
    }


def gradcheck_deformable_attention(function, device: str = "cpu") -> bool:
    """``torch.autograd.gradcheck`` of ``function(value, spatial_shapes, level_start_index,
    locations, weights)`` in float64 on a small case whose samples lie next to the maps."""
    inputs = deformable_attention_inputs([(3, 4), (2, 1)], 1, 3, 2, 4, 2, seed=8)
    inputs = {
        key: (tensor.double() if tensor.is_floating_point() else tensor).to(device)
        for key, tensor in inputs.items()
    }
    # bring the far-away samples back next to the maps, where gradients are not all zero
    locations = inputs["sampling_locations"].clamp(-0.2, 1.2).requires_grad_()
    value = inputs["value"].requires_grad_()
    weights = inputs["attention_weights"].requires_grad_()

    def entry(value, locations, weights):
        return function(
            value, inputs["spatial_shapes"], inputs["level_start_index"], locations, weights
        )

    return torch.autograd.gradcheck(entry, (value, locations, weights))


# ---------------------------------------------------------------------------- training

BASE_PRESET = "focus_detr_tiny"


def tiny_recipe(model: dict | None = None, **train: object) -> Config:
    """The tiny model (8 synthetic classes, test resize 80/112) with small images and a
    short schedule."""
    settings: dict[str, object] = dict(
        epochs=4.0,
        lr_drop_epochs=(3.0,),
        lr=1e-4,
        backbone_lr_factor=0.1,
        total_batch_size=4,
        num_workers=0,
        eval_every_epochs=0.0,
        checkpoint_every_iters=1000,
        log_every_iters=1,
        train_min_sizes=(64, 72, 80),
        train_max_size=112,
        crop_resize_sizes=(72, 80),
        crop_size_range=(48, 64),
    )
    settings.update(train)
    model_settings: dict[str, object] = {
        "num_classes": 8,
        "test_min_size": 80,
        "test_max_size": 112,
        **(model or {}),
    }
    return Config(model=tiny_config(**model_settings), train=TrainConfig(**settings))  # type: ignore[arg-type]


def same_size_recipe(model: dict | None = None, **train: object) -> Config:
    """:func:`tiny_recipe` resizing every (square) image to 64x64: batches without padding.

    Padding changes the valid ratios by one rounding step, and at initialisation the deformable
    sampling points sit exactly on bilinear kinks (integer offsets from cell centres), where a
    one-ulp change flips the one-sided derivative of the sampling offsets. Equal sizes keep
    comparisons of different batch splits at float round-off.
    """
    return tiny_recipe(
        {"test_min_size": 64, "test_max_size": 64, **(model or {})},
        train_min_sizes=(64,),
        train_max_size=64,
        crop_probability=0.0,
        **train,
    )


def make_synthetic(
    root: Path, num_train: int = 8, num_val: int = 4, image_size: tuple[int, int] | None = None
) -> SyntheticPaths:
    """A small synthetic COCO-format dataset (images of 64-96 pixels, 1-3 objects)."""
    return generate_synthetic_coco(
        root,
        num_train=num_train,
        num_val=num_val,
        image_size=image_size,
        image_size_range=(64, 96),
        max_objects=3,
        seed=0,
    )


def train_set(paths: SyntheticPaths, config: Config) -> CocoDetection:
    return CocoDetection(
        paths.train_images,
        paths.train_annotations,
        build_train_transforms(config.train),
        filter_empty=True,
    )


def val_set(paths: SyntheticPaths) -> CocoDetection:
    return CocoDetection(paths.val_images, paths.val_annotations)


def cli_overrides(config: Config) -> list[str]:
    """``--set`` flags turning the base preset into ``config``."""
    base = get_preset(BASE_PRESET).config
    flags: list[str] = []
    for section in ("model", "train", "loss"):
        target, reference = getattr(config, section), getattr(base, section)
        for item in dataclasses.fields(target):
            value = getattr(target, item.name)
            if value != getattr(reference, item.name):
                flags += ["--set", f"{section}.{item.name}={value!r}"]
    return flags


def train_arguments(config: Config, data: Path, out: Path) -> list[str]:
    """``focus-detr train`` arguments that train ``config`` on the COCO folder ``data`` into
    ``out`` on the CPU."""
    return [
        "train",
        "--preset",
        BASE_PRESET,
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        *cli_overrides(config),
    ]


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model state of ``run_dir/model_final.pth``."""
    payload = torch.load(run_dir / "model_final.pth", map_location="cpu", weights_only=True)
    return payload["model"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(
        float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
        for k in a
        if a[k].is_floating_point()
    )


# ----------------------------------------------------------------------- other formats


def write_voc(
    coco: dict, image_dir: Path, root: Path, split: str = "val", difficult: frozenset = frozenset()
) -> Path:
    """A Pascal VOC folder holding the images and objects of the COCO dict ``coco``.

    Image ``id`` becomes ``<id:06d>.<suffix>`` listed in ``ImageSets/Main/<split>.txt`` in the
    dict's order; class names go to ``classes.txt`` in category id order; boxes are written
    1-based (``xmin = x + 1``); annotation ids in ``difficult`` are marked difficult.
    """
    import shutil
    from xml.sax.saxutils import escape

    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in categories}
    (root / "classes.txt").write_text("".join(f"{c['name']}\n" for c in categories))
    ids = []
    for image in coco["images"]:
        stem = f"{image['id']:06d}"
        ids.append(stem)
        suffix = Path(image["file_name"]).suffix
        shutil.copy(image_dir / image["file_name"], root / "JPEGImages" / f"{stem}{suffix}")
        objects = []
        for a in coco["annotations"]:
            if a["image_id"] != image["id"]:
                continue
            x, y, w, h = a["bbox"]
            objects.append(
                f"<object><name>{escape(names[a['category_id']])}</name>"
                f"<difficult>{int(a['id'] in difficult)}</difficult><bndbox>"
                f"<xmin>{x + 1!r}</xmin><ymin>{y + 1!r}</ymin>"
                f"<xmax>{x + w!r}</xmax><ymax>{y + h!r}</ymax></bndbox></object>"
            )
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}{suffix}</filename><size><width>{image['width']}"
            f"</width><height>{image['height']}</height><depth>3</depth></size>"
            + "".join(objects)
            + "</annotation>"
        )
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def stub_detections(coco: dict, seed: int = 0) -> list[dict]:
    """Fixed COCO results for ``coco``: each object found with a jittered box, a random score
    and sometimes the wrong class, plus a few false positives (a non-trivial AP)."""
    rng = np.random.default_rng(seed)
    category_ids = sorted(c["id"] for c in coco["categories"])
    results = []
    for a in coco["annotations"]:
        if a.get("iscrowd"):
            continue
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0.0, 0.08, size=4) * [w, h, w, h]
        category = a["category_id"] if rng.random() > 0.2 else int(rng.choice(category_ids))
        box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": category,
                "bbox": box,
                "score": float(rng.random()),
            }
        )
    for image in coco["images"][::2]:
        results.append(
            {
                "image_id": image["id"],
                "category_id": category_ids[0],
                "bbox": [2.0, 3.0, 20.0, 15.0],
                "score": float(rng.random()),
            }
        )
    return results


# ---------------------------------------------------------------------------- prediction


def write_tiny_checkpoint(path: Path, seed: int = 0, **model: object) -> Path:
    """A ``focus-detr train``-style checkpoint (config and the 8 synthetic class names) of a
    random-weight tiny model resizing to 64/96: what ``predict --weights`` reads."""
    from focus_detr.config import config_to_dict
    from focus_detr.data.synthetic import CATEGORY_NAMES
    from focus_detr.engine.training_checkpoint import save_model
    from focus_detr.models.build import build_model

    settings: dict[str, object] = {"num_classes": 8, "test_min_size": 64, "test_max_size": 96}
    config = Config(model=tiny_config(**{**settings, **model}))
    network = randomize_(build_model(config.model), seed)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CATEGORY_NAMES)]
    return save_model(path, network.state_dict(), config_to_dict(config), categories)


def predict_arguments(inputs: list, out: Path, weights: Path, *extra: str) -> list[str]:
    """``focus-detr predict`` arguments: CPU, every detection (threshold 0), no progress bars."""
    arguments = ["predict", *map(str, inputs), "--weights", str(weights), "--out", str(out)]
    return [*arguments, "--device", "cpu", "--threshold", "0", "--no-progress", *extra]


def read_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file."""
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]
