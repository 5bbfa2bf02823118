"""Wall-clock latency (end to end and by stage) and peak memory of a callable."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from focus_detr.profiling import listening


@dataclass
class Latency:
    """Seconds of repeated runs."""

    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> tuple[float, float]:
        """(first quartile, third quartile); equal to the only run when there is one."""
        if len(self.runs) < 2:
            return (self.runs[0], self.runs[0])
        quartiles = statistics.quantiles(self.runs, n=4, method="inclusive")
        return (quartiles[0], quartiles[2])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    run: Callable[[], object], device: torch.device, *, warmup: int, repeats: int
) -> Latency:
    """Time ``run()`` ``repeats`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return Latency(times)


class _StageClock:
    """Accumulates wall time per stage (synchronising the device at every boundary)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self._starts: list[tuple[str, float]] = []

    def enter(self, name: str) -> None:
        _synchronize(self.device)
        self._starts.append((name, time.perf_counter()))

    def exit(self, name: str) -> None:
        _synchronize(self.device)
        started_name, started = self._starts.pop()
        self.totals[started_name] += time.perf_counter() - started


def stage_latency(
    run: Callable[[], object], device: torch.device, *, repeats: int
) -> dict[str, float]:
    """Median seconds per stage over ``repeats`` runs (device synchronised at boundaries)."""
    per_run: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        clock = _StageClock(device)
        with listening(clock):
            run()
        for name, seconds in clock.totals.items():
            per_run[name].append(seconds)
    return {name: statistics.median(values) for name, values in per_run.items()}


def peak_memory(run: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory in bytes during ``run()``: allocated CUDA memory, or the CPU process's
    resident set growth (Linux); None when it cannot be measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - baseline)
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set size
    except OSError:
        return None
    baseline = _read_kib(status, "VmRSS:")
    run()
    peak = _read_kib(status, "VmHWM:")
    if baseline is None or peak is None:
        return None
    return float(max(0, peak - baseline) * 1024)


def _read_kib(status: Path, field: str) -> int | None:
    for line in status.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return None
