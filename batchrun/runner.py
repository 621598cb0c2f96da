"""The composition root: job -> input table -> planner -> pool -> manifest writer.

Everything that can be checked is checked (``prepare``) before the output folder is touched or a
request sent. The output folder's setup is ``runfolder``, each lane's parts (feed, sender, caller,
pool) ``runlanes``, what the run says (progress, start line, summary) ``runprogress``.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TextIO

import anyio
import httpx

from .cost import Budget
from .dispatch.limits import Shared, Sleep
from .dispatch.pool import HANDOFF
from .dispatch.shutdown import deadline, stop_on, watch_signals
from .hfapi import require_installed
from .log import event
from .models import Result
from .plan.feed import produce
from .plan.planner import PlanCounts
from .prepare import open_input
from .progress import Progress
from .runfolder import folder_lock, settle_folder
from .runlanes import lane_calls, lane_pools, open_callers, open_feeds, simulator_for
from .runprogress import announce, keep_summed, summarize, summed, watch_lanes
from .sink.images import ImageStore
from .sink.writer import ManifestWriter
from .spec import Job
from .summary import RunSummary

__all__ = ["RunSummary", "new_run_id", "run_job"]


def new_run_id() -> str:
    """The start time to the microsecond, then a random tag: the manifest parts of runs one after
    another sort in the order the runs were made, even within one second (the last row of a key
    decides whether it failed for good)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


async def run_job(
    job: Job,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    retry_failed: bool = False,
    sleep: Sleep = anyio.sleep,
    progress_stream: TextIO | None = None,
    interactive: bool | None = None,
    quiet: bool = False,
    grace_s: float = 30.0,
    max_runtime_s: float | None = None,
    handle_signals: bool = False,
    limit: int | None = None,
    shared: Callable[[Job], Shared] | None = None,
    observe: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Run ``job`` to the end, or until a signal, the deadline or a fatal error stops it.
    ``shared``: a lane's job-wide limits (``--ray``), in place of its share of them;
    ``observe`` is given the run's progress (its counts, read by whoever reports them)."""
    started = time.monotonic()
    if any(e.wake is not None and e.wake.hf_endpoint for e in job.endpoints or (job.endpoint,)):
        require_installed(str(job.path))
    table, total_rows = await anyio.to_thread.run_sync(open_input, job)
    if limit is not None:
        total_rows = min(total_rows, limit)
    run_id = new_run_id()
    lock = folder_lock(job, run_id)
    with lock, contextlib.ExitStack() as stack:
        mirror = await settle_folder(job, run_id, lock, stack)
        lanes = job.lanes()
        feeds = await open_feeds(job, lanes, total_rows, stack, retry_failed=retry_failed, limit=limit)
        counts = summed(PlanCounts(), feeds) if job.several else feeds[0].planner.counts
        progress = Progress(
            total_rows * job.request.samples * len(lanes),
            plan=counts,
            stream=progress_stream,
            interactive=interactive,
            quiet=quiet,
        )
        if observe is not None:
            observe(progress)
        store = ImageStore(job.output_dir)
        writer = ManifestWriter(
            job.output_dir,
            run_id=run_id,
            shard=job.shard.name,
            endpoint=job.endpoint.name,
            flush_rows=job.sink.flush_rows,
            flush_seconds=job.sink.flush_seconds,
            before_part=store.sync,
            keep_request=job.sink.keep_request,
            after_part=None if mirror is None else mirror.part_written,
        )

        async with simulator_for(job, transport) as simulator, contextlib.AsyncExitStack() as senders:
            callers = await open_callers(lanes, transport, simulator, senders, sleep, shared)
            budget = Budget(job.max_cost, lambda: pools.stop(f"the budget of ${job.max_cost:g} is reached", grace_s))
            pools = lane_pools(lanes, lane_calls(callers, lanes, store, writer, budget))
            on_result = watch_lanes(progress, job, pools, callers, started)
            concurrency = sum(lane.limits.concurrency for lane in lanes)
            results_send, results_receive = anyio.create_memory_object_stream[Result](concurrency * 2)
            announce(progress, job, feeds, total_rows, quiet=quiet)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(writer.consume, results_receive, on_result, stop_on(pools))
                    async with anyio.create_task_group() as watchers:
                        watchers.start_soon(progress.tick)
                        if job.several:
                            watchers.start_soon(keep_summed, counts, feeds)
                        if handle_signals:
                            watchers.start_soon(watch_signals, pools, grace_s)
                        if max_runtime_s is not None:
                            watchers.start_soon(deadline, pools, max_runtime_s - (time.monotonic() - started), grace_s)
                        producers = [partial(produce, feed, table, handoff=HANDOFF) for feed in feeds]
                        await pools.run(producers, results_send)
                        watchers.cancel_scope.cancel()
            finally:
                if job.several:
                    summed(counts, feeds)
                progress.stop()
        for error in (writer.error, pools.error):
            if error is not None:
                raise error
        if store.adopted or store.discarded:
            event(
                f"{store.adopted} images found on disk were recorded without a request"
                + (f"; {store.discarded} failed the check and were requested again" if store.discarded else ""),
                adopted=store.adopted,
                discarded=store.discarded,
            )

    return summarize(
        job,
        run_id=run_id,
        lanes=lanes,
        feeds=feeds,
        counts=counts,
        callers=callers,
        pools=pools,
        progress=progress,
        budget=budget,
        started=started,
    )
