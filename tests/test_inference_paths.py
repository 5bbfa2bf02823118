"""Inference-only formulations (blocked products, reused buffers, in-place updates) give the
results of the plain differentiable code, and are never taken when gradients are recorded."""

from __future__ import annotations

import pytest
import torch

import focus_detr
from focus_detr.models.attention import FeedForward
from focus_detr.models.deformable_attention import MultiScaleDeformableAttention
from focus_detr.ops.deformable_attention_torch import (
    border_tokens,
    bordered_values,
    channel_first_tokens,
)
from tests.helpers import random_image, randomize_, tiny_config


def test_blocked_feedforward_equals_the_plain_products() -> None:
    torch.manual_seed(0)
    ffn = FeedForward(16, 40).double().eval()
    ffn.inference_block_rows = 7  # several blocks and a partial last one
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    plain = ffn.linear2(torch.relu(ffn.linear1(x)))
    with torch.no_grad():
        blocked = ffn(x)
    torch.testing.assert_close(blocked, plain, atol=1e-12, rtol=0)
    assert blocked.shape == x.shape


def test_feedforward_keeps_the_differentiable_path_under_autograd() -> None:
    ffn = FeedForward(8, 12)
    x = torch.randn(3, 5, 8, requires_grad=True)
    ffn(x).sum().backward()
    assert x.grad is not None and ffn.linear1.weight.grad is not None


def _deformable_case(reference_size: int, padded: bool, seed: int = 0) -> tuple:
    """A float64 MultiScaleDeformableAttention with random weights and inputs that sample
    inside, on the edge of and far outside the maps (1x1 level included)."""
    generator = torch.Generator().manual_seed(seed)
    module = MultiScaleDeformableAttention(32, 4, 3, 2).double().eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            )
        module.sampling_offsets.weight.mul_(0.5)
    shapes = [(5, 7), (3, 4), (1, 1)]
    spatial_shapes = torch.tensor(shapes)
    starts = torch.tensor([0, 35, 47])
    batch, num_queries, num_values = 2, 9, sum(h * w for h, w in shapes)
    query = torch.randn(batch, num_queries, 32, generator=generator, dtype=torch.float64)
    value = torch.randn(batch, num_values, 32, generator=generator, dtype=torch.float64)
    reference = torch.rand(batch, num_queries, reference_size, generator=generator).double()
    valid_ratios = mask = None
    if padded:
        valid_ratios = torch.tensor([[[1.0, 1.0]] * 3, [[0.7, 0.6], [0.75, 0.67], [1.0, 1.0]]])
        mask = torch.rand(batch, num_values, generator=generator) < 0.3
        valid_ratios = valid_ratios.double()
    args = (query, reference, value, spatial_shapes, starts, valid_ratios, mask)
    return module, args, shapes


@pytest.mark.parametrize("reference_size", [2, 4])
@pytest.mark.parametrize("padded", [False, True])
def test_inference_deformable_attention_equals_the_differentiable_path(
    reference_size: int, padded: bool
) -> None:
    module, args, shapes = _deformable_case(reference_size, padded)
    plain = module(*args, level_shapes=shapes)  # autograd on: the plain path
    assert plain.requires_grad
    with torch.no_grad():
        assert module.uses_fast_path(args[0])
        fast = module(*args, level_shapes=shapes)
        projected = module.project_value(args[2], args[6])
        from_projected = module(*args, projected_value=projected, level_shapes=shapes)
        source = border_tokens(args[2], shapes, args[6])
        shared = module.attend_bordered(args[0], args[1], source, args[5])
    for result in (fast, from_projected, shared):
        torch.testing.assert_close(result, plain.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("reference_size", [2, 4])
@pytest.mark.parametrize("padded", [False, True])
def test_exported_formulation_equals_the_grid_sample_backend(
    reference_size: int, padded: bool
) -> None:
    """The graph export traces (channel-first values with the bias and padding in one
    product, grids by one multiply-add, one GridSample per level) against the reference
    grid_sample backend, run eagerly."""
    module, args, shapes = _deformable_case(reference_size, padded)
    query, reference, value, spatial_shapes, _, valid_ratios, mask = args
    module.backend = "grid_sample"
    with torch.no_grad():
        expected = module(*args, level_shapes=shapes)
        source = channel_first_tokens(value, shapes, spatial_shapes, mask)
        exported = module.attend_shared(query, reference, source, valid_ratios)
    torch.testing.assert_close(exported, expected, atol=1e-12, rtol=0)


def test_the_fast_path_is_only_taken_without_autograd_and_with_the_gather_backend() -> None:
    module, args, _ = _deformable_case(2, False)
    query = args[0]
    assert not module.uses_fast_path(query)  # gradients are recorded
    with torch.no_grad():
        assert module.uses_fast_path(query)
        module.backend = "grid_sample"
        assert not module.uses_fast_path(query)


def test_bordered_projection_is_zero_on_borders_and_padding() -> None:
    shapes = [(2, 3), (1, 2)]
    tokens = torch.randn(2, 8, 4, dtype=torch.float64)
    padding = torch.zeros(2, 8, dtype=torch.bool)
    padding[1, 2] = True
    source = border_tokens(tokens, shapes, padding)
    weight, bias = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    table = source.project(weight, bias)
    expected = bordered_values(
        torch.nn.functional.linear(tokens, weight, bias).masked_fill(padding[..., None], 0)[
            :, :, None
        ],
        shapes,
    ).view(2, -1, 6)
    torch.testing.assert_close(table, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("sizes", [[(70, 90)], [(70, 90), (40, 120), (64, 64)]])
def test_model_inference_paths_equal_the_differentiable_model(sizes) -> None:
    """The whole model: no_grad (every inference-only path) against autograd (none)."""
    model = randomize_(focus_detr.build_model(tiny_config())).double().eval()
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    with torch.no_grad():
        fast = model(images, raw=True)
    with torch.enable_grad():
        plain = model(images, raw=True)
    assert plain.pred_logits.requires_grad
    for name in ("pred_logits", "pred_boxes", "memory", "foreground_logits", "proposal_logits"):
        torch.testing.assert_close(
            getattr(fast, name), getattr(plain, name).detach(), atol=1e-10, rtol=0, msg=name
        )
    for fast_ids, plain_ids in zip(fast.encoder.token_indices, plain.encoder.token_indices):
        assert torch.equal(fast_ids, plain_ids)
    assert torch.equal(fast.proposal_token_indices, plain.proposal_token_indices)
