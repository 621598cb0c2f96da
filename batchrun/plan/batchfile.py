"""OpenAI Batch API files: the request lines a job reads (``[input] format = "openai-batch"``) and
the output lines ``export --format openai-batch`` writes.

A request line is ``{"custom_id", "method", "url", "body"}``; its ``body`` is sent as written to
the job's endpoint, so a line whose ``url`` names another route would be answered by the wrong
API: every line is checked before anything is sent, and the first that does not fit is named by
its file and line. An output line is ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}`` (OpenAI's ``BatchRequestOutput``; vLLM's ``run-batch`` writes the
same), a failed request having ``response`` null and ``error`` ``{"code", "message"}``.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from .records import BadRecord, blocks, json_records, open_records

FIELDS = ("custom_id", "method", "url", "body")
MODEL_FROM_BODY = "{{ body.model }}"  # the endpoint's model when the job names none
BLOCK_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"


def check_batch_lines(paths: Sequence[str], endpoint_url: str, *, needs_model: bool) -> None:
    """Refuse (``InputError``) the first line that is not a POST of a JSON object body to the
    endpoint's own route (its URL path ends with the line's ``url``: a base URL may add a prefix),
    whose ``custom_id`` is not text, whose body asks for a stream (the answer is read whole), or,
    with ``needs_model`` (the job names no model), whose body names none."""
    route = urllib.parse.urlsplit(endpoint_url).path
    for path in paths:
        with contextlib.closing(open_records(path)) as file:
            line = 0
            for block in blocks(file, BLOCK_BYTES, quoted=False):
                for text in block.split(b"\n"):
                    line += 1
                    if line == 1 and text.startswith(BOM):
                        text = text[len(BOM) :]
                    if text.strip():
                        _check_line(path, line, text, route, needs_model)
                line -= 1  # a block ends with its newline: the empty piece after it is not a line


def looks_like_batch(path: str) -> bool:
    """Whether the JSON Lines file at ``path`` starts with a Batch API request line (its first
    record has ``custom_id``, ``method``, ``url`` and ``body``). Anything unreadable is not one:
    the reader reports it."""
    try:
        with contextlib.closing(open_records(path)) as file:
            for block in blocks(file, 1 << 16, quoted=False):
                for text in block.removeprefix(BOM).split(b"\n"):
                    if text.strip():
                        (record,) = json_records(text)
                        return all(name in record for name in FIELDS)
    except (OSError, BadRecord, ValueError):
        return False
    return False


def _check_line(path: str, line: int, text: bytes, route: str, needs_model: bool) -> None:
    where = f"input {path}, line {line}"
    try:
        (record,) = json_records(text)
    except BadRecord as exc:
        raise InputError(f"{where}: {exc}") from None
    missing = [name for name in FIELDS if name not in record]
    if missing:
        raise InputError(f"{where}: an openai-batch line needs {', '.join(FIELDS)} (no {missing[0]})")
    if not isinstance(record["custom_id"], str):
        raise InputError(f"{where}: custom_id is {json.dumps(record['custom_id'])}, not text")
    if record["method"] != "POST":
        raise InputError(f"{where}: method {json.dumps(record['method'])}: batchrun sends POST requests")
    url = record["url"]
    if not isinstance(url, str) or not url.startswith("/") or not route.endswith(url):
        raise InputError(f"{where}: url {json.dumps(url)} is not the endpoint's route ({route})")
    body = record["body"]
    if not isinstance(body, dict):
        raise InputError(f"{where}: body is not a JSON object")
    if body.get("stream"):
        raise InputError(f"{where}: the body asks for a stream; batchrun reads batch answers whole")
    if needs_model and not isinstance(body.get("model"), str):
        raise InputError(f"{where}: the body names no model (or set [endpoint] model)")


def output_line(
    custom_id: Any,
    request_key: str,
    status: str | None,
    http_status: int | None,
    error_kind: str | None,
    error: str | None,
    raw_response: str | None,
) -> dict[str, Any]:
    """One output line. ``id`` and ``request_id`` come from the request key: stable across exports,
    and batchrun does not keep the server's request id header."""
    line: dict[str, Any] = {"id": f"batch_req_{request_key[:32]}", "custom_id": custom_id}
    if status == "ok" and raw_response is not None:
        body = json.loads(raw_response)
        line["response"] = {"status_code": http_status or 200, "request_id": request_key[:32], "body": body}
        line["error"] = None
        return line
    line["response"] = None
    if status is None:
        line["error"] = {"code": "not_run", "message": "no result yet: run the job"}
    elif status == "ok":
        line["error"] = {"code": "no_raw_response", "message": "the answer's body was not kept (keep_raw_response)"}
    else:
        code = error_kind or "failed"
        line["error"] = {"code": code if http_status is None else f"{code}_{http_status}", "message": error or ""}
    return line
