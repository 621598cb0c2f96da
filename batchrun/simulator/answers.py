"""Deterministic answers: the simulator's replies as pure functions of the request.

Tests in batchrun import these to know, without a server, exactly what the simulator will answer.

Rules:

* chat: ``"[{model}] answer to: {text of the last user message}"`` (text parts joined by a space when
  the content is a list of OpenAI content parts; ``""`` when there is no user message).
* HF text generation: ``"[{model}] continuation of: {inputs}"``, with ``inputs`` prepended when
  ``parameters.return_full_text`` is true.
* tokens are whitespace-separated words: ``prompt_tokens`` counts the words of every message (at least 1),
  ``completion_tokens`` the words of the reply (at least 1).
* ``max_tokens`` (chat) / ``max_new_tokens`` (HF): a longer reply is cut to that many words joined by one
  space, and ``finish_reason`` is ``"length"``; otherwise the reply is untouched and it is ``"stop"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_PIECE = re.compile(r"\s*\S+\s*")


@dataclass(frozen=True, slots=True)
class Reply:
    """One generated reply with what a server reports about it."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string, or the ``text`` parts of an OpenAI content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type", "text") == "text"
        ]
        return " ".join(parts)
    return ""


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Text of the last message whose role is ``user`` (``""`` if none)."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def count_words(text: str) -> int:
    """Whitespace word count, at least 1: the simulator's stand-in for a tokenizer."""
    return max(1, len(text.split()))


def limit_words(text: str, limit: int | None) -> tuple[str, str]:
    """Cut ``text`` to ``limit`` words; return it with the finish reason (``"length"`` if cut)."""
    if limit is None:
        return text, "stop"
    words = text.split()
    if len(words) <= limit:
        return text, "stop"
    return " ".join(words[: max(limit, 0)]), "length"


def expected_chat_text(model: str, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = None) -> str:
    """The reply the simulator gives to a chat completion (cut to ``max_tokens`` words when given)."""
    full = f"[{model}] answer to: {last_user_text(messages)}"
    return limit_words(full, max_tokens)[0]


def chat_reply(model: str, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = None) -> Reply:
    """Reply, finish reason and usage for a chat completion."""
    text, finish = limit_words(expected_chat_text(model, messages), max_tokens)
    prompt_words = " ".join(content_text(m.get("content")) for m in messages if isinstance(m, Mapping))
    return Reply(text, finish, count_words(prompt_words), count_words(text))


def expected_generated_text(model: str, inputs: str, parameters: Mapping[str, Any] | None = None) -> str:
    """The ``generated_text`` of an HF serverless text-generation answer."""
    params = parameters or {}
    limit = params.get("max_new_tokens")
    text, _ = limit_words(f"[{model}] continuation of: {inputs}", limit if isinstance(limit, int) else None)
    return inputs + text if params.get("return_full_text") else text


def stream_pieces(text: str, words_per_piece: int = 3) -> list[str]:
    """Split ``text`` into deltas of a few words whose concatenation is exactly ``text``."""
    tokens = _PIECE.findall(text)
    if not tokens:
        return [text] if text else []
    tokens[-1] += text[len("".join(tokens)) :]
    return ["".join(tokens[i : i + words_per_piece]) for i in range(0, len(tokens), words_per_piece)]
