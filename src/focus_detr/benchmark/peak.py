"""The machine's compute limit: the best rate of dense matrix products and convolutions.

The benchmark divides each stage's operation count by this rate to get the time the stage
would take if everything ran as fast as the best dense kernel on this machine, in the same
precision and with the same threads (the *compute bound*). Rates are in the FLOP convention
of :mod:`~focus_detr.benchmark.flops` (fvcore's: one multiply-add is one FLOP), so that
``GFLOPs / rate`` is a time.

The probes are the shapes that dominate the detector: a square matrix product of the size
where BLAS libraries reach their peak, the linear layers of the transformer (tokens x 256 x
1024), and the backbone's and neck's 3x3 and 1x1 convolutions in channels-last layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["PeakRate", "measure_peak_rate"]


@dataclass(frozen=True)
class PeakRate:
    """The best rate found and every probe's.

    Attributes:
        gflops: the best rate, in GFLOP/s (multiply-adds per second / 1e9).
        best: the probe that reached it.
        probes: every probe's rate, by name.
    """

    gflops: float
    best: str
    probes: dict[str, float]


def _probes(
    device: torch.device, dtype: torch.dtype
) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (call, multiply-adds of one call)."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device).to(dtype)

    square = 8192 if device.type == "cuda" else 2048
    a, b = randn(square, square), randn(square, square)
    tokens = randn(11_112, 256)
    weight = randn(1024, 256)
    feature = randn(1, 256, 100, 168).contiguous(memory_format=torch.channels_last)
    kernel3 = randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last)
    wide = randn(1, 256, 200, 336).contiguous(memory_format=torch.channels_last)
    kernel1 = randn(1024, 256, 1, 1).contiguous(memory_format=torch.channels_last)
    return {
        f"matmul {square}x{square}x{square}": (lambda: a @ b, square**3),
        "linear 11112x256->1024": (lambda: F.linear(tokens, weight), 11_112 * 256 * 1024),
        "conv 3x3 256->256 @100x168": (
            lambda: F.conv2d(feature, kernel3, padding=1),
            256 * 256 * 9 * 100 * 168,
        ),
        "conv 1x1 256->1024 @200x336": (
            lambda: F.conv2d(wide, kernel1),
            256 * 1024 * 200 * 336,
        ),
    }


def measure_peak_rate(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 5
) -> PeakRate:
    """The best dense rate of this machine in ``dtype`` on ``device``, with the current
    threads: each probe's median over ``repeats`` timed calls (after one warm-up), then the
    best probe."""
    device = torch.device(device)
    rates: dict[str, float] = {}
    with torch.inference_mode():
        for name, (call, operations) in _probes(device, dtype).items():
            seconds = _median_seconds(call, device, repeats)
            rates[name] = operations / seconds / 1e9
    best = max(rates, key=rates.__getitem__)
    return PeakRate(gflops=rates[best], best=best, probes=rates)


def _median_seconds(call: Callable[[], object], device: torch.device, repeats: int) -> float:
    call()
    timings = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - start)
    timings.sort()
    return timings[len(timings) // 2]
