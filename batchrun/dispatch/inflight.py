"""The in-flight limit, found from what the endpoint holds, never above ``limits.concurrency``.
Apart from the adaptive rate (``adaptive``): a rate is passed once before each send, a place in
flight is held for a request's whole life (its retries' waits aside).

An overload answer (TGI's ``Model is overloaded``: too many in flight) lowers the in-flight limit
to at most what was still in flight when it came back (the server was holding that many) and by a
tenth; each success raises it by ``0.5 / limit`` (one every two rounds of requests),
never above ``limits.concurrency``. Workers pass a gate (an ``anyio.CapacityLimiter`` whose size follows
the limit) before sending; nobody polls.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import TracebackType

import anyio

#: On an overload answer the limit goes to what else was in flight (what the server held), and at
#: least this much lower once per round; each success adds ``CONCURRENCY_RAISE / limit`` (one more in
#: flight every two rounds). Against a server of 8 it sits at 8, trying 9 about once in 17 answers:
#: a quarter off and one per round cost a fifth of the capacity (in flight 6.75..8), half a round
#: per step doubled the refusals.
CONCURRENCY_CUT = 0.9
CONCURRENCY_RAISE = 0.5


class AdaptiveConcurrency:
    """The in-flight limit (AIMD on overload answers); ``async with limit.slot()`` around one exchange."""

    def __init__(self, ceiling: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.cuts = 0
        self.lowest = ceiling
        self._clock = clock
        self._gate: anyio.CapacityLimiter | None = None
        self._last_cut = -1e9
        self.in_flight = 0

    @property
    def gate(self) -> anyio.CapacityLimiter:
        if self._gate is None:  # made inside the event loop, at the first request
            self._gate = anyio.CapacityLimiter(max(1, int(self.limit)))
        return self._gate

    def slot(self) -> _Slot:
        """``async with limit.slot() as sent_at:`` around one exchange: waits for room; ``sent_at``
        tells later which limit an overload answer was for."""
        return _Slot(self)

    def on_overload(self, sent_at: float) -> bool:
        """The endpoint refused a request sent at ``sent_at`` for having too many in flight. The
        others still in flight are what it holds: the limit goes to at most that, and, once per
        round (not for every refusal of one burst), down by a tenth. True when it changed."""
        holding = max(1, self.in_flight - 1)  # the refused request still holds its slot
        target = min(self.limit, float(holding))
        if sent_at > self._last_cut:
            target = min(target, self.limit * CONCURRENCY_CUT)
            self._last_cut = self._clock()
            self.cuts += 1
        target = max(1.0, target)
        if target >= self.limit:
            return False
        self.limit = target
        self.lowest = min(self.lowest, int(target))
        self._resize()
        return True

    def on_success(self) -> None:
        if self.limit < self.ceiling:
            self.limit = min(float(self.ceiling), self.limit + CONCURRENCY_RAISE / self.limit)
            self._resize()

    def _resize(self) -> None:
        size = max(1, int(self.limit))
        if self._gate is not None and self._gate.total_tokens != size:
            self._gate.total_tokens = size

    def describe(self) -> str:
        if not self.cuts:
            return ""
        return f"in flight at most {int(self.limit)} of {self.ceiling} (lowered {self.cuts}x on overload answers)"

    def __repr__(self) -> str:
        return f"AdaptiveConcurrency(limit={self.limit:.2f}, ceiling={self.ceiling}, cuts={self.cuts})"


class _Slot:
    """One request's place in flight, from its first send until its result is recorded, given up
    while it waits out a retry. Its own borrower of the gate: a task may hold only one token of a
    ``CapacityLimiter`` as itself."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: AdaptiveConcurrency) -> None:
        self.limit = limit
        self.held = False

    async def __aenter__(self) -> float:
        await self._take()
        return self.limit._clock()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._give()

    async def away(self, sleep: Callable[[float], Awaitable[None]], seconds: float) -> None:
        """Sleep ``seconds`` without the place (a retry's wait), then take it back."""
        self._give()
        await sleep(seconds)
        await self._take()

    async def _take(self) -> None:
        gate = self.limit.gate
        try:  # no task switch when there is room (acquire() always yields once)
            gate.acquire_on_behalf_of_nowait(self)
        except anyio.WouldBlock:
            await gate.acquire_on_behalf_of(self)
        self.held = True
        self.limit.in_flight += 1

    def _give(self) -> None:
        if self.held:
            self.held = False
            self.limit.in_flight -= 1
            self.limit.gate.release_on_behalf_of(self)


#: The place in flight of the request this task is working on (set by ``Caller.slot``).
_SLOT: ContextVar[_Slot] = ContextVar("batchrun_slot")
