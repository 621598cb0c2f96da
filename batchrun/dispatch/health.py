"""Is the endpoint there, and does it take what the job sends? Two failures would otherwise fail a
million rows one by one, each paid for or waited on:

- no endpoint at all (a wrong URL: 404 on every request; a name that does not resolve; a refused
  connection): after ``threshold`` such failures in a row, with no success for ``window_s`` (or none
  yet in this run), the job stops with a fatal error naming the cause. A server restarting for a few
  seconds does not trip it.
- a job the endpoint can never answer (every request a 400 with the same message; every answer
  missing the ``response_path``): after ``SAME_PERMANENT_FAILURES`` permanent failures in a row that
  fail the same way, with no success yet in this run, the job stops, naming the cause with an example.
  Once any request has succeeded the job is known to work, and permanent failures are the rows' own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from ..errors import FatalError, PermanentError, RequestError

#: Identical permanent failures in a row, before any success, that stop the job: enough that a few
#: bad rows at the head of a table do not, few enough that a wrong job costs 20 requests, not all.
SAME_PERMANENT_FAILURES = 20

_NUMBERS = re.compile(r"\d+")


def failure_signature(error: RequestError) -> tuple[str, int | None, str]:
    """What a failure says, without what differs between rows: the kind, the status, and the reason
    (or the message), with numbers (token counts, lengths, ids) and spacing made alike."""
    text = _NUMBERS.sub("#", " ".join((error.reason or error.message).split()).lower())
    return type(error).__name__, error.http_status, text[:200]


class EndpointHealth:
    def __init__(
        self,
        threshold: int = 10,
        window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        same_permanent: int = SAME_PERMANENT_FAILURES,
    ) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.streak = 0
        self.same_permanent = same_permanent
        self.same_streak = 0
        self._signature: tuple[str, int | None, str] | None = None
        self._clock = clock
        self._last_ok: float | None = None

    def succeeded(self) -> None:
        self.streak = 0
        self._last_ok = self._clock()

    def failed(self, error: RequestError) -> FatalError | None:
        """Count a failed attempt; the fatal error once the failures show the endpoint or the job is wrong."""
        if not error.unreachable:
            self.streak = 0  # any other answer (a 500, a 429) proves the endpoint is there
            return self._permanent(error) if isinstance(error, PermanentError) else None
        self.streak += 1
        if self.streak < self.threshold:
            return None
        if self._last_ok is not None and self._clock() - self._last_ok < self.window_s:
            return None
        since = "none succeeded yet" if self._last_ok is None else f"none succeeded for {self.window_s:g}s"
        return FatalError(f"{self.streak} requests in a row failed ({since}); the last: {error.message}")

    def _permanent(self, error: PermanentError) -> FatalError | None:
        if self._last_ok is not None:
            return None
        signature = failure_signature(error)
        if signature != self._signature:
            self._signature, self.same_streak = signature, 0
        self.same_streak += 1
        if self.same_streak < self.same_permanent:
            return None
        return FatalError(
            f"{self.same_streak} requests in a row failed the same way and none succeeded "
            f"(stopped before sending the rest): {error.message}",
            reason=error.reason or error.message,
        )

    def __repr__(self) -> str:
        return (
            f"EndpointHealth(streak={self.streak}, threshold={self.threshold}, "
            f"same_permanent_streak={self.same_streak})"
        )
