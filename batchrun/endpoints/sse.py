"""Assembling an OpenAI-style chat completion stream (SSE) into one answer. Pure: the caller
feeds it decoded events; reading bytes and splitting events is the edge's job (httpx-sse).

Real servers differ: some send ``"content": null`` in the first delta, some put ``usage`` on the
last content chunk or in a chunk with no choices, some never send ``[DONE]`` but do send a
``finish_reason``. A stream is complete when it had a ``finish_reason`` (or ``[DONE]``); anything
else - a cut, an error event (TGI: ``data: {"error": ..., "error_type": ...}``), a chunk that is
not JSON - is a retryable failure, and the partial text is dropped, never kept as an answer.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import RetryableError
from ..models import Parsed


class ChatStream:
    def __init__(self, keep_raw: bool = False) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.done = False
        self.first_token_at: float | None = None
        self.events = 0
        self.keep_raw = keep_raw
        self.raw: list[str] = []

    def feed(self, event: str, data: str, now: float) -> bool:
        """Take one SSE event; True once the stream says it is over (``[DONE]``)."""
        self.events += 1
        if data.strip() == "[DONE]":
            self.done = True
            return True
        if event == "error":
            raise RetryableError(f"error event in the stream: {data[:300]}")
        if not data.strip():
            return False
        try:
            chunk = json.loads(data)
        except ValueError:
            raise RetryableError(f"a stream chunk is not JSON: {data[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise RetryableError(f"a stream chunk is not a JSON object: {data[:120]!r}")
        if self.keep_raw:
            self.raw.append(data)
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            kind = chunk.get("error_type") or (error.get("type") if isinstance(error, dict) else None)
            raise RetryableError(f"error in the stream: {message}" + (f" ({kind})" if kind else ""))
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if content:
                if self.first_token_at is None:
                    self.first_token_at = now
                self.parts.append(content)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        return False

    def result(self, started: float) -> Parsed:
        """The whole answer; raises when the stream ended before it was complete."""
        if self.finish_reason is None and not self.done:
            received = sum(len(p) for p in self.parts)
            raise RetryableError(
                f"the stream ended before a finish_reason ({self.events} events, {received} characters "
                "received); partial text dropped"
            )
        return Parsed(
            text="".join(self.parts),
            finish_reason=self.finish_reason,
            prompt_tokens=self.usage.get("prompt_tokens"),
            completion_tokens=self.usage.get("completion_tokens"),
            raw="\n".join(self.raw) if self.keep_raw else None,
            ttft_ms=(self.first_token_at - started) * 1000 if self.first_token_at is not None else None,
        )
