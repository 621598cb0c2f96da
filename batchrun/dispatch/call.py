"""One request, all its attempts: limits, cool-down, send, classify, retry. The httpx edge."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import replace
from types import TracebackType
from typing import cast

import anyio
import httpx

from ..endpoints.base import Adapter, StreamingAdapter, classify
from ..errors import FatalError, PermanentError, RequestError, RetryableError
from ..log import event
from ..models import Parsed, Request, Result, estimated_tokens
from .adaptive import AdaptiveConcurrency, AdaptiveRate, _Slot
from .client import Sender
from .health import EndpointHealth
from .limits import CoolDown, Sleep, TokenMeter, duration
from .pushback import Kind, exhausted_window, read_pushback
from .retry import RetryPolicy
from .stall import RefusalSpell, refusal
from .stream import is_event_stream, read_event_stream
from .tls import ProxyRefused, TLSFailure, refused_by_page
from .wake import ColdStart, Waker

#: The place in flight of the request this task is working on (set by ``Caller.slot``).
_SLOT: ContextVar[_Slot] = ContextVar("batchrun_slot")
SAY_EVERY_S = 10.0  # the in-flight limit's changes are logged at most this often


class transport_errors:  # used as a function: ``with transport_errors(url):``
    """httpx's exceptions, translated once: a bad URL is fatal, everything else on the wire
    (timeouts, refused or reset connections, a body cut short) is worth another attempt.
    (A class, not ``@contextmanager``: entered for every request, it costs a tenth.)"""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None or not isinstance(exc, httpx.TransportError | httpx.StreamError | httpx.InvalidURL):
            return
        if isinstance(exc, httpx.TimeoutException):
            raise RetryableError(f"timed out ({type(exc).__name__})") from None
        if isinstance(exc, TLSFailure):  # a certificate or TLS version no retry mends
            raise FatalError(f"TLS check failed for {httpx.URL(self.url).host}: {exc}") from None
        if isinstance(exc, ProxyRefused):
            raise FatalError(f"on the way to {httpx.URL(self.url).host}: {exc}") from None
        if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
            raise FatalError(f"bad URL {self.url}: {exc}") from None
        if isinstance(exc, httpx.ConnectError):
            raise RetryableError(
                f"cannot connect to {self.url}: {exc or 'connection failed'}", unreachable=True
            ) from None
        if isinstance(exc, httpx.TransportError):
            raise RetryableError(f"{type(exc).__name__}: {exc or 'connection lost'}") from None
        raise RetryableError(f"{type(exc).__name__}: {exc}") from None


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` without the secrets, nor the start of one where an excerpt cut it (4+ characters)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
            for cut in range(min(len(secret) - 1, len(text)), 3, -1):
                if text.endswith(secret[:cut]):
                    text = text[:-cut] + "***"
                    break
    return text


def scrub(exc: RequestError, secrets: Sequence[str]) -> None:
    """Take the secrets out of an error before anything reads it: a server may echo a header back
    in its error page, and the message goes to the manifest, the log and the summary."""
    if secrets:
        exc.message = redact(exc.message, secrets)
        exc.args = (exc.message,)
        exc.reason = None if exc.reason is None else redact(exc.reason, secrets)
        exc.answer = None if exc.answer is None else redact(exc.answer, secrets)
        exc.raw = None if exc.raw is None else redact(exc.raw, secrets)


class Caller:
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
            return self._failed(request, PermanentError(request.refused), 0, started)
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
            return self._failed(request, exc, attempts, started)
        finally:
            self.stall.end()
        return Result(
            request=request,
            status="ok",
            attempts=attempts,
            started_at=started,
            finished_at=time.time(),
            latency_ms=latency,
            parsed=self._clean(parsed) if self.secrets else parsed,
            http_status=200,
        )

    def _clean(self, parsed: Parsed) -> Parsed:
        """An answer that repeats a secret (a server echoing the request) keeps it blanked out."""
        text, raw = parsed.text, parsed.raw
        if not any(secret in value for value in (text, raw) if value for secret in self.secrets):
            return parsed
        return replace(
            parsed,
            text=None if text is None else redact(text, self.secrets),
            raw=None if raw is None else redact(raw, self.secrets),
        )

    async def _attempt(self, request: Request) -> tuple[Parsed, float]:
        """One HTTP exchange, after the limits and the cool-down; returns the answer and its latency."""
        if self.tokens is not None:
            await self.tokens.take(estimated_tokens(request.body, self.completion_tokens))
        try:
            if self.waker is None or self.waker.warm:
                parsed, latency = await self._send(request)
            else:
                parsed, latency = await self._send_waking(request, self.waker)
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

    async def _send_waking(self, request: Request, waker: Waker) -> tuple[Parsed, float]:
        """``_send`` while the endpoint may be asleep: one request at a time probes it (after waking
        it through the management API), the others wait at the gate until it has answered. The
        prober's cold-start 503s are sent again after a wait, in the same attempt."""
        if not await self._at_gate(waker):
            return await self._send(request)  # awake by now
        try:
            await waker.prepare()
            while True:
                try:
                    answer = await self._send(request)
                except ColdStart as cold:
                    # it keeps its place in flight: the one request the endpoint is asked while cold
                    await waker.cold(cold.retry_after)
                    continue
                except RequestError as exc:
                    if exc.http_status is not None:  # an answer, if not the one hoped for
                        waker.answered()
                    raise
                waker.answered()
                return answer
        finally:
            waker.leave()

    async def _at_gate(self, waker: Waker) -> bool:
        """``waker.enter()`` without a place in flight: nothing is sent while waiting there."""
        slot = _SLOT.get(None)
        if slot is None or not slot.held:
            return await waker.enter()
        probing = False

        async def enter(_: float) -> None:
            nonlocal probing
            probing = await waker.enter()

        await slot.away(enter, 0.0)
        return probing

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

    async def _send(self, request: Request) -> tuple[Parsed, float]:
        while True:
            await self.cooldown.wait(self.sleep)
            paused = self.cooldown.pauses
            sent_at = await self.rate.acquire()
            if self.cooldown.pauses == paused or not self.cooldown.remaining():
                break
            # a pause began while this request waited for its slot (at a cut rate, up to seconds):
            # wait it out, then take a new slot, so that no one sends during it nor all at its end
        if self.fatal is not None:  # a slot freed by the fatal answer, before the pool stopped
            raise self.fatal
        self.attempts += 1
        started = time.perf_counter()
        parsed = await self._exchange(request, started, sent_at)
        return parsed, (time.perf_counter() - started) * 1000

    async def _exchange(self, request: Request, started: float, sent_at: float) -> Parsed:
        with transport_errors(request.url):
            response = await self.sender.send(request.method, request.url, request.body)
            try:
                window = exhausted_window(response.headers)
                if not response.is_success:
                    content = await response.aread()
                    if refused := refused_by_page(response.status_code, content):
                        raise refused
                    error = classify(response.status_code, response.headers, content)
                    self._pushed_back(request, error, content, sent_at, window)  # may stop the job
                    if window:
                        self._restart_after(window)
                    raise error
                self.stall.accepted()
                self.rate.on_success()
                if window:
                    self._restart_after(window)
                if self.concurrency is not None:
                    self.concurrency.on_success()
                if self.adapter.streaming and is_event_stream(response):
                    assembler = cast(StreamingAdapter, self.adapter).new_stream()
                    return await read_event_stream(response, assembler, started)
                # a server that ignored "stream": true answers with plain JSON, which reads fine
                body = await response.aread()
                if self.adapter.decodes_images:  # a full image decode: off the event loop
                    return await anyio.to_thread.run_sync(self.adapter.parse, response.headers, body)
                return self.adapter.parse(response.headers, body)
            finally:
                await response.aclose()

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

    def _failed(self, request: Request, exc: RequestError, attempts: int, started: float) -> Result:
        return Result(
            request=request,
            status="failed",
            attempts=attempts,
            started_at=started,
            finished_at=time.time(),
            error_kind=exc.kind,
            http_status=exc.http_status,
            error=redact(exc.message, self.secrets),
            parsed=self._kept_answer(exc),
        )

    def _kept_answer(self, exc: RequestError) -> Parsed | None:
        """A well-formed answer that did not fit the job is kept (its start as the text), redacted."""
        if exc.answer is None and exc.raw is None:
            return None
        return Parsed(
            text=None if exc.answer is None else redact(exc.answer, self.secrets),
            raw=None if exc.raw is None else redact(exc.raw, self.secrets),
        )
