"""A bounded pool of inference threads that the event loop awaits without blocking.

The model and MTCNN release the GIL inside PyTorch, so a few threads keep the CPU (or the
GPU) busy while the event loop keeps accepting requests and serving the page. The number
of requests admitted, running or waiting, is capped: past the cap a request is refused at
once (503) instead of queueing for longer than any client would wait.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class PoolBusy(Exception):
    """Every worker is busy and the queue is full."""


class InferencePool:
    """``workers`` threads, at most ``workers + queue`` requests admitted at once.

    A slot is freed when the work really ends, not when its caller stops waiting: a
    request that timed out while its photo was being processed still occupies the
    thread, and admitting another in its place would let the backlog grow without bound.
    """

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glae-inference")
        self._slots = threading.Semaphore(self.capacity)

    def admit(self) -> Admission:
        """Take a slot now, before the request's upload is read; raises ``PoolBusy`` when none is free.

        Admitting first keeps a full server from reading (and holding) uploads it will refuse.
        """
        if not self._slots.acquire(blocking=False):
            raise PoolBusy(f"the server is busy ({self.capacity} requests in progress); retry shortly")
        return Admission(self._executor, self._slots)

    def shutdown(self) -> None:
        """Drop waiting work and let running work finish."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class Admission:
    """A slot taken in an ``InferencePool``: released on leaving the ``with`` block unless work was
    handed to a thread, which releases it when the work really ends."""

    def __init__(self, executor: ThreadPoolExecutor, slots: threading.Semaphore) -> None:
        self._executor, self._slots, self._held = executor, slots, True

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` in a worker thread. Cancelling the caller cancels work not yet started."""
        future: Future[T] = self._executor.submit(function, *args)
        self._held = False
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._held:
            self._held = False
            self._slots.release()
