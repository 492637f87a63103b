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

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` in a worker thread; raises ``PoolBusy`` when no slot is free.

        Cancelling the caller (a timeout) cancels the work if it has not started yet.
        """
        if not self._slots.acquire(blocking=False):
            raise PoolBusy(f"the server is busy ({self.capacity} requests in progress); retry shortly")
        try:
            future: Future[T] = self._executor.submit(function, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Drop waiting work and let running work finish."""
        self._executor.shutdown(wait=True, cancel_futures=True)
