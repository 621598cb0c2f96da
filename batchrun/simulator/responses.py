"""Response builders: error bodies in each API's style, fault bodies, and the OpenAI chat shapes.

Every 4xx/5xx body is JSON: OpenAI style ``{"error": {"message", "type", "code"}}`` on OpenAI routes,
HF style ``{"error": "..."}`` on HF routes. JSON is written by orjson: the stdlib encoder was a quarter of
the app's CPU time per answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
import orjson
from starlette.responses import JSONResponse, Response

from .answers import Reply, stream_pieces

Style = Literal["openai", "hf"]


class FastJSONResponse(JSONResponse):
    """Starlette's ``JSONResponse`` (compact, UTF-8), written by orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_bytes(payload: Any) -> bytes:
    """Compact UTF-8 JSON, as every simulated body is written."""
    return orjson.dumps(payload)


class BadRequest(Exception):
    """A request the simulated API refuses before any fault applies."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_ERRORS: dict[str, tuple[int, str, str, str]] = {
    # outcome: (status, message, OpenAI type, OpenAI code)
    "400": (400, "Bad request (simulated)", "invalid_request_error", "bad_request"),
    "401": (401, "Invalid credentials in Authorization header", "invalid_request_error", "invalid_api_key"),
    "403": (403, "You do not have access to this model (simulated)", "permission_error", "forbidden"),
    "429": (429, "Rate limit reached (simulated)", "requests", "rate_limit_exceeded"),
    "500": (500, "Internal server error (simulated)", "server_error", "internal_error"),
    "502": (502, "Bad gateway (simulated)", "server_error", "bad_gateway"),
    "503": (503, "Service unavailable (simulated)", "server_error", "service_unavailable"),
    "loading": (503, "Model is loading", "server_error", "model_loading"),
    # an Inference Endpoint not running: a replica starting (HF's proxy says 503), or paused
    "cold": (503, "Service Unavailable: the endpoint is initializing (simulated)", "server_error", "unavailable"),
    "paused": (400, "Bad Request: Invalid state", "invalid_request_error", "invalid_state"),
    # the bodies of these three are the real servers', whatever the route (see dispatch/pushback.py)
    "overloaded": (429, "Model is overloaded", "", ""),
    "quota_openai": (429, "", "insufficient_quota", "insufficient_quota"),
    "quota_hf": (402, "", "", ""),
}
#: The real bodies: TGI's router refusing above --max-concurrent-requests, OpenAI with no credit
#: left, HF Inference Providers with the month's credits spent.
_VERBATIM: dict[str, dict[str, Any]] = {
    "overloaded": {"error": "Model is overloaded", "error_type": "overloaded"},
    "quota_openai": {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    },
    "quota_hf": {
        "error": "You have exceeded your monthly included credits for Inference Providers. Subscribe to PRO to get "
        "20x more monthly included credits."
    },
}
HTML_BODY = b"<!DOCTYPE html><html><head><title>Gateway</title></head><body><h1>Oops</h1></body></html>\n"


def error_response(
    style: Style,
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> FastJSONResponse:
    """A JSON error in the style of the route's API."""
    body: dict[str, Any]
    if style == "hf":
        body = {"error": message, **(extra or {})}
    else:
        body = {"error": {"message": message, "type": type_, "code": code, "param": None}, **(extra or {})}
    return FastJSONResponse(body, status_code=status, headers=headers)


def _seconds(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def fault_response(
    style: Style,
    outcome: str,
    *,
    retry_after_s: float | None = None,
    estimated_time_s: float = 0.0,
    headers_429: dict[str, str] | None = None,
) -> FastJSONResponse:
    """The error response for an HTTP-status outcome (``"401"``, ``"429"``, ``"loading"``, ...)."""
    status, message, type_, code = _ERRORS[outcome]
    if outcome in _VERBATIM:
        return FastJSONResponse(_VERBATIM[outcome], status_code=status)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if outcome == "429":
        headers.update(headers_429 or {})
    if outcome == "429" and retry_after_s is not None:
        headers["Retry-After"] = _seconds(retry_after_s)
        headers["retry-after-ms"] = str(round(retry_after_s * 1000))
    if outcome == "loading":
        extra["estimated_time"] = estimated_time_s
        if style == "hf":
            return error_response(style, status, message, extra=extra)
    if outcome == "401":
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(style, status, message, type_=type_, code=code, headers=headers, extra=extra)


def is_error_outcome(outcome: str) -> bool:
    """True for outcomes answered by a plain error status."""
    return outcome in _ERRORS


def html_response() -> Response:
    """A 200 with an HTML page, as a misrouted proxy or a login wall would send."""
    return Response(HTML_BODY, media_type="text/html; charset=utf-8")


def truncated(content: bytes, media_type: str) -> Response:
    """A 200 whose body is the first half of the real one (Content-Length matches the cut body)."""
    return Response(content[: max(1, len(content) // 2)], media_type=media_type)


def chat_completion(cid: str, model: str, reply: Reply) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "batchrun-simulator",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": usage(reply),
    }


def usage(reply: Reply) -> dict[str, int]:
    """OpenAI usage counts."""
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    return b"data: " + (data.encode() if isinstance(data, str) else json_bytes(data)) + b"\n\n"


async def chat_stream(
    cid: str, model: str, reply: Reply, *, outcome: str, include_usage: bool, chunk_delay_s: float
) -> AsyncIterator[bytes]:
    """OpenAI SSE chunks; ``stream_cut`` stops halfway, ``midstream_error`` sends a TGI error event."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "batchrun-simulator",
                "choices": [choice],
            }
        )

    pieces = stream_pieces(reply.text)
    if outcome != "ok":
        pieces = pieces[: len(pieces) // 2]
    yield chunk({"role": "assistant", "content": ""})
    for piece in pieces:
        if chunk_delay_s > 0:
            await anyio.sleep(chunk_delay_s)
        yield chunk({"content": piece})
    if outcome == "midstream_error":
        yield _sse(
            {
                "error": "Request failed during generation: simulated CUDA out of memory",
                "error_type": "generation",
            }
        )
        return
    if outcome == "stream_cut":
        return
    yield chunk({}, reply.finish_reason)
    if include_usage:
        yield _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage(reply),
            }
        )
    yield _sse("[DONE]")
