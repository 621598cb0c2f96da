"""One shard's limiter (``--shard K/N``): N of them add up, so each keeps to its share of every
second, not its share plus one (N extra sends in one second after a stall of the whole machine)."""

from __future__ import annotations

import time

import anyio
import pytest
from helpers import most_in_one_second

from batchrun.dispatch.adaptive import AdaptiveRate
from batchrun.dispatch.limits import SmoothRate

pytestmark = pytest.mark.anyio


async def late_wakers(rate: SmoothRate) -> list[float]:
    """32 workers; the loop blocks once, so ~80 reserved slots wake together: the limiter's own
    times of 1,500 grants."""
    grants: list[float] = []

    async def worker() -> None:
        while len(grants) < 1500:
            await rate.acquire()
            grants.append(rate._sent[-1])  # what acquire just took: no await in between
            if len(grants) == 300:
                time.sleep(0.08)

    async with anyio.create_task_group() as tg:
        for _ in range(32):
            tg.start_soon(worker)
    return grants


async def test_a_shares_second_holds_its_share_and_no_more() -> None:
    grants = await late_wakers(SmoothRate(60_000, share=True))  # 1,000 a second
    assert len(grants) >= 1500 and most_in_one_second(grants) <= 1000


def test_a_shards_adaptive_rate_stays_a_share_when_cut() -> None:
    rate = AdaptiveRate(300, share=True)
    assert rate._limiter is not None and rate._limiter._sent.maxlen == 5
    rate._set(240)  # cut after 429s: still a share
    assert rate._limiter is not None and rate._limiter._sent.maxlen == 4
    assert AdaptiveRate(300)._limiter._sent.maxlen == 6  # type: ignore[union-attr]  # alone: may catch up by one
