"""The adaptive request rate, found from what the endpoint accepts, never above what the job
allows. (The number of requests in flight adapts too: ``inflight``.)

After sustained 429s the next send rate is the rate of *successful answers* over the
last few seconds (what the endpoint actually accepted), not a fraction of the ceiling or of the
offered load: halving from thousands a second takes nine cuts, and a gateway that counts refused
requests in its window refuses all of them meanwhile. From there it rises additively while
requests succeed, never above ``requests_per_minute``. A few 429s among many successes are not a
limit (a shared endpoint's other users, a blip): they cost the refused request its own wait, not a
lasting cut nor a pause of every worker. Without a configured rate, once the rate climbs well past
what is actually sent, the limiter steps aside again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .limits import Pacer, SmoothRate

MIN_PER_MINUTE = 6.0  # one request every 10 s: the floor of any cut
CUT = 0.5  # when nothing was accepted lately to measure
RAISE_FRACTION = 0.05  # of the rate at the last cut, per second of success
HOLD_S = 2.0  # no raise this soon after a cut
SETTLE_S = 1.0  # 429s for requests sent this soon after a cut do not cut again
WINDOW_S = 2.0  # the offered load is measured over this long
ACCEPTED_WINDOW_S = 3.0  # answers (accepted and refused) are counted over this long
MIN_SPAN_S = 0.05
#: Refusals are sustained, so a limit, when at least this share of the recent answers are 429s
#: (and at least ``SUSTAINED_MIN`` of them), or when nothing succeeded lately. 2 % of 429s from a
#: server with room to spare stays well below; a rate window that is exceeded refuses far more.
SUSTAINED_SHARE = 0.1
SUSTAINED_MIN = 3


class AdaptiveRate:
    def __init__(
        self,
        ceiling_per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
        shared: Pacer | None = None,
        *,
        share: bool = False,
    ) -> None:
        self.ceiling = ceiling_per_minute
        self.shared = shared  # a job-wide rate (--ray) held after this process's own
        self.share = share  # one shard's part of the limit (``SmoothRate``'s ``share``)
        self.per_minute = ceiling_per_minute  # None: unlimited
        self.cuts = 0
        self.windows = 0  # times the rate was set for a restart after a window used up
        self.throttled = 0  # 429s seen, sustained or not
        self._clock = clock
        self._limiter: SmoothRate | None = SmoothRate(ceiling_per_minute, share=share) if ceiling_per_minute else None
        self._last_cut = -1e9
        self._last_raise = clock()
        self._started = clock()
        self._step = 0.0
        self._sent: deque[float] = deque()  # send times within the last WINDOW_S
        self._ok: deque[float] = deque()  # successful answers within the last ACCEPTED_WINDOW_S
        self._refused: deque[float] = deque()  # 429s within the last ACCEPTED_WINDOW_S
        self._why = ""

    async def acquire(self) -> float:
        """Wait for a slot; returns the send time, to tell later which rate a 429 answered."""
        while (limiter := self._limiter) is not None:
            await limiter.acquire()
            if limiter is self._limiter:
                break  # else the rate changed while we waited: queue again at the new one
        if self.shared is not None:
            await self.shared.acquire()
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

    def accepted_per_minute(self) -> float | None:
        """Successful answers per minute over the last three seconds (at least one second counted);
        None when none came."""
        now = self._trim()
        if not self._ok:
            return None
        span = max(1.0, min(ACCEPTED_WINDOW_S, now - self._started))
        return 60.0 * len(self._ok) / span

    def sustained(self) -> bool:
        """Are the recent 429s a limit (many, or nothing gets through), not the odd one?"""
        self._trim()
        refused, ok = len(self._refused), len(self._ok)
        if not refused:
            return False
        return ok == 0 or (refused >= SUSTAINED_MIN and refused >= SUSTAINED_SHARE * (refused + ok))

    def on_throttled(self, sent_at: float) -> bool:
        """A 429 for a request sent at ``sent_at``. Counted; when the refusals are sustained, the
        rate is cut to what the endpoint accepted lately, unless that request left before the last
        cut had time to show (a burst of 429s from many workers is one cut, not thirty: the server
        still counts what came before the cut for a while). True when it cut."""
        now = self._clock()
        self.throttled += 1
        self._refused.append(now)
        if not self.sustained() or sent_at <= self._last_cut + SETTLE_S:
            return False
        current = self.per_minute if self.per_minute is not None else self.offered_per_minute()
        accepted = self.accepted_per_minute()
        if accepted is None:
            target, self._why = current * CUT, "nothing accepted lately"
        else:
            target, self._why = min(current, accepted), f"accepted {accepted / 60:.1f}/s"
        self._set(max(MIN_PER_MINUTE, target))
        self._step = max(MIN_PER_MINUTE, (self.per_minute or 0) * RAISE_FRACTION)
        self._last_cut = now
        self.cuts += 1
        return True

    def on_exhausted(self, reset_s: float, workers: int) -> bool:
        """The server said its window is used up (``x-ratelimit-remaining-*: 0``) and resets in
        ``reset_s``: every worker waits for it (the cool-down), and this sets the pace they leave at,
        so they do not all send at the reset instant, a burst the new window refuses again. The pace
        is what the endpoint accepted lately (answer the exhausting one first), or, when nothing was,
        the workers spread over the reset time. Never raises the rate; a configured rate that is
        slower already spaces them. True when it changed the rate."""
        accepted = self.accepted_per_minute()
        target = max(MIN_PER_MINUTE, accepted if accepted is not None else 60.0 * workers / max(reset_s, 1.0))
        if self.per_minute is not None and self.per_minute <= target:
            return False
        self._set(target)
        self._step = max(MIN_PER_MINUTE, target * RAISE_FRACTION)
        self._last_cut = self._clock()
        self.windows += 1
        self._why = "window used up, " + (f"accepted {accepted / 60:.1f}/s" if accepted else "nothing accepted")
        return True

    def on_success(self) -> None:
        now = self._clock()
        self._ok.append(now)
        if self.per_minute is None or self.per_minute == self.ceiling:
            return
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

    def _trim(self) -> float:
        now = self._clock()
        for times in (self._ok, self._refused):
            while times and now - times[0] > ACCEPTED_WINDOW_S:
                times.popleft()
        return now

    def _set(self, per_minute: float | None) -> None:
        if per_minute != self.per_minute:
            self.per_minute = per_minute
            self._limiter = SmoothRate(per_minute, share=self.share) if per_minute else None

    def describe(self) -> str:
        if not (self.cuts or self.windows):
            return ""
        rate = "unlimited" if self.per_minute is None else f"{self.per_minute:.0f}/min"
        why = f", last on {self._why}" if self._why else ""
        causes = [f"{self.cuts} cut(s) on 429"] if self.cuts else []
        causes += [f"{self.windows} window(s) used up"] if self.windows else []
        return f"adaptive rate {rate} after {' and '.join(causes)}{why}"

    def __repr__(self) -> str:
        return (
            f"AdaptiveRate(per_minute={self.per_minute}, ceiling={self.ceiling}, cuts={self.cuts}, "
            f"windows={self.windows})"
        )
