"""Tests of the fused Triton deformable attention kernels.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), which must be
set before the kernels are defined; to keep it out of every other test, the interpreter runs
in one subprocess that computes the Triton outputs and gradients of all cases, and the
assertions against the PyTorch paths happen here. CUDA tests are marked ``gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from focus_detr.ops.deformable_attention_dispatch import multi_scale_deformable_attention
from focus_detr.ops.deformable_attention_torch import (
    deformable_attention_gather,
    deformable_attention_grid_sample,
)
from focus_detr.ops.deformable_attention_triton import (
    _backward_kernel,
    _forward_kernel,
    _launch_meta,
    deformable_attention_triton,
    is_available,
)
from tests.helpers import deformable_attention_inputs, gradcheck_deformable_attention

_INTERPRETER_SCRIPT = """
import sys
import torch
from focus_detr.ops.deformable_attention_triton import deformable_attention_triton

cases = torch.load(sys.argv[1])
results = {}
for name, case in cases.items():
    leaves = {}
    for key in ("value", "sampling_locations", "attention_weights"):
        tensor = case[key]
        if key in case["permute"]:  # same values in a non-contiguous layout
            order = case["permute"][key]
            inverse = sorted(range(len(order)), key=order.__getitem__)
            tensor = tensor.permute(order).contiguous().permute(inverse)
            assert not tensor.is_contiguous()
        leaves[key] = tensor.detach().requires_grad_(key in case["requires_grad"])
    output = deformable_attention_triton(
        leaves["value"], case["spatial_shapes"], case["level_start_index"],
        leaves["sampling_locations"], leaves["attention_weights"])
    output.backward(case["grad_output"])
    results[name] = {"output": output.detach()}
    results[name].update({"grad_" + key: leaves[key].grad for key in case["requires_grad"]})
