"""Training metrics: one JSON object per line in ``metrics.jsonl``, optionally TensorBoard.

Line kinds (key ``type``): ``train`` (averages over a log period: ``iteration``, ``epoch``,
``lr``, ``total_loss`` (weighted) and every unweighted loss, ``seconds_per_iter``,
``data_seconds``), ``eval`` (``iteration``, ``epoch`` and the 12 COCO numbers; with EMA also
``ema_AP`` ...), and events such as ``nonfinite`` (a skipped step) and ``resume``. ``iteration``
always counts the optimisation steps done. Every line also holds ``time``: seconds since the
logger was created (wall clock of this process, for learning curves). Only the main process
writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from focus_detr.engine.run_folder import METRICS_FILE
from focus_detr.io import atomic_write_bytes


class MetricsLogger:
    """Appends JSON lines to ``output_dir/metrics.jsonl`` (and TensorBoard scalars).

    Args:
        output_dir: run folder.
        enabled: write at all (False on every process but the main one).
        tensorboard: also write TensorBoard event files under ``output_dir/tensorboard``
            (needs ``pip install focus-detr[tensorboard]``).
    """

    def __init__(
        self, output_dir: str | os.PathLike[str], *, enabled: bool = True, tensorboard: bool = False
    ) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.enabled = enabled
        self._start = time.monotonic()
        self._writer: Any = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._writer = _tensorboard_writer(Path(output_dir) / "tensorboard")

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (non-finite floats are written as strings, JSON has none)."""
        if not self.enabled:
            return
        record = {**record, "time": round(time.monotonic() - self._start, 3)}
        line = json.dumps({k: _jsonable(v) for k, v in record.items()}, sort_keys=False)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if self._writer is not None:
            self._to_tensorboard(record)

    def _to_tensorboard(self, record: Mapping[str, Any]) -> None:
        step = int(record.get("iteration", 0))
        prefix = str(record.get("type", "train"))
        for key, value in record.items():
            if key in ("iteration", "type") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                self._writer.add_scalar(f"{prefix}/{key}", float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # the tensorboard package is an optional extra
        raise ImportError(
            "--tensorboard needs the tensorboard package: pip install 'focus-detr[tensorboard]'"
        ) from error
    return SummaryWriter(log_dir=str(folder))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (or of the one in a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    with path.open("r", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_metrics(output_dir: str | os.PathLike[str], iteration: int) -> int:
    """Drop the records of iterations after ``iteration`` (written by a run that was then
    resumed from an earlier checkpoint); returns how many were dropped."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if int(record.get("iteration", 0)) <= iteration:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
    return len(lines) - len(kept)


class PeriodAverages:
    """Running means of the losses and timings between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0
        self._skipped = 0
        self._data_seconds = 0.0
        self._start = time.perf_counter()

    def add(self, losses: Mapping[str, float], data_seconds: float) -> None:
        """One finished step with finite losses."""
        for name, value in losses.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._count += 1
        self._data_seconds += data_seconds

    def add_skipped(self) -> None:
        self._skipped += 1

    @property
    def steps(self) -> int:
        return self._count + self._skipped

    def summary(self) -> dict[str, float]:
        """Mean of every value, seconds per step, and the number of skipped steps."""
        elapsed = time.perf_counter() - self._start
        steps = max(self.steps, 1)
        means = {name: total / max(self._count, 1) for name, total in self._sums.items()}
        return {
            **means,
            "seconds_per_iter": elapsed / steps,
            "data_seconds": self._data_seconds / max(self._count, 1),
            "skipped_steps": self._skipped,
        }


class StepLog:
    """Per-step bookkeeping of the training loop.

    Updates the progress bar (loss, lr), writes a ``nonfinite`` record for every skipped step
    and one ``train`` record of period averages every ``every`` steps.

    Args:
        metrics: where records go.
        every: steps per ``train`` record.
        log: prints a message (the main process's).
    """

    def __init__(self, metrics: MetricsLogger, every: int, log: Callable[[str], None]) -> None:
        self.metrics = metrics
        self.every = max(int(every), 1)
        self.log = log
        self.period = PeriodAverages()

    def record(self, result: Any, *, epoch: float, bar: Any, last: bool) -> None:
        """Account for a :class:`~focus_detr.engine.step.StepResult`; ``last``: flush now."""
        done = result.iteration + 1
        if result.finite:
            self.period.add({**result.losses, "grad_norm": result.grad_norm}, result.data_seconds)
            bar.set_postfix(loss=f"{result.losses['total_loss']:.3f}", lr=f"{result.lr:.2e}")
        else:
            self.period.add_skipped()
            self.log(f"iteration {result.iteration}: non-finite loss, step skipped")
            event = {"type": "nonfinite", "iteration": done}  # steps done, as everywhere
            self.metrics.write({**event, **result.losses})
        bar.update(1)
        if done % self.every == 0 or last:
            summary = self.period.summary()
            record = {"type": "train", "iteration": done, "epoch": epoch, "lr": result.lr}
            self.metrics.write({**record, **summary})
            self.period.reset()
