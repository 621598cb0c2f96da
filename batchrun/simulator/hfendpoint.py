"""A Hugging Face Inference Endpoint's life: scaled to zero, paused, initializing, running, failed.

The inference routes ask :meth:`EndpointLife.gate` first: while the endpoint is not running they
answer as HF's proxy does, 503 while a replica initializes (``"cold"``: the first request to an
endpoint scaled to zero starts one), 400 ``Bad Request: Invalid state`` while paused (what HF
answered for a paused endpoint in elastic/elasticsearch#112033).

The management routes are those huggingface_hub calls under its Inference Endpoints API root
(``https://api.endpoints.huggingface.cloud/v2``; point a job's ``hf_api_url`` at ``<sim>/v2``):
``GET /v2/endpoint/{namespace}/{name}`` and ``POST .../resume``, ``.../pause``, ``.../scale-to-zero``,
each answered with the JSON huggingface_hub's ``InferenceEndpoint.from_raw`` reads. A resume starts
``cold_start_s`` of initializing; resuming a running endpoint is a 400 "already running" (which
``resume(running_ok=True)`` accepts). ``require_token`` applies; ``manage_rights = False`` answers
403 to every management call, as for a token that may call the endpoint but not manage it.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .faults import FaultPlan, token_ok
from .responses import FastJSONResponse, error_response

MANAGEMENT_ROOT = "/v2/endpoint/{namespace}/{name}"


class EndpointLife:
    """The endpoint's state, changed by the management calls and by the first request after a
    scale to zero; ``calls`` counts the management calls by kind (``get``, ``resume``, ...)."""

    def __init__(self, plan: FaultPlan, clock: Any = time.monotonic) -> None:
        self.plan = plan
        self.state = plan.endpoint_state
        self.ready_at = 0.0
        self.calls: Counter[str] = Counter()
        self.changed = datetime.now(UTC)
        self._clock = clock

    def reset(self) -> None:
        """Back to the plan's state at start, the calls forgotten."""
        self.calls.clear()
        self._set(self.plan.endpoint_state)

    def current(self) -> str:
        if self.state == "initializing" and self._clock() >= self.ready_at:
            self._set("running")
        return self.state

    def gate(self) -> str | None:
        """The outcome for an inference request while the endpoint cannot answer it, else None."""
        state = self.current()
        if state == "running":
            return None
        if state == "scaledToZero":
            self._start()
            return None if self.current() == "running" else "cold"
        return "paused" if state == "paused" else "cold"

    def routes(self) -> list[Route]:
        return [
            Route(MANAGEMENT_ROOT, self._get, methods=["GET"]),
            Route(MANAGEMENT_ROOT + "/resume", self._resume, methods=["POST"]),
            Route(MANAGEMENT_ROOT + "/pause", self._pause, methods=["POST"]),
            Route(MANAGEMENT_ROOT + "/scale-to-zero", self._scale_to_zero, methods=["POST"]),
        ]

    def _start(self) -> None:
        self.ready_at = self._clock() + self.plan.cold_start_s
        self._set("initializing")
        self.current()  # a cold start of 0 s runs at once

    def _set(self, state: str) -> None:
        self.state = state
        self.changed = datetime.now(UTC)

    def _refused(self, request: Request, kind: str) -> Response | None:
        self.calls[kind] += 1
        if not token_ok(self.plan, request.headers.get("authorization")):
            return error_response("hf", 401, "Invalid credentials in Authorization header")
        if not self.plan.manage_rights:
            return error_response("hf", 403, "You don't have the rights to manage this endpoint (simulated)")
        return None

    async def _get(self, request: Request) -> Response:
        return self._refused(request, "get") or self._answer(request)

    async def _resume(self, request: Request) -> Response:
        if refused := self._refused(request, "resume"):
            return refused
        if self.current() in ("running", "initializing"):
            return error_response("hf", 400, "Bad Request: Endpoint is already running")
        self._start()
        return self._answer(request)

    async def _pause(self, request: Request) -> Response:
        if refused := self._refused(request, "pause"):
            return refused
        self._set("paused")
        return self._answer(request)

    async def _scale_to_zero(self, request: Request) -> Response:
        if refused := self._refused(request, "scale_to_zero"):
            return refused
        self._set("scaledToZero")
        return self._answer(request)

    def _answer(self, request: Request) -> Response:
        """The endpoint as the API describes it (the fields huggingface_hub reads, and a few more)."""
        stamp = self.changed.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        state = self.current()
        status: dict[str, Any] = {"state": state, "createdAt": stamp, "updatedAt": stamp, "readyReplica": 0}
        status["url"] = str(request.base_url).rstrip("/")
        if state == "failed":
            status["message"] = "Endpoint failed to start (simulated)"
        if state == "running":
            status["readyReplica"] = 1
        body = {
            "name": request.path_params["name"],
            "type": "protected",
            "model": {
                "repository": "sim/model",
                "framework": "pytorch",
                "revision": "main",
                "task": "text-generation",
            },
            "status": status,
            "healthRoute": "/health",
        }
        return FastJSONResponse(body)
