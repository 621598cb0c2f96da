"""An endpoint that refuses for ever: after ``limits.give_up_after`` of refusals with nothing
accepted, the job stops (exit 4, resumable) instead of pacing itself down and running all night.

What counts: rate-limit and overload answers (429, 503 or 529 overload shapes, ``pushback``), not
the cold start of a scaled-to-zero endpoint (``wake_timeout`` has it). The spell begins at the first
refusal after the last accepted answer and runs only while a request is being tried (sent, or
waiting out a retry or the shared pause); an idle job does not add to it. Any accepted answer ends
it.

A refusal that announces a wait longer than the spell itself (``Retry-After``, or
``x-ratelimit-reset-*`` with ``x-ratelimit-remaining-*: 0``: a daily window used up) stops the job
at once, naming that time: waiting hours is not what a batch job wants unless it raises the setting.

Pure bookkeeping over an injected clock; ``Caller`` feeds it and raises the fatal error.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .limits import duration


def refusal(
    status: int, cause: str, retry_after: float | None, window: tuple[float, str] | None
) -> tuple[str, float | None]:
    """What a refusal said, for the stop line (``HTTP 429: rate_limit_exceeded: ..., x-ratelimit-
    remaining-tokens 0, reset 6m0s``), and the longest wait it announced, if any."""
    said = f"HTTP {status}: {cause[:120]}"
    if window:
        said += f", {window[1]}"
    elif retry_after:
        said += f", Retry-After {duration(retry_after)}"
    waits = [wait for wait in (retry_after, window[0] if window else None) if wait]
    return said, max(waits) if waits else None


class RefusalSpell:
    def __init__(self, give_up_after_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.give_up_after_s = give_up_after_s or None  # None (or 0): never gives up
        self.trying = 0  # requests being tried now
        self.refusals = 0  # in this spell
        self._clock = clock
        self._counted = 0.0  # seconds of the spell before ``_since``
        self._since: float | None = None  # when the stretch being counted now began

    @property
    def refusing(self) -> bool:
        return self.refusals > 0

    def begin(self) -> None:
        """A request is being tried (from taking it until its result)."""
        self._settle()
        self.trying += 1
        self._resume()

    def end(self) -> None:
        self._settle()
        self.trying -= 1
        self._resume()

    def accepted(self) -> None:
        """An answer the endpoint took: the spell is over."""
        self.refusals = 0
        self._counted = 0.0
        self._since = None

    def seconds(self) -> float:
        """How long the endpoint has refused while requests were tried."""
        running = self._clock() - self._since if self._since is not None else 0.0
        return self._counted + running

    def refused(self, cause: str, announced_s: float | None = None) -> str | None:
        """Count a refusal; the line to stop the job with once the spell is long enough, or at
        once when the answer announced a wait longer than the whole spell allows."""
        self._settle()
        self.refusals += 1
        self._resume()
        limit = self.give_up_after_s
        if limit is None:
            return None
        if announced_s is not None and announced_s > limit:
            return f"asks to wait {duration(announced_s)} (limits.give_up_after is {duration(limit)}): {cause}"
        spell = self.seconds()
        if spell >= limit:
            return f"refused every request for {duration(spell)} ({cause})"
        return None

    def _settle(self) -> None:
        if self._since is not None:
            now = self._clock()
            self._counted += now - self._since
            self._since = None

    def _resume(self) -> None:
        if self.refusing and self.trying > 0:
            self._since = self._clock()

    def __repr__(self) -> str:
        return (
            f"RefusalSpell(seconds={self.seconds():.1f}, refusals={self.refusals}, trying={self.trying}, "
            f"give_up_after_s={self.give_up_after_s})"
        )
