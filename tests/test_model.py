"""The public model API: inputs, outputs, keep ratio, raw outputs, bad input."""

from __future__ import annotations

import pytest
import torch

import focus_detr
from focus_detr.structures import ImageBatch
from tests.helpers import random_image, randomize_, tiny_config


@pytest.fixture(scope="module")
def model() -> focus_detr.FocusDETR:
    return randomize_(focus_detr.build_model(tiny_config())).eval()


def test_detections_contract(model) -> None:
    images = [random_image(70, 90), random_image(40, 120, seed=1)]
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for image, result in zip(images, detections):
        assert set(result) == {"boxes", "scores", "labels"}
        k = result["boxes"].shape[0]
        assert 0 < k <= model.config.num_detections
        assert result["labels"].dtype == torch.int64
        assert bool(((result["labels"] >= 0) & (result["labels"] < 5)).all())
        boxes = result["boxes"]
        assert bool((boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all())
        assert bool((boxes >= 0).all())
        assert bool((boxes[:, 2] <= image.shape[2]).all() and (boxes[:, 3] <= image.shape[1]).all())
        assert bool((result["scores"][:-1] >= result["scores"][1:]).all())


def test_uint8_float_and_batch_inputs_agree(model) -> None:
    image = random_image()
    with torch.no_grad():
        from_uint8 = model([image])[0]
        from_float = model([image.float() / 255])[0]
        from_batch = model(ImageBatch.from_images([image]))[0]
        from_tensor = model(image)[0]
    for other in (from_float, from_batch, from_tensor):
        assert torch.equal(other["labels"], from_uint8["labels"])
        torch.testing.assert_close(other["boxes"], from_uint8["boxes"], atol=1e-3, rtol=1e-4)


def test_raw_output_shapes(model) -> None:
    with torch.no_grad():
        out = model([random_image(64, 64), random_image(32, 48, seed=2)], raw=True)
    layers, batch, queries, classes = out.logits.shape
    assert (layers, batch, classes) == (2, 2, 5)
    assert out.boxes.shape == (2, 2, queries, 4)
    tokens = out.tokens.num_tokens
    assert out.foreground_logits.shape == (2, tokens)
    assert out.proposal_logits.shape == (2, queries, 5)
    assert out.proposal_token_indices.shape == (2, queries)
    assert len(out.encoder.token_indices) == 2
    assert out.encoder.token_counts.shape == (2, 2)
    # nested selections: layer 1 keeps a prefix of layer 0's ranking
    first, second = out.encoder.token_indices
    assert torch.equal(second, first[:, : second.shape[1]])
    # 64x64 at strides 8..64 has 64 + 16 + 4 + 1 tokens; half + 1 kept, cascade (1.0, 0.6)
    assert out.encoder.token_counts[0].tolist() == [43, 25]
    assert out.denoising is None


def test_unselected_tokens_pass_through_unchanged(model) -> None:
    with torch.no_grad():
        out = model([random_image(64, 64)], raw=True)
    kept = torch.zeros(out.tokens.num_tokens, dtype=torch.bool)
    kept[out.encoder.token_indices[0][0, : out.encoder.token_counts[0, 0]]] = True
    # the memory of unselected tokens is bit-identical to the encoder input (neck + nothing)
    with torch.no_grad():
        levels = model.neck(model.backbone(*_normalised(model, random_image(64, 64))))
    flat = torch.cat([level.flatten(2).transpose(1, 2) for level in levels], dim=1)[0]
    assert torch.equal(out.memory[0][~kept], flat[~kept])
    assert not torch.equal(out.memory[0][kept], flat[kept])


def _normalised(model, image):
    pixels, _ = model._normalise(ImageBatch.from_images([image]))
    return pixels, None


def test_keep_ratio_can_change_at_inference(model) -> None:
    image = random_image(64, 64)
    try:
        model.set_keep_ratio(1.0, (1.0, 1.0))
        with torch.no_grad():
            dense = model([image], raw=True)
        assert dense.encoder.token_counts[0].tolist() == [85, 85]
        model.set_keep_ratio(0.2, (1.0, 0.6))
        with torch.no_grad():
            sparse = model([image], raw=True)
        assert sparse.encoder.token_counts[0].tolist() == [18, 10]
        # the model's configuration is its one record of the budget (checkpoints store it)
        assert (model.config.keep_ratio, model.config.cascade) == (0.2, (1.0, 0.6))
    finally:
        model.set_keep_ratio(0.5, (1.0, 0.6))
    with pytest.raises(ValueError, match="keep_ratio"):
        model.set_keep_ratio(0.0)
    with pytest.raises(ValueError, match="cascade"):
        model.set_keep_ratio(0.5, (0.5, 1.0))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([], "non-empty"),
        ([torch.zeros(1, 10, 10, dtype=torch.uint8)], r"\[3, H, W\]"),
        ([torch.zeros(3, 10, 10, dtype=torch.int32)], "uint8 or floating"),
        (["image.jpg"], "not a tensor"),
        (torch.zeros(2, 2), r"\[3, H, W\]"),
    ],
)
def test_bad_input_raises_clear_errors(model, bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        model(bad)


def test_float64_model_runs_and_stays_float64() -> None:
    model = focus_detr.build_model(tiny_config(), dtype=torch.float64).eval()
    with torch.no_grad():
        out = model([random_image()], raw=True)
    assert out.logits.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_config_validation() -> None:
    with pytest.raises(focus_detr.ConfigError, match="cascade"):
        tiny_config(cascade=(1.0,))
    with pytest.raises(focus_detr.ConfigError, match="non-increasing"):
        tiny_config(cascade=(0.5, 1.0))
    with pytest.raises(focus_detr.ConfigError, match="backbone"):
        tiny_config(backbone="vgg16")


def test_return_type_depends_on_raw_alone(model) -> None:
    image = random_image(64, 64)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    model.train()
    try:
        with torch.no_grad():
            detections = model([image])
            raw = model([image], targets, raw=True)
        assert isinstance(detections, list) and set(detections[0]) == {"boxes", "scores", "labels"}
        assert isinstance(raw, focus_detr.FocusDETROutput) and raw.denoising is not None
        with pytest.raises(ValueError, match="raw=True"):
            model([image], targets)
    finally:
        model.eval()
