"""A request's send while the endpoint may be asleep (``wake.Waker``): the path a cold endpoint
takes, apart from the warm one every request takes once it is awake."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..errors import RequestError
from ..models import Parsed, Request
from .inflight import _SLOT
from .wake import ColdStart, Waker

#: ``Caller._send``: one exchange after the limits and the cool-down, the answer and its latency.
Send = Callable[[Request], Awaitable[tuple[Parsed, float]]]


async def send_waking(send: Send, request: Request, waker: Waker) -> tuple[Parsed, float]:
    """``send`` while the endpoint may be asleep: one request at a time probes it (after waking
    it through the management API), the others wait at the gate until it has answered. The
    prober's cold-start 503s are sent again after a wait, in the same attempt."""
    if not await at_gate(waker):
        return await send(request)  # awake by now
    try:
        await waker.prepare()
        while True:
            try:
                answer = await send(request)
            except ColdStart as cold:
                # it keeps its place in flight: the one request the endpoint is asked while cold
                await waker.cold(cold.retry_after)
                continue
            except RequestError as exc:
                if exc.http_status is not None:  # an answer, if not the one hoped for
                    waker.answered()
                raise
            waker.answered()
            return answer
    finally:
        waker.leave()


async def at_gate(waker: Waker) -> bool:
    """``waker.enter()`` without a place in flight: nothing is sent while waiting there."""
    slot = _SLOT.get(None)
    if slot is None or not slot.held:
        return await waker.enter()
    probing = False

    async def enter(_: float) -> None:
        nonlocal probing
        probing = await waker.enter()

    await slot.away(enter, 0.0)
    return probing
