"""The one place that builds an ``httpx.AsyncClient``; the transport is the test seam."""

from __future__ import annotations

import httpx

from ..spec import Endpoint

USER_AGENT = "batchrun/0.1"


def auth_headers(endpoint: Endpoint) -> dict[str, str]:
    """Credentials live only in the client's default headers, never in a Request or a file."""
    if endpoint.api_key is None or endpoint.auth == "none":
        return {}
    secret = endpoint.api_key.get_secret_value()
    if endpoint.auth == "bearer":
        return {"Authorization": f"Bearer {secret}"}
    return {endpoint.auth_header: secret}


def make_client(
    endpoint: Endpoint,
    *,
    concurrency: int,
    timeout_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A client whose pool matches the worker count (httpx's default of 100 starves more workers)
    and whose timeout suits slow generations (httpx's default 5 s does not). No retries here:
    the dispatcher owns the only retry loop."""
    headers = {
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        "Accept": "image/png" if endpoint.format == "image-hf" else "application/json",
        **endpoint.headers,
        **auth_headers(endpoint),
    }
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        transport=transport,
        follow_redirects=False,
    )


class RedirectTransport(httpx.AsyncHTTPTransport):
    """Sends every request to ``target`` (scheme, host, port) while the request keeps its URL.

    The simulator runs on a new port each run; rewriting at the transport keeps the URLs, and so
    the request keys, stable across runs."""

    def __init__(self, target: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.target = httpx.URL(target)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme=self.target.scheme, host=self.target.host, port=self.target.port)
        return await super().handle_async_request(request)


def redirect_transport(target: str, concurrency: int) -> RedirectTransport:
    return RedirectTransport(
        target, limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    )
