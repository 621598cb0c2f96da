"""What a run says: its progress (the lanes' counts, notes and activity), its start line, and the
summary it ends with (counts, exit code, why it stopped)."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from .cost import Budget
from .dispatch.call import Caller
from .dispatch.lanes import Lanes, LaneTally
from .errors import ExitCode
from .log import event
from .models import Result
from .plan.feed import Feed
from .plan.planner import PlanCounts
from .prepare import add_counts
from .progress import Progress
from .sink.manifest import part_files
from .spec import Job
from .summary import RunSummary


def summed(total: PlanCounts, feeds: list[Feed]) -> PlanCounts:
    """Every endpoint's plan counts added into ``total`` (the progress line reads it)."""
    for name in ("rows", "requests", "shared", "done", "done_failed", "skipped", "todo", "other_shards"):
        setattr(total, name, 0)
    for at, feed in enumerate(feeds):
        add_counts(total, feed.planner.counts, rows=at == 0)
    return total


async def keep_summed(total: PlanCounts, feeds: list[Feed]) -> None:
    while True:
        summed(total, feeds)
        await anyio.sleep(0.25)


def watch_lanes(
    progress: Progress, job: Job, pools: Lanes, callers: list[Caller], started: float
) -> Callable[[Result], None]:
    """The progress line's notes (each lane's, for several) and activity (in flight, retrying) read
    from the callers; returns what each result is given to (the lanes' tally too, for several)."""
    tally = LaneTally()
    on_result = progress.on_result
    if job.several:
        names = pools.names
        progress.notes = lambda: tally.describe(names, [c.describe() for c in callers], time.monotonic() - started)

        def on_result(result: Result) -> None:
            tally.on_result(result)
            progress.on_result(result)
    else:
        progress.notes = callers[0].describe
    progress.activity = lambda: (sum(c.in_flight for c in callers), sum(c.retries for c in callers))
    return on_result


def announce(progress: Progress, job: Job, feeds: list[Feed], total_rows: int, *, quiet: bool) -> None:
    """The start line, before the first request: rows, to do (exact, or "up to" while the plan
    index does not cover the table), the shard."""
    exact = all(feed.covered >= total_rows for feed in feeds) or not part_files(job.output_dir)  # else: up to
    exact = exact and not job.shard.sharded  # a shard learns which requests are its own as it plans
    if job.shard.sharded and not quiet:
        event(job.shard.describe(), event="shard", shard=job.shard.name)
    where = job.remote.url if job.remote is not None else job.output_dir  # a bucket: its URL, not staging
    progress.start(job.name, where, rows=total_rows, exact=exact)


def summarize(
    job: Job,
    *,
    run_id: str,
    lanes: list[Job],
    feeds: list[Feed],
    counts: PlanCounts,
    callers: list[Caller],
    pools: Lanes,
    progress: Progress,
    budget: Budget,
    started: float,
) -> RunSummary:
    """The run's summary: its counts, why it stopped (a fatal answer names the endpoint and its
    URL), its exit code."""
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


def _spend(job: Job, budget: Budget) -> str:
    """The spend, for the summary line, when the job prices its endpoints or has a budget."""
    priced = job.max_cost is not None or any(e.price is not None for e in job.endpoints or (job.endpoint,))
    return budget.describe() if priced else ""


def _stale(feeds: list[Feed], counts: PlanCounts) -> int:
    """Done keys no endpoint asks for: every endpoint's plan reads all of them."""
    first = feeds[0]
    return max(0, first.stale + first.planner.counts.done - counts.done)
