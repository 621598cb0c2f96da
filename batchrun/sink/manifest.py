"""The manifest: Parquet part files, one row per finished request key, never overwritten.

Part names carry the run id, the shard and a sequence number, so no run, resumed run or shard
ever overwrites another's file. Readers take the union of all parts and the latest row per key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import InputError
from ..models import DoneKeys, Result
from .files import write_atomic

MANIFEST_DIR = "manifest"
PART_GLOB = "part-*.parquet"

SCHEMA: dict[str, Any] = {
    "request_key": pl.String,
    "row_id": pl.String,
    "row_index": pl.Int64,
    "endpoint": pl.String,
    "model": pl.String,
    "sample": pl.Int32,
    "seed": pl.Int64,
    "status": pl.String,
    "error_kind": pl.String,
    "http_status": pl.Int32,
    "error": pl.String,
    "attempts": pl.Int32,
    "response_text": pl.String,
    "finish_reason": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "image_path": pl.String,
    "image_sha256": pl.String,
    "image_bytes": pl.Int64,
    "mime_type": pl.String,
    "width": pl.Int32,
    "height": pl.Int32,
    "latency_ms": pl.Float64,
    "ttft_ms": pl.Float64,
    "tokens_per_s": pl.Float64,
    "started_at": pl.Datetime("us", "UTC"),
    "finished_at": pl.Datetime("us", "UTC"),
    "run_id": pl.String,
    "raw_response": pl.String,
}


def manifest_row(result: Result, *, endpoint: str, run_id: str) -> dict[str, Any]:
    req, parsed = result.request, result.parsed
    return {
        "request_key": req.key,
        "row_id": req.row_id,
        "row_index": req.row_index,
        "endpoint": endpoint,
        "model": req.model,
        "sample": req.sample,
        "seed": req.seed,
        "status": result.status,
        "error_kind": result.error_kind,
        "http_status": result.http_status,
        "error": result.error,
        "attempts": result.attempts,
        "response_text": parsed.text if parsed else None,
        "finish_reason": parsed.finish_reason if parsed else None,
        "prompt_tokens": parsed.prompt_tokens if parsed else None,
        "completion_tokens": parsed.completion_tokens if parsed else None,
        "image_path": parsed.image_path if parsed else None,
        "image_sha256": parsed.image_sha256 if parsed else None,
        "image_bytes": parsed.image_bytes if parsed else None,
        "mime_type": parsed.mime_type if parsed else None,
        "width": parsed.width if parsed else None,
        "height": parsed.height if parsed else None,
        "latency_ms": result.latency_ms,
        "ttft_ms": parsed.ttft_ms if parsed else None,
        "tokens_per_s": tokens_per_second(result),
        "started_at": datetime.fromtimestamp(result.started_at, UTC),
        "finished_at": datetime.fromtimestamp(result.finished_at, UTC),
        "run_id": run_id,
        "raw_response": parsed.raw if parsed else None,
    }


def tokens_per_second(result: Result) -> float | None:
    """Generation speed: completion tokens over the time after the first token (or the whole call)."""
    parsed = result.parsed
    if parsed is None or not parsed.completion_tokens or result.latency_ms is None:
        return None
    generating_ms = result.latency_ms - (parsed.ttft_ms or 0.0)
    return parsed.completion_tokens / (generating_ms / 1000) if generating_ms > 0 else None


def part_name(run_id: str, shard: str, seq: int) -> str:
    return f"part-{run_id}-{shard}-{seq:05d}.parquet"


def write_part(folder: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    frame = pl.DataFrame(rows, schema=SCHEMA)
    final = folder / name
    write_atomic(final, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True))
    return final


def part_files(output_dir: Path) -> list[Path]:
    return sorted((output_dir / MANIFEST_DIR).glob(PART_GLOB))


@contextlib.contextmanager
def _manifest_errors(folder: Path) -> Iterator[None]:
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"cannot read the manifest in {folder}: {str(exc).splitlines()[0]}") from None


def scan_latest(output_dir: Path) -> pl.LazyFrame | None:
    """All parts, the latest row per request key; None when nothing was written yet."""
    files = part_files(output_dir)
    if not files:
        return None
    frame = pl.scan_parquet(files, schema=SCHEMA, missing_columns="insert", extra_columns="ignore")
    return frame.sort("finished_at").unique("request_key", keep="last", maintain_order=True)


@dataclass(frozen=True, slots=True)
class Done:
    """The keys not to send again: the ok ones as the column they were read as (it joins with
    the plan index as it is, and a set of a million keys takes ~0.2 s to build, which a resumed
    run need not wait for), the permanent failures (few) as a set."""

    ok: pl.Series  # a key may repeat
    failed: set[int]

    def keys(self) -> DoneKeys:
        return DoneKeys(set(self.ok.to_list()), self.failed)


def read_done_keys(output_dir: Path, *, retry_failed: bool = False, files_per_read: int = 64) -> DoneKeys:
    return read_done(output_dir, retry_failed=retry_failed, files_per_read=files_per_read).keys()


def read_done(output_dir: Path, *, retry_failed: bool = False, files_per_read: int = 64) -> Done:
    """The keys not to send again, read a few parts at a time in the order they were written, so
    that memory holds the answer (8-byte keys) and never the whole manifest."""
    failed: set[int] = set()
    ok_columns = [pl.Series("short", [], dtype=pl.UInt64)]
    files = part_files(output_dir)
    short = pl.col("request_key").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("short")
    permanent = (pl.col("status") == "failed") & (pl.col("error_kind") == "permanent")
    for start in range(0, len(files), files_per_read):
        chunk = files[start : start + files_per_read]
        with _manifest_errors(output_dir):
            frame = (
                pl.scan_parquet(chunk, schema=SCHEMA, missing_columns="insert", extra_columns="ignore")
                .select(short, (pl.col("status") == "ok").alias("ok"), permanent.alias("permanent"))
                .collect()
            )
        ok_columns.append(frame.filter("ok").get_column("short"))
        if not retry_failed:  # a later row for a key wins: a retry that failed again, or succeeded
            failed.difference_update(frame.filter(~pl.col("permanent")).get_column("short").to_list())
            failed.update(frame.filter("permanent").get_column("short").to_list())
    ok = pl.concat(ok_columns)
    if failed:  # a key that was ever answered is done, whatever came after
        column = pl.Series(list(failed), dtype=pl.UInt64)
        failed = set(column.filter(~column.is_in(ok.implode())).to_list())
    return Done(ok, failed)
