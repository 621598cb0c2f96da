"""The worker pool: a producer, N workers and the sink, joined by bounded memory streams.

Backpressure comes from the stream sizes: a slow endpoint stalls the workers, the workers stall
the producer, and the input is never read further ahead than a couple of batches.

Requests are handed over in small batches (``HANDOFF``), not one at a time: a hop through a memory
stream costs a task switch on each side, which made the hand-off several per cent of a busy run.
A worker takes the next request from the batch at hand; when it is empty, one worker waits for
the next batch and the others queue behind it, so no worker sleeps while requests are waiting.

Stopping is a cancel scope, not a flag to poll: ``stop()`` (first signal, deadline) cancels the
intake and gives the workers' scope a deadline ``grace`` seconds away, so requests in flight can
finish; ``cancel()`` (second signal, fatal error) cancels them at once. Results already made
still reach the sink, which flushes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import BatchrunError, FatalError, JobError, StoppedError
from ..models import Request, Result

HANDOFF = 16  # requests per batch from the producer to the workers

Producer = Callable[[MemoryObjectSendStream[list[Request]]], Awaitable[None]]
Call = Callable[[Request], Awaitable[Result]]


class Unsent(Exception):
    """Raised by the call for a request it will not send (a budget reached): the request stays
    to do, nothing is recorded, and the worker ends."""


class Pool:
    """Runs ``call`` over everything ``produce`` sends, with ``concurrency`` requests in flight.

    ``workers`` (default: ``concurrency``) may be more, when ``call`` itself holds the in-flight
    limit (the caller's adaptive gate): then a worker waiting out a retry does not keep a request
    from being sent."""

    def __init__(self, call: Call, concurrency: int, workers: int | None = None) -> None:
        self.call = call
        self.concurrency = concurrency
        self.workers = max(concurrency, workers or concurrency)
        self.fatal: FatalError | None = None
        self.error: BatchrunError | None = None  # the intake or the sink failed
        self.stopped: str | None = None  # why the run stopped taking work early
        self.in_flight = 0
        self._intake = CancelScope()
        self._work: CancelScope | None = None
        self._ready: deque[Request] = deque()  # the batch at hand
        self._taking = anyio.Lock()  # held by the one worker waiting for the next batch
        self._drained = False

    async def run(self, produce: Producer, results: MemoryObjectSendStream[Result]) -> None:
        batches = max(1, self.workers * 2 // HANDOFF)
        send, receive = anyio.create_memory_object_stream[list[Request]](batches)
        async with anyio.create_task_group() as tg:
            self._work = tg.cancel_scope
            tg.start_soon(self._feed, produce, send)
            async with receive, results:
                for _ in range(self.workers):
                    tg.start_soon(self._worker, receive.clone(), results.clone())

    def stop(self, reason: str, grace: float) -> None:
        """Take no new work; cancel what is still in flight ``grace`` seconds from now."""
        if self.stopped is None:
            self.stopped = reason
        self._intake.cancel()
        if self._work is not None:
            self._work.deadline = min(self._work.deadline, anyio.current_time() + grace)

    def cancel(self, reason: str) -> None:
        """Stop at once, in-flight requests included (they are sent again next run)."""
        if self.stopped is None:
            self.stopped = reason
        self._intake.cancel()
        if self._work is not None:
            self._work.cancel()

    async def _feed(self, produce: Producer, send: MemoryObjectSendStream[list[Request]]) -> None:
        async with send:
            with self._intake:
                try:
                    await produce(send)
                except Exception as exc:
                    self._stop_on(exc)

    def _stop_on(self, exc: Exception) -> None:
        """Once sending has begun, an error stops the run the graceful way (what finished is flushed,
        exit 4): a bad-input error (exit 2: nothing was sent) or an unexpected one (a traceback)
        would both tell the user something false."""
        if not isinstance(exc, BatchrunError) or isinstance(exc, JobError):
            exc = StoppedError.after(exc)
        self.error = self.error or exc
        self.cancel(str(exc))

    async def _next(self, receive: MemoryObjectReceiveStream[list[Request]]) -> Request | None:
        """The next request to send; None once the producer is done and every batch is taken."""
        if not self._ready:
            async with self._taking:
                if not self._ready and not self._drained:
                    try:
                        self._ready.extend(await receive.receive())
                    except anyio.EndOfStream:
                        self._drained = True
        return self._ready.popleft() if self._ready else None

    async def _worker(
        self, receive: MemoryObjectReceiveStream[list[Request]], results: MemoryObjectSendStream[Result]
    ) -> None:
        async with receive, results:
            while (request := await self._next(receive)) is not None:
                if self.stopped is not None:
                    return  # queued, not yet sent: it stays to do
                self.in_flight += 1
                try:
                    result = await self.call(request)
                except Unsent:
                    return
                except FatalError as exc:
                    self.fatal = self.fatal or exc
                    self.cancel(f"fatal answer from the endpoint: {exc}")
                    return
                except Exception as exc:  # the sink cannot write, or a bug: stop, keep what is flushed
                    self._stop_on(exc)
                    return
                finally:
                    self.in_flight -= 1
                try:
                    results.send_nowait(result)  # no task switch when the sink keeps up
                except anyio.WouldBlock:
                    await results.send(result)

    def __repr__(self) -> str:
        return (
            f"Pool(concurrency={self.concurrency}, in_flight={self.in_flight}, ready={len(self._ready)}, "
            f"stopped={self.stopped!r}, fatal={self.fatal!r})"
        )
