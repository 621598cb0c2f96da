"""The little the handlers read from a request, taken straight from the ASGI scope.

The simulated routes are the simulator's hot path (benchmarks send thousands of requests a
second through it on the same two cores as the client under test), so they skip Starlette's
``Request``: no ``URL`` or ``Headers`` object per request, only the path and two header values.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Receive, Scope


class Disconnected(Exception):
    """The client went away before its request body arrived: there is no one to answer."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One request as the handlers see it."""

    path: str
    model: str  # the ``{model}`` part of the path, "" on routes without one
    authorization: str | None
    accept: str

    @classmethod
    def from_scope(cls, scope: Scope, model_prefix: str = "") -> Incoming:
        """Path, the model after ``model_prefix`` in it (or in Starlette's path parameters, when Starlette
        routed the request), and the two headers that matter (ASGI header names are lower case)."""
        path: str = scope["path"]
        model = path[len(model_prefix) :] if model_prefix else ""
        if "path_params" in scope:  # Starlette routed it: its parameters hold the model, whatever the root path
            model = str(scope["path_params"].get("model", ""))
        authorization = accept = None
        for name, value in scope["headers"]:  # the first of repeated headers, as Starlette's Headers.get
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"accept" and accept is None:
                accept = value.decode("latin-1")
        return cls(path, model, authorization, accept or "")


async def read_body(receive: Receive) -> bytes:
    """The whole request body (``Disconnected`` if the client leaves first)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
