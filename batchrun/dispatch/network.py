"""The network transport: aiohttp under httpx's ``AsyncBaseTransport`` (through httpx-aiohttp),
with aiohttp's errors translated into httpx's. Imported only when a run goes on the network
(aiohttp takes 0.1-0.3 s to import): not by ``batchrun plan``, nor by tests' in-process transports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

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


class NetworkTransport(httpx.AsyncBaseTransport):
    """aiohttp under httpx, with a connection pool the size of the worker pool (no retries here:
    the dispatcher owns the only retry loop)."""

    def __init__(self, concurrency: int, proxy: str | None = None, *, tls: bool = True) -> None:
        # trust_env=False: with it, aiohttp looks for ~/.netrc in a thread on every request
        # (~70 % of a busy run's CPU); the proxy, if any, is read from the environment once.
        # TLS as httpx does it (certifi, SSL_CERT_FILE), not the system store aiohttp would use.
        # Loading the CA bundle takes ~25 ms on the event loop: only when https may be used, and
        # once (AiohttpTransport would load its own, unused, copy unless handed this one).
        self.tls = tls
        ssl_context = httpx.create_ssl_context() if tls else None
        self.inner = AiohttpTransport(
            verify=ssl_context or False,
            client=lambda: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ssl=ssl_context or True),
                trust_env=False,
            ),
            proxy=httpx.Proxy(proxy) if proxy else None,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _aiohttp_errors:
            response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _MappedStream(response.stream)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
