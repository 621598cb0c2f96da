"""What every wire format shares: status classification, ``Retry-After`` and error excerpts."""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import Any, Protocol

from ..errors import FatalError, PermanentError, RequestError, RetryableError
from ..models import Parsed

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
FATAL_STATUS = frozenset({401, 403})
EXCERPT_CHARS = 300
ANSWER_START_CHARS = 500  # of a well-formed answer that did not fit the job, kept in response_text


class StreamAssembler(Protocol):
    """Turns the events of a streamed answer into one ``Parsed``."""

    def feed(self, event: str, data: str, now: float) -> bool: ...

    def result(self, started: float) -> Parsed: ...


class Adapter(Protocol):
    """Reads a 2xx response of one wire format; raises ``RequestError`` when it is not usable.
    A streaming adapter also hands out an assembler for SSE answers."""

    streaming: bool
    decodes_images: bool  # parse() does a full image decode: the caller runs it in a worker thread

    def parse(self, headers: Mapping[str, str], content: bytes) -> Parsed: ...


class StreamingAdapter(Adapter, Protocol):
    def new_stream(self) -> StreamAssembler: ...


def classify(status: int, headers: Mapping[str, str], content: bytes) -> RequestError:
    """Turn a non-2xx answer into the error that says what to do about it."""
    message = f"HTTP {status}: {error_excerpt(content)}"
    context: dict[str, Any] = {
        "http_status": status,
        "retry_after": parse_retry_after(headers, content),
        "request_id": headers.get("x-request-id"),
        "unreachable": status == 404,
    }
    if status in FATAL_STATUS:
        return FatalError(message, **context)
    if status in RETRYABLE_STATUS or status >= 500:
        return RetryableError(message, **context)
    return PermanentError(message, **context)


def parse_retry_after(headers: Mapping[str, str], content: bytes = b"", now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, ``Retry-After`` (seconds or an
    HTTP date), or the ``estimated_time`` of HF's 503 "model is loading" body."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - (time.time() if now is None else now))
    if content[:1] == b"{" and b"estimated_time" in content:
        try:
            estimated = json.loads(content).get("estimated_time")
        except (ValueError, AttributeError):
            return None
        if isinstance(estimated, int | float):
            return max(0.0, float(estimated))
    return None


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_reset(value: str | None) -> float | None:
    """OpenAI's ``x-ratelimit-reset-*`` values: Go durations (``"12ms"``, ``"6m0s"``) or seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _GO_DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def exhausted_quota_wait(headers: Mapping[str, str]) -> float | None:
    """When the endpoint says no requests (or tokens) remain in its window, how long until reset."""
    waits = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is not None and remaining.strip() == "0":
            reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
            if reset is not None:
                waits.append(reset)
    return max(waits) if waits else None


def error_excerpt(content: bytes) -> str:
    """A short, one-line reading of an error body: the JSON error message when there is one."""
    text = content[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("message", data.get("detail")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            text = err if isinstance(err, str) else json.dumps(err)
    text = " ".join(text.split())
    return text[:EXCERPT_CHARS] or "(empty body)"


def error_report(data: Any) -> bool:
    """A JSON error body: ``{"error": ...}`` (OpenAI, TGI, HF) or ``{"object": "error"}`` (vLLM)."""
    return isinstance(data, dict) and (data.get("error") is not None or data.get("object") == "error")


def answer_start(content: bytes) -> str | None:
    """The first ``ANSWER_START_CHARS`` characters of an answer, for the manifest; None for binary bytes."""
    head = content[: ANSWER_START_CHARS * 4]
    if b"\x00" in head:
        return None
    return head.decode("utf-8", errors="replace")[:ANSWER_START_CHARS]


def unfit_answer(reason: str, data: Any, content: bytes, *, keep_raw: bool = False) -> RequestError:
    """The error for a 2xx JSON body that parsed but does not hold what the format promises.

    A whole, well-formed answer of the wrong shape (a wrong ``response_path``, a chat answer without
    choices) comes back the same way every time, and each time is paid for: the row fails for good,
    with the start of the answer kept (all of it with ``keep_raw_response``). A body that reports an
    error is the server failing under the wrong status, as a 5xx would: worth another attempt."""
    if error_report(data):
        return RetryableError(f"{reason}: the answer reports an error: {error_excerpt(content)}")
    return PermanentError(
        f"{reason} in the answer: {error_excerpt(content)}",
        http_status=200,
        reason=reason,
        answer=answer_start(content),
        raw=content.decode("utf-8", errors="replace") if keep_raw else None,
    )


def load_json(content: bytes) -> Any:
    """Decode a 2xx JSON body; a body that is not JSON is a retryable failure (proxies, truncation)."""
    try:
        return json.loads(content)
    except ValueError:
        raise RetryableError(f"invalid JSON in a 2xx response: {error_excerpt(content)}") from None
