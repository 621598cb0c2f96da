"""The composition root: job -> input table -> planner -> pool -> manifest writer.

Everything that can be checked is checked (``prepare``) before the output folder is touched or a
request sent.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, TextIO

import anyio
import httpx

from .cost import Budget, priced
from .dispatch.adaptive import AdaptiveConcurrency, AdaptiveRate
from .dispatch.call import Caller
from .dispatch.client import RedirectTransport, Sender, make_sender
from .dispatch.lanes import Lanes, LaneTally
from .dispatch.limits import CoolDown, Shared, Sleep, TokenBudget
from .dispatch.pool import HANDOFF, Call, Pool
from .dispatch.retry import RetryPolicy
from .dispatch.shutdown import deadline, stop_on, watch_signals
from .dispatch.stall import RefusalSpell
from .dispatch.wake import make_waker, scale_up_header
from .errors import ExitCode, JobError
from .export import remember_job
from .hfapi import require_installed
from .log import event
from .models import Request, Result
from .owner import JOB_POINTER
from .plan.feed import Feed, produce
from .plan.keyindex import INDEX_DIR
from .plan.occurrences import Occurrences
from .plan.planner import PlanCounts
from .plan.shape import completion_cap
from .prepare import add_counts, make_adapter, open_input, open_plan
from .progress import Progress
from .sink.files import make_folder, refuse_links, remove_temp_files
from .sink.fold import fold_journals
from .sink.images import ImageStore
from .sink.journal import JOURNAL_DIR
from .sink.layout import IMAGES_DIR
from .sink.lock import OutputLock
from .sink.manifest import MANIFEST_DIR, part_files
from .sink.recording import recording
from .sink.writer import ManifestWriter
from .spec import Job
from .summary import RunSummary

if TYPE_CHECKING:
    from .sink.remote import Mirror


def new_run_id() -> str:
    """The start time to the microsecond, then a random tag: the manifest parts of runs one after
    another sort in the order the runs were made, even within one second (the last row of a key
    decides whether it failed for good)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


@contextlib.asynccontextmanager
async def _simulator(job: Job, transport: httpx.AsyncBaseTransport | None) -> AsyncIterator[str | None]:
    """The built-in simulator is served on a loopback port for the run's duration (one for every
    simulated endpoint of the job); yields its address."""
    if transport is not None or not any(endpoint.simulated for endpoint in job.endpoints or (job.endpoint,)):
        yield None
        return
    from .simulator import create_app, serve

    async with serve(create_app()) as base_url:
        yield base_url


def _lane_transport(
    lane: Job, transport: httpx.AsyncBaseTransport | None, simulator: str | None
) -> httpx.AsyncBaseTransport | None:
    if transport is not None or simulator is None or not lane.endpoint.simulated:
        return transport
    from .dispatch.network import NetworkTransport

    return RedirectTransport(NetworkTransport(lane.limits.concurrency, tls=False), simulator)


def _summed(total: PlanCounts, feeds: list[Feed]) -> PlanCounts:
    """Every endpoint's plan counts added into ``total`` (the progress line reads it)."""
    for name in ("rows", "requests", "shared", "done", "done_failed", "skipped", "todo", "other_shards"):
        setattr(total, name, 0)
    for at, feed in enumerate(feeds):
        add_counts(total, feed.planner.counts, rows=at == 0)
    return total


