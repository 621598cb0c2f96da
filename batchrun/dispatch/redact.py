"""The endpoint's secrets kept out of all a request leaves behind: its error (manifest, log,
summary), an answer that echoes one back, the result of a request that failed. Pure: values in,
values out, so that every place a secret could leak through is a plain function to test."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from ..errors import RequestError
from ..models import Parsed, Request, Result


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` without the secrets, nor the start of one where an excerpt cut it (4+ characters)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
            for cut in range(min(len(secret) - 1, len(text)), 3, -1):
                if text.endswith(secret[:cut]):
                    text = text[:-cut] + "***"
                    break
    return text


def scrub(exc: RequestError, secrets: Sequence[str]) -> None:
    """Take the secrets out of an error before anything reads it: a server may echo a header back
    in its error page, and the message goes to the manifest, the log and the summary."""
    if secrets:
        exc.message = redact(exc.message, secrets)
        exc.args = (exc.message,)
        exc.reason = None if exc.reason is None else redact(exc.reason, secrets)
        exc.answer = None if exc.answer is None else redact(exc.answer, secrets)
        exc.raw = None if exc.raw is None else redact(exc.raw, secrets)


def clean(parsed: Parsed, secrets: Sequence[str]) -> Parsed:
    """An answer that repeats a secret (a server echoing the request) keeps it blanked out."""
    text, raw = parsed.text, parsed.raw
    if not any(secret in value for value in (text, raw) if value for secret in secrets):
        return parsed
    return replace(
        parsed,
        text=None if text is None else redact(text, secrets),
        raw=None if raw is None else redact(raw, secrets),
    )


def failed(request: Request, exc: RequestError, attempts: int, started: float, secrets: Sequence[str]) -> Result:
    """A request's failure as its result: the message redacted, a well-formed answer kept."""
    return Result(
        request=request,
        status="failed",
        attempts=attempts,
        started_at=started,
        finished_at=time.time(),
        error_kind=exc.kind,
        http_status=exc.http_status,
        error=redact(exc.message, secrets),
        parsed=kept_answer(exc, secrets),
    )


def kept_answer(exc: RequestError, secrets: Sequence[str]) -> Parsed | None:
    """A well-formed answer that did not fit the job is kept (its start as the text), redacted."""
    if exc.answer is None and exc.raw is None:
        return None
    return Parsed(
        text=None if exc.answer is None else redact(exc.answer, secrets),
        raw=None if exc.raw is None else redact(exc.raw, secrets),
    )
