"""One request, all its attempts: limits, cool-down, send, classify, retry. The pieces of an attempt
stand beside it: the exchange and the httpx edge (``exchange``), what a refusal does to the limits
(``backpressure``), the send to an endpoint that may be asleep (``waking``), the secrets kept out of
what is left behind (``redact``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext

import anyio

from ..endpoints.base import Adapter
from ..errors import FatalError, PermanentError, RequestError, RetryableError
from ..models import Parsed, Request, Result, estimated_tokens
from .adaptive import AdaptiveRate
from .backpressure import SAY_EVERY_S
from .client import Sender
from .exchange import Exchanging
from .health import EndpointHealth
from .inflight import _SLOT, AdaptiveConcurrency, _Slot
from .limits import CoolDown, Sleep, TokenMeter
from .redact import clean, failed, scrub
from .retry import RetryPolicy
from .stall import RefusalSpell
from .wake import Waker
from .waking import send_waking


class Caller(Exchanging):
    """Sends one request until it succeeds, fails for good, or the endpoint refuses us (raises
    ``FatalError``, which stops the job)."""

    def __init__(
        self,
        sender: Sender,
        adapter: Adapter,
        *,
        policy: RetryPolicy,
        rate: AdaptiveRate | None = None,
        concurrency: AdaptiveConcurrency | None = None,
        tokens: TokenMeter | None = None,
        completion_tokens: int = 0,
        health: EndpointHealth | None = None,
        cooldown: CoolDown | None = None,
        sleep: Sleep = anyio.sleep,
        secrets: Sequence[str] = (),
        waker: Waker | None = None,
        stall: RefusalSpell | None = None,
    ) -> None:
        self.sender = sender
        self.adapter = adapter
        self.policy = policy
        self.rate = rate or AdaptiveRate(None)
        self.concurrency = concurrency
        self.health = health or EndpointHealth()
        self.tokens = tokens
        self.completion_tokens = completion_tokens  # the cap, for the tokens-per-minute estimate
        self.cooldown = cooldown or CoolDown()
        self.sleep = sleep
        self.secrets = tuple(secrets)
        self.waker = waker  # an endpoint that may be asleep: woken, one prober while it is cold
        self.stall = stall or RefusalSpell(None)  # refusals with nothing accepted: stop after a while
        self.attempts = 0  # every HTTP request sent, retries included
        self.retries = 0  # attempts after a request's first: the progress line shows them
        self.fatal: FatalError | None = None  # once set, nothing more is sent
        self._said_overload = -SAY_EVERY_S

    async def __call__(self, request: Request) -> Result:
        started = time.time()
        if request.refused is not None:  # found unsendable while planning: this row's failure
            return failed(request, PermanentError(request.refused), 0, started, self.secrets)
        attempts = 1
        self.stall.begin()
        try:
            try:
                parsed, latency = await self._attempt(request)
            except RetryableError as first:
                if self.policy.max_attempts == 1:
                    raise
                await self._retry_wait(self.policy.wait_after(first, 1))
                async for attempt in self.policy.retrying(self._retry_wait, already=1):
                    with attempt:
                        attempts += 1
                        self.retries += 1
                        parsed, latency = await self._attempt(request)
        except (RetryableError, PermanentError) as exc:
            return failed(request, exc, attempts, started, self.secrets)
        finally:
            self.stall.end()
        return Result(
            request=request,
            status="ok",
            attempts=attempts,
            started_at=started,
            finished_at=time.time(),
            latency_ms=latency,
            parsed=clean(parsed, self.secrets) if self.secrets else parsed,
            http_status=200,
        )

    async def _attempt(self, request: Request) -> tuple[Parsed, float]:
        """One HTTP exchange, after the limits and the cool-down; returns the answer and its latency."""
        if self.tokens is not None:
            await self.tokens.take(estimated_tokens(request.body, self.completion_tokens))
        try:
            if self.waker is None or self.waker.warm:
                parsed, latency = await self._send(request)
            else:
                parsed, latency = await send_waking(self._send, request, self.waker)
        except FatalError as exc:
            scrub(exc, self.secrets)  # a 401 page may echo the token back
            self.fatal = self.fatal or exc
            raise
        except RequestError as exc:
            scrub(exc, self.secrets)
            if fatal := self.health.failed(exc):
                self.fatal = self.fatal or fatal
                raise fatal from None
            raise
        self.health.succeeded()
        return parsed, latency

    def slot(self) -> _Slot | nullcontext[float]:
        """``async with caller.slot():`` around a request and the recording of its result: its place
        in flight (``limits.concurrency`` at most, fewer while the endpoint is overloaded). Given up
        while the request waits out a retry; held until the result is recorded, so that a killed run
        sends again at most ``concurrency`` requests."""
        if self.concurrency is None:
            return nullcontext(0.0)
        slot = self.concurrency.slot()
        _SLOT.set(slot)
        return slot

    async def _retry_wait(self, seconds: float) -> None:
        slot = _SLOT.get(None)
        if slot is None or not slot.held:
            await self.sleep(seconds)
        else:
            await slot.away(self.sleep, seconds)

    @property
    def in_flight(self) -> int:
        """Requests on the wire now (not those waiting out a retry)."""
        return self.concurrency.in_flight if self.concurrency is not None else 0

    def describe(self) -> str:
        """The adaptive limits and any pause, for the progress line and the summary."""
        waking = self.waker.describe() if self.waker is not None else ""
        parts = [waking, self.cooldown.describe(), self.rate.describe()]
        if self.concurrency is not None:
            parts.append(self.concurrency.describe())
        return "; ".join(p for p in parts if p)