torch.save(results, sys.argv[2])
"""


_DIFFERENTIABLE = ("value", "sampling_locations", "attention_weights")

# name -> (inputs, names that require grad, {input: permutation used to make it non-contiguous});
# kept tiny: the interpreter costs ~0.1 s per program and sample on 2 cores
_INTERPRETER_CASES = {
    "three_levels_with_1x1": (
        deformable_attention_inputs(
            [(3, 5), (1, 1), (4, 2)], 2, num_queries=6, num_heads=2, head_dim=8, num_points=2
        ),
        _DIFFERENTIABLE,
        {},
    ),
    "odd_head_dim_non_contiguous": (
        deformable_attention_inputs(
            [(2, 3), (5, 1)], 1, num_queries=5, num_heads=3, head_dim=6, num_points=1, seed=1
        ),
        _DIFFERENTIABLE,
        {"value": (0, 2, 1, 3), "sampling_locations": (0, 2, 1, 3, 4, 5)},
    ),
    "frozen_value_two_query_blocks": (
        deformable_attention_inputs(
            [(4, 4)], 1, num_queries=21, num_heads=1, head_dim=4, num_points=2, seed=2
        ),
        ("sampling_locations", "attention_weights"),
        {},
    ),
}
_EMPTY_CASE = (
    deformable_attention_inputs([(2, 2)], 1, num_queries=0, num_heads=2, head_dim=4, num_points=2),
    _DIFFERENTIABLE,
    {},
)
_REDUCED_PRECISION_CASES = {
    f"{dtype}".removeprefix("torch."): (
        deformable_attention_inputs(
            [(3, 5), (1, 1)],
            1,
            num_queries=9,
            num_heads=2,
            head_dim=4,
            num_points=1,
            seed=3,
            dtype=dtype,
        ),
        _DIFFERENTIABLE,
        {},
    )
    for dtype in (torch.bfloat16, torch.float16)
}


def _reference(
    inputs: dict[str, torch.Tensor],
    requires_grad: tuple[str, ...],
    implementation: str,
    dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """Output and gradients of a PyTorch path, computed in ``dtype`` (float64 by default)."""
    leaves = {
        key: inputs[key].to(dtype, copy=True).requires_grad_(key in requires_grad)
        for key in _DIFFERENTIABLE
    }
    if implementation == "gather":
        output = deformable_attention_gather(
            leaves["value"], inputs["spatial_shapes"], inputs["level_start_index"],
            leaves["sampling_locations"], leaves["attention_weights"],
        )  # fmt: skip
    else:
        output = deformable_attention_grid_sample(
            leaves["value"], inputs["spatial_shapes"], leaves["sampling_locations"],
            leaves["attention_weights"],
        )  # fmt: skip
    output.backward(inputs["grad_output"].to(dtype))
    result = {"output": output.detach()}
    result.update({f"grad_{key}": leaves[key].grad for key in requires_grad})
    return result


@pytest.fixture(scope="module")
def interpreter_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Triton outputs and gradients of every interpreter case (one subprocess)."""
    folder: Path = tmp_path_factory.mktemp("triton_interpreter")
    cases = {}
    for name, (inputs, requires_grad, permute) in {
        **_INTERPRETER_CASES,
        **_REDUCED_PRECISION_CASES,
        "empty": _EMPTY_CASE,
    }.items():
        cases[name] = {**inputs, "requires_grad": list(requires_grad), "permute": permute}
    torch.save(cases, folder / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_SCRIPT, folder / "cases.pt", folder / "out.pt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if completed.returncode != 0:
        pytest.fail(f"Triton interpreter run failed:\n{completed.stderr[-4000:]}")
    return torch.load(folder / "out.pt")


@pytest.mark.parametrize("implementation", ["gather", "grid_sample"])
@pytest.mark.parametrize("case", sorted(_INTERPRETER_CASES))
def test_interpreter_float32_matches_pytorch(
    interpreter_results: dict[str, dict], case: str, implementation: str
) -> None:
    inputs, requires_grad, _ = _INTERPRETER_CASES[case]
    expected = _reference(inputs, requires_grad, implementation)
    actual = interpreter_results[case]
    assert set(actual) == set(expected)
    for key, expected_tensor in expected.items():
        assert actual[key].dtype == torch.float32, key
        torch.testing.assert_close(
            actual[key].double(),
            expected_tensor,
            rtol=1e-5,
            atol=1e-5,
            msg=lambda m, k=key: f"{k}: {m}",
        )


def test_interpreter_no_queries(interpreter_results: dict[str, dict]) -> None:
    inputs = _EMPTY_CASE[0]
    results = interpreter_results["empty"]
    assert results["output"].shape == (1, 0, 8)
    assert torch.equal(results["grad_value"], torch.zeros_like(inputs["value"]))
    assert results["grad_sampling_locations"].shape == inputs["sampling_locations"].shape
    assert results["grad_attention_weights"].shape == inputs["attention_weights"].shape


def test_interpreter_zero_padding_outside_maps(interpreter_results: dict[str, dict]) -> None:
    """A sample whose four corners are outside its map contributes exactly nothing."""
    inputs, _, _ = _INTERPRETER_CASES["three_levels_with_1x1"]
    far_away = (inputs["sampling_locations"] < -1).any(-1)
    assert far_away.any()
    grads = interpreter_results["three_levels_with_1x1"]
    assert torch.all(grads["grad_attention_weights"][far_away] == 0)
    assert torch.all(grads["grad_sampling_locations"][far_away] == 0)


@pytest.mark.parametrize("case", sorted(_REDUCED_PRECISION_CASES))
def test_interpreter_reduced_precision(interpreter_results: dict[str, dict], case: str) -> None:
    inputs, requires_grad, _ = _REDUCED_PRECISION_CASES[case]
    expected = _reference(inputs, requires_grad, "gather")
    actual = interpreter_results[case]
    for key, expected_tensor in expected.items():
        assert actual[key].dtype == inputs["value"].dtype, key
        scale = expected_tensor.abs().max()
        assert (actual[key].double() - expected_tensor).abs().max() <= 2e-2 * scale, key


def test_float64_is_refused_by_the_kernels() -> None:
    """float64 is the dispatcher's business (it runs the gather path); the kernels refuse it."""
    inputs = deformable_attention_inputs([(3, 4), (1, 2)], 1, 4, 2, 4, 2, dtype=torch.float64)
    args = [inputs[key] for key in ("value", "spatial_shapes", "level_start_index")]
    args += [inputs["sampling_locations"], inputs["attention_weights"]]
    with pytest.raises(ValueError, match="float64"):
        deformable_attention_triton(*args)


def _valid_args() -> list[torch.Tensor]:
    inputs = deformable_attention_inputs([(3, 4), (1, 2)], 2, 4, 2, 8, 3)
    keys = ("value", "spatial_shapes", "level_start_index")
    return [inputs[key] for key in keys] + [
        inputs["sampling_locations"],
        inputs["attention_weights"],
    ]


@pytest.mark.parametrize(
    ("position", "bad", "message"),
    [
        (0, torch.zeros(2, 11, 16), "value must be"),
        (0, torch.zeros(2, 11, 3, 8), "does not match value"),
        (0, torch.zeros(2, 11, 2, 256), "head_dim 256 exceeds"),
        (0, torch.zeros(2, 11, 2, 8, dtype=torch.int32), "value must be float"),
        (1, torch.tensor([[3, 4]]), "spatial_shapes must be"),
        (1, torch.tensor([[3.0, 4.0], [1.0, 2.0]]), "integer tensors"),
        (2, torch.tensor([0]), "level_start_index must be"),
        (3, torch.zeros(2, 4, 2, 2, 3, 3), "sampling_locations must be"),
        (4, torch.zeros(2, 4, 2, 2, 2), "attention_weights must have shape"),
        (2, torch.tensor([0, 12], device="meta"), "one device"),
    ],
)
def test_invalid_inputs_raise_value_error(position: int, bad: torch.Tensor, message: str) -> None:
    args = _valid_args()
    args[position] = bad
    with pytest.raises(ValueError, match=message):
        deformable_attention_triton(*args)


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a process where the kernels cannot run on CPU tensors",
)
def test_cpu_tensors_without_interpreter_raise() -> None:
    assert not is_available()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        deformable_attention_triton(*_valid_args())
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        multi_scale_deformable_attention(*_valid_args(), backend="triton")


