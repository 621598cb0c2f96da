"""Request-rate limiting and the shared cool-down after a 429."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
from aiolimiter import AsyncLimiter

Sleep = Callable[[float], Awaitable[None]]


class SmoothRate:
    """At most ``per_minute`` requests in any 60-second window, evenly spaced, never in bursts.

    A schedule of reserved send times (GCRA, "virtual scheduling"): each request takes the next
    free slot, ``60 / per_minute`` seconds after the previous one, and sleeps until then. Unused
    slots are not banked, so an idle spell is never followed by a burst, and a worker that wakes
    late does not cost the others their slots. Not aiolimiter's leaky bucket, which either bursts
    (a big bucket) or loses a slot on every late wake-up (a bucket of one: 2,850 of 3,000 a minute,
    ``bench/rate.py``); it paces ``tokens_per_minute`` only.

    A stalled event loop wakes several sleepers at once, their slots gone by. They leave half a
    slot apart, not in a bunch, and so catch up at twice the rate; a log of the last sends is the
    hard cap on that: never more than ``per_minute / 60 + 1`` sends in one second (51 at 3,000 a
    minute). ``share`` (one of N shards' limiters, which add up): the cap is what the schedule
    itself puts in a second (5 at 300 a minute), so that N shards' extra sends, which a stall of
    the whole machine makes them take in the same second, cannot add up to N over the limit."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic, *, share: bool = False) -> None:
        self.per_minute = per_minute
        # one slot less than asked: the first request of a window may fall on its very start
        self.interval = 60.0 / max(per_minute - 1, per_minute / 2)
        self._clock = clock
        self._next = clock()
        cap = max(1, math.ceil(1 / self.interval - 1e-9)) if share else int(per_minute / 60) + 1
        self._sent: deque[float] = deque([-math.inf], maxlen=cap)

    async def acquire(self) -> None:
        sent = self._sent
        now = self._clock()
        slot = max(self._next, now)
        self._next = slot + self.interval
        if slot > now:
            await anyio.sleep(slot - now)
            now = self._clock()
        while True:
            # half a slot after the previous send, and the second's cap: checked and taken with no
            # await in between, so every waiter sees the same log
            wait = sent[-1] + self.interval / 2 - now
            if len(sent) == sent.maxlen:
                wait = max(wait, sent[0] + 1.0 - now)
            if wait <= 0:
                sent.append(now)
                return
            await anyio.sleep(wait)
            now = self._clock()

    def __repr__(self) -> str:
        return f"SmoothRate(per_minute={self.per_minute:g})"


class Pacer(Protocol):
    """What holds a request until its send slot: ``SmoothRate`` in one process, ``SlotBatches``
    when a whole job's shards share one rate (``--ray``)."""

    async def acquire(self) -> None: ...


class TokenMeter(Protocol):
    """What holds a request until its tokens are free: ``TokenBudget`` in one process,
    ``TokenGrants`` when a whole job's shards share one ``tokens_per_minute`` (``--ray``)."""

    async def take(self, tokens: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Shared:
    """An endpoint's job-wide limits (``--ray``), used in place of this process's share of them."""

    rate: Pacer | None = None
    tokens: TokenMeter | None = None


class SlotSchedule:
    """The job-wide schedule behind ``SlotBatches`` (kept by one process, e.g. a Ray actor): hands
    out evenly spaced send slots, ``count`` at a time, as delays from now. Unused slots are not
    banked, as in ``SmoothRate``; slots handed to a process that dies are simply lost."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.interval = 60.0 / max(per_minute - 1, per_minute / 2)  # as SmoothRate: one slot spare
        self._clock = clock
        self._next = clock()

    def take(self, count: int) -> list[float]:
        now = self._clock()
        first = max(self._next, now)
        self._next = first + count * self.interval
        return [first + i * self.interval - now for i in range(count)]

    def grant(self, amount: float) -> float:
        """``amount`` units (tokens) at once: the delay from now until they may be spent."""
        now = self._clock()
        first = max(self._next, now)
        self._next = first + amount * self.interval
        return first - now


STALE_S = 0.02


class SlotBatches:
    """A ``Pacer`` that draws send slots from a shared ``SlotSchedule`` a batch at a time (one call
    to the schedule's keeper per batch, not per request). A slot still unused one interval (at least
    ``STALE_S``) after its time is dropped: a process that was busy must not send a stale batch in a
    burst."""

    def __init__(
        self,
        fetch: Callable[[int], Awaitable[Sequence[float]]],
        batch: int,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batch = batch
        self.fetched = 0
        self._fetch = fetch
        # a late wake-up of the event loop (a few ms under load) keeps its slot, even at 1 ms a slot
        self._stale = max(interval, STALE_S)
        self._clock = clock
        self._slots: deque[float] = deque()
        self._lock: anyio.Lock | None = None

    async def acquire(self) -> None:
        while True:
            now = self._clock()
            while self._slots and self._slots[0] < now - self._stale:
                self._slots.popleft()
            if self._slots:
                wait = self._slots.popleft() - now
                if wait > 0:
                    await anyio.sleep(wait)
                return
            self._lock = self._lock or anyio.Lock()
            async with self._lock:
                if not self._slots:
                    delays = await self._fetch(self.batch)
                    received = self._clock()  # later than the keeper's now: slots only move later
                    self._slots.extend(received + delay for delay in delays)
                    self.fetched += len(delays)


class TokenGrants:
    """A ``TokenMeter`` that draws tokens from a shared ``SlotSchedule`` a chunk at a time (at least
    ``chunk``), waits until the chunk is granted, then spends it; requests take tokens in turn. Credit
    left over is at most one chunk, so the job goes over its rate by at most one chunk."""

    def __init__(self, fetch: Callable[[float], Awaitable[float]], chunk: float) -> None:
        self.chunk = chunk
        self._fetch = fetch
        self._credit = 0.0
        self._lock: anyio.Lock | None = None

    async def take(self, tokens: float) -> None:
        self._lock = self._lock or anyio.Lock()
        async with self._lock:
            while self._credit < tokens:
                amount = max(self.chunk, tokens - self._credit)
                delay = await self._fetch(amount)
                if delay > 0:
                    await anyio.sleep(delay)
                self._credit += amount
            self._credit -= tokens


class TokenBudget:
    """``tokens_per_minute``: each request takes its estimated tokens (prompt bytes / 4 plus the
    completion cap) from a small bucket that refills at the job's rate."""

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.capacity = max(1.0, per_minute / 60)
        rate = max(per_minute - self.capacity, per_minute / 2)
        self._limiter = AsyncLimiter(self.capacity, self.capacity * 60 / rate)

    async def take(self, tokens: float) -> None:
        """Wait for ``tokens``; a request bigger than the bucket takes all of it."""
        remaining = tokens
        while remaining > 0:
            amount = min(remaining, self.capacity)
            await self._limiter.acquire(amount)
            remaining -= amount


def duration(seconds: float) -> str:
    """``358.2`` -> ``"5m58s"``; under a minute, ``"1.5s"``."""
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


class CoolDown:
    """When the endpoint says "too many requests, retry after t", every worker waits until then,
    not only the one that was told; a hundred workers must not hammer an overloaded server."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0
        self.pauses = 0
        self.reason = ""  # why the pause now running was taken, for the progress line

    def pause(self, seconds: float, reason: str = "") -> bool:
        """Pause every worker for ``seconds`` (from now); True when that extends the pause."""
        until = self._clock() + seconds
        if until > self._until:
            self._until = until
            self.pauses += 1
            self.reason = reason
            return True
        return False

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    def describe(self) -> str:
        """ "paused 5m58s: x-ratelimit-remaining-tokens 0, reset 6m0s" while paused, else ""."""
        left = self.remaining()
        if left <= 0:
            return ""
        return f"paused {duration(left)}: {self.reason}" if self.reason else f"paused {duration(left)}"

    async def wait(self, sleep: Sleep) -> None:
        """Sleep out the pause; again if another 429 extended it meanwhile."""
        while (delay := self._until - self._clock()) > 0:
            until = self._until
            await sleep(delay)
            if self._until == until:
                return

    def __repr__(self) -> str:
        return f"CoolDown(remaining={self.remaining():.2f}s, pauses={self.pauses})"