async def _keep_summed(total: PlanCounts, feeds: list[Feed]) -> None:
    while True:
        _summed(total, feeds)
        await anyio.sleep(0.25)


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
    try:
        make_folder(job.output_dir)
    except OSError as exc:
        raise JobError(f"cannot create the output folder {job.output_dir}: {exc.strerror}") from None
    lock = OutputLock(job.output_dir, run_id, job.shard, while_alone=partial(_tidy, job))
    with lock, contextlib.ExitStack() as stack:
        refuse_links(job.output_dir, (MANIFEST_DIR, JOURNAL_DIR, IMAGES_DIR, INDEX_DIR, JOB_POINTER))
        if not lock.alone:  # other shards run: only this shard's journals are known to be dead
            await anyio.to_thread.run_sync(partial(fold_journals, job.output_dir, shard=job.shard.name))
        mirror = await anyio.to_thread.run_sync(_open_remote, job, run_id, stack) if job.remote else None
        await anyio.to_thread.run_sync(remember_job, job)
        if mirror is not None:
            await anyio.to_thread.run_sync(mirror.push_file, JOB_POINTER)
        lanes = job.lanes()
        feeds = []
        for lane in lanes:
            occurrences = Occurrences(total_rows * job.request.samples, folder=job.output_dir)
            stack.callback(occurrences.close)
            opened = partial(open_plan, lane, occurrences, retry_failed=retry_failed, note=True, limit=limit)
            feeds.append(await anyio.to_thread.run_sync(opened))
        counts = _summed(PlanCounts(), feeds) if job.several else feeds[0].planner.counts
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

        async with _simulator(job, transport) as simulator, contextlib.AsyncExitStack() as senders:
            callers = []
            for lane in lanes:
                sender = await senders.enter_async_context(_sender(lane, _lane_transport(lane, transport, simulator)))
                callers.append(_caller(lane, sender, sleep, Shared() if shared is None else shared(lane)))
                if (waker := callers[-1].waker) is not None:  # pause_after: however the run ends
                    senders.push_async_callback(waker.close)
            budget = Budget(job.max_cost, lambda: pools.stop(f"the budget of ${job.max_cost:g} is reached", grace_s))
            calls = [
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
            # half as many workers again as requests in flight: the caller's gate holds the limit, and
            # a worker waiting out a retry (a 429's Retry-After, a 500's backoff) leaves its slot to
            # another; with 2 % 429s and 5 % 500s, 32 workers spent a third of the run waiting
            pools = Lanes(
                [lane.endpoint.name for lane in lanes],
                [
                    Pool(call, lane.limits.concurrency, workers=lane.limits.concurrency + lane.limits.concurrency // 2)
                    for call, lane in zip(calls, lanes, strict=True)
                ],
            )
            tally = LaneTally()
            on_result = progress.on_result
            if job.several:
                names = pools.names
                progress.notes = lambda: tally.describe(
                    names, [c.describe() for c in callers], time.monotonic() - started
                )

                def on_result(result: Result) -> None:
                    tally.on_result(result)
                    progress.on_result(result)
            else:
                progress.notes = callers[0].describe
            progress.activity = lambda: (sum(c.in_flight for c in callers), sum(c.retries for c in callers))
            concurrency = sum(lane.limits.concurrency for lane in lanes)
            results_send, results_receive = anyio.create_memory_object_stream[Result](concurrency * 2)
            exact = all(feed.covered >= total_rows for feed in feeds) or not part_files(job.output_dir)  # else: up to
            exact = exact and not job.shard.sharded  # a shard learns which requests are its own as it plans
            if job.shard.sharded and not quiet:
                event(job.shard.describe(), event="shard", shard=job.shard.name)
            where = job.remote.url if job.remote is not None else job.output_dir  # a bucket: its URL, not staging
            progress.start(job.name, where, rows=total_rows, exact=exact)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(writer.consume, results_receive, on_result, stop_on(pools))
                    async with anyio.create_task_group() as watchers:
                        watchers.start_soon(progress.tick)
                        if job.several:
                            watchers.start_soon(_keep_summed, counts, feeds)
                        if handle_signals:
                            watchers.start_soon(watch_signals, pools, grace_s)
                        if max_runtime_s is not None:
                            watchers.start_soon(deadline, pools, max_runtime_s - (time.monotonic() - started), grace_s)
                        producers = [partial(produce, feed, table, handoff=HANDOFF) for feed in feeds]
                        await pools.run(producers, results_send)
                        watchers.cancel_scope.cancel()
            finally:
                if job.several:
                    _summed(counts, feeds)
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

    urls = {lane.endpoint.name: lane.endpoint.url for lane in lanes}
    fatal = "; ".join(f"{name} ({urls[name]}) answered: {answer}" for name, answer in pools.closed()) or None
    if pools.incomplete:
        code = ExitCode.INCOMPLETE
    elif progress.failed or counts.done_failed:
        code = ExitCode.FAILED_ROWS
    else:
        code = ExitCode.OK
    return RunSummary(
        run_id=run_id,
        counts=counts,
        stale=_stale(feeds, counts),
        sent=sum(c.attempts for c in callers),
        ok=progress.ok,
        failed=progress.failed,
        previously_failed=counts.done_failed,
        elapsed_s=time.monotonic() - started,
        fatal=fatal,
        stopped=None if fatal else pools.stopped or next((p.stopped for p in pools.pools if p.stopped), None),
        exit_code=code,
        notes="; ".join(note for note in (progress.notes(), _spend(job, budget)) if note),
        job=job.name,
        output=str(job.output_dir),
        causes=progress.failures.causes(),
    )


def _open_remote(job: Job, run_id: str, stack: contextlib.ExitStack) -> Mirror:
    """An output on object storage: its lease (released when the run ends), then the parts the
    bucket has come down and those it lacks go up (blocking)."""
    from .sink.lease import open_remote
    from .sink.remote import Mirror

    assert job.remote is not None
    mirror = Mirror(job.remote)
    stack.callback(open_remote(mirror, run_id, job.shard).release)
    return mirror


def _tidy(job: Job) -> None:
    """While no other run (or shard) holds the folder: a killed run's temp files, and every shard's
    journals (a killed run's last results), whatever N it ran with."""
    refuse_links(job.output_dir, (MANIFEST_DIR, JOURNAL_DIR, IMAGES_DIR, INDEX_DIR, JOB_POINTER))
    remove_temp_files(job.output_dir)
    fold_journals(job.output_dir, shard=None)


def _spend(job: Job, budget: Budget) -> str:
    """The spend, for the summary line, when the job prices its endpoints or has a budget."""
    priced = job.max_cost is not None or any(e.price is not None for e in job.endpoints or (job.endpoint,))
    return budget.describe() if priced else ""


def _stale(feeds: list[Feed], counts: PlanCounts) -> int:
    """Done keys no endpoint asks for: every endpoint's plan reads all of them."""
    first = feeds[0]
    return max(0, first.stale + first.planner.counts.done - counts.done)


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
