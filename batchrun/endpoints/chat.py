"""OpenAI chat completions (OpenAI, TGI, vLLM, llama.cpp, Ollama...): body template and parsing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models import Parsed
from .base import load_json, unfit_answer
from .sse import ChatStream


def body_template(
    model: str | None,
    system: str | None,
    prompt: str | None,
    messages: list[dict[str, Any]] | None,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The request body as a template structure; params may override anything but messages."""
    if messages is None:
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
    elif system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    return {"model": model, **params, "messages": messages}


class ChatAdapter:
    """Reads ``choices[0].message.content``, the finish reason and the usage counts."""

    decodes_images = False

    def __init__(self, keep_raw: bool = False, streaming: bool = False) -> None:
        self.keep_raw = keep_raw
        self.streaming = streaming

    def new_stream(self) -> ChatStream:
        return ChatStream(keep_raw=self.keep_raw)

    def parse(self, headers: Mapping[str, str], content: bytes) -> Parsed:
        data = load_json(content)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise unfit_answer("no choices[0].message", data, content, keep_raw=self.keep_raw) from None
        usage = data.get("usage") or {}
        return Parsed(
            text=text if isinstance(text, str) else ("" if text is None else str(text)),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            raw=content.decode("utf-8", errors="replace") if self.keep_raw else None,
        )
