"""A batch of differently sized images gives each image the result it gets alone."""

from __future__ import annotations

import pytest
import torch

import focus_detr
from tests.helpers import randomize_, tiny_config

SIZES = [(61, 95), (128, 100), (33, 47), (96, 96), (17, 130)]


def _images(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in SIZES
    ]


def _max_difference(model: focus_detr.FocusDETR, images: list[torch.Tensor]) -> dict[str, float]:
    with torch.no_grad():
        batched = model(images, raw=True)
        worst = {"logits": 0.0, "boxes": 0.0, "foreground": 0.0, "memory": 0.0}
        for index, image in enumerate(images):
            alone = model([image], raw=True)
            count = alone.query_mask.shape[1]
            assert bool(batched.query_mask[index, :count].all())
            assert not bool(batched.query_mask[index, count:].any())
            assert torch.equal(
                _to_alone_ids(batched, alone, batched.proposal_token_indices[index, :count]),
                alone.proposal_token_indices[0],
            )
            worst["logits"] = max(
                worst["logits"], _diff(batched.logits[:, index, :count], alone.logits[:, 0])
            )
            worst["boxes"] = max(
                worst["boxes"], _diff(batched.boxes[:, index, :count], alone.boxes[:, 0])
            )
            ids = _alone_token_ids_in_batch(batched, alone)
            worst["foreground"] = max(
                worst["foreground"],
                _diff(batched.foreground_logits[index, ids], alone.foreground_logits[0]),
            )
            worst["memory"] = max(
                worst["memory"], _diff(batched.memory[index, ids], alone.memory[0])
            )
    return worst


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _alone_token_ids_in_batch(batched, alone) -> torch.Tensor:
    ids = []
    for level, (height, width) in enumerate(alone.tokens.spatial_shapes.tolist()):
        padded_width = int(batched.tokens.spatial_shapes[level, 1])
        start = int(batched.tokens.level_start_index[level])
        rows = torch.arange(height)[:, None] * padded_width
        ids.append((start + rows + torch.arange(width)[None, :]).flatten())
    return torch.cat(ids)


def _to_alone_ids(batched, alone, batch_ids: torch.Tensor) -> torch.Tensor:
    lookup = torch.full((batched.tokens.num_tokens,), -1, dtype=torch.long)
    lookup[_alone_token_ids_in_batch(batched, alone)] = torch.arange(alone.tokens.num_tokens)
    return lookup[batch_ids]


def test_resnet_model_is_exactly_batch_invariant() -> None:
    config = tiny_config(num_queries=120, num_dual_attention_tokens=40)
    model = randomize_(focus_detr.build_model(config, dtype=torch.float64)).eval()
    worst = _max_difference(model, _images())
    assert all(value <= 1e-9 for value in worst.values()), worst


def test_batch_invariance_holds_with_the_dense_baseline() -> None:
    config = tiny_config(keep_ratio=1.0, cascade=(1.0, 1.0))
    model = randomize_(focus_detr.build_model(config, dtype=torch.float64)).eval()
    worst = _max_difference(model, _images(seed=1))
    assert all(value <= 1e-9 for value in worst.values()), worst


def test_swin_model_batch_difference_is_rounding_only() -> None:
    config = tiny_config(backbone="swin_tiny", swin_window_size=7)
    model = focus_detr.build_model(config, dtype=torch.float64)
    # shrink the Swin backbone to keep the test fast: two blocks per stage are enough
    model = randomize_(model).eval()
    worst = _max_difference(model, _images(seed=2)[:3])
    assert all(value <= 1e-9 for value in worst.values()), worst


def test_detections_of_a_batch_equal_single_image_detections() -> None:
    model = randomize_(focus_detr.build_model(tiny_config(), dtype=torch.float64)).eval()
    images = _images(seed=3)
    with torch.no_grad():
        batched = model(images)
        for image, detections in zip(images, batched):
            alone = model([image])[0]
            assert torch.equal(alone["labels"], detections["labels"])
            torch.testing.assert_close(alone["boxes"], detections["boxes"], atol=1e-9, rtol=0)
            torch.testing.assert_close(alone["scores"], detections["scores"], atol=1e-12, rtol=0)


@pytest.mark.parametrize("size", [(160, 224), (1, 1), (8, 9), (64, 2)])
def test_small_images_give_detections(size: tuple[int, int], r50_float64) -> None:
    image = torch.randint(
        0, 256, (3, *size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    with torch.no_grad():
        raw = r50_float64([image], raw=True)
        detections = r50_float64([image])[0]
    assert raw.tokens.num_tokens < 900
    assert raw.query_mask.shape[1] == raw.tokens.num_tokens
    assert len(detections["boxes"]) > 0 or size == (1, 1)
    assert bool((detections["boxes"][:, 2] <= size[1]).all())
    assert bool((detections["boxes"][:, 3] <= size[0]).all())
    assert torch.isfinite(detections["scores"]).all()
