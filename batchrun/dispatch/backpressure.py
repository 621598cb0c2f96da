"""What a refusal does to the run's limits: an exhausted quota stops the job, too many in flight
lowers the in-flight limit, a sustained rate limit cuts the rate and pauses every worker, a long
spell of refusals stops the job. Apart from reading the refusal (``pushback``, pure) and from
sending (``exchange``): this is where the answer changes the shared state."""

from __future__ import annotations

import logging
import time

from ..errors import FatalError, RequestError
from ..log import event
from ..models import Request
from .adaptive import AdaptiveRate
from .inflight import AdaptiveConcurrency
from .limits import CoolDown, duration
from .pushback import Kind, read_pushback
from .redact import redact
from .retry import RetryPolicy
from .stall import RefusalSpell, refusal
from .wake import ColdStart, Waker

SAY_EVERY_S = 10.0  # the in-flight limit's changes are logged at most this often


class BackPressure:
    """The ``Caller``'s limits, as the endpoint's refusals move them. Its state is the ``Caller``'s,
    set in ``Caller.__init__``."""

    policy: RetryPolicy
    rate: AdaptiveRate
    concurrency: AdaptiveConcurrency | None
    cooldown: CoolDown
    stall: RefusalSpell
    secrets: tuple[str, ...]
    waker: Waker | None
    _said_overload: float

    def _pushed_back(
        self,
        request: Request,
        error: RequestError,
        content: bytes,
        sent_at: float,
        window: tuple[float, str] | None = None,
    ) -> None:
        """Act on what a refusal says about the endpoint's limits (see ``pushback``): an exhausted
        quota stops the job; too many in flight lowers the in-flight limit; a rate limit, when
        sustained, cuts the rate and pauses every worker for its ``Retry-After``. A rate limit or
        an overload also adds to the refusal spell (``stall``), which stops the job once long."""
        status = error.http_status or 0
        pushback = read_pushback(status, content, starting=self.waker is not None and not self.waker.warm)
        if pushback is None:
            if status == 503 and error.retry_after:
                self._pause(error.retry_after, f"HTTP 503, Retry-After {error.retry_after:g}s")
            return
        if pushback.kind is Kind.COLD:
            raise ColdStart(error.retry_after)
        if pushback.kind is Kind.QUOTA:
            raise FatalError(
                f"quota exhausted (HTTP {status}): {redact(pushback.cause, self.secrets)}",
                http_status=status,
                reason=pushback.cause,
            ) from None
        if pushback.kind is Kind.OVERLOAD:
            if self.concurrency is not None and self.concurrency.on_overload(sent_at):
                now = time.monotonic()
                if now - self._said_overload >= SAY_EVERY_S:  # one burst lowers it 40 times: said once
                    self._said_overload = now
                    event(f"overloaded answer from the endpoint: {self.concurrency.describe()}", level=logging.WARNING)
            self._refused(status, pushback.cause, error.retry_after, window, announces=True)
            if error.retry_after and status == 503:
                self._pause(error.retry_after, "overloaded (HTTP 503)")
            return
        if self.rate.on_throttled(sent_at):
            event(f"429 from the endpoint: {self.rate.describe()}", level=logging.WARNING)
        # one odd 429 among answers accepted (a shared endpoint's blip) does not speak for the window
        self._refused(status, pushback.cause, error.retry_after, window, announces=self.rate.sustained())
        if error.retry_after and self.rate.sustained():
            self._pause(error.retry_after, f"HTTP {status}, Retry-After {error.retry_after:g}s")

    def _refused(
        self, status: int, cause: str, retry_after: float | None, window: tuple[float, str] | None, *, announces: bool
    ) -> None:
        """Add a refusal to the spell; stop the job when it says so."""
        said, wait = refusal(status, redact(cause, self.secrets), retry_after, window)
        if line := self.stall.refused(said, wait if announces else None):
            raise FatalError(line, http_status=status, reason=cause) from None

    def _restart_after(self, window: tuple[float, str]) -> None:
        """A window used up: every worker waits for its reset, then they leave one at a time at
        the adaptive rate, not together."""
        self._pause(*window)
        workers = int(self.concurrency.limit) if self.concurrency is not None else 1
        self.rate.on_exhausted(min(window[0], self.policy.max_wait), workers)

    def _pause(self, seconds: float, reason: str) -> None:
        """The shared cool-down (at most ``max_retry_wait_s``); a long one is said once in the log,
        with its reason."""
        seconds = min(seconds, self.policy.max_wait)
        if self.cooldown.pause(seconds, reason) and seconds >= 10:
            event(f"every worker paused for {duration(seconds)}: {reason}", level=logging.WARNING)
