"""Swin backbone: detectron2 layout and numbers, padded-batch invariance, checkpoint conversion.

``data/swin_tiny_reference.npz`` holds float64 outputs of detectron2's ``SwinTransformer``
(embed_dim 32, depths (2, 2, 2, 2), heads (1, 2, 4, 8), window 7, out_indices (1, 2, 3)) on a
3x75x97 input and its 64x64 crop, with weights from the rule of :func:`synthetic_weights`,
plus the backbone keys of the detrex Swin-T/B/L manifests.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from focus_detr.models.backbone_swin import (
    SwinTransformer,
    convert_official_swin_checkpoint,
    swin_config,
)
from focus_detr.models.swin_layers import drop_path, relative_position_index
from focus_detr.structures import ImageBatch

FIXTURE = Path(__file__).parent / "data" / "swin_tiny_reference.npz"
TINY = {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}


def synthetic_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float64 weights seeded by each key's CRC32 (the rule of the shared reference fixtures)."""
    weights = {}
    for key, value in state_dict.items():
        if not value.is_floating_point():
            weights[key] = value.clone()
            continue
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        shape = tuple(value.shape)
        if len(shape) == 1 and key.endswith(".weight"):
            array = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) <= 1:
            array = 0.1 * rng.standard_normal(shape)
        else:
            array = rng.standard_normal(shape) / math.sqrt(float(np.prod(shape[1:])))
        weights[key] = torch.from_numpy(array)
    return weights


def tiny_swin(window_size: int = 7, drop_path_rate: float = 0.0) -> SwinTransformer:
    model = SwinTransformer(**TINY, window_size=window_size, drop_path_rate=drop_path_rate)
    model = model.double().eval()
    model.load_state_dict(synthetic_weights(model.state_dict()))
    return model


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


@pytest.mark.parametrize("name", ["tiny_224", "base_384", "large_384"])
def test_state_dict_matches_detrex_manifest(reference: dict, name: str) -> None:
    size, resolution = name.split("_")
    with torch.device("meta"):
        model = SwinTransformer(
            **swin_config(f"swin_{size}"), window_size=7 if resolution == "224" else 12
        )
    ours = [
        f"{key} {str(value.dtype).removeprefix('torch.')} {'x'.join(map(str, value.shape))}"
        for key, value in model.state_dict().items()
    ]
    expected = bytes(reference[f"keys_swin_{name}"]).decode().split("\n")
    assert ours == expected
    assert model.out_channels == tuple(
        model.state_dict()[f"norm{i}.weight"].shape[0] for i in (1, 2, 3)
    )


def test_relative_position_index_small_window() -> None:
    # (dy + 1) * 3 + (dx + 1) for the 2x2 window's tokens (0,0), (0,1), (1,0), (1,1).
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), expected)


def test_weights_are_the_fixture_weights(reference: dict) -> None:
    weights = tiny_swin().state_dict()
    checksum = sum(
        float(value.abs().sum()) for value in weights.values() if value.is_floating_point()
    )
    assert checksum == pytest.approx(float(reference["weights_checksum"]), rel=1e-12)


@pytest.mark.parametrize("size", ["75x97", "64x64"])
def test_matches_detectron2(reference: dict, size: str) -> None:
    height, width = map(int, size.split("x"))
    pixels = torch.from_numpy(reference["pixels"][:, :height, :width]).double()[None]
    with torch.no_grad():
        outputs = tiny_swin()(pixels)
    assert len(outputs) == 3
    for level, output in zip((1, 2, 3), outputs):
        expected = torch.from_numpy(reference[f"p{level}_{size}"])[None]
        assert output.shape == expected.shape
        torch.testing.assert_close(output, expected, rtol=0, atol=1e-10)


def _batched_vs_alone(model: SwinTransformer, batch: ImageBatch) -> float:
    """Max abs difference between each image's batched and lone features (valid areas)."""
    with torch.no_grad():
        batched = model(batch.pixels, batch.image_sizes)
        worst = 0.0
        for index, (height, width) in enumerate(batch.image_sizes.tolist()):
            alone = model(batch.pixels[index : index + 1, :, :height, :width])
            for batched_map, alone_map in zip(batched, alone):
                valid_h, valid_w = alone_map.shape[-2:]
                valid = batched_map[index, :, :valid_h, :valid_w]
                worst = max(worst, float((valid - alone_map[0]).abs().max()))
                assert not batched_map[index, :, valid_h:].any()
                assert not batched_map[index, :, :, valid_w:].any()
    return worst


@pytest.mark.parametrize(("window_size", "size_divisibility"), [(7, 1), (7, 32), (12, 1), (5, 32)])
def test_padded_batch_equals_single_images(window_size: int, size_divisibility: int) -> None:
    model = tiny_swin(window_size)
    generator = torch.Generator().manual_seed(0)
    sizes = [(64, 96), (75, 50), (33, 41)]
    images = [torch.randn(3, h, w, dtype=torch.float64, generator=generator) for h, w in sizes]
    batch = ImageBatch.from_images(images, size_divisibility=size_divisibility)
    assert _batched_vs_alone(model, batch) <= 1e-9


