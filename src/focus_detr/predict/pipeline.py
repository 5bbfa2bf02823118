"""Threads that keep the model busy: decode ahead of it, write behind it.

The model runs in the calling thread. Decoding (Pillow, PyAV), resizing and encoding release
the GIL in their C code, so worker threads overlap them with the forward passes without the
cost of processes (no pickling of frames, no start-up).

- :func:`prefetch` maps a function over items in a pool of threads, in order, a bounded
  number of items ahead (images: read + resize).
- :func:`background_iter` runs one iterator in its own thread (a video decoder, which is
  sequential), a bounded number of items ahead.
- :class:`BackgroundWriter` runs tasks one after another in one thread, in submission order
  (drawing, encoding, writing files).

Errors raised in a thread are raised again in the caller, and stopping early (an exception or
Ctrl-C in the caller) stops the threads.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["BackgroundWriter", "background_iter", "prefetch"]

Item = TypeVar("Item")
Result = TypeVar("Result")

_DONE = object()


def prefetch(
    items: Iterable[Item], load: Callable[[Item], Result], *, workers: int = 2, ahead: int = 8
) -> Iterator[Result]:
    """``load(item)`` for every item, computed by ``workers`` threads, yielded in order.

    At most ``ahead`` results wait to be consumed. ``workers=0`` loads in the calling thread.
    """
    if workers <= 0:
        yield from map(load, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="focus-detr-load")
    pending: deque[Future[Result]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(load, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def background_iter(iterable: Iterable[Item], *, ahead: int = 8) -> Iterator[Item]:
    """Iterate ``iterable`` in a thread of its own, at most ``ahead`` items in advance."""
    buffer: queue.Queue[object] = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterable:
                if not _put(buffer, item, stop):
                    return
            _put(buffer, _DONE, stop)
        except BaseException as error:  # handed to the consumer, raised there
            _put(buffer, _Failure(error), stop)

    thread = threading.Thread(target=produce, name="focus-detr-decode", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(buffer: queue.Queue[object], item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer stopped; False when it did."""
    while not stop.is_set():
        try:
            buffer.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class BackgroundWriter:
    """Run tasks in one thread, in submission order, at most ``ahead`` of them queued.

    Use as a context manager: leaving it waits for the queued tasks. The first error of a task
    is raised again by the next :meth:`submit` or by :meth:`close`; later tasks are skipped.
    """

    def __init__(self, *, ahead: int = 16) -> None:
        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max(1, ahead))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="focus-detr-write", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        self._raise_error()
        self._tasks.put(task)

    def close(self) -> None:
        """Wait for the queued tasks; raise the first error of a task."""
        if self._thread.is_alive():
            self._tasks.put(None)
            self._thread.join()
        self._raise_error()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if error is None:
            self.close()
            return
        # keep what was queued before the caller's error; that error is the one raised
        with contextlib.suppress(Exception):
            self.close()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            if self._error is None:
                try:
                    task()
                except BaseException as error:
                    self._error = error
