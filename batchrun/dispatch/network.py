"""The network transport: aiohttp under httpx's ``AsyncBaseTransport`` (through httpx-aiohttp),
with aiohttp's errors translated into httpx's. Imported only when a run goes on the network
(aiohttp takes 0.1-0.3 s to import): not by ``batchrun plan``, nor by tests' in-process transports.

Keep-alive connections the server has closed. Some servers (llama.cpp's llama-server after every
streamed answer) advertise keep-alive and then close the connection once the response is complete.
aiohttp learns of the close only when its event loop reads the EOF, often after the pooled
connection was handed to the next request, whose body then cannot be written ("Can not write
request body"). aiohttp retries that itself only for idempotent methods (its ``IDEMPOTENT_METHODS``,
RFC 9112 section 9.3.1.1), never for POST. So, as httpx's own pool does, a pooled connection whose
socket is readable while idle (the peer's FIN, or bytes nobody asked for) is dropped before reuse;
and a request whose body could not be handed to the connection at all (the server cannot have
received it whole, so cannot have acted on it) is sent again at once, once, on a new connection.
It is not an attempt: the dispatcher never sees it. A failure after the body was written (a reset,
a disconnect while waiting for the answer) may have reached the server and is left to the
dispatcher's retry policy, which counts it: sending it again silently could pay for it twice.
No check sees a close still on its way (a busy server writes its last chunk, then closes a moment
later), and a request written into it fails that way; so a server seen closing connections right
after their answers is taken to close them all, and its connections are not reused any more.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import select
import ssl
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from ..spec.network import Network
from .tls import ProxyRefused, TLSFailure, proxy_refusal, ssl_context, tls_failure

if TYPE_CHECKING:
    from types import TracebackType

    from aiohttp.client_proto import ResponseHandler

# most specific first: httpx-aiohttp 0.2 reports a refused connection or an unknown host as a
# ConnectTimeout, which would hide "the endpoint is not there" from the dispatcher.
_AIOHTTP_TO_HTTPX: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.ReadError),
    (TimeoutError, httpx.ReadTimeout),
)


class _AiohttpErrors:
    """aiohttp's errors, translated once, by their own type, into httpx's. (A class, not
    ``@contextmanager``: entered three times a request, that cost ~2 µs each.)"""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not isinstance(exc, httpx.TransportError | aiohttp.ClientError | TimeoutError):
            return
        original = exc.__cause__ if isinstance(exc, httpx.TransportError) and exc.__cause__ else exc
        if isinstance(original, OSError | aiohttp.ClientError) and (failed := tls_failure(original)):
            raise TLSFailure(failed) from original
        if isinstance(original, aiohttp.ClientHttpProxyError) and original.status in (401, 403, 407):
            raise ProxyRefused(proxy_refusal(original.status, original.message)) from original
        for source, target in _AIOHTTP_TO_HTTPX:
            if isinstance(original, source):
                raise target(str(original) or type(original).__name__) from original


_aiohttp_errors = _AiohttpErrors()


class _MappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _aiohttp_errors:
            async for chunk in self.inner:
                yield chunk

    async def aclose(self) -> None:
        with _aiohttp_errors:
            await self.inner.aclose()


def never_sent(exc: BaseException) -> bool:
    """True when aiohttp could not hand the request's body to the connection: it found the
    connection closing when it went to write (its "Can not write request body", caused by its own
    "Cannot write to closing transport"). Such a request never reached the server whole."""
    original = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    return isinstance(original, aiohttp.ClientOSError) and isinstance(
        original.__cause__, aiohttp.ClientConnectionResetError
    )


def peer_gone(protocol: ResponseHandler) -> bool:
    """An idle connection's socket is readable only when the server closed it (or sent bytes no
    request asked for): either way it must not carry another request. (httpcore's check.)"""
    transport = protocol.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.fileno() < 0:
        return True
    if hasattr(select, "poll"):  # select() fails on descriptors past 1023; poll has no such limit
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock.fileno()], [], [], 0)  # Windows
    return bool(readable)


#: Set while a request that could not be written is sent again: it must go on a new connection.
_fresh_connection = contextvars.ContextVar("batchrun_fresh_connection", default=False)


#: A pooled connection found closed within this many seconds of its answer was closed because the
#: answer ended, not because it sat idle past the server's keep-alive timeout (uvicorn's is 5 s).
CLOSED_AFTER_ANSWER_S = 1.0
#: After this many such closes, the server is taken to close every connection after its answer
#: (llama-server does, after each streamed one) and its connections are not reused any more: the
#: check before reuse cannot see a close that is still on its way, a new connection never races one.
CLOSES_TO_STOP_REUSE = 2


