"""Wall-clock latency (end to end and by stage) and peak memory of a callable."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from focus_detr.models.stages import listening


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
    return measure_interleaved({"run": run}, device, warmup=warmup, repeats=repeats)["run"]


def measure_interleaved(
    runs: dict[str, Callable[[], object]], device: torch.device, *, warmup: int, repeats: int
) -> dict[str, Latency]:
    """Time several callables in turn (a, b, c, a, b, c, ...), so that a change in the
    machine's load during the measurement reaches all of them alike."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            _synchronize(device)
            start = time.perf_counter()
            run()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: Latency(values) for name, values in times.items()}


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


def peak_memory(run: Callable[[], object], device: torch.device) -> float:
    """Peak bytes of live tensors during ``run()`` above what was live before it.

    CUDA: the caching allocator's peak. CPU: the running sum of the allocations and frees the
    PyTorch profiler records (deterministic, unlike the process's resident set, which
    reflects what the C allocator kept from earlier runs).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - baseline)
    from torch.profiler import ProfilerActivity, profile

    with (
        _without_profiler_chatter(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler,
    ):
        run()
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return float(peak)


# What the profiler's native library (Kineto) prints on every start and stop, and on a machine
# without a GPU; it writes to file descriptor 2 directly, past Python's sys.stderr.
_PROFILER_CHATTER = ("profiler_start", "profiler_stop", "gpuGetDeviceCount failed")


@contextlib.contextmanager
def _without_profiler_chatter() -> Iterator[None]:
    """Hold back the profiler's status lines; anything else written to stderr is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(marker in line for marker in _PROFILER_CHATTER):
                    sys.stderr.write(line)
