"""The HTTP edge: what moves the bytes, and the one object that sends a prepared request.

httpx stays the request/response API (and the test seam: any ``httpx.AsyncBaseTransport``,
such as ``MockTransport`` or ``ASGITransport``, can be passed in), but the bytes move over aiohttp
through ``httpx-aiohttp``: httpx's own pool costs ~2.5 ms of CPU per request at high concurrency
(``bench/``). ``Sender`` calls the transport directly, skipping ``AsyncClient.send``'s per-request
URL merging, cookie jar and redirect/auth machinery, none of which batchrun uses.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from types import TracebackType

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from ..spec import Endpoint

USER_AGENT = "batchrun/0.1"


def auth_headers(endpoint: Endpoint) -> dict[str, str]:
    """Credentials live only in the sender's headers, never in a Request, a repr or a file."""
    if endpoint.api_key is None or endpoint.auth == "none":
        return {}
    secret = endpoint.api_key.get_secret_value()
    if endpoint.auth == "bearer":
        return {"Authorization": f"Bearer {secret}"}
    return {endpoint.auth_header: secret}


def default_headers(endpoint: Endpoint) -> dict[str, str]:
    return {
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        "Accept": "image/png" if endpoint.format == "image-hf" else "application/json",
        **endpoint.headers,
        **auth_headers(endpoint),
    }


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


class RedirectTransport(httpx.AsyncBaseTransport):
    """Sends every request to ``target`` (scheme, host, port) while the request keeps its URL.

    The simulator runs on a new port each run; rewriting at the transport keeps the URLs, and so
    the request keys, stable across runs."""

    def __init__(self, inner: httpx.AsyncBaseTransport, target: str) -> None:
        self.inner = inner
        self.target = httpx.URL(target)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme=self.target.scheme, host=self.target.host, port=self.target.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Sender:
    """Sends prepared requests straight to the transport with the endpoint's headers and timeout.

    The timeout's read part bounds the silence between two chunks, not the whole answer."""

    def __init__(self, transport: httpx.AsyncBaseTransport, headers: dict[str, str], timeout_s: float) -> None:
        self.transport = transport
        self._headers = httpx.Headers(headers).raw
        self._has_host = "host" in httpx.Headers(headers)
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
        self._extensions = {"timeout": timeout.as_dict()}
        self._targets: dict[str, tuple[httpx.URL, list[tuple[bytes, bytes]]]] = {}

    def _target(self, url: str) -> tuple[httpx.URL, list[tuple[bytes, bytes]]]:
        """The parsed URL and the headers every request to it carries (Host first, as httpx puts it)."""
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) > 1024:  # URL templates over rows: do not keep them all
                self._targets.clear()
            parsed = httpx.URL(url)
            host = [] if self._has_host or not parsed.host else [(b"Host", parsed.netloc)]
            target = self._targets[url] = (parsed, host + self._headers)
        return target

    async def send(self, method: str, url: str, body: bytes) -> httpx.Response:
        # The request httpx would build from ``content=body``, with its headers put together here
        # once per URL: httpx's own preparation cost ~11 µs a request, three quarters of the build.
        target, headers = self._target(url)
        if body or method in ("POST", "PUT", "PATCH"):
            headers = [*headers, (b"Content-Length", b"%d" % len(body))]
        request = httpx.Request(
            method, target, headers=headers, stream=httpx.ByteStream(body), extensions=self._extensions
        )
        request.read()  # the body is in memory: ``request.content`` works, as with ``content=``
        response = await self.transport.handle_async_request(request)
        response.request = request
        return response

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:  # never the headers: they hold the credentials
        return f"Sender(transport={type(self.transport).__name__})"


def proxy_for(url: str) -> str | None:
    """The proxy the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) sets for ``url``, if any."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.hostname and urllib.request.proxy_bypass(parsed.hostname):
        return None
    return urllib.request.getproxies().get(parsed.scheme)


def make_sender(
    endpoint: Endpoint, *, concurrency: int, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
) -> Sender:
    if transport is None:
        proxy = proxy_for(endpoint.url)
        plain = endpoint.url.startswith("http://") and (proxy is None or proxy.startswith("http://"))
        transport = NetworkTransport(concurrency, proxy=proxy, tls=not plain)
    return Sender(transport, default_headers(endpoint), timeout_s)
