"""A job's shards as Ray tasks (issue 19): ``batchrun run job.toml --ray [ADDRESS]``.

The driver starts a local Ray (no address) or joins a cluster (``auto`` or an address), starts one
small actor, the ``Coordinator``, and N tasks; task K runs shard K/N of the job in its worker: the
same run as ``--shard K/N``, called in-process.

- A task whose worker dies is run again by Ray (``max_retries``); the new run resumes from the
  manifest and folds the dead run's journal (the kernel released the dead process's shard lock),
  so what finished is never sent again and only what was in flight is.
- One rate for the whole job: the coordinator keeps each endpoint's ``SlotSchedule``; a shard
  draws send slots a quarter of a second's worth at a time (``SlotBatches``), so the actor is
  called a few times a second, not per request. Slots handed to a worker that dies are lost:
  the job stays under its limit. ``tokens_per_minute`` likewise, in chunks of a quarter second's
  tokens (``TokenGrants``).
- Progress: each shard reports its counts to the coordinator every half second; the driver prints
  one line for the job and, at the end, each shard's summary and their sum.

Secrets never travel through Ray (task arguments are kept by its control store, and its object
store may spill to disk): each worker reads the job file and the key's environment variable itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio

from .dispatch.limits import Shared, SlotBatches, SlotSchedule, TokenGrants
from .errors import BatchrunError, ExitCode
from .progress import Progress
from .rayconnect import connect, import_ray
from .raystate import Coordinator, Outcome, ShardCounts, Snapshot
from .report.last_run import note_last_run
from .runner import run_job
from .shard import Shard
from .spec import Job, load_job
from .summary import RunSummary

SLOT_WINDOW_S = 0.25  # one batch of send slots: this long at the job's rate (10/s: 2 slots a call)
MAX_BATCH = 64
REPORT_S = 0.5
TASK_RETRIES = 3  # a shard whose worker dies is run again this many times


@dataclass(frozen=True, slots=True)
class Options:
    """What the command line says about the run, for every shard."""

    retry_failed: bool = False
    grace_s: float = 30.0
    max_runtime_s: float | None = None
    limit: int | None = None
    max_cost: float | None = None  # each shard's part


def _rates(job: Job) -> dict[str, float]:
    """Each endpoint's job-wide limits, by schedule name: ``<endpoint>`` requests, ``<endpoint>#tokens``."""
    rates: dict[str, float] = {}
    for lane in job.lanes():
        if rpm := lane.limits.requests_per_minute:
            rates[lane.endpoint.name] = rpm
        if tpm := lane.limits.tokens_per_minute:
            rates[f"{lane.endpoint.name}#tokens"] = tpm
    return rates


def _shared(coordinator: Any, rates: dict[str, float]) -> Callable[[Job], Shared]:
    def shared(lane: Job) -> Shared:
        name = lane.endpoint.name
        rate, tokens = rates.get(name), rates.get(f"{name}#tokens")
        pacer, meter = None, None
        if rate is not None:

            async def slots(count: int) -> list[float]:
                delays: list[float] = await coordinator.slots.remote(name, count)
                return delays

            batch = max(1, min(MAX_BATCH, int(rate / 60 * SLOT_WINDOW_S)))
            pacer = SlotBatches(slots, batch, SlotSchedule(rate).interval)
        if tokens is not None:

            async def grant(amount: float) -> float:
                delay: float = await coordinator.grant.remote(f"{name}#tokens", amount)
                return delay

            meter = TokenGrants(grant, max(1.0, tokens / 60 * SLOT_WINDOW_S))
        return Shared(pacer, meter)

    return shared


def _counts(progress: Progress) -> ShardCounts:
    in_flight, _ = progress.activity()
    return ShardCounts(progress.ok, progress.failed, in_flight, max(0, progress.total - progress.done))


async def _run_shard(job: Job, coordinator: Any, options: Options) -> RunSummary:
    seen: list[Progress] = []

    async def report() -> None:
        while True:
            if seen:
                await _tell(coordinator, job.shard.index, _counts(seen[0]))
            await anyio.sleep(REPORT_S)

    failed: BatchrunError | None = None  # raised as itself, not inside the task group's ExceptionGroup
    async with anyio.create_task_group() as tg:
        tg.start_soon(report)
        try:
            summary = await run_job(
                job,
                retry_failed=options.retry_failed,
                quiet=True,
                interactive=False,
                grace_s=options.grace_s,
                max_runtime_s=options.max_runtime_s,
                limit=options.limit,
                shared=_shared(coordinator, _rates(job)),
                observe=seen.append,
            )
        except BatchrunError as exc:
            failed = exc
        finally:
            tg.cancel_scope.cancel()
    if failed is not None:
        raise failed
    if seen:
        await _tell(coordinator, job.shard.index, _counts(seen[0]))
    return summary


