"""Time the multi-scale deformable attention implementations on Focus-DETR shapes.

Shapes are those of the R50 model on an 800x1333 image: four levels (100x167 ... 13x21),
8 heads of 32 channels, 4 points per level; the encoder queries are the 30 % foreground tokens
kept by Focus-DETR (~6700), the decoder has 900 queries. Each row is the median of ``--runs``
timed calls after ``--warmup`` untimed ones (CUDA events on GPU, ``perf_counter`` on CPU).
The Triton rows need CUDA and are skipped on CPU.

Usage::

    python benchmarks/bench_deformable_attention.py [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from focus_detr.ops.deformable_attention_torch import (
    deformable_attention_gather,
    deformable_attention_grid_sample,
)

R50_LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))
NUM_HEADS = 8
HEAD_DIM = 32
NUM_POINTS = 4
ENCODER_KEEP_RATIO = 0.3
DECODER_QUERIES = 900


def make_inputs(
    batch: int, num_queries: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Tensor]:
    """Random inputs of the R50 shapes; locations spread around the maps like trained ones."""
    spatial_shapes = torch.tensor(R50_LEVELS, dtype=torch.long, device=device)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_values = int(sizes.sum())
    num_levels = len(R50_LEVELS)
    generator = torch.Generator(device=device).manual_seed(0)
    sample_shape = (batch, num_queries, NUM_HEADS, num_levels, NUM_POINTS)
    # reference points uniform over the image, offsets of a few percent of the map
    centres = torch.rand(batch, num_queries, 1, 1, 1, 2, generator=generator, device=device)
    offsets = 0.05 * torch.randn(*sample_shape, 2, generator=generator, device=device)
    weights = torch.rand(*sample_shape, generator=generator, device=device)
    return {
        "value": torch.randn(
            batch, num_values, NUM_HEADS, HEAD_DIM, generator=generator, device=device
        ).to(dtype),
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": (centres + offsets).to(dtype),
        "attention_weights": (weights / weights.sum((-1, -2), keepdim=True)).to(dtype),
    }


def implementations(device: torch.device) -> dict[str, Callable[..., Tensor]]:
    """Name -> function of (value, shapes, starts, locations, weights) for this device."""
    found: dict[str, Callable[..., Tensor]] = {
        "gather": deformable_attention_gather,
        "grid_sample": lambda value, shapes, _starts, locations, weights: (
            deformable_attention_grid_sample(value, shapes, locations, weights)
        ),
    }
    if device.type == "cuda":
        try:
            from focus_detr.ops.deformable_attention_triton import (
                deformable_attention_triton,
                is_available,
            )
        except ImportError:
            return found
        if is_available():
            found["triton"] = deformable_attention_triton
    return found


def median_ms(step: Callable[[], object], device: torch.device, warmup: int, runs: int) -> float:
    """Median wall time of ``step`` in milliseconds."""
    for _ in range(warmup):
        step()
    timings = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            timings.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            step()
            timings.append(1000 * (time.perf_counter() - begin))
    return statistics.median(timings)


def benchmark_shape(
    name: str, inputs: dict[str, Tensor], device: torch.device, warmup: int, runs: int
) -> list[tuple[str, str, str, float, float]]:
    """Rows (shape, backend, pass, median ms, max |output - gather output|) for one shape."""
    leaves = {
        key: inputs[key].clone().requires_grad_()
        for key in ("value", "sampling_locations", "attention_weights")
    }
    args = (
        leaves["value"],
        inputs["spatial_shapes"],
        inputs["level_start_index"],
        leaves["sampling_locations"],
        leaves["attention_weights"],
    )
    with torch.no_grad():
        reference = deformable_attention_gather(*args).float()
    grad_output = torch.randn_like(reference).to(inputs["value"].dtype)
    rows = []
    for backend, function in implementations(device).items():
        with torch.no_grad():
            error = (function(*args).float() - reference).abs().max().item()

        def forward(function: Callable[..., Tensor] = function) -> None:
            with torch.no_grad():
                function(*args)

        def forward_backward(function: Callable[..., Tensor] = function) -> None:
            for leaf in leaves.values():
                leaf.grad = None
            function(*args).backward(grad_output)

        rows.append((name, backend, "forward", median_ms(forward, device, warmup, runs), error))
        rows.append(
            (name, backend, "fwd+bwd", median_ms(forward_backward, device, warmup, runs), error)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    num_tokens = sum(height * width for height, width in R50_LEVELS)
    shapes = {
        "encoder": round(ENCODER_KEEP_RATIO * num_tokens),
        "decoder": DECODER_QUERIES,
    }
    print(
        f"device={device} dtype={args.dtype} batch={args.batch} tokens={num_tokens} "
        f"heads={NUM_HEADS} head_dim={HEAD_DIM} points={NUM_POINTS} "
        f"median of {args.runs} after {args.warmup} warm-up"
    )
    if device.type != "cuda":
        print("(no CUDA: Triton rows skipped)")
    print(f"{'shape':<18}{'backend':<13}{'pass':<10}{'ms':>10}{'max|out-gather|':>18}")
    for name, num_queries in shapes.items():
        inputs = make_inputs(args.batch, num_queries, device, dtype)
        label = f"{name} (q={num_queries})"
        for shape, backend, which, ms, error in benchmark_shape(
            label, inputs, device, args.warmup, args.runs
        ):
            print(f"{shape:<18}{backend:<13}{which:<10}{ms:>10.3f}{error:>18.2e}")


if __name__ == "__main__":
    main()
