"""``batchrun status``: what a run made, per endpoint, from the manifest alone (parts and journals):
counts, why requests failed, latency, tokens, throughput, cost, and what is left to do.

Everything is one lazy polars query over the few columns it needs (the latest row per key first),
so a 1M-row manifest answers in well under the 3 s the issue asks (``bench/status.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .models import short_keys
from .plan.sources import input_files
from .sink.manifest import scan_latest
from .spec import Job

COLUMNS = [
    "request_key",
    "endpoint",
    "status",
    "error_kind",
    "http_status",
    "error",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "started_at",
    "finished_at",
    "cost_usd",
    "cost_estimated",
]
EXAMPLE_CHARS = 160


@dataclass(frozen=True, slots=True)
class Status:
    """The answers, as plain values: ``as_json`` for scripts, ``text`` for people."""

    job: str
    output: str
    endpoints: dict[str, dict[str, Any]]
    expected: int | None  # requests the job asks for, per endpoint (rows x samples), when the input was counted
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)  # ``--shard`` runs: each one's last run

    def as_json(self) -> str:
        found = {"job": self.job, "output": self.output, "endpoints": self.endpoints}
        if self.shards:
            found["shards"] = self.shards
        return json.dumps(found, indent=2)

    def text(self) -> str:
        lines = [f"job {self.job}: {self.output}"]
        for name, shard in self.shards.items():
            lines.append(f"shard {name}: {_shard_state(shard)}")
        if not self.endpoints:
            return "\n".join([*lines, "nothing recorded yet"])
        for name, e in self.endpoints.items():
            lat, ttft = e["latency_ms"], e["ttft_ms"]
            lines.append(f"{name}: {e['ok']} ok, {e['failed']} failed ({e['permanent']} for good)")
            lines.append(
                f"  latency ms  p50 {_n(lat['p50'])}  p95 {_n(lat['p95'])}  p99 {_n(lat['p99'])}"
                + (f"   ttft ms  p50 {_n(ttft['p50'])}  p95 {_n(ttft['p95'])}" if ttft["p50"] is not None else "")
            )
            lines.append(
                f"  tokens in {e['prompt_tokens']:,}  out {e['completion_tokens']:,}"
                f"   {_n(e['requests_per_s'], 2)} requests/s"
                + (
                    f"   cost {'~' if e['cost_estimated'] else ''}${e['cost_usd']:.4f}"
                    if e["cost_usd"] is not None
                    else ""
                )
            )
            for error in e["errors"][:5]:
                status = f" {error['http_status']}" if error["http_status"] is not None else ""
                lines.append(f"  {error['count']:>7,} {error['kind']}{status}: {error['example']}")
            if e["left"] is not None:
                lines.append(f"  left to do {e['left']:,} (retryable failures included)")
        return "\n".join(lines)


def _shard_state(shard: dict[str, Any]) -> str:
    if shard["running"]:
        return "running"
    if shard["exit_code"] is None:
        return "no finished run"
    done = "finished" if shard["exit_code"] in (0, 3) else "stopped before the end"
    return f"{done} (exit {shard['exit_code']}: {shard['ok']} ok, {shard['failed']} failed in its last run)"


_SHARD_FILE = re.compile(r"^(?:\.lock-|last_run-)(s\d+of\d+)(?:\.json)?$")


def read_shards(folder: Path) -> dict[str, dict[str, Any]]:
    """Each shard that ran in ``folder``: whether it runs now (its lock is held) and how its last
    run ended (its own last-run note). A shard is finished when its last run ended with nothing
    left to do (exit 0 or 3) and it is not running again."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        names = {m[1] for p in folder.iterdir() if (m := _SHARD_FILE.match(p.name))}
    found: dict[str, dict[str, Any]] = {}
    for name in sorted(names, key=lambda n: tuple(int(x) for x in n[1:].split("of"))[::-1]):
        note: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            note = json.loads((folder / f"last_run-{name}.json").read_text(encoding="utf-8"))
        found[name] = {
            "running": _held(folder / f".lock-{name}"),
            "exit_code": note.get("exit_code"),
            "ok": note.get("ok"),
            "failed": note.get("failed"),
            "run_id": note.get("run_id"),
        }
    return found