@pytest.mark.parametrize(
    ("batch", "num_queries", "head_dim", "expected_block"),
    [(1, 6667, 32, 32), (1, 900, 32, 16), (8, 900, 32, 32), (2, 5, 6, 16), (1, 300, 128, 16)],
)
def test_launch_grid_covers_every_query_once(
    batch: int, num_queries: int, head_dim: int, expected_block: int
) -> None:
    value = torch.empty(batch, 100, 8, head_dim, device="meta")
    locations = torch.empty(batch, num_queries, 8, 4, 4, 2, device="meta")
    grid, meta = _launch_meta(value, locations)
    block = meta["block_queries"]
    assert block == expected_block
    assert grid[0] == 8 and grid[2] == batch
    assert (grid[1] - 1) * block < num_queries <= grid[1] * block
    assert meta["block_dim"] >= head_dim and meta["block_dim"] & (meta["block_dim"] - 1) == 0


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="kernels are interpreted")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kernels_compile_for_hopper_with_vector_loads(dtype: str) -> None:
    """The real compiler (not the interpreter) accepts the kernels; rows load as vectors.

    Compiles to sm_90 PTX and cubin with Triton's bundled ``ptxas``; no GPU needed.
    """
    pytest.importorskip("triton.backends.nvidia")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    constants = {"num_heads": 8, "head_dim": 32, "num_levels": 4, "num_points": 4}
    constants |= {"block_queries": 32, "block_dim": 32}
    pointers = {"forward": ("value", "locations", "weights", "output")}
    pointers["backward"] = (
        *pointers["forward"][:3], "grad_output", "grad_value", "grad_locations", "grad_weights",
    )  # fmt: skip
    for direction, kernel in (("forward", _forward_kernel), ("backward", _backward_kernel)):
        signature = {f"{name}_ptr": f"*{dtype}" for name in pointers[direction]}
        signature |= {"spatial_shapes_ptr": "*i64", "level_start_ptr": "*i64"}
        signature = {name: signature.get(name, "i32") for name in kernel.arg_names}
        kernel_constants = dict(constants)
        if direction == "backward":
            signature["grad_value_ptr"] = "*fp32"
            kernel_constants["compute_grad_value"] = True
        for name in kernel_constants:
            signature[name] = "constexpr"
        aligned = {
            (index,): [["tt.divisibility", 16]]
            for index, name in enumerate(kernel.arg_names)
            if signature[name].startswith("*")
        }
        source = ASTSource(kernel, signature, kernel_constants, aligned)
        options = {"enable_fp_fusion": True}  # as launched
        ptx = compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
        assert "ld.global.v4" in ptx, direction
        if direction == "backward":
            assert ".add.v4.f32" in ptx


