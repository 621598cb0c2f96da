"""Is the endpoint there at all? A wrong URL (404 on every request), a name that does not resolve
or a refused connection would otherwise fail a million rows one by one: after ``threshold``
such failures in a row, with no success for ``window_s`` (or none yet in this run), the job stops
with a fatal error naming the cause. A server restarting for a few seconds does not trip it."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import FatalError, RequestError


class EndpointHealth:
    def __init__(
        self, threshold: int = 10, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.streak = 0
        self._clock = clock
        self._last_ok: float | None = None

    def succeeded(self) -> None:
        self.streak = 0
        self._last_ok = self._clock()

    def answered(self) -> None:
        """Any other answer (a 500, a 429) proves the endpoint is there."""
        self.streak = 0

    def failed(self, error: RequestError) -> FatalError | None:
        """Count a failure that suggests a wrong or missing endpoint; the fatal error once it is clear."""
        self.streak += 1
        if self.streak < self.threshold:
            return None
        if self._last_ok is not None and self._clock() - self._last_ok < self.window_s:
            return None
        since = "none succeeded yet" if self._last_ok is None else f"none succeeded for {self.window_s:g}s"
        return FatalError(f"{self.streak} requests in a row failed ({since}); the last: {error.message}")

    def __repr__(self) -> str:
        return f"EndpointHealth(streak={self.streak}, threshold={self.threshold})"