def test_padded_batch_float32() -> None:
    model = tiny_swin().float()
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(3, h, w, generator=generator) for h, w in [(90, 70), (41, 100)]]
    assert _batched_vs_alone(model, ImageBatch.from_images(images)) <= 1e-4


def test_full_size_images_take_the_plain_path() -> None:
    model = tiny_swin()
    pixels = torch.randn(2, 3, 48, 80, dtype=torch.float64)
    sizes = torch.tensor([[48, 80], [48, 80]])
    with torch.no_grad():
        for plain, with_sizes in zip(model(pixels), model(pixels, sizes)):
            assert torch.equal(plain, with_sizes)


def test_output_shapes_channels_strides() -> None:
    model = SwinTransformer(**TINY, window_size=7)
    assert model.out_channels == (64, 128, 256)
    assert model.strides == (8, 16, 32)
    outputs = model(torch.zeros(2, 3, 70, 129))
    assert [tuple(o.shape) for o in outputs] == [(2, 64, 9, 17), (2, 128, 5, 9), (2, 256, 3, 5)]
    assert SwinTransformer(**TINY, window_size=7, out_indices=(0, 2)).strides == (4, 16)


def test_swin_configs() -> None:
    assert swin_config("swin_tiny") == {
        "embed_dim": 96,
        "depths": (2, 2, 6, 2),
        "num_heads": (3, 6, 12, 24),
    }
    assert swin_config("swin_small")["depths"] == (2, 2, 18, 2)
    assert swin_config("swin_base")["num_heads"] == (4, 8, 16, 32)
    assert swin_config("swin_large")["embed_dim"] == 192
    with pytest.raises(ValueError, match="unknown Swin size"):
        swin_config("swin_huge")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depths": (2, 2), "num_heads": (1, 2, 4)},
        {"num_heads": (3, 2, 4, 8)},
        {"out_indices": (2, 1)},
        {"out_indices": (4,)},
        {"drop_path_rate": 1.0},
        {"window_size": 0},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SwinTransformer(**{**TINY, "window_size": 7, **kwargs})


def test_bad_inputs_raise() -> None:
    model = SwinTransformer(**TINY, window_size=7)
    pixels = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="pixels"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="image_sizes"):
        model(pixels, torch.tensor([[32, 32]]))
    with pytest.raises(ValueError, match="image_sizes"):
        model(pixels, torch.tensor([[32, 33], [10, 10]]))
    with pytest.raises(ValueError, match="image_sizes"):
        model(pixels, torch.tensor([[32.0, 32.0], [10.0, 10.0]]))


def test_drop_path_only_in_training() -> None:
    features = torch.ones(1000, 3, 4)
    assert drop_path(features, 0.3, training=False) is features
    dropped = drop_path(features, 0.3, training=True)
    per_sample = dropped[:, 0, 0]
    assert torch.equal(dropped, per_sample[:, None, None].expand_as(dropped))
    kept = per_sample != 0
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.7))
    assert 0.6 < kept.float().mean() < 0.8
    model = tiny_swin(drop_path_rate=0.5)
    pixels = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model(pixels)[0], model(pixels)[0])
        model.train()
        torch.manual_seed(0)
        first = model(pixels)[0]
        assert not torch.equal(first, model(pixels)[0])


def test_every_parameter_gets_a_gradient_with_padding() -> None:
    model = tiny_swin().train()
    batch = ImageBatch.from_images(
        [torch.randn(3, 60, 45).double(), torch.randn(3, 30, 70).double()]
    )
    outputs = model(batch.pixels, batch.image_sizes)
    sum(output.square().mean() for output in outputs).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def _fake_official_checkpoint(model: SwinTransformer) -> dict[str, torch.Tensor]:
    """An official-layout classification state dict built from ``model``'s blocks."""
    checkpoint = {
        key: value + 1 if value.is_floating_point() else value.clone()
        for key, value in model.state_dict().items()
        if not key.startswith("norm")
    }
    last_dim = model.layers[-1].blocks[0].norm1.normalized_shape[0]
    checkpoint["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    checkpoint["norm.weight"] = torch.ones(last_dim)
    checkpoint["norm.bias"] = torch.zeros(last_dim)
    checkpoint["head.weight"] = torch.zeros(1000, last_dim)
    checkpoint["head.bias"] = torch.zeros(1000)
    return checkpoint


def test_convert_official_checkpoint() -> None:
    model = SwinTransformer(**TINY, window_size=7)
    official = _fake_official_checkpoint(model)
    converted = convert_official_swin_checkpoint({"model": official})
    assert not any(k.startswith(("head.", "norm.")) or "attn_mask" in k for k in converted)
    assert "layers.0.blocks.0.attn.relative_position_index" in converted
    result = model.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(
        f"norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")
    )
    loaded = model.state_dict()["layers.2.blocks.1.mlp.fc1.weight"]
    assert torch.equal(loaded, official["layers.2.blocks.1.mlp.fc1.weight"])
    with pytest.raises(ValueError, match="not a Swin checkpoint"):
        convert_official_swin_checkpoint({"conv1.weight": torch.zeros(1)})
