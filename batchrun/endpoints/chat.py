"""OpenAI chat completions (OpenAI, TGI, vLLM, llama.cpp, Ollama...): the format and its answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import SpecError
from ..models import Parsed
from .base import load_json, unfit_answer
from .format import Endpoint, PromptReader, RequestSection, WireFormat
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


class ChatFormat(WireFormat):
    """``{"model", "messages", **params}`` to ``/v1/chat/completions``; a plain or a streamed answer."""

    name = "chat"
    route = "{base_url}/v1/chat/completions"
    streams = True
    text_contents = True

    def check_endpoint(self, endpoint: Endpoint, where: str) -> None:
        if not endpoint.model:
            raise SpecError(where, "endpoint.model", "a chat endpoint needs a model name")
        super().check_endpoint(endpoint, where)

    def check_request(self, req: RequestSection, where: str) -> None:
        if (req.prompt is None) == (req.messages is None):
            raise SpecError(where, "request", "a chat endpoint needs exactly one of prompt or messages")
        if req.body is not None or req.inputs is not None:
            raise SpecError(where, "request", "a chat endpoint takes prompt/messages and params, not body/inputs")
        for name in ("stream", "stream_options"):
            if name in req.params:
                raise SpecError(where, f"request.params.{name}", "set endpoint.stream (and stream_usage) instead")
        for i, m in enumerate(req.messages or []):
            if "role" not in m or "content" not in m:
                raise SpecError(where, f"request.messages.{i}", "each message needs a role and a content")

    def body_template(self, req: RequestSection, model: str | None) -> Any:
        return body_template(model, req.system, req.prompt, req.messages, req.params)

    def prompt_template(self, req: RequestSection) -> Any:
        if req.prompt is not None:
            return req.prompt
        return [m.get("content") for m in req.messages or () if m.get("role") == "user"]

    def prompt_reader(self, req: RequestSection) -> PromptReader | None:
        if req.prompt is not None:
            return _last_message  # the user message comes after the system one
        first = 1 if req.system is not None else 0
        users = [first + i for i, m in enumerate(req.messages or ()) if m.get("role") == "user"]
        if not users:
            return None
        return lambda body: [_content(body["messages"][i]) for i in users]

    def adapter(self, endpoint: Endpoint, *, keep_raw: bool, where: str) -> ChatAdapter:
        return ChatAdapter(keep_raw=keep_raw, streaming=endpoint.stream)


def _last_message(body: Any) -> Any:
    return _content(body["messages"][-1])


def _content(message: Any) -> Any:
    return message.get("content") if isinstance(message, dict) else message
