"""The bytes of a request body, and what the planner judges on a rendered one: pure functions
over values, shared by planning, keying and the plan index.

One JSON encoding (``canonical_json``) serves bodies and keys alike, so two rows that render
the same body make the same bytes and so the same key; every edit made to a rendered body on
the way (chat contents as text, a seed per sample, the streaming fields) is here, in one place.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..errors import TemplateError
from ..spec import Job

EMPTY_PROMPT = 'the prompt renders empty; not sent (empty_prompts = "skip" skips such rows)'


def _json_default(value: Any) -> Any:
    return str(value)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()


def is_empty(value: Any) -> bool:
    """Nothing to ask: a rendered prompt that is null, empty or whitespace, or made only of such."""
    if isinstance(value, list):
        return all(is_empty(v) for v in value)
    return value is None or (isinstance(value, str) and not value.strip())


def as_model(value: Any) -> str | None:
    return None if value is None else str(value)


def stream_suffix(job: Job) -> bytes | None:
    """The streaming fields, added after the key is taken: streamed or not, the question is the
    same, so switching streaming on reuses the answers already in the manifest."""
    if not job.endpoint.stream:
        return None
    fields: dict[str, Any] = {"stream": True}
    if job.endpoint.stream_usage:
        fields["stream_options"] = {"include_usage": True}
    return b"," + canonical_json(fields)[1:]


def seeded(rendered: dict[str, Any], body: bytes, sample: int, index: int) -> tuple[int, bytes]:
    """Each sample its own recorded seed: the row's seed plus the sample index when the row gives
    one, else one derived from the request itself, so a rerun asks for the same images."""
    parameters = rendered.get("parameters") or {}
    given = parameters.get("seed")
    if given is not None:
        seed = as_seed(given, index) + sample
    else:
        digest = hashlib.blake2b(body + sample.to_bytes(4, "little"), digest_size=4).digest()
        seed = int.from_bytes(digest, "little") & 0x7FFFFFFF
    return seed, canonical_json({**rendered, "parameters": {**parameters, "seed": seed}})


def as_seed(value: Any, index: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TemplateError(f"parameters.seed renders {value!r} for row {index}, not an integer") from None


def text_contents(body: Any) -> None:
    """Chat message contents are text, even when a CSV column was read as numbers."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str | list):
            message["content"] = str(content)
