"""Request-rate limiting and the shared cool-down after a 429."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from aiolimiter import AsyncLimiter

Sleep = Callable[[float], Awaitable[None]]


def make_limiter(requests_per_minute: float | None) -> AsyncLimiter | None:
    """A smooth limiter: 600/min becomes 10 per second, not a burst of 600 at once."""
    if requests_per_minute is None:
        return None
    per_second = requests_per_minute / 60
    if per_second >= 1:
        return AsyncLimiter(per_second, 1)
    return AsyncLimiter(1, 60 / requests_per_minute)


class CoolDown:
    """When the endpoint says "too many requests, retry after t", every worker waits until then,
    not only the one that was told; a hundred workers must not hammer an overloaded server."""

    def __init__(self, clock: Callable[[], float] = anyio.current_time) -> None:
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
