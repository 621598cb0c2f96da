"""One HTTP exchange: the send, the answer read and classified, httpx's exceptions translated.
The httpx edge of a request's attempts, apart from the attempts themselves (``call``) and from what
a refusal does to the limits (``backpressure``)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import cast

import anyio
import httpx

from ..endpoints.base import Adapter, StreamingAdapter, classify
from ..errors import FatalError, RetryableError
from ..models import Parsed, Request
from .backpressure import BackPressure
from .client import Sender
from .limits import Sleep
from .pushback import exhausted_window
from .stream import is_event_stream, read_event_stream
from .tls import ProxyRefused, TLSFailure, refused_by_page


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


class Exchanging(BackPressure):
    """The ``Caller``'s sending half: waits out the cool-down and the rate, sends, reads the answer.
    Its state is the ``Caller``'s, set in ``Caller.__init__``."""

    sender: Sender
    adapter: Adapter
    sleep: Sleep
    attempts: int
    fatal: FatalError | None

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
