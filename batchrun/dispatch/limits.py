"""Request-rate limiting and the shared cool-down after a 429."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

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
