"""Request-rate limiting and the shared cool-down after a 429."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiolimiter import AsyncLimiter

Sleep = Callable[[float], Awaitable[None]]


def smooth_limiter(per_minute: float) -> AsyncLimiter:
    """At most ``per_minute`` requests in any 60-second window, and no burst: the bucket holds
    ~2% of a second's share (one request at 3000/min), so 3000/min is 50 a second, never 100.

    (``AsyncLimiter(3000, 60)`` would let 3000 out at once; even ``AsyncLimiter(50, 1)`` lets
    nearly 100 into one second: a full bucket plus what drips in.)"""
    burst = max(1.0, per_minute / 60 / 50)
    rate_per_minute = max(per_minute - burst, per_minute / 2)
    return AsyncLimiter(burst, burst * 60 / rate_per_minute)


class TokenBudget:
    """``tokens_per_minute``: each request takes its estimated tokens (prompt bytes / 4 plus the
    completion cap) from a small bucket that refills at the job's rate."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
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


class CoolDown:
    """When the endpoint says "too many requests, retry after t", every worker waits until then,
    not only the one that was told; a hundred workers must not hammer an overloaded server."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self._until:
            self._until = until
            self.pauses += 1

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    async def wait(self, sleep: Sleep) -> None:
        """Sleep out the pause; again if another 429 extended it meanwhile."""
        while (delay := self._until - self._clock()) > 0:
            until = self._until
            await sleep(delay)
            if self._until == until:
                return

    def __repr__(self) -> str:
        return f"CoolDown(remaining={self.remaining():.2f}s, pauses={self.pauses})"
