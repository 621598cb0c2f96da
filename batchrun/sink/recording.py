"""What the pool's workers call: the request sent (or its image adopted), then the result made
durable before the worker takes another request, so a kill loses at most one answer per worker,
the one in flight (issue 14)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from ..models import Request, Result
from .images import ImageStore
from .journal import Journal

Call = Callable[[Request], Awaitable[Result]]


def recording(caller: Call, store: ImageStore, journal: Journal, *, images: bool) -> Call:
    """``caller``, and then: images reach the disk, whole, before their result; every result reaches
    the journal before its worker takes the next request. With ``images``, an image that a killed
    run saved but never recorded is adopted instead of sent."""

    def save(result: Result) -> Result:
        result = store.save(result)
        journal.add(result)
        return result

    def adopt(request: Request, path: Path) -> Result | None:
        result = store.adopt(request, path)
        if result is not None:
            journal.add(result)
        return result

    async def call(request: Request) -> Result:
        if images and (path := store.find(request.key)) is not None:
            adopted = await anyio.to_thread.run_sync(adopt, request, path)
            if adopted is not None:
                return adopted
        result = await caller(request)
        if result.parsed is not None and result.parsed.image is not None:
            return await anyio.to_thread.run_sync(save, result)
        # The results that finish in one turn of the event loop go out in one write() at its end
        # (a write per result took 4.7 % of a run's samples at concurrency 256, this 1.6 %): the
        # callback queued by the first of them runs before any of their workers comes back from
        # this yield (the loop's ready queue is first in, first out), so none sends again before
        # its result is written.
        if journal.note(result):
            asyncio.get_running_loop().call_soon(journal.write_noted)
        await asyncio.sleep(0)  # not anyio's checkpoint: it looks up the current task, 2 % of a run
        if journal.error is not None:
            raise journal.error
        return result

    return call
