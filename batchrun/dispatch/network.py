"""The network transport: aiohttp under httpx's ``AsyncBaseTransport`` (through httpx-aiohttp),
with aiohttp's errors translated into httpx's. Imported only when a run goes on the network
(aiohttp takes 0.1-0.3 s to import): not by ``batchrun plan``, nor by tests' in-process transports.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

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


@contextlib.contextmanager
def _aiohttp_errors() -> Iterator[None]:
    """aiohttp's errors, translated once, by their own type, into httpx's."""
    try:
        yield
    except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
        original = exc.__cause__ if isinstance(exc, httpx.TransportError) and exc.__cause__ else exc
        for source, target in _AIOHTTP_TO_HTTPX:
            if isinstance(original, source):
                raise target(str(original) or type(original).__name__) from original
        raise


class _MappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _aiohttp_errors():
            async for chunk in self.inner:
                yield chunk

    async def aclose(self) -> None:
        with _aiohttp_errors():
            await self.inner.aclose()


class NetworkTransport(httpx.AsyncBaseTransport):
    """aiohttp under httpx, with a connection pool the size of the worker pool (no retries here:
    the dispatcher owns the only retry loop)."""

    def __init__(self, concurrency: int, proxy: str | None = None) -> None:
        # trust_env=False: with it, aiohttp looks for ~/.netrc in a thread on every request
        # (~70 % of a busy run's CPU); the proxy, if any, is read from the environment once.
        # TLS as httpx does it (certifi, SSL_CERT_FILE), not the system store aiohttp would use;
        # the session (and the CA bundle, ~35 ms) is made at the first request, so never by a run
        # that finds nothing to do
        self.inner = AiohttpTransport(
            client=lambda: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ssl=httpx.create_ssl_context()),
                trust_env=False,
            ),
            proxy=httpx.Proxy(proxy) if proxy else None,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _aiohttp_errors():
            response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _MappedStream(response.stream)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
