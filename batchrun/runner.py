"""The composition root: job -> input table -> planner -> pool -> manifest writer.

Everything that can be checked is checked (``prepare``) before the output folder is touched or a
request sent.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from typing import TextIO

import anyio
import httpx

from .dispatch.adaptive import AdaptiveConcurrency, AdaptiveRate
from .dispatch.call import Caller
from .dispatch.client import RedirectTransport, Sender, make_sender
from .dispatch.limits import CoolDown, Sleep, TokenBudget
from .dispatch.pool import HANDOFF, Call, Pool
from .dispatch.retry import RetryPolicy
from .dispatch.shutdown import deadline, stop_on, watch_signals
from .errors import ExitCode, JobError
from .export import remember_job
from .log import event
from .models import Request, Result
from .owner import JOB_POINTER
from .plan.feed import produce
from .plan.keyindex import INDEX_DIR
from .plan.occurrences import Occurrences
from .plan.shape import completion_cap
from .prepare import make_adapter, open_input, open_plan
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


def new_run_id() -> str:
    """The start time to the microsecond, then a random tag: the manifest parts of runs one after
    another sort in the order the runs were made, even within one second (the last row of a key
    decides whether it failed for good)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


@contextlib.asynccontextmanager
async def _endpoint_transport(
    job: Job, transport: httpx.AsyncBaseTransport | None
) -> AsyncIterator[httpx.AsyncBaseTransport | None]:
    """The built-in simulator is served on a loopback port for the run's duration."""
    if transport is not None or not job.endpoint.simulated:
        yield transport
        return
    from .dispatch.network import NetworkTransport
    from .simulator import create_app, serve

    async with serve(create_app()) as base_url:
        yield RedirectTransport(NetworkTransport(job.limits.concurrency, tls=False), base_url)


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
) -> RunSummary:
    """Run ``job`` to the end, or until a signal, the deadline or a fatal error stops it."""
    started = time.monotonic()
    table, total_rows = await anyio.to_thread.run_sync(open_input, job)
    run_id = new_run_id()
    try:
        make_folder(job.output_dir)
    except OSError as exc:
        raise JobError(f"cannot create the output folder {job.output_dir}: {exc.strerror}") from None
    with OutputLock(job.output_dir, run_id), contextlib.ExitStack() as stack:
        refuse_links(job.output_dir, (MANIFEST_DIR, JOURNAL_DIR, IMAGES_DIR, INDEX_DIR, JOB_POINTER))
        await anyio.to_thread.run_sync(remove_temp_files, job.output_dir)
        await anyio.to_thread.run_sync(fold_journals, job.output_dir)  # a killed run's last results
        await anyio.to_thread.run_sync(remember_job, job)
        occurrences = Occurrences(total_rows * job.request.samples, folder=job.output_dir)
        stack.callback(occurrences.close)
        feed = await anyio.to_thread.run_sync(lambda: open_plan(job, occurrences, retry_failed=retry_failed, note=True))
        planner = feed.planner
        progress = Progress(
            total_rows * job.request.samples,
            plan=planner.counts,
            stream=progress_stream,
            interactive=interactive,
            quiet=quiet,
        )
        store = ImageStore(job.output_dir)
        writer = ManifestWriter(
            job.output_dir,
            run_id=run_id,
            endpoint=job.endpoint.name,
            flush_rows=job.sink.flush_rows,
            flush_seconds=job.sink.flush_seconds,
            before_part=store.sync,
            keep_request=job.sink.keep_request,
        )

        async with _endpoint_transport(job, transport) as chosen, _sender(job, chosen) as sender:
            caller = _caller(job, sender, sleep)
            progress.notes = caller.describe
            call = _in_flight(caller, recording(caller, store, writer.journal, images=caller.adapter.decodes_images))
            # half as many workers again as requests in flight: the caller's gate holds the limit, and
            # a worker waiting out a retry (a 429's Retry-After, a 500's backoff) leaves its slot to
            # another; with 2 % 429s and 5 % 500s, 32 workers spent a third of the run waiting
            concurrency = job.limits.concurrency
            pool = Pool(call, concurrency, workers=concurrency + concurrency // 2)
            progress.activity = lambda: (caller.in_flight, caller.retries)
            results_send, results_receive = anyio.create_memory_object_stream[Result](job.limits.concurrency * 2)
            exact = feed.covered >= total_rows or not part_files(job.output_dir)  # else: up to
            progress.start(job.name, job.output_dir, rows=total_rows, exact=exact)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(writer.consume, results_receive, progress.on_result, stop_on(pool))
                    async with anyio.create_task_group() as watchers:
                        watchers.start_soon(progress.tick)
                        if handle_signals:
                            watchers.start_soon(watch_signals, pool, grace_s)
                        if max_runtime_s is not None:
                            watchers.start_soon(deadline, pool, max_runtime_s - (time.monotonic() - started), grace_s)
                        await pool.run(partial(produce, feed, table, handoff=HANDOFF), results_send)
                        watchers.cancel_scope.cancel()
            finally:
                progress.stop()
        for error in (writer.error, pool.error):
            if error is not None:
                raise error
        if store.adopted or store.discarded:
            event(
                f"{store.adopted} images found on disk were recorded without a request"
                + (f"; {store.discarded} failed the check and were requested again" if store.discarded else ""),
                adopted=store.adopted,
                discarded=store.discarded,
            )

    counts = planner.counts
    fatal = f"{job.endpoint.name} ({job.endpoint.url}) answered: {pool.fatal}" if pool.fatal else None
    if pool.stopped is not None:
        code = ExitCode.INCOMPLETE
    elif progress.failed or counts.done_failed:
        code = ExitCode.FAILED_ROWS
    else:
        code = ExitCode.OK
    return RunSummary(
        run_id=run_id,
        counts=counts,
        stale=feed.stale,
        sent=caller.attempts,
        ok=progress.ok,
        failed=progress.failed,
        previously_failed=counts.done_failed,
        elapsed_s=time.monotonic() - started,
        fatal=fatal,
        stopped=None if fatal else pool.stopped,
        exit_code=code,
        notes=caller.describe(),
        job=job.name,
        output=str(job.output_dir),
        causes=progress.failures.causes(),
    )


def _in_flight(caller: Caller, call: Call) -> Call:
    """Each request holds its place in flight from its first send until its result is recorded."""

    async def gated(request: Request) -> Result:
        async with caller.slot():
            return await call(request)

    return gated


def _sender(job: Job, transport: httpx.AsyncBaseTransport | None) -> Sender:
    return make_sender(
        job.endpoint, concurrency=job.limits.concurrency, timeout_s=job.limits.timeout_s, transport=transport
    )


def _caller(job: Job, sender: Sender, sleep: Sleep) -> Caller:
    return Caller(
        sender,
        make_adapter(job),
        policy=RetryPolicy(max_attempts=job.limits.max_attempts, max_wait=job.limits.max_retry_wait_s),
        rate=AdaptiveRate(job.limits.requests_per_minute),
        concurrency=AdaptiveConcurrency(job.limits.concurrency),
        tokens=TokenBudget(job.limits.tokens_per_minute) if job.limits.tokens_per_minute else None,
        completion_tokens=completion_cap(job),
        cooldown=CoolDown(),
        sleep=sleep,
        secrets=job.endpoint.secrets(),
    )