async def _tell(coordinator: Any, shard: int, counts: ShardCounts) -> None:
    """Progress is for the driver's line only: a coordinator that cannot be reached (its process
    restarting) costs a line, never the shard's run (whatever Ray raises for it)."""
    with contextlib.suppress(Exception):
        await coordinator.report.remote(shard, os.getpid(), counts)


def run_shard(job_file: str, output: str | None, shard: Shard, options: Options, coordinator: Any) -> RunSummary:
    """One Ray task: shard K/N of the job, run in this worker (a bad job is the same error here as
    on the driver, which checked it first)."""
    job = dataclasses.replace(load_job(job_file, output=output), shard=shard)
    if options.max_cost is not None:
        job = dataclasses.replace(job, max_cost=options.max_cost)
    summary = anyio.run(_run_shard, job, coordinator, options, backend="asyncio")
    note_last_run(job.output_dir, summary.fields(), shard=shard.name)
    return summary


def manifest_line(job: Job) -> str:
    """The whole job as its manifest has it now: a shard run again after its worker died counts
    only its last run in its summary, the manifest counts all."""
    from .status import read_status

    found = read_status(job).endpoints.values()
    ok, failed = sum(e["ok"] for e in found), sum(e["failed"] for e in found)
    left = [e["left"] for e in found]
    tail = f", {sum(left)} to do" if left and None not in left else ""
    return f"the manifest: {ok} requests ok, {failed} failed{tail} (batchrun status: by endpoint)"


def run_on_ray(
    job: Job,
    job_file: str,
    *,
    address: str | None,
    shards: int | None,
    options: Options,
    output: str | None = None,
    say: Callable[[str], None] | None = None,
    quiet: bool = False,
    cpus: int | None = None,
    watch: Callable[[Snapshot], None] | None = None,
) -> Outcome:
    """Run the job's shards on Ray; ``watch`` sees every snapshot the driver reads (tests kill a
    worker from it); ``say`` prints a progress line (default: to stderr). ``cpus``: a local Ray's CPU
    count (default: the machine's)."""
    ray = import_ray(address)
    started_here = not ray.is_initialized()
    if started_here:
        connect(ray, address, cpus)
    try:
        count = shards or job.limits.shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # restarted if its process dies (a fresh schedule, the counts so far lost), calls retried
        actor = ray.remote(num_cpus=0, max_restarts=TASK_RETRIES, max_task_retries=TASK_RETRIES)(Coordinator)
        coordinator = actor.remote(count, _rates(job))
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(run_shard)
        refs = {
            task.remote(str(Path(job_file).resolve()), output, Shard(k, count), options, coordinator): k
            for k in range(count)
        }
        return _follow(ray, refs, coordinator, count, say or _to_stderr, quiet, watch)
    finally:
        if started_here:
            ray.shutdown()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _follow(
    ray: ModuleType,
    refs: dict[Any, int],
    coordinator: Any,
    count: int,
    say: Callable[[str], None],
    quiet: bool,
    watch: Callable[[Snapshot], None] | None,
) -> Outcome:
    """Wait for the tasks, a progress line every few seconds, then collect what each returned."""
    outcome, pending, said = Outcome(count), list(refs), 0.0
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=REPORT_S)
            for ref in done:
                try:
                    outcome.summaries[refs[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the run raised: the job's error, or a bug
                    cause = exc.cause
                    code = cause.exit_code if isinstance(cause, BatchrunError) else ExitCode.INCOMPLETE
                    outcome.errors[refs[ref]] = (str(cause) if cause else str(exc).strip().splitlines()[-1], code)
                except ray.exceptions.RayError as exc:  # its worker died once more than Ray retries
                    outcome.errors[refs[ref]] = (str(exc).strip().splitlines()[-1], ExitCode.INCOMPLETE)
            snapshot = ray.get(coordinator.snapshot.remote())
            if watch is not None:
                watch(snapshot)
            if not quiet and (snapshot.pids or not pending) and (time.monotonic() - said >= 5 or not pending):
                say(snapshot.line({*outcome.summaries, *outcome.errors}))
                said = time.monotonic()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        raise
    return outcome
