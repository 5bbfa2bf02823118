"""Named stages of the forward pass, for per-stage latency and FLOP breakdowns.

The model marks its stages with :func:`stage` ("backbone", "neck", "foreground_scoring",
"encoder", "query_selection", "decoder", "postprocess"). Nothing happens unless a listener is
registered with :func:`listening` (the benchmark does), so the marks cost a function call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

STAGES = (
    "backbone",
    "neck",
    "foreground_scoring",
    "encoder",
    "query_selection",
    "decoder",
    "postprocess",
)


class StageListener(Protocol):
    def enter(self, name: str) -> None: ...

    def exit(self, name: str) -> None: ...


_listeners: list[StageListener] = []


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark a stage of the forward pass."""
    if not _listeners:
        yield
        return
    for listener in _listeners:
        listener.enter(name)
    try:
        yield
    finally:
        for listener in reversed(_listeners):
            listener.exit(name)


@contextmanager
def listening(listener: StageListener) -> Iterator[StageListener]:
    """Send stage enter/exit events to ``listener`` inside the block."""
    _listeners.append(listener)
    try:
        yield listener
    finally:
        _listeners.remove(listener)
