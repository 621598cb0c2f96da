"""The retry policy: which failures to retry, how long to wait, when to give up.

Only ``RetryableError`` is retried (tenacity's default would retry our own bugs too). The wait is
exponential with full jitter, unless the server said how long (``Retry-After``, HF's
``estimated_time``), which is honoured up to ``max_wait``.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity
from tenacity import RetryCallState

from ..errors import RetryableError
from .limits import Sleep


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    initial_wait: float = 1.0
    max_wait: float = 120.0

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait)
        backoff = tenacity.wait_random_exponential(multiplier=self.initial_wait, max=min(60.0, self.max_wait))
        return float(backoff(state))

    def retrying(self, sleep: Sleep) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(RetryableError),
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self.wait,
            sleep=sleep,
            reraise=True,
        )