class CheckedConnector(aiohttp.TCPConnector):
    """aiohttp's pool, minus pooled connections the server has closed (see the module docstring), and
    without reuse at all for a server that closes every connection after its answer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # when each connection that carried a request was last released: the reused ones are here
        self._released: weakref.WeakKeyDictionary[ResponseHandler, float] = weakref.WeakKeyDictionary()
        self._closes_after_answer: Counter[object] = Counter()
        self.not_reused: set[object] = set()  # connection keys (host, port, ...) whose connections are not reused
        self.dropped = 0  # pooled connections not reused: closed by the server, or of a host in not_reused

    async def connect(self, req: Any, traces: Any, timeout: Any) -> aiohttp.connector.Connection:
        while True:
            conn = await super().connect(req, traces, timeout)
            protocol = conn.protocol
            if protocol is None:
                return conn
            released = self._released.pop(protocol, None)
            if released is None or not self._unfit_for_reuse(req.connection_key, protocol, released):
                conn.add_callback(functools.partial(self._note_release, protocol))
                return conn
            self.dropped += 1
            conn.close()

    def _unfit_for_reuse(self, key: object, protocol: ResponseHandler, released: float) -> bool:
        if _fresh_connection.get() or key in self.not_reused:
            return True
        if not peer_gone(protocol):
            return False
        if time.monotonic() - released < CLOSED_AFTER_ANSWER_S:
            self._closes_after_answer[key] += 1
            if self._closes_after_answer[key] >= CLOSES_TO_STOP_REUSE:
                self.not_reused.add(key)
        return True

    def _note_release(self, protocol: ResponseHandler) -> None:
        self._released[protocol] = time.monotonic()


def _proxy(url: str) -> httpx.Proxy:
    """The proxy without its user and password, which go as a header instead: httpx-aiohttp would
    hand them to aiohttp's deprecated ``BasicAuth``. aiohttp moves an ``Authorization`` among the
    proxy headers to ``Proxy-Authorization``: on the request itself for http://, on the CONNECT for
    https://."""
    parsed = httpx.URL(url)
    if not parsed.username and not parsed.password:
        return httpx.Proxy(parsed)
    secret = base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode()
    return httpx.Proxy(parsed.copy_with(username=None, password=None), headers={"Authorization": f"Basic {secret}"})


class NetworkTransport(httpx.AsyncBaseTransport):
    """aiohttp under httpx, with a connection pool the size of the worker pool (no retries here:
    the dispatcher owns the only retry loop)."""

    def __init__(
        self, concurrency: int, proxy: str | None = None, *, tls: bool = True, context: ssl.SSLContext | None = None
    ) -> None:
        # trust_env=False: with it, aiohttp looks for ~/.netrc in a thread on every request
        # (~70 % of a busy run's CPU); the proxy, if any, was read from the environment by the spec.
        # TLS as the spec set it (``tls.py``; certifi by default), not the system store aiohttp would use.
        # Loading the CA bundle takes ~25 ms on the event loop: only when https may be used, and
        # once (AiohttpTransport would load its own, unused, copy unless handed this one).
        self.tls = tls
        context = context if context is not None or not tls else ssl_context(Network())
        self.inner = AiohttpTransport(
            verify=context or False,
            client=lambda: aiohttp.ClientSession(connector=self._connector(concurrency, context), trust_env=False),
            proxy=_proxy(proxy) if proxy else None,
        )
        self.connector: CheckedConnector | None = None
        self.resent = 0  # requests sent again because their body could not be written

    def _connector(self, concurrency: int, ssl_context: object) -> CheckedConnector:
        self.connector = CheckedConnector(limit=concurrency, limit_per_host=0, ssl=ssl_context or True)
        return self.connector

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _aiohttp_errors:
            try:
                response = await self.inner.handle_async_request(request)
            except httpx.TransportError as exc:
                if not never_sent(exc):
                    raise
                self.resent += 1
                token = _fresh_connection.set(True)
                try:
                    response = await self.inner.handle_async_request(request)
                finally:
                    _fresh_connection.reset(token)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _MappedStream(response.stream)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __repr__(self) -> str:
        c = self.connector
        return (
            f"NetworkTransport(tls={self.tls}, resent={self.resent}, "
            f"pooled_connections_dropped={c.dropped if c else 0}, hosts_not_reused={len(c.not_reused) if c else 0})"
        )
