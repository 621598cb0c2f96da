"""The simulator as an ASGI app: routes, the per-request fault gate, and the control routes.

Served routes:

* ``POST /v1/chat/completions``: OpenAI chat completions, JSON or SSE (``"stream": true``).
* ``POST /models/{model}``: HF serverless. Text-to-image (raw image bytes) when the model name contains
  ``diffusion``, ``flux``, ``sdxl`` or ``image`` (any case), or ``parameters`` holds ``width``, ``height``,
  ``num_inference_steps`` or ``guidance_scale``; otherwise text generation (``[{"generated_text": ...}]``).
* ``POST /hf-inference/models/{model}``: HF router text-to-image, always an image.
* ``POST /v1/images/generations``: OpenAI images (``data[i].b64_json``).
* ``GET /health``, ``GET /_sim/stats``, ``POST /_sim/reset``, ``GET|POST /_sim/plan``: not counted.

Images are PNG unless the ``Accept`` header asks for ``image/jpeg`` (or OpenAI's ``output_format`` is jpeg).

A POST to a simulated route goes straight to its :class:`Endpoint` (a plain ASGI app), past Starlette's
routing and middleware, which cost more than the answer itself; everything else (control routes, other
methods, unknown paths) goes through Starlette, whose routes point at the same endpoints.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from . import handlers
from .faults import Decision, FaultPlan, FaultState, Trigger, decide, token_ok
from .hfendpoint import EndpointLife
from .incoming import Disconnected, Incoming, read_body
from .responses import (
    BadRequest,
    FastJSONResponse,
    Style,
    error_response,
    fault_response,
    html_response,
    is_error_outcome,
)
from .stats import RequestRecord, SimStats

#: Ends a client's connection, found by its address: ``abort=True`` resets it (RST, nothing more is
#: sent), ``abort=False`` closes it after what was written (FIN). False when there is no such connection.
Killer = Callable[[tuple[str, int] | None, bool], bool]

#: What the close-after-response mode advertises before it closes: llama-server's header, word for word
#: (HTTP/1.1 keeps connections alive unless told otherwise, so it sends no ``Connection`` header).
KEEP_ALIVE_HEADERS = [(b"keep-alive", b"timeout=5, max=100")]


class ResetResponse(Response):
    """Drop the connection without a response.

    Over a real socket (``serve``) the connection is aborted with SO_LINGER 0, so the client gets a TCP
    RST. In-process (``httpx.ASGITransport``) there is no socket: the app raises ``httpx.ReadError``,
    which ``ASGITransport`` passes to the client as a real reset would be.
    """

    def __init__(self, killers: list[Killer]) -> None:
        super().__init__(status_code=500)
        self._killers = killers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if any(kill(client, True) for kill in list(self._killers)):
            with anyio.move_on_after(1.0):
                while (await receive())["type"] != "http.disconnect":
                    pass
            return
        raise httpx.ReadError("[Errno 104] Connection reset by peer (simulated)")


class Endpoint:
    """One simulated route as a plain ASGI app: read the JSON body, run the handler, send its answer.

    ``model_prefix``: the route is that prefix followed by a model name (``/models/{model:path}``).
    """

    def __init__(self, sim: Simulator, handler: handlers.Handler, style: Style, model_prefix: str = "") -> None:
        self.sim = sim
        self.handler = handler
        self.style = style
        self.model_prefix = model_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = Incoming.from_scope(scope, self.model_prefix)
        try:
            raw = await read_body(receive)
        except Disconnected:
            return
        response = await self.answer(incoming, raw)
        await response(scope, receive, send)

    async def answer(self, incoming: Incoming, raw: bytes) -> Response:
        """The response to one request (a refusal when the body is not a JSON object)."""
        try:
            body = json.loads(raw)
        except ValueError:
            return self.sim.refuse(incoming, self.style, BadRequest(400, "Request body is not valid JSON"))
        if not isinstance(body, dict):
            return self.sim.refuse(incoming, self.style, BadRequest(422, "Request body must be a JSON object"))
        try:
            return await self.handler(self.sim, incoming, body)
        except BadRequest as exc:
            return self.sim.refuse(incoming, self.style, exc)


class Simulator:
    """The simulated endpoints: ``plan`` says what goes wrong, ``stats`` counts what arrived."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.plan = plan if plan is not None else FaultPlan()
        self.stats = SimStats()
        self.state = FaultState()
        self.life = EndpointLife(self.plan)
        self._killers: list[Killer] = []
        self._ids = itertools.count(1)
        self._exact = {
            "/v1/chat/completions": Endpoint(self, handlers.chat, "openai"),
            "/v1/images/generations": Endpoint(self, handlers.openai_images, "openai"),
        }
        self._with_model = (
            Endpoint(self, handlers.hf_models, "hf", model_prefix="/models/"),
            Endpoint(self, handlers.hf_image, "hf", model_prefix="/hf-inference/models/"),
        )
        self.app = Starlette(
            routes=[
                *(Route(path, endpoint, methods=["POST"]) for path, endpoint in self._exact.items()),
                *(Route(f"{e.model_prefix}{{model:path}}", e, methods=["POST"]) for e in self._with_model),
                Route("/health", self._health, methods=["GET"]),
                Route("/_sim/stats", self._stats, methods=["GET"]),
                Route("/_sim/reset", self._reset, methods=["POST"]),
                Route("/_sim/plan", self._plan, methods=["GET", "POST"]),
                *self.life.routes(),
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self._endpoint(scope["path"])
            if endpoint is not None:
                if self.plan.close_after_response:
                    send = self._closing(scope, send)
                self.state.in_flight += 1
                try:
                    await endpoint(scope, receive, send)
                finally:
                    self.state.in_flight -= 1
                return
        await self.app(scope, receive, send)

    def _closing(self, scope: Scope, send: Send) -> Send:
        """``send``, advertising keep-alive, then closing the connection once the response is whole:
        the client finds out only when it reuses the connection (llama-server's behaviour)."""

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() not in (b"connection", b"keep-alive")
                ]
                message = {**message, "headers": kept + KEEP_ALIVE_HEADERS}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                for kill in list(self._killers):
                    if kill(scope.get("client"), False):
                        break

        return closing_send

    def _endpoint(self, path: str) -> Endpoint | None:
        """The simulated route at ``path``, as Starlette's routes would find it."""
        endpoint = self._exact.get(path)
        if endpoint is None:
            for candidate in self._with_model:
                if path.startswith(candidate.model_prefix):
                    return candidate
        return endpoint

    def __repr__(self) -> str:
        return f"<Simulator total={self.stats.total} outcomes={dict(self.stats.by_outcome)}>"

    def reset(self) -> None:
        """Clear the counters and the fault memory (rate window, random stream)."""
        self.stats.reset()
        self.state = FaultState()
        self.life.reset()

    def attach_killer(self, kill: Killer) -> Callable[[], None]:
        """Register how a server aborts a client's connection; returns the function that detaches it."""
        self._killers.append(kill)
        return lambda: self._killers.remove(kill)

    def next_id(self, prefix: str) -> str:
        """A short unique id for a response."""
        return f"{prefix}-sim{next(self._ids)}"

    async def admit(self, incoming: Incoming, *, model: str, prompt: str, stream: bool) -> Decision:
        """Decide the request's fate, count it, and wait out its latency."""
        now = time.monotonic()
        auth = incoming.authorization
        authorized = token_ok(self.plan, auth)
        asleep = self.life.gate() if authorized and self.life.state != "running" else None
        if asleep is not None:  # an Inference Endpoint scaled to zero, initializing or paused
            decision = Decision(asleep)
        else:
            decision = decide(self.plan, self.state, now=now, prompt=prompt, stream=stream, authorized=authorized)
        self.stats.record(RequestRecord(incoming.path, model, prompt, decision.outcome, now, auth is not None, stream))
        if decision.delay_s > 0:
            await anyio.sleep(decision.delay_s)
        return decision

    def common_fault(self, style: Style, decision: Decision) -> Response | None:
        """The response for outcomes that look the same on every route (errors, resets, HTML)."""
        if is_error_outcome(decision.outcome):
            return fault_response(
                style,
                decision.outcome,
                retry_after_s=decision.retry_after_s,
                estimated_time_s=self.plan.estimated_time_s,
                headers_429=self.plan.headers_429,
            )
        if decision.outcome == "reset":
            return ResetResponse(self._killers)
        if decision.outcome == "html":
            return html_response()
        return None

    def refuse(self, incoming: Incoming, style: Style, exc: BadRequest) -> Response:
        """Count a request the API turns away before any fault applies, and answer it."""
        record = RequestRecord(
            incoming.path, "", "", str(exc.status), time.monotonic(), incoming.authorization is not None, False
        )
        self.stats.record(record)
        return error_response(style, exc.status, exc.message)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return error_response("openai", status, str(getattr(exc, "detail", exc)), code=str(status))

    async def _health(self, request: Request) -> Response:
        return FastJSONResponse({"status": "ok"})

    async def _stats(self, request: Request) -> Response:
        return FastJSONResponse({**self.stats.as_dict(), "manage": dict(self.life.calls)})

    async def _reset(self, request: Request) -> Response:
        self.reset()
        return FastJSONResponse({"reset": True})

    async def _plan(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                update_plan(self.plan, json.loads(await request.body() or b"{}"))
            except (ValueError, TypeError) as exc:
                return error_response("openai", 400, str(exc))
        shown = dataclasses.asdict(self.plan)
        if shown["require_token"] is not None:
            shown["require_token"] = "***"  # the plan is shown, the token never is
        return FastJSONResponse(shown)


def update_plan(plan: FaultPlan, changes: Any) -> None:
    """Apply JSON ``changes`` to ``plan`` in place, all or nothing (``ValueError``/``TypeError``)."""
    if not isinstance(changes, dict):
        raise TypeError("plan changes must be a JSON object")
    if "triggers" in changes:
        changes = {**changes, "triggers": [Trigger(**t) for t in changes["triggers"]]}
    checked = dataclasses.replace(plan, **changes)  # runs FaultPlan.validate
    for name in changes:
        setattr(plan, name, getattr(checked, name))


def create_app(plan: FaultPlan | None = None) -> Simulator:
    """A new simulator (an ASGI app) with its own counters."""
    return Simulator(plan)
