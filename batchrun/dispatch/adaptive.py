"""Adaptive request rate (AIMD): halve the rate when the endpoint answers 429, raise it slowly
while requests succeed, never above the job's ``requests_per_minute``.

Without a configured rate the first 429 sets one from the offered load of the last second;
once the rate climbs well past what is actually sent, the limiter steps aside again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .limits import SmoothRate

MIN_PER_MINUTE = 6.0  # one request every 10 s: the floor of any cut
CUT = 0.5
RAISE_FRACTION = 0.05  # of the rate at the last cut, per second of success
HOLD_S = 2.0  # no raise this soon after a cut
SETTLE_S = 1.0  # 429s for requests sent this soon after a cut do not cut again
WINDOW_S = 2.0  # the offered load is measured over this long
MIN_SPAN_S = 0.05


class AdaptiveRate:
    def __init__(self, ceiling_per_minute: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = ceiling_per_minute
        self.per_minute = ceiling_per_minute  # None: unlimited
        self.cuts = 0
        self._clock = clock
        self._limiter: SmoothRate | None = SmoothRate(ceiling_per_minute) if ceiling_per_minute else None
        self._last_cut = -1e9
        self._last_raise = clock()
        self._step = 0.0
        self._sent: deque[float] = deque()  # send times within the last WINDOW_S

    async def acquire(self) -> float:
        """Wait for a slot; returns the send time, to tell later which rate a 429 answered."""
        while (limiter := self._limiter) is not None:
            await limiter.acquire()
            if limiter is self._limiter:
                break  # else the rate changed while we waited: queue again at the new one
        now = self._clock()
        self._sent.append(now)
        while now - self._sent[0] > WINDOW_S:
            self._sent.popleft()
        return now

    def offered_per_minute(self) -> float:
        """Requests sent per minute over the last two seconds (or the time since the first)."""
        if not self._sent:
            return 0.0
        span = max(self._clock() - self._sent[0], MIN_SPAN_S)
        return 60.0 * len(self._sent) / span

    def on_throttled(self, sent_at: float) -> bool:
        """A 429 for a request sent at ``sent_at``: cut, unless that request left before the last
        cut had time to show (a burst of 429s from many workers is one cut, not thirty: the server
        still counts what came before the cut for a while). True when it cut."""
        now = self._clock()
        if sent_at <= self._last_cut + SETTLE_S:
            return False
        current = self.per_minute if self.per_minute is not None else self.offered_per_minute()
        self._set(max(MIN_PER_MINUTE, current * CUT))
        self._step = max(MIN_PER_MINUTE, (self.per_minute or 0) * RAISE_FRACTION)
        self._last_cut = now
        self.cuts += 1
        return True

    def on_success(self) -> None:
        if self.per_minute is None or self.per_minute == self.ceiling:
            return
        now = self._clock()
        if now - self._last_cut < HOLD_S or now - self._last_raise < 1.0:
            return
        self._last_raise = now
        raised = self.per_minute + self._step
        if self.ceiling is not None:
            self._set(min(self.ceiling, raised))
        elif raised > 2 * max(self.offered_per_minute(), MIN_PER_MINUTE):
            self._set(None)  # the limit no longer binds: step aside
        else:
            self._set(raised)

    def _set(self, per_minute: float | None) -> None:
        if per_minute != self.per_minute:
            self.per_minute = per_minute
            self._limiter = SmoothRate(per_minute) if per_minute else None

    def describe(self) -> str:
        if not self.cuts:
            return ""
        rate = "unlimited" if self.per_minute is None else f"{self.per_minute:.0f}/min"
        return f"adaptive rate {rate} after {self.cuts} cut(s) on 429"

    def __repr__(self) -> str:
        return f"AdaptiveRate(per_minute={self.per_minute}, ceiling={self.ceiling}, cuts={self.cuts})"
