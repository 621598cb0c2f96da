"""How an endpoint pushes back, read from one answer: a rate window, a concurrency limit, or an
exhausted quota. Each needs its own response, so they are told apart here, in one table:

- ``RATE``: too many requests in a time window. Wait (``Retry-After``), then send at the rate the
  endpoint accepts (the adaptive rate).
- ``OVERLOAD``: too many requests in flight (TGI above ``--max-concurrent-requests``). Send fewer at
  once (the adaptive concurrency limit); the rate is not the problem.
- ``QUOTA``: no credit or quota left. No waiting fixes it: the job stops.
- ``COLD``: the endpoint is starting (scaled to zero, resumed). Only while ``starting`` (a job that
  expects a cold start, before the endpoint's first answer): one request probes, the others wait,
  and neither the waits nor the 503s count as attempts or failures (``dispatch/wake.py``).

Pure: no I/O, tested with plain asserts.

The shapes, as the servers send them:

- OpenAI, rate window: 429 ``{"error": {"message": "Rate limit reached for ... on requests per min
  (RPM) ...", "type": "requests", "code": "rate_limit_exceeded"}}``, with ``x-ratelimit-remaining-*``
  and ``x-ratelimit-reset-*`` headers in Go duration form (``6m0s``, ``1s``, ``20ms``).
- OpenAI, quota: 429 ``{"error": {"message": "You exceeded your current quota, please check your
  plan and billing details. ...", "type": "insufficient_quota", "code": "insufficient_quota"}}``
  (seen in github.com/chatanywhere/GPT_API_free/issues/229, zurawiki/gptcommit/issues/84).
- Hugging Face Inference Providers, credits: 402 ``{"error": "You have exceeded your monthly
  included credits for Inference Providers. Subscribe to PRO to get 20x more monthly included
  credits."}`` (huggingface_hub users' reports of HfHubHTTPError 402).
- TGI router, too many in flight: 429 ``{"error": "Model is overloaded", "error_type":
  "overloaded"}``, no ``Retry-After`` (text-generation-inference ``InferError::Overloaded``; the
  hugchat client's ``ModelOverloadedError`` quotes the same body).
- Anthropic-style overload: 529 ``{"type": "error", "error": {"type": "overloaded_error"}}``.
- OpenAI-style engine overload: 503 ``{"error": {"message": "The engine is currently overloaded,
  please try again later", "type": "server_error"}}`` (CoreWeave's and W&B Inference's error pages;
  aimock's ``mock-503``), and OpenAI's 503 ``service_unavailable_error`` with the code
  ``server_is_overloaded``; OpenRouter's 503 ``provider_overloaded``.
- Hugging Face Inference Endpoint scaled to zero: "the proxy will respond with the status code 503
  while the new replica is initializing", unless the request carries ``X-Scale-Up-Timeout: <s>``,
  which holds it until a replica is ready or that many seconds pass (Inference Endpoints docs,
  Autoscaling, "Scale to Zero"). No body to go by: any 503 before the first answer is the start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..endpoints.base import parse_reset


class Kind(Enum):
    RATE = "rate"
    OVERLOAD = "overload"
    QUOTA = "quota"
    COLD = "cold"


@dataclass(frozen=True, slots=True)
class Pushback:
    kind: Kind
    cause: str  # one line, for the user


#: Error codes or types (OpenAI ``code``/``type``, TGI ``error_type``) and what they mean.
CODES: dict[str, Kind] = {
    "insufficient_quota": Kind.QUOTA,  # OpenAI: no credit left
    "billing_hard_limit_reached": Kind.QUOTA,  # OpenAI: the account's spending cap
    "quota_exceeded": Kind.QUOTA,
    "overloaded": Kind.OVERLOAD,  # TGI router
    "overloaded_error": Kind.OVERLOAD,  # Anthropic
    "server_is_overloaded": Kind.OVERLOAD,  # OpenAI's 503 code
    "provider_overloaded": Kind.OVERLOAD,  # OpenRouter's 503
    "rate_limit_exceeded": Kind.RATE,  # OpenAI
    "requests": Kind.RATE,  # OpenAI's type on a requests-per-minute 429
    "tokens": Kind.RATE,
}
#: Phrases in an error message (lower case), for servers that give no code.
PHRASES: tuple[tuple[str, Kind], ...] = (
    ("exceeded your monthly included credits", Kind.QUOTA),  # HF Inference Providers, 402
    ("exceeded your current quota", Kind.QUOTA),  # OpenAI
    ("insufficient credits", Kind.QUOTA),
    ("model is overloaded", Kind.OVERLOAD),  # TGI
    ("engine is currently overloaded", Kind.OVERLOAD),  # OpenAI-style 503 (CoreWeave, W&B Inference, aimock)
    ("currently overloaded with other requests", Kind.OVERLOAD),  # OpenAI's older 503/429 text
)
#: Statuses that mean a kind whatever the body says.
STATUSES: dict[int, Kind] = {402: Kind.QUOTA, 529: Kind.OVERLOAD}


def read_pushback(status: int, content: bytes, *, starting: bool = False) -> Pushback | None:
    """What a non-2xx answer says about the endpoint's limits; None when it is no pushback at all
    (a 500, a 400). A 429 that names nothing is a rate limit. ``starting``: the endpoint has not
    answered yet and may be waking up, so a 503 is its cold start."""
    if status not in (402, 429, 503, 529):
        return None
    message, codes = _error_fields(content)
    if starting and status == 503:
        return Pushback(Kind.COLD, message or "HTTP 503")
    lowered = message.lower()
    for code in codes:
        if code in CODES:
            return Pushback(CODES[code], _cause(code, message))
    for phrase, kind in PHRASES:
        if phrase in lowered:
            return Pushback(kind, message)
    if status in STATUSES:
        return Pushback(STATUSES[status], message or f"HTTP {status}")
    if status == 429:
        return Pushback(Kind.RATE, message or "HTTP 429")
    return None  # a 503 with no overload word: the server is down or loading, not pushing back


def _cause(code: str, message: str) -> str:
    return f"{code}: {message}" if message else code


def _error_fields(content: bytes) -> tuple[str, list[str]]:
    """The error message and the codes an error body carries (OpenAI, TGI, HF, Anthropic shapes)."""
    if content[:1] not in (b"{", b"["):
        return " ".join(content[:300].decode("utf-8", errors="replace").split()), []
    try:
        data: Any = json.loads(content)
    except ValueError:
        return "", []
    if not isinstance(data, dict):
        return "", []
    codes: list[str] = []
    message = ""
    error = data.get("error")
    if isinstance(error, dict):
        codes += [str(error[k]) for k in ("code", "type") if isinstance(error.get(k), str)]
        message = str(error.get("message") or "")
    elif isinstance(error, str):
        message = error
    codes += [str(data[k]) for k in ("error_type", "code", "type") if isinstance(data.get(k), str)]
    return " ".join(message.split())[:300], [c.lower() for c in codes]


def exhausted_window(headers: Mapping[str, str]) -> tuple[float, str] | None:
    """OpenAI's ``x-ratelimit-remaining-{requests,tokens}: 0``: how long until the window resets,
    and the headers that said so (``"x-ratelimit-remaining-tokens 0, reset 6m0s"``)."""
    found: tuple[float, str] | None = None
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is None or remaining.strip() != "0":
            continue
        text = headers.get(f"x-ratelimit-reset-{kind}")
        reset = parse_reset(text)
        if reset is not None and (found is None or reset > found[0]):
            found = (reset, f"x-ratelimit-remaining-{kind} 0, reset {text}")
    return found
