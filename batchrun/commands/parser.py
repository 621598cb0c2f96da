"""The command line's parser: every command, its arguments and their types (a bad value is argparse's
exit 2 with one line)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .. import __version__
from ..durations import parse_duration
from ..errors import exit_codes_help

EXIT_CODES_HELP = exit_codes_help()
LIMIT_HELP = "only the first N rows (a smoke test; what it sends counts toward the whole job later)"


OUTPUT_HELP = "output folder, or s3://bucket/prefix (default: outputs/<job name> next to the job file)"


def _usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"an amount in USD, 0 or more, not {text!r}")
    return value


def _at_least_one(what: str) -> Callable[[str], int]:
    """An argument type: a whole number of ``what``, 1 or more (else argparse's one line)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"a {what}, at least 1, not {text!r}")
        return value

    return parse


_positive = _at_least_one("whole number of rows")
_count = _at_least_one("number of shards")


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
    run.add_argument("--output", help=OUTPUT_HELP)
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
        help="run N shards as Ray tasks (--shards, else the job file's, else one per CPU); no ADDRESS: a local Ray; "
        "auto or host:port: that cluster (needs batchrun[ray])",
    )

    plan = sub.add_parser("plan", help="dry run: rows, requests, already done, to do; sends nothing")
    plan.add_argument("job")
    plan.add_argument("--output", help=OUTPUT_HELP)
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
        from ..simulator import add_simulate_arguments

        add_simulate_arguments(simulate)
    return parser
