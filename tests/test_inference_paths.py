"""Inference-only formulations (blocked products, reused buffers, in-place updates) give the
results of the plain differentiable code, and are never taken when gradients are recorded."""

from __future__ import annotations

import torch

from focus_detr.models.attention import FeedForward


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
