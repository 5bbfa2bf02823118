"""The PyTorch deformable attention paths and the dispatcher, on CPU (no Triton needed)."""

from __future__ import annotations

import pytest
import torch

from focus_detr.ops.deformable_attention_dispatch import multi_scale_deformable_attention
from focus_detr.ops.deformable_attention_torch import (
    deformable_attention_corner_gather,
    deformable_attention_gather,
    deformable_attention_grid_sample,
)
from tests.helpers import deformable_attention_inputs, gradcheck_deformable_attention

_KEYS = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
_DIFFERENTIABLE = ("value", "sampling_locations", "attention_weights")


def _outputs_and_grads(inputs: dict[str, torch.Tensor], implementation: str) -> dict:
    leaves = {key: inputs[key].clone().requires_grad_() for key in _DIFFERENTIABLE}
    args = {**inputs, **leaves}
    if implementation == "gather":
        output = deformable_attention_gather(*(args[key] for key in _KEYS))
    elif implementation == "corner_gather":
        output = deformable_attention_corner_gather(*(args[key] for key in _KEYS))
    else:
        output = deformable_attention_grid_sample(
            args["value"], args["spatial_shapes"], args["sampling_locations"],
            args["attention_weights"],
        )  # fmt: skip
    output.backward(inputs["grad_output"])
    return {"output": output.detach(), **{key: leaves[key].grad for key in _DIFFERENTIABLE}}


@pytest.mark.parametrize(
    "levels", [[(3, 5), (1, 1), (4, 2)], [(7, 9)], [(13, 21), (7, 11), (4, 6), (2, 3)]]
)
def test_gather_equals_grid_sample_in_values_and_gradients(levels) -> None:
    """Zero padding outside the maps, 1x1 levels and far-away samples included."""
    inputs = deformable_attention_inputs(levels, 2, 11, 3, 5, 3, seed=4, dtype=torch.float64)
    gather = _outputs_and_grads(inputs, "gather")
    grid_sample = _outputs_and_grads(inputs, "grid_sample")
    for key, expected in grid_sample.items():
        torch.testing.assert_close(gather[key], expected, rtol=1e-12, atol=1e-12, msg=key)
    assert gather["output"].abs().max() > 0.1  # not a comparison of zeros


def test_gather_path_gradcheck_float64() -> None:
    assert gradcheck_deformable_attention(deformable_attention_gather)


def test_dispatcher_backends_agree_and_float64_never_reaches_triton() -> None:
    inputs = deformable_attention_inputs([(3, 4), (1, 2)], 1, 4, 2, 4, 2, dtype=torch.float64)
    args = [inputs[key] for key in _KEYS]
    reference = deformable_attention_gather(*args)
    for backend in ("auto", "gather", "grid_sample", "corner_gather", "triton"):  # triton -> gather
        torch.testing.assert_close(
            multi_scale_deformable_attention(*args, backend=backend),
            reference,
            rtol=1e-12,
            atol=1e-12,
        )
    with pytest.raises(ValueError, match="unknown deformable attention backend"):
        multi_scale_deformable_attention(*args, backend="cuda")


def test_no_queries_gives_an_empty_result() -> None:
    inputs = deformable_attention_inputs([(2, 2)], 1, 0, 2, 4, 2)
    assert deformable_attention_gather(*(inputs[key] for key in _KEYS)).shape == (1, 0, 8)


@pytest.mark.parametrize("levels", [[(3, 5), (1, 1), (4, 2)], [(13, 21), (7, 11), (4, 6), (2, 3)]])
def test_corner_gather_equals_grid_sample_in_values_and_gradients(levels) -> None:
    """The export-only backend (standard ONNX ops) computes the same function."""
    inputs = deformable_attention_inputs(levels, 2, 11, 3, 5, 3, seed=5, dtype=torch.float64)
    corner_gather = _outputs_and_grads(inputs, "corner_gather")
    grid_sample = _outputs_and_grads(inputs, "grid_sample")
    for key, expected in grid_sample.items():
        torch.testing.assert_close(corner_gather[key], expected, rtol=1e-12, atol=1e-12, msg=key)
    assert corner_gather["output"].abs().max() > 0.1
