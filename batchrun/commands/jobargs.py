"""The job as the command line narrows it: ``--shard K/N`` and ``--shards N``."""

from __future__ import annotations

import argparse
import dataclasses
import os

from ..errors import JobError
from ..shard import parse_shard
from ..spec import Job


def sharded(job: Job, args: argparse.Namespace) -> Job:
    """The job as ``--shard`` gives it (a bad value is exit 2, one line). ``status --shard K/N``
    reads what shards of any N wrote (N changes between runs), so the job file's N binds only
    what sends or plans."""
    if getattr(args, "ray", None) is not None:
        if args.shard is not None:
            raise JobError("--ray runs every shard: give --shards N, not --shard")
        return job
    if args.shard is None:
        if args.shards is not None and args.command != "plan":
            raise JobError(f"--shards {args.shards}: give the shard too (--shard K/N, or --shard auto)")
        return job
    in_file = job.limits.shards if args.command in ("run", "plan") or args.shard == "auto" else None
    shard = parse_shard(args.shard, shards=args.shards, env=os.environ, in_file=in_file)
    return dataclasses.replace(job, shard=shard)
