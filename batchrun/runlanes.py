"""A run's lanes (one an endpoint): each lane's plan feed, transport, sender, caller, recorded call
and worker pool."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial

import anyio
import httpx

from .cost import Budget, priced
from .dispatch.adaptive import AdaptiveRate
from .dispatch.call import Caller
from .dispatch.client import RedirectTransport, Sender, make_sender
from .dispatch.inflight import AdaptiveConcurrency
from .dispatch.lanes import Lanes
from .dispatch.limits import CoolDown, Shared, Sleep, TokenBudget
from .dispatch.pool import Call, Pool
from .dispatch.retry import RetryPolicy
from .dispatch.stall import RefusalSpell
from .dispatch.wake import make_waker, scale_up_header
from .models import Request, Result
from .plan.feed import Feed
from .plan.occurrences import Occurrences
from .plan.shape import completion_cap
from .prepare import make_adapter, open_plan
from .sink.images import ImageStore
from .sink.recording import recording
from .sink.writer import ManifestWriter
from .spec import Job


async def open_feeds(
    job: Job,
    lanes: list[Job],
    total_rows: int,
    stack: contextlib.ExitStack,
    *,
    retry_failed: bool,
    limit: int | None,
) -> list[Feed]:
    """Each lane's plan (done keys, plan index, the feed of its requests), opened in a worker thread;
    their occurrence counts are closed by ``stack``."""
    feeds = []
    for lane in lanes:
        occurrences = Occurrences(total_rows * job.request.samples, folder=job.output_dir)
        stack.callback(occurrences.close)
        opened = partial(open_plan, lane, occurrences, retry_failed=retry_failed, note=True, limit=limit)
        feeds.append(await anyio.to_thread.run_sync(opened))
    return feeds


@contextlib.asynccontextmanager
async def simulator_for(job: Job, transport: httpx.AsyncBaseTransport | None) -> AsyncIterator[str | None]:
    """The built-in simulator is served on a loopback port for the run's duration (one for every
    simulated endpoint of the job); yields its address."""
    if transport is not None or not any(endpoint.simulated for endpoint in job.endpoints or (job.endpoint,)):
        yield None
        return
    from .simulator import create_app, serve

    async with serve(create_app()) as base_url:
        yield base_url


async def open_callers(
    lanes: list[Job],
    transport: httpx.AsyncBaseTransport | None,
    simulator: str | None,
    senders: contextlib.AsyncExitStack,
    sleep: Sleep,
    shared: Callable[[Job], Shared] | None,
) -> list[Caller]:
    """Each lane's caller, its sender closed by ``senders``, and its endpoint paused there
    (``pause_after``) however the run ends."""
    callers = []
    for lane in lanes:
        sender = await senders.enter_async_context(_sender(lane, _lane_transport(lane, transport, simulator)))
        callers.append(_caller(lane, sender, sleep, Shared() if shared is None else shared(lane)))
        if (waker := callers[-1].waker) is not None:  # pause_after: however the run ends
            senders.push_async_callback(waker.close)
    return callers


def lane_calls(
    callers: list[Caller], lanes: list[Job], store: ImageStore, writer: ManifestWriter, budget: Budget
) -> list[Call]:
    """What a worker calls for one request of each lane: priced against the budget, sent (or its image
    adopted from disk), journaled, all while holding its place in flight."""
    return [
        _in_flight(
            c,
            recording(
                priced(c, lane.endpoint.price, completion_cap(lane), budget),
                store,
                writer.journal,
                images=c.adapter.decodes_images,
            ),
        )
        for c, lane in zip(callers, lanes, strict=True)
    ]


def lane_pools(lanes: list[Job], calls: list[Call]) -> Lanes:
    # half as many workers again as requests in flight: the caller's gate holds the limit, and
    # a worker waiting out a retry (a 429's Retry-After, a 500's backoff) leaves its slot to
    # another; with 2 % 429s and 5 % 500s, 32 workers spent a third of the run waiting
    return Lanes(
        [lane.endpoint.name for lane in lanes],
        [
            Pool(call, lane.limits.concurrency, workers=lane.limits.concurrency + lane.limits.concurrency // 2)
            for call, lane in zip(calls, lanes, strict=True)
        ],
    )


def _lane_transport(
    lane: Job, transport: httpx.AsyncBaseTransport | None, simulator: str | None
) -> httpx.AsyncBaseTransport | None:
    if transport is not None or simulator is None or not lane.endpoint.simulated:
        return transport
    from .dispatch.network import NetworkTransport

    return RedirectTransport(NetworkTransport(lane.limits.concurrency, tls=False), simulator)


def _in_flight(caller: Caller, call: Call) -> Call:
    """Each request holds its place in flight from its first send until its result is recorded."""

    async def gated(request: Request) -> Result:
        async with caller.slot():
            return await call(request)

    return gated


def _sender(job: Job, transport: httpx.AsyncBaseTransport | None) -> Sender:
    endpoint = job.endpoint
    if wake := scale_up_header(endpoint, job.limits.timeout_s):
        endpoint = replace(endpoint, headers={**endpoint.headers, **wake})
    limits = job.limits
    return make_sender(endpoint, concurrency=limits.concurrency, timeout_s=limits.timeout_s, transport=transport)


def _caller(job: Job, sender: Sender, sleep: Sleep, shared: Shared) -> Caller:
    own = None if shared.rate is not None else job.shard.share(job.limits.requests_per_minute)
    tokens = shared.tokens
    if tokens is None and (tpm := job.limits.tokens_per_minute):
        tokens = TokenBudget(tpm / job.shard.count)
    return Caller(
        sender,
        make_adapter(job),
        policy=RetryPolicy(max_attempts=job.limits.max_attempts, max_wait=job.limits.max_retry_wait_s),
        rate=AdaptiveRate(own, shared=shared.rate, share=job.shard.sharded),
        concurrency=AdaptiveConcurrency(job.limits.concurrency),
        tokens=tokens,
        completion_tokens=completion_cap(job),
        cooldown=CoolDown(),
        sleep=sleep,
        secrets=job.endpoint.secrets(),
        waker=make_waker(job.endpoint, sleep),
        stall=RefusalSpell(job.limits.give_up_after),
    )
