"""``batchrun plan``: the dry run's counts and estimate, printed; nothing is sent."""

from __future__ import annotations

import argparse

import anyio

from ..owner import JOB_POINTER, check_owner
from ..prepare import Estimate, plan_job
from ..shard import shard_count
from ..spec import Job


def plan_command(job: Job, args: argparse.Namespace) -> int:
    if job.remote is not None:  # the bucket's parts: its done keys and its owner
        from ..sink.remote import Mirror

        Mirror(job.remote).pull((JOB_POINTER,))
    check_owner(job)
    estimate = Estimate()
    count = shard_count(args.shards, job.limits.shards)
    per_shard = [0] * count if count and args.shard is None else None
    counts, stale = anyio.run(
        lambda: plan_job(job, retry_failed=args.retry_failed, limit=args.limit, estimate=estimate, per_shard=per_shard),
        backend="asyncio",
    )
    print(f"job {job.name}: {job.input} -> {job.output_dir}")
    print(f"rows read        {counts.rows}")
    print(f"requests         {counts.requests}" + (f" ({counts.shared} shared by dedupe)" if counts.shared else ""))
    print(f"already done     {counts.done}" + (f" ({counts.done_failed} failed)" if counts.done_failed else ""))
    print(
        f"to do            {counts.todo}"
        + (f" (shard {job.shard.index}/{job.shard.count})" if job.shard.sharded else "")
    )
    if job.shard.sharded:
        print(f"other shards     {counts.other_shards}")
    if per_shard is not None:
        print("per shard        " + ", ".join(f"{k}/{len(per_shard)}: {n}" for k, n in enumerate(per_shard)))
    if counts.off_limits:
        print(f"refused          {counts.off_limits} (never sent; the first: {counts.first_off_limits})")
    if stale:
        print(f"stale results    {stale} (from an older version of the job; not reused)")
    if counts.todo:
        answers = "open (no max_tokens)" if estimate.completion_tokens is None else f"{estimate.completion_tokens:,.0f}"
        print(f"tokens to send   ~{estimate.prompt_tokens:,.0f} in prompts, at most {answers} in answers")
    if estimate.cost_usd is not None and counts.todo:
        print(f"cost at most     ${estimate.cost_usd:,.4f}")
    return 0
