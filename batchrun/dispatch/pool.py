"""The worker pool: a producer, N workers and the sink, joined by bounded memory streams.

Backpressure comes from the stream sizes: a slow endpoint stalls the workers, the workers stall
the producer, and the input is never read further ahead than a couple of batches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import BatchrunError, FatalError
from ..models import Request, Result

Producer = Callable[[MemoryObjectSendStream[Request]], Awaitable[None]]
Call = Callable[[Request], Awaitable[Result]]


class Pool:
    """Runs ``call`` over everything ``produce`` sends, with ``concurrency`` requests in flight;
    results go to ``results``. A ``FatalError`` cancels the intake and every worker at once."""

    def __init__(self, call: Call, concurrency: int) -> None:
        self.call = call
        self.concurrency = concurrency
        self.fatal: FatalError | None = None
        self.error: BatchrunError | None = None  # the intake failed (a row that will not render)
        self.in_flight = 0

    async def run(self, produce: Producer, results: MemoryObjectSendStream[Result]) -> None:
        send, receive = anyio.create_memory_object_stream[Request](self.concurrency * 2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._feed, produce, send, tg.cancel_scope)
            async with receive, results:
                for _ in range(self.concurrency):
                    tg.start_soon(self._worker, receive.clone(), results.clone(), tg.cancel_scope)

    async def _feed(self, produce: Producer, send: MemoryObjectSendStream[Request], scope: CancelScope) -> None:
        async with send:
            try:
                await produce(send)
            except BatchrunError as exc:
                self.error = exc
                scope.cancel()

    async def _worker(
        self,
        receive: MemoryObjectReceiveStream[Request],
        results: MemoryObjectSendStream[Result],
        scope: CancelScope,
    ) -> None:
        async with receive, results:
            async for request in receive:
                self.in_flight += 1
                try:
                    result = await self.call(request)
                except FatalError as exc:
                    if self.fatal is None:
                        self.fatal = exc
                    scope.cancel()
                    return
                except BatchrunError as exc:  # the sink cannot write: stop, keep what is flushed
                    if self.error is None:
                        self.error = exc
                    scope.cancel()
                    return
                finally:
                    self.in_flight -= 1
                await results.send(result)

    def __repr__(self) -> str:
        return f"Pool(concurrency={self.concurrency}, in_flight={self.in_flight}, fatal={self.fatal!r})"
