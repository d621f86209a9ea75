"""How many requests one model may have in flight, and backing off when its server queues.

A local server has a fixed number of slots (llama.cpp's ``-np``); requests
beyond them wait in its queue without a byte sent, and a wait counted as a
timeout fails them. So each model gets a ``Limiter``: at most its
``concurrency`` requests are sent at once (the rest wait here, where the
wait is not timed), and when a request still waits longer than the
first-byte timeout (the server queued it), the limit drops below the number
in flight so the retry waits here instead. After that many requests
succeed in a row the limit grows back by one, up to the configured value.

Limiters are per model and per event loop (a command-line run calling
``asyncio.run`` twice gets fresh ones). Nothing here imports Datasette.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref
from typing import AsyncIterator

#: With no configured limit, a lowered limit that grows back this far is lifted again.
UNLIMITED_AFTER = 64


class Limiter:
    def __init__(self, limit: int | None = None) -> None:
        self.configured = limit
        self.limit = limit
        self.in_flight = 0
        self.lowered = False
        self._ok_since_change = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def _free(self) -> bool:
        return self.limit is None or self.in_flight < self.limit

    async def acquire(self) -> None:
        while not self._free():
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._wake()  # we were woken but leave: pass the turn on
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self._wake()

    def _wake(self) -> None:
        free = (self.limit - self.in_flight) if self.limit is not None else len(self._waiters)
        for future in list(self._waiters):
            if free <= 0:
                break
            if not future.done():
                future.set_result(None)
                free -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def queued(self) -> None:
        """A request got no first byte in time: the server is queueing, send fewer at once."""
        lower = max(1, self.in_flight - 1)
        if self.limit is None or lower < self.limit:
            self.limit = lower
            self.lowered = True
            self._ok_since_change = 0

    def succeeded(self) -> None:
        """A request was answered: after ``limit`` successes in a row, allow one more."""
        if not self.lowered:
            return
        self._ok_since_change += 1
        if self._ok_since_change < (self.limit or 1):
            return
        self._ok_since_change = 0
        self.limit = (self.limit or 0) + 1
        ceiling = self.configured if self.configured is not None else UNLIMITED_AFTER
        if self.limit >= ceiling:
            self.limit = self.configured
            self.lowered = False
        self._wake()


_limiters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakKeyDictionary]" = (
    weakref.WeakKeyDictionary()
)


def limiter_for(model) -> Limiter:
    """The limiter of ``model`` on the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    per_loop = _limiters.setdefault(loop, weakref.WeakKeyDictionary())
    try:
        limiter = per_loop.get(model)
    except TypeError:  # not weak-referenceable: no shared limit
        return Limiter(getattr(model, "concurrency", None))
    if limiter is None or limiter.configured != getattr(model, "concurrency", None):
        limiter = Limiter(getattr(model, "concurrency", None))
        per_loop[model] = limiter
    return limiter
