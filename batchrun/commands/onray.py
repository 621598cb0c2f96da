"""``run --ray``: the command line's options handed to ``rayrun`` and its outcome printed (or logged
as JSON lines)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import JobError
from ..log import configure as configure_logging
from ..log import event
from ..rayconnect import import_ray
from ..rayrun import Options, manifest_line, run_on_ray
from ..spec import Job


def run_on_ray_command(job: Job, args: argparse.Namespace) -> int:
    import_ray(args.ray or None)  # not installed: exit 2 before anything starts
    output = args.output
    if output is not None and "://" not in output:
        output = str(Path(output).resolve())  # the workers' working folder is not this one
    shards = args.shards or job.limits.shards
    if args.max_cost is not None and not shards:
        raise JobError("--max-cost with --ray: give --shards N or the job file's shards (each shard spends its part)")
    options = Options(
        retry_failed=args.retry_failed,
        grace_s=args.grace,
        max_runtime_s=args.max_runtime,
        limit=args.limit,
        max_cost=None if args.max_cost is None or not shards else args.max_cost / shards,
    )
    configure_logging(args.log_format)
    outcome = run_on_ray(
        job,
        args.job,
        address=args.ray or None,
        shards=shards,
        options=options,
        output=output,
        quiet=args.quiet,
        say=(lambda line: event(line, event="progress")) if args.log_format == "json" else None,
    )
    lines = outcome.lines()
    shown = [] if args.quiet else [*lines[:-1], manifest_line(job)]
    if args.log_format == "json":
        for line in shown:
            event(line, event="ray")
        event(lines[-1], event="summary", shards=outcome.shards, exit_code=int(outcome.exit_code))
    else:
        print("\n".join([*shown, lines[-1]]))
    return int(outcome.exit_code)