# --------------------------------------------------------------------------- CUDA

_R50_LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]


def _cuda(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        key: tensor.to("cuda", dtype) if tensor.is_floating_point() else tensor.cuda()
        for key, tensor in inputs.items()
    }


def _triton_on(
    inputs: dict[str, torch.Tensor], requires_grad: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    leaves = {
        key: inputs[key].clone().requires_grad_(key in requires_grad) for key in _DIFFERENTIABLE
    }
    output = deformable_attention_triton(
        leaves["value"], inputs["spatial_shapes"], inputs["level_start_index"],
        leaves["sampling_locations"], leaves["attention_weights"],
    )  # fmt: skip
    output.backward(inputs["grad_output"])
    result = {"output": output.detach()}
    result.update({f"grad_{key}": leaves[key].grad for key in requires_grad})
    return result


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("level_shapes", "num_queries", "head_dim"),
    [([(3, 5), (1, 1), (4, 2)], 70, 8), ([(7, 3)], 33, 128), (_R50_LEVELS, 900, 32)],
)
def test_cuda_float32_matches_gather(
    level_shapes: list[tuple[int, int]], num_queries: int, head_dim: int
) -> None:
    """As accurate as PyTorch's own float32 path, both measured against float64.

    A fixed tolerance does not fit: at the R-50 level sizes the location gradients reach ~4e3
    (scaled by the map widths) and the float32 gather path itself is 2e-2 off there.
    """
    inputs = deformable_attention_inputs(level_shapes, 2, num_queries, 8, head_dim, 4, seed=5)
    expected = _reference(_cuda(inputs, torch.float64), _DIFFERENTIABLE, "gather")
    pytorch_float32 = _reference(
        _cuda(inputs, torch.float32), _DIFFERENTIABLE, "gather", torch.float32
    )
    actual = _triton_on(_cuda(inputs, torch.float32), _DIFFERENTIABLE)
    for key, expected_tensor in expected.items():
        assert actual[key].dtype == torch.float32
        error = (actual[key].double() - expected_tensor).abs().max().item()
        pytorch_error = (pytorch_float32[key].double() - expected_tensor).abs().max().item()
        # atomics reorder the grad_value sums: allow twice PyTorch's error, or 1e-6 of the scale
        assert error <= max(2 * pytorch_error, 1e-6 * expected_tensor.abs().max().item()), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_reduced_precision(dtype: torch.dtype) -> None:
    inputs = _cuda(
        deformable_attention_inputs(_R50_LEVELS, 2, 300, 8, 32, 4, seed=6, dtype=dtype), dtype
    )
    expected = _reference(inputs, _DIFFERENTIABLE, "gather")
    actual = _triton_on(inputs, _DIFFERENTIABLE)
    for key, expected_tensor in expected.items():
        assert actual[key].dtype == dtype, key
        error = (actual[key].double() - expected_tensor).abs().max()
        assert error <= 2e-2 * expected_tensor.abs().max(), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_backend_uses_triton() -> None:
    inputs = _cuda(
        deformable_attention_inputs([(6, 5), (3, 3)], 1, 40, 4, 32, 2, seed=7), torch.float32
    )
    args = [inputs[key] for key in ("value", "spatial_shapes", "level_start_index")]
    args += [inputs["sampling_locations"], inputs["attention_weights"]]
    assert is_available()
    torch.testing.assert_close(
        multi_scale_deformable_attention(*args, backend="auto"),
        deformable_attention_triton(*args),
        rtol=0,
        atol=0,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float64_gradcheck_of_the_dispatched_path() -> None:
    """float64 on CUDA: the dispatcher runs the gather path (the kernels take no float64)."""
    assert gradcheck_deformable_attention(multi_scale_deformable_attention, device="cuda")
