"""What is read and checked before anything is sent: the input's shape and first row, the manifest's
done keys and the plan index; and ``plan``, the dry run, which stops there."""

from __future__ import annotations

from dataclasses import dataclass, replace

import anyio

from .cost import worst_case
from .endpoints.base import Adapter
from .errors import InputError
from .models import DoneKeys, Request, short_key
from .plan.batchfile import MODEL_FROM_BODY, check_batch_lines
from .plan.feed import BATCH_ROWS, Feed
from .plan.occurrences import Occurrences
from .plan.planner import PlanCounts, Planner
from .plan.reader import Table
from .plan.shape import check_columns, completion_cap, prompt_columns
from .shard import Shard
from .sink.manifest import read_done
from .spec import Job


def make_adapter(job: Job) -> Adapter:
    return job.endpoint.wire.adapter(job.endpoint, keep_raw=job.sink.keep_raw_response, where=str(job.path))


def open_input(job: Job) -> tuple[Table, int]:
    """Read the table's shape and render its first row: a bad input or template fails here, and
    so does a prompt that renders empty (unless the job skips those) or a first request that
    ``tokens_per_minute`` could never let through."""
    table = Table(job.input, job.input_options)
    for lane in job.lanes():
        check_columns(lane, table.columns)
        if lane.batch_input:
            check_batch_lines(table.paths, lane.endpoint.url, needs_model=lane.endpoint.model == MODEL_FROM_BODY)
    planner = Planner(job, occurrences=Occurrences(1))
    refuse = job.empty_prompts == "error"
    columns = prompt_columns(job, table.columns) if refuse else set()
    # the rows with a null, blank or false prompt column are rendered; no other row is looked at
    stats = table.inspect(columns, planner.renderer.renders_empty)
    if stats.empty_prompts:
        raise InputError(
            f"input {job.input}: {stats.empty_prompts} rows have an empty prompt (column "
            f"{', '.join(sorted(columns))}; the first is row {stats.first_empty}); "
            'set empty_prompts = "skip" in the job to skip them'
        )
    first = next(table.batches(1))
    for lane in job.lanes():
        # every shard checks the first row, whichever shard's its key is (a planner of a shard
        # builds only its own requests)
        planner = Planner(replace(lane, shard=Shard()), occurrences=Occurrences(1))
        planner.strict = True  # the first row is the templates' check: one that does not render is exit 2
        for request in planner.plan(first[:1]):
            if request.refused is not None:
                at = f" (endpoint {lane.endpoint.name})" if job.several else ""
                raise InputError(f"input {job.input}: row {request.row_index}{at}: {request.refused}")
        make_adapter(lane)
    return table, stats.rows


def open_plan(job: Job, occurrences: Occurrences, *, retry_failed: bool, note: bool, limit: int | None = None) -> Feed:
    """The manifest's done keys, a planner that leaves them out, and the plan index (blocking:
    call it in a thread). ``limit``: only the first rows, keyed as the whole job keys them, so
    what a smoke test sends counts toward the full job later."""
    done = read_done(job.output_dir, retry_failed=retry_failed)
    feed = Feed.open(job, Planner(job, DoneKeys(failed=done.failed), occurrences), done.ok, note=note, limit=limit)
    return feed


@dataclass(slots=True)
class Estimate:
    """What the requests left to do would take: prompt tokens (body bytes / 4), answer tokens at
    most (``max_tokens``; None when a job without it leaves them open), and at most what they cost
    (None when no endpoint has a price; without ``max_tokens``, each answer is counted at
    ``cost.WORST_OUTPUT_TOKENS``)."""

    prompt_tokens: float = 0.0
    completion_tokens: float | None = 0.0
    cost_usd: float | None = None

    def add(self, request: Request, lane: Job) -> None:
        if request.refused is not None:
            return
        cap = completion_cap(lane)
        self.prompt_tokens += len(request.body) / 4
        self.completion_tokens = None if self.completion_tokens is None or not cap else self.completion_tokens + cap
        if lane.endpoint.price is not None:
            self.cost_usd = (self.cost_usd or 0.0) + worst_case(request, lane.endpoint.price, cap)


async def plan_job(
    job: Job,
    *,
    retry_failed: bool = False,
    limit: int | None = None,
    estimate: Estimate | None = None,
    per_shard: list[int] | None = None,
) -> tuple[PlanCounts, int]:
    """Dry run: what a run would send now (every endpoint's, summed). Reads the input and the
    manifest, sends nothing; ``estimate`` is filled in with the tokens and cost of what is left,
    ``per_shard`` (N zeros) with what each of N shards would send."""
    table, rows = await anyio.to_thread.run_sync(open_input, job)
    total, stale = PlanCounts(), 0
    for at, lane in enumerate(job.lanes()):
        occurrences = Occurrences(rows * job.request.samples)

        def count(lane: Job = lane, occurrences: Occurrences = occurrences) -> tuple[PlanCounts, int]:
            feed = open_plan(lane, occurrences, retry_failed=retry_failed, note=False, limit=limit)
            for start, frame in feed.slices(table, BATCH_ROWS):
                for request in feed.requests(start, frame):
                    if estimate is not None:
                        estimate.add(request, lane)
                    if per_shard is not None:
                        per_shard[short_key(request.key) % len(per_shard)] += 1
                feed.checkpoint()  # as a run does (count() alone spills at 4x: +15 MiB of dict)
            return feed.planner.counts, feed.stale

        with occurrences:
            counts, lane_stale = await anyio.to_thread.run_sync(count)
        if at == 0:  # every endpoint reads the same done keys: stale ones are those none asks for
            stale = lane_stale + counts.done
        add_counts(total, counts, rows=at == 0)
    return total, max(0, stale - total.done)


def add_counts(total: PlanCounts, counts: PlanCounts, *, rows: bool) -> None:
    """Add one endpoint's plan to the job's: the rows are every endpoint's, counted once."""
    if rows:
        total.rows = counts.rows
    for name in ("requests", "shared", "done", "done_failed", "skipped", "todo", "other_shards", "off_limits"):
        setattr(total, name, getattr(total, name) + getattr(counts, name))
    total.first_off_limits = total.first_off_limits or counts.first_off_limits
