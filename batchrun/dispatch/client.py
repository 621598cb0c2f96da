"""The HTTP edge: what moves the bytes, and the one object that sends a prepared request.

httpx stays the request/response API (and the test seam: any ``httpx.AsyncBaseTransport``,
such as ``MockTransport`` or ``ASGITransport``, can be passed in), but the bytes move over aiohttp
through ``httpx-aiohttp``: httpx's own pool costs ~2.5 ms of CPU per request at high concurrency
(``bench/``); that transport lives in ``network.py``, imported only when a run goes on the network.
``Sender`` calls the transport directly, skipping ``AsyncClient.send``'s per-request URL merging,
cookie jar and redirect/auth machinery, none of which batchrun uses.
"""

from __future__ import annotations

import logging
from types import TracebackType

import httpx

from ..errors import PermanentError
from ..log import event
from ..origins import OriginPolicy
from ..spec.endpoint import Endpoint

USER_AGENT = "batchrun/0.1"


def auth_headers(endpoint: Endpoint) -> dict[str, str]:
    """Credentials live only in the sender's headers, never in a Request, a repr or a file."""
    headers = {name: value.get_secret_value() for name, value in endpoint.secret_headers.items()}
    if endpoint.api_key is None or endpoint.auth == "none":
        return headers
    secret = endpoint.api_key.get_secret_value()
    if endpoint.auth == "bearer":
        return {**headers, "Authorization": f"Bearer {secret}"}
    return {**headers, endpoint.auth_header: secret}


def default_headers(endpoint: Endpoint) -> dict[str, str]:
    return {
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        "Accept": endpoint.wire.accept,
        **endpoint.headers,
        **auth_headers(endpoint),
    }


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

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        headers: dict[str, str],
        timeout_s: float,
        origins: OriginPolicy | None = None,
    ) -> None:
        self.transport = transport
        self.origins = origins  # the last check before the credentials go out (the planner's is first)
        self._headers = httpx.Headers(headers).raw
        self._has_host = "host" in httpx.Headers(headers)
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
        self._extensions = {"timeout": timeout.as_dict()}
        self._targets: dict[str, tuple[httpx.URL, list[tuple[bytes, bytes]]]] = {}

    def _target(self, url: str) -> tuple[httpx.URL, list[tuple[bytes, bytes]]]:
        """The parsed URL and the headers every request to it carries (Host first, as httpx puts it)."""
        target = self._targets.get(url)
        if target is None:
            if self.origins is not None and (refusal := self.origins.refusal(url)) is not None:
                raise PermanentError(refusal)  # never sent: the planner refuses these first
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


def make_sender(
    endpoint: Endpoint, *, concurrency: int, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
) -> Sender:
    if transport is None:
        from .network import NetworkTransport  # aiohttp: not for tests' in-process transports
        from .tls import ssl_context

        network = endpoint.network
        proxy = network.proxy.get_secret_value() if network.proxy else None
        plain = endpoint.url.startswith("http://") and (proxy is None or proxy.startswith("http://"))
        if not network.verify:
            event(
                f"verify = false: the certificate of {httpx.URL(endpoint.url).host} is not checked; "
                "anyone on the way can read and change what is sent",
                level=logging.WARNING,
            )
        context = None if plain else ssl_context(network)  # once a run: loading a CA bundle costs ~25 ms
        transport = NetworkTransport(concurrency, proxy=proxy, tls=not plain, context=context)
    return Sender(transport, default_headers(endpoint), timeout_s, endpoint.origins)
