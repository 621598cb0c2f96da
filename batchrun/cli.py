"""Command line: argv -> job -> ``anyio.run``; exit codes. No logic of its own: the parser is
``commands.parser``, the commands that need more than a few lines are in ``commands/``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import sys
import traceback
from collections.abc import Iterator, Sequence

import anyio

from .commands.jobargs import sharded
from .commands.parser import build_parser
from .commands.plan import plan_command
from .errors import BatchrunError, ExitCode, StoppedError
from .log import configure as configure_logging
from .log import event
from .presets import PRESETS
from .report.last_run import note_last_run, send_last_run
from .runner import run_job
from .spec import Job, load_job

__all__ = ["build_parser", "main", "run"]

#: the loaded job's secrets (every endpoint's), taken out of a ``--debug`` traceback as out of the log
_SECRETS: list[str] = []


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
    from .dispatch.redact import redact

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
        from .commands.status import status_command

        return status_command(args)
    if args.command == "export":
        from .commands.export import export_command

        return export_command(args)
    if args.command == "report":
        from .report.command import report_command

        return report_command(args.target, args.output)
    job = sharded(load_job(args.job, output=args.output, needs_key=args.command == "run"), args)  # plan sends nothing
    _SECRETS[:] = [secret for endpoint in job.endpoints or (job.endpoint,) for secret in endpoint.secrets()]
    if args.command == "plan":
        return plan_command(job, args)
    if args.ray is not None:
        from .commands.onray import run_on_ray_command

        return run_on_ray_command(job, args)
    return _run_command(job, args)


def _run_command(job: Job, args: argparse.Namespace) -> int:
    """``batchrun run`` in this process: the run, its summary noted for ``report`` and printed."""
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
