"""Foreground token targets (scale-assigned centre-in-box labels) and their focal loss."""

from __future__ import annotations

import math

import pytest
import torch

from focus_detr.losses import (
    default_level_ranges,
    foreground_loss,
    foreground_targets,
    sigmoid_focal_loss,
)
from focus_detr.structures import TokenLayout
from tests.helpers import token_layout

# detrex projects/focus_detr: ``limit_range = [[-1, 64], [64, 128], [128, 256], [256, INF]]``
DETREX_LIMIT_RANGE = ((-1, 64), (64, 128), (128, 256), (256, math.inf))


def test_hand_computed_two_level_case() -> None:
    """32x32 image; level 0: stride 8, 4x4 tokens, centres 4/12/20/28; level 1: stride 16, 2x2
    tokens, centres 8/24. Ranges (-1, 12] and (12, inf)."""
    tokens = token_layout([(4, 4), (2, 2)], (8, 16), batch_size=3)
    boxes = [
        # Box A (0, 0, 16, 16): level-0 centres (4|12, 4|12) are inside with largest side
        # distance 12 <= 12; level-1 centre (8, 8) has 8, not in (12, inf).
        # Box B (2, 18, 31, 31): level-0 centres have a side distance >= 18; level-1 centres
        # (8, 24) and (24, 24) are inside with largest distances 23 and 22.
        torch.tensor([[0.0, 0.0, 16.0, 16.0], [2.0, 18.0, 31.0, 31.0]]),
        # Box (4, 4, 20, 20): centres on its border (x or y = 4 or 20) are not strictly inside;
        # only (12, 12) is, with distance 8 (level 0); level-1 (8, 8) has 12, not > 12.
        torch.tensor([[4.0, 4.0, 20.0, 20.0]]),
        torch.zeros(0, 4),
    ]
    targets = foreground_targets(tokens, boxes, level_ranges=((-1, 12), (12, math.inf)))
    expected = torch.zeros(3, 20)
    expected[0, [0, 1, 4, 5]] = 1  # level 0, rows 0-1, columns 0-1
    expected[0, [16 + 2, 16 + 3]] = 1  # level 1, row 1
    expected[1, 5] = 1  # level 0, row 1, column 1
    torch.testing.assert_close(targets, expected)


def _naive_targets(tokens: TokenLayout, boxes: list[torch.Tensor], ranges) -> torch.Tensor:
    """Token-by-token loop, straight from the definition."""
    rows = []
    for image_boxes in boxes:
        labels = []
        for level, (height, width) in enumerate(tokens.spatial_shapes.tolist()):
            stride = tokens.strides[level]
            low, high = ranges[level]
            for y in range(height):
                for x in range(width):
                    cx, cy = x * stride + stride // 2, y * stride + stride // 2
                    hit = False
                    for x1, y1, x2, y2 in image_boxes.tolist():
                        distances = (cx - x1, cy - y1, x2 - cx, y2 - cy)
                        if min(distances) > 0 and low < max(distances) <= high:
                            hit = True
                    labels.append(float(hit))
        rows.append(labels)
    return torch.tensor(rows)


