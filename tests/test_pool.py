"""The worker pool alone: requests arrive in batches, yet every worker stays busy while any wait."""

from __future__ import annotations

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream

from batchrun.dispatch.pool import HANDOFF, Pool
from batchrun.models import Request, Result

pytestmark = pytest.mark.anyio


def request(i: int) -> Request:
    return Request(f"{i:064x}", None, i, 0, "POST", "http://x/v1", b"{}", "m")


class Gate:
    """A call that holds every request until ``concurrency`` of them are in flight at once."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.in_flight = 0
        self.most = 0
        self.full = anyio.Event()
        self.seen: list[int] = []

    async def __call__(self, req: Request) -> Result:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        self.seen.append(req.row_index)
        if self.in_flight >= self.concurrency:
            self.full.set()
        await self.full.wait()
        self.in_flight -= 1
        return Result(req, "ok", 1, 0.0, 0.0)


async def run_pool(pool: Pool, batches: list[list[Request]]) -> list[int]:
    async def produce(send: MemoryObjectSendStream[list[Request]]) -> None:
        for batch in batches:
            await send.send(batch)

    send, receive = anyio.create_memory_object_stream[Result](1000)
    with anyio.fail_after(10):
        await pool.run(produce, send)
    async with receive:
        return [r.request.row_index async for r in receive]


async def test_one_batch_fills_every_worker() -> None:
    gate = Gate(concurrency=8)
    pool = Pool(gate, concurrency=8)
    done = await run_pool(pool, [[request(i) for i in range(HANDOFF)]])  # the producer ends at once
    assert gate.most == 8  # not one worker taking the batch while the others saw the stream end
    assert sorted(done) == list(range(HANDOFF)) and gate.seen == list(range(HANDOFF))
    assert "ready=0" in repr(pool)


async def test_every_request_is_sent_once_in_order_of_the_batches() -> None:
    gate = Gate(concurrency=4)
    pool = Pool(gate, concurrency=4)
    batches = [[request(i) for i in range(start, min(start + 5, 23))] for start in range(0, 23, 5)]
    done = await run_pool(pool, batches)
    assert gate.seen == list(range(23)) and sorted(done) == list(range(23))
    assert gate.most == 4


async def test_a_stopped_pool_sends_nothing_more_from_the_batch_at_hand() -> None:
    sent: list[int] = []
    pool: Pool

    async def call(req: Request) -> Result:
        sent.append(req.row_index)
        if len(sent) == 3:
            pool.stop("test", grace=5)
        await anyio.lowlevel.checkpoint()
        return Result(req, "ok", 1, 0.0, 0.0)

    pool = Pool(call, concurrency=1)
    done = await run_pool(pool, [[request(i) for i in range(HANDOFF)]])
    assert sent == [0, 1, 2] and done == [0, 1, 2] and pool.stopped == "test"
