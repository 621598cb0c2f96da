"""Command line: argv -> job -> ``anyio.run``; exit codes. No logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio

from . import __version__
from .durations import parse_duration
from .errors import BatchrunError, ExitCode, JobError, StoppedError, exit_codes_help
from .log import configure as configure_logging
from .log import event
from .owner import JOB_POINTER, check_owner
from .prepare import Estimate, plan_job
from .presets import PRESETS
from .report.last_run import note_last_run, send_last_run
from .runner import run_job
from .shard import parse_shard, shard_count
from .spec import Job, load_job

EXIT_CODES_HELP = exit_codes_help()
#: the loaded job's secrets (every endpoint's), taken out of a ``--debug`` traceback as out of the log
_SECRETS: list[str] = []
LIMIT_HELP = "only the first N rows (a smoke test; what it sends counts toward the whole job later)"


def _usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"an amount in USD, 0 or more, not {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of rows, at least 1, not {text!r}")
    return value


def _add_shard_arguments(parser: argparse.ArgumentParser, shards_help: str | None = None) -> None:
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="send only shard K of N (by request key); auto: from JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID",
    )
    parser.add_argument(
        "--shards",
        type=_count,
        metavar="N",
        help=shards_help
        or "the number of shards (overrides the job file's shards): for --shard auto on Kubernetes, or --ray",
    )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a number of shards, at least 1, not {text!r}")
    return value


def _sharded(job: Job, args: argparse.Namespace) -> Job:
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; given the ``command`` about to be parsed, the simulator's options (whose import
    takes uvicorn, starlette and Pillow: ~90 ms of every start-up) are added only for ``simulate``."""
    parser = argparse.ArgumentParser(
        prog="batchrun",
        description="Run a table of prompts against chat-completion and text-to-image endpoints.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchrun {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback behind an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a job (resumes where the last run stopped)",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("job", help="the job file (TOML)")
    run.add_argument("--output", help="output folder (default: outputs/<job name> next to the job file)")
    run.add_argument("--retry-failed", action="store_true", help="send permanently failed requests again")
    run.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress, no start line, no failure breakdown: only the summary line",
    )
    run.add_argument(
        "--progress", choices=["auto", "bar", "lines"], default="auto", help="bar on a terminal, lines otherwise"
    )
    run.add_argument(
        "--grace",
        type=parse_duration,
        default=30.0,
        metavar="DURATION",
        help="on SIGINT/SIGTERM or the deadline, how long in-flight requests may finish (default 30s)",
    )
    run.add_argument(
        "--max-runtime",
        type=parse_duration,
        metavar="DURATION",
        help="stop taking new requests after this long (e.g. 50m), then exit 4: resumable",
    )
    run.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object a line")
    run.add_argument("--limit", type=_positive, metavar="N", help=LIMIT_HELP)
    run.add_argument(
        "--max-cost",
        type=_usd,
        metavar="USD",
        help="stop taking requests before the spend could pass USD (requests in flight at their worst case); exit 4",
    )

    for command_parser in (run,):
        _add_shard_arguments(command_parser)
    run.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run --shards N shards as Ray tasks (default: one per CPU); no ADDRESS: a local Ray; "
        "auto or host:port: that cluster (needs batchrun[ray])",
    )

    plan = sub.add_parser("plan", help="dry run: rows, requests, already done, to do; sends nothing")
    plan.add_argument("job")
    plan.add_argument("--output", help="output folder (default: outputs/<job name> next to the job file)")
    plan.add_argument("--retry-failed", action="store_true")
    plan.add_argument("--limit", type=_positive, metavar="N", help=LIMIT_HELP)
    _add_shard_arguments(
        plan, shards_help="N shards: how many requests each would send (or the count for --shard auto)"
    )

    export = sub.add_parser("export", help="join results back to the input: a results file or an imagefolder")
    export.add_argument("target", help="an output folder written by a run, or the job file")
    group = export.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", metavar="FILE", help="write input rows + results to FILE (.parquet, .csv, .jsonl)")
    group.add_argument(
        "--imagefolder", action="store_true", help="write images/metadata.<fmt> for datasets' imagefolder loader"
    )
    export.add_argument(
        "--format",
        choices=["parquet", "jsonl", "openai-batch", "webdataset"],
        default="parquet",
        help="imagefolder metadata; openai-batch: --to FILE is the Batch API's output file; --embed-images shards",
    )
    export.add_argument(
        "--wide", action="store_true", help="one row per input row x sample, each endpoint's results side by side"
    )
    export.add_argument(
        "--embed-images",
        action="store_true",
        help="with --to FOLDER: Parquet (or webdataset) shards with the images inside (Hub)",
    )

    status = sub.add_parser("status", help="what a run made, per endpoint: counts, errors, latency, tokens, cost")
    status.add_argument("target", help="an output folder written by a run, or the job file")
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    _add_shard_arguments(status)

    report = sub.add_parser("report", help="write one HTML page that shows a run (needs batchrun[report])")
    report.add_argument("target", help="an output folder written by a run")
    report.add_argument("-o", "--output", metavar="FILE", help="the page (default: OUTPUT/report.html)")

    for command_parser in (run, plan, export, status, report):
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sub.add_parser("presets", help="list the endpoint presets")

    simulate = sub.add_parser("simulate", help="serve the built-in endpoint simulator on a local port")
    if command in (None, "simulate"):
        from .simulator import add_simulate_arguments

        add_simulate_arguments(simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(next((w for w in words if not w.startswith("-")), None)).parse_args(words)
    try:
        return _dispatch(args)
    except BatchrunError as exc:
        print(_redacted(f"batchrun: error: {exc}"), file=sys.stderr)
        if args.debug and exc.__cause__ is not None:
            _print_traceback(exc.__cause__)
        return int(exc.exit_code)
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if args.debug:
            _print_traceback(exc)
        print(_redacted(f"batchrun: error: {StoppedError.after(exc)}"), file=sys.stderr)
        return int(ExitCode.INCOMPLETE)
    except KeyboardInterrupt:
        print("batchrun: interrupted; what finished is saved, run again to resume", file=sys.stderr)
        return int(ExitCode.INCOMPLETE)


def _redacted(text: str) -> str:
    """``text`` as the log would say it: a server may echo a credential into an error."""
    from .dispatch.call import redact

    return redact(text, _SECRETS)


def _print_traceback(exc: BaseException) -> None:
    print(_redacted("".join(traceback.format_exception(exc))), end="", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "presets":
        for name, preset in PRESETS.items():
            print(f"{name:<18} {preset.description}")
        return 0
    if args.command == "simulate":
        from .simulator import run_simulate_command

        return run_simulate_command(args)
    if args.command == "status":
        from .export import job_for
        from .status import read_status

        found = read_status(_sharded(job_for(args.target), args))
        print(found.as_json() if args.json else found.text())
        return 0
    if args.command == "export":
        from .export import export_imagefolder, export_table, job_for

        job = job_for(args.target)
        if args.format == "webdataset" and not args.embed_images:
            raise JobError("--format webdataset goes with --embed-images --to FOLDER")
        if job.remote is not None and (args.embed_images or args.imagefolder):
            from .export import fetch_images

            fetch_images(job)
        if args.embed_images:
            from .hub import export_hub_command

            return export_hub_command(job, args)
        if args.imagefolder:
            path, n = export_imagefolder(job, args.format)
            print(f"wrote {path}: {n} images; load with datasets.load_dataset('imagefolder', data_dir='{path.parent}')")
        elif args.format == "openai-batch":
            from .export import export_openai_batch

            n = export_openai_batch(job, Path(args.to))
            print(f"wrote {args.to}: {n} lines")
        else:
            n = export_table(job, Path(args.to), wide=args.wide)
            print(f"wrote {args.to}: {n} rows")
        return 0
    if args.command == "report":
        from .report.command import report_command

        return report_command(args.target, args.output)
    job = _sharded(load_job(args.job, output=args.output, needs_key=args.command == "run"), args)  # plan sends nothing
    _SECRETS[:] = [secret for endpoint in job.endpoints or (job.endpoint,) for secret in endpoint.secrets()]
    if args.command == "plan":
        if job.remote is not None:  # the bucket's parts: its done keys and its owner
            from .sink.remote import Mirror

            Mirror(job.remote).pull((JOB_POINTER,))
        check_owner(job)
        estimate = Estimate()
        count = shard_count(args.shards, job.limits.shards)
        per_shard = [0] * count if count and args.shard is None else None
        counts, stale = anyio.run(
            lambda: plan_job(
                job, retry_failed=args.retry_failed, limit=args.limit, estimate=estimate, per_shard=per_shard
            ),
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
            answers = (
                "open (no max_tokens)" if estimate.completion_tokens is None else f"{estimate.completion_tokens:,.0f}"
            )
            print(f"tokens to send   ~{estimate.prompt_tokens:,.0f} in prompts, at most {answers} in answers")
        if estimate.cost_usd is not None and counts.todo:
            print(f"cost at most     ${estimate.cost_usd:,.4f}")
        return 0
    if args.ray is not None:
        return _run_on_ray(job, args)
    if args.max_cost is not None:
        job = dataclasses.replace(job, max_cost=args.max_cost)
    interactive = {"auto": None, "bar": True, "lines": False}[args.progress]
    configure_logging(args.log_format)
    if args.log_format == "json":
        interactive = False
    with _long_lived_objects_frozen():
        summary = anyio.run(
            lambda: run_job(
                job,
                retry_failed=args.retry_failed,
                interactive=interactive,
                quiet=args.quiet,
                grace_s=args.grace,
                max_runtime_s=args.max_runtime,
                handle_signals=True,
                limit=args.limit,
            ),
            backend="asyncio",
        )
    note_last_run(job.output_dir, summary.fields(), shard=job.shard.name if job.shard.sharded else None)
    if job.remote is not None:
        send_last_run(job.remote, shard=job.shard.name if job.shard.sharded else None)
    if args.log_format == "json":
        event(summary.line(), **summary.fields())
    else:
        print(summary.line() if args.quiet else summary.text())
    return int(summary.exit_code)


def _run_on_ray(job: Job, args: argparse.Namespace) -> int:
    from .rayrun import Options, import_ray, manifest_line, run_on_ray

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


@contextlib.contextmanager
def _long_lived_objects_frozen() -> Iterator[None]:
    """A run makes a few dozen short-lived objects per request and almost no reference cycles,
    yet with the default thresholds the cyclic collector ran ~400 times in 6,400 requests (about
    5 % of the event loop's time), and each full collection walked every module, class and function
    imported at start-up (30-60 ms with every request in flight waiting). Freeze what exists
    now and collect the young generation less often; undone afterwards, for in-process callers."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(10_000, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def run() -> None:
    sys.exit(main())
