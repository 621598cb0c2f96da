"""Reading a streamed (SSE) answer off the wire with httpx-sse, event by event.

httpx's read timeout applies to each read, so ``timeout_s`` bounds the silence between
chunks, not the length of the whole answer: a long generation that keeps flowing is never cut.
"""

from __future__ import annotations

import time

import httpx
from httpx_sse import EventSource

from ..endpoints.base import StreamAssembler
from ..models import Parsed


def is_event_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.partition(";")[0].strip() == "text/event-stream"


async def read_event_stream(response: httpx.Response, assembler: StreamAssembler, started: float) -> Parsed:
    """Feed every event to ``assembler`` until ``[DONE]`` or the end of the body."""
    async for sse in EventSource(response).aiter_sse():
        if assembler.feed(sse.event, sse.data, time.perf_counter()):
            break
    return assembler.result(started)