def test_matches_the_definition_on_random_boxes_with_default_ranges() -> None:
    generator = torch.Generator().manual_seed(0)
    height, width = 600, 640
    strides = (8, 16, 32, 64)
    tokens = token_layout(
        [(-(-height // s), -(-width // s)) for s in strides], strides, batch_size=2
    )
    boxes = []
    for count in (6, 3):
        corner = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.5
        size = torch.rand(count, 2, generator=generator) ** 2 * torch.tensor([width, height]) * 0.8
        boxes.append(torch.cat((corner, corner + size + 2), dim=1).round())
    boxes[0] = torch.cat((boxes[0], torch.tensor([[10.0, 10.0, 600.0, 500.0]])))
    targets = foreground_targets(tokens, boxes)
    torch.testing.assert_close(targets, _naive_targets(tokens, boxes, DETREX_LIMIT_RANGE))
    assert targets.sum() > 20  # the check is not vacuous
    for level in range(4):  # every level receives some foreground
        start = int(tokens.level_start_index[level])
        end = start + int(tokens.spatial_shapes[level].prod())
        assert targets[:, start:end].sum() > 0


def test_default_level_ranges() -> None:
    assert default_level_ranges(4) == DETREX_LIMIT_RANGE
    assert default_level_ranges(5)[3:] == ((256, 512), (512, math.inf))
    assert default_level_ranges(1) == ((-1, math.inf),)


def test_bad_inputs_raise() -> None:
    tokens = token_layout([(2, 2)], (8,), batch_size=1)
    with pytest.raises(ValueError, match="images"):
        foreground_targets(tokens, [torch.zeros(0, 4), torch.zeros(0, 4)])
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        foreground_targets(tokens, [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="ranges"):
        foreground_targets(
            token_layout([(2, 2), (1, 1)], (8, 16), 1), [torch.zeros(0, 4)], [(-1, 9)]
        )
    with pytest.raises(ValueError, match="shape"):
        foreground_loss(torch.zeros(1, 4), torch.zeros(1, 5), torch.zeros(1, 4, dtype=torch.bool))


def test_loss_is_per_image_focal_sum_over_foreground_count() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, generator=generator)
    targets = torch.tensor([[1.0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]])
    padding = torch.zeros(2, 6, dtype=torch.bool)
    loss = foreground_loss(logits, targets, padding)
    focal = sigmoid_focal_loss(logits, targets)
    expected = (focal[0].sum() / 3 + focal[1].sum() / 1) / 2
    torch.testing.assert_close(loss, expected)


def test_padding_tokens_are_excluded() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 8, generator=generator, requires_grad=True)
    targets = torch.tensor([[1.0, 1, 0, 0, 0, 0, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0]])
    padding = torch.zeros(2, 8, dtype=torch.bool)
    padding[0, 6:] = True  # two foreground-labelled tokens in the padding
    loss = foreground_loss(logits, targets, padding)
    focal = sigmoid_focal_loss(logits.detach(), targets)
    expected = (focal[0, :6].sum() / 2 + focal[1].sum() / 1) / 2
    torch.testing.assert_close(loss, expected)
    changed = logits.detach().clone()
    changed[0, 6:] = torch.tensor([float("nan"), -30.0])
    torch.testing.assert_close(foreground_loss(changed, targets, padding), loss.detach())
    loss.backward()
    assert logits.grad[0, 6:].abs().max() == 0
    assert (logits.grad[0, :6] != 0).all() and (logits.grad[1] != 0).all()


def test_loss_is_finite_without_foreground_and_with_extreme_logits() -> None:
    padding = torch.zeros(2, 5, dtype=torch.bool)
    logits = torch.tensor([[-100.0, 100.0, 0.0, 50.0, -50.0], [100.0, 100.0, 100.0, 0.0, 0.0]])
    logits.requires_grad_(True)
    no_foreground = foreground_loss(logits, torch.zeros(2, 5), padding)
    all_wrong = foreground_loss(logits, (logits < 0).float().detach(), padding)
    assert torch.isfinite(no_foreground) and torch.isfinite(all_wrong)
    assert all_wrong > 10  # confident mistakes cost a lot (with log-sigmoid this would be inf)
    (no_foreground + all_wrong).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_gradient_flows_end_to_end_from_boxes_to_logits() -> None:
    tokens = token_layout([(4, 4), (2, 2)], (8, 16), batch_size=1)
    targets = foreground_targets(tokens, [torch.tensor([[0.0, 0.0, 16.0, 16.0]])])
    logits = torch.zeros(1, 20, requires_grad=True)
    foreground_loss(logits, targets, tokens.padding_mask).backward()
    # Gradient descent raises the foreground logits and lowers the background ones.
    assert (logits.grad[targets.bool()] < 0).all()
    assert (logits.grad[~targets.bool()] > 0).all()