def _held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def read_status(job: Job) -> Status:
    """The status of ``job``'s output folder (blocking); with ``job.shard``, of that shard's keys."""
    latest = scan_latest(job.output_dir)
    expected = None if job.shard.sharded else _expected(job)  # a shard's share is known only by planning
    shards = read_shards(job.output_dir)
    if job.remote is not None:  # the shards that run elsewhere hold a live lease in the bucket
        from .sink.lease import running_shards
        from .sink.remote import Mirror

        for name in running_shards(Mirror(job.remote)):
            shards.setdefault(name, dict.fromkeys(("exit_code", "ok", "failed", "run_id")))["running"] = True
    if latest is not None and job.shard.sharded:
        latest = latest.filter(short_keys(pl.col("request_key")) % job.shard.count == job.shard.index)
    if latest is None:
        return Status(job.name, str(job.output_dir), {}, expected, shards)
    frame = latest.select(COLUMNS).with_columns(pl.col("endpoint").fill_null(job.endpoint.name))
    failed = pl.col("status") == "failed"
    summary = (
        frame.group_by("endpoint")
        .agg(
            (pl.col("status") == "ok").sum().alias("ok"),
            failed.sum().alias("failed"),
            (failed & (pl.col("error_kind") == "permanent")).sum().alias("permanent"),
            *(pl.col("latency_ms").quantile(q / 100, "linear").alias(f"latency_p{q}") for q in (50, 95, 99)),
            *(pl.col("ttft_ms").quantile(q / 100, "linear").alias(f"ttft_p{q}") for q in (50, 95)),
            pl.col("prompt_tokens").sum(),
            pl.col("completion_tokens").sum(),
            pl.col("started_at").min().alias("first"),
            pl.col("finished_at").max().alias("last"),
            pl.when(pl.col("cost_usd").is_not_null().any()).then(pl.col("cost_usd").sum()).alias("cost_usd"),
            pl.col("cost_estimated").any().alias("cost_estimated"),
        )
        .sort("endpoint")
    )
    errors = (
        frame.filter(failed)
        .group_by("endpoint", "error_kind", "http_status")
        .agg(pl.len().alias("count"), pl.col("error").first().str.slice(0, EXAMPLE_CHARS).alias("example"))
        .sort(["endpoint", "count"], descending=[False, True])
    )
    found, failures = pl.collect_all([summary, errors])
    endpoints: dict[str, dict[str, Any]] = {}
    for row in found.iter_rows(named=True):
        span = (row["last"] - row["first"]).total_seconds() if row["first"] is not None else 0.0
        done = row["ok"] + row["permanent"]
        endpoints[row["endpoint"]] = {
            "ok": row["ok"],
            "failed": row["failed"],
            "permanent": row["permanent"],
            "latency_ms": {f"p{q}": row[f"latency_p{q}"] for q in (50, 95, 99)},
            "ttft_ms": {f"p{q}": row[f"ttft_p{q}"] for q in (50, 95)},
            "prompt_tokens": row["prompt_tokens"] or 0,
            "completion_tokens": row["completion_tokens"] or 0,
            "requests_per_s": (row["ok"] + row["failed"]) / span if span > 0 else None,
            "cost_usd": row["cost_usd"],
            "cost_estimated": bool(row["cost_estimated"]),
            "errors": [],
            "left": None if expected is None else max(0, expected - done),
        }
    for row in failures.iter_rows(named=True):
        endpoints[row["endpoint"]]["errors"].append(
            {
                "kind": row["error_kind"],
                "http_status": row["http_status"],
                "count": row["count"],
                "example": row["example"],
            }
        )
    for endpoint in job.endpoints or (job.endpoint,):  # an endpoint with nothing recorded yet
        if endpoint.name not in endpoints and expected is not None:
            endpoints[endpoint.name] = _nothing(expected)
    return Status(job.name, str(job.output_dir), endpoints, expected, shards)


def _nothing(expected: int) -> dict[str, Any]:
    return {
        "ok": 0,
        "failed": 0,
        "permanent": 0,
        "latency_ms": {"p50": None, "p95": None, "p99": None},
        "ttft_ms": {"p50": None, "p95": None},
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "requests_per_s": None,
        "cost_usd": None,
        "cost_estimated": False,
        "errors": [],
        "left": expected,
    }


def _expected(job: Job) -> int | None:
    """Rows x samples of the input, counted without parsing its cells (Parquet from its metadata);
    None when the input cannot be read. Rows a job skips or dedupe shares count as left."""
    try:
        files = input_files(job.input)
        kind = job.input_options.format or Path(files[0]).suffix.lstrip(".").lower()
        if kind == "parquet":
            rows = pl.scan_parquet(files).select(pl.len()).collect().item()
        elif kind in ("jsonl", "ndjson"):
            rows = sum(_records(name) for name in files)
        else:
            separator = job.input_options.separator or ("\t" if kind == "tsv" else ",")
            rows = sum(
                pl.scan_csv(name, separator=separator, infer_schema=False).select(pl.len()).collect().item()
                for name in files
            )
    except (OSError, IndexError, pl.exceptions.PolarsError):
        return None
    return int(rows) * job.request.samples


def _records(name: str) -> int:
    with open(name, "rb") as f:
        return sum(1 for line in f if line.strip())
