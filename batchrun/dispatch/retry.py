"""The retry policy: which failures to retry, how long to wait, when to give up.

Only ``RetryableError`` is retried (tenacity's default would retry our own bugs too). The wait is
exponential with full jitter, unless the server said how long (``Retry-After``, HF's
``estimated_time``), which is honoured up to ``max_wait``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import RetryableError
from .limits import Sleep

if TYPE_CHECKING:
    import tenacity
    from tenacity import RetryCallState


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    initial_wait: float = 1.0
    max_wait: float = 120.0

    def wait_after(self, exc: BaseException | None, attempts: int) -> float:
        """Seconds to wait after ``attempts`` attempts, the last of which raised ``exc``."""
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait)
        cap = min(60.0, self.max_wait, self.initial_wait * 2 ** (attempts - 1))
        return random.uniform(0, cap)  # full jitter: retries of many workers spread out

    def retrying(self, sleep: Sleep, already: int = 0) -> tenacity.AsyncRetrying:
        """The attempts after the first ``already`` (the first one is made without tenacity: it
        succeeds almost always, and entering tenacity costs ~20 µs a request). tenacity is
        imported here, at the first retry, not at every start."""
        import tenacity

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self.wait_after(exc, state.attempt_number + already)

        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(RetryableError),
            stop=tenacity.stop_after_attempt(self.max_attempts - already),
            wait=wait,
            sleep=sleep,
            reraise=True,
        )
