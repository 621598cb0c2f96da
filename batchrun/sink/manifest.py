"""The manifest: Parquet part files, one row per finished request key, never overwritten.

Part names carry the run id, the shard and a sequence number, so no run, resumed run or shard
ever overwrites another's file. Readers take the union of all parts and of the crash journal's
rows not yet folded into a part (``sink/journal.py``), and the latest row per key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import InputError
from ..models import DoneKeys, Result, short_keys
from .files import write_atomic
from .journal import read_records

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
    "request_body": pl.String,  # with ``keep_request``: the body as sent (older parts lack it)
    "cost_usd": pl.Float64,  # with a price (older parts lack it)
    "cost_estimated": pl.Boolean,
}


def manifest_frame(
    results: Sequence[Result], *, endpoint: str, run_id: str, keep_request: bool = False
) -> pl.DataFrame:
    """One row per result, built a column at a time: a list of row dicts cost ~10 µs a result to
    make and as much again for polars to read back, with the GIL held. ``keep_request`` keeps each
    request's body as sent (streaming fields included): the body never holds a credential."""
    requests = [r.request for r in results]
    parsed = [r.parsed for r in results]

    def answer(name: str) -> list[Any]:
        return [getattr(p, name) if p is not None else None for p in parsed]

    def stamps(values: list[float]) -> pl.Series:
        """Unix seconds to UTC datetimes, rounded to the microsecond as ``datetime.fromtimestamp`` does
        (whole seconds and fraction apart: ``t * 1e6`` in one step is off by one µs now and then)."""
        seconds = pl.Series(values, dtype=pl.Float64)
        whole = seconds.floor()
        micros = whole.cast(pl.Int64) * 1_000_000 + ((seconds - whole) * 1e6).round().cast(pl.Int64)
        return micros.cast(pl.Datetime("us", "UTC"))

    columns: dict[str, Any] = {
        "request_key": [q.key for q in requests],
        "row_id": [q.row_id for q in requests],
        "row_index": [q.row_index for q in requests],
        "endpoint": [q.endpoint or endpoint for q in requests],
        "model": [q.model for q in requests],
        "sample": [q.sample for q in requests],
        "seed": [q.seed for q in requests],
        "status": [r.status for r in results],
        "error_kind": [r.error_kind for r in results],
        "http_status": [r.http_status for r in results],
        "error": [r.error for r in results],
        "attempts": [r.attempts for r in results],
        "response_text": answer("text"),
        "finish_reason": answer("finish_reason"),
        "prompt_tokens": answer("prompt_tokens"),
        "completion_tokens": answer("completion_tokens"),
        "image_path": answer("image_path"),
        "image_sha256": answer("image_sha256"),
        "image_bytes": answer("image_bytes"),
        "mime_type": answer("mime_type"),
        "width": answer("width"),
        "height": answer("height"),
        "latency_ms": [r.latency_ms for r in results],
        "ttft_ms": answer("ttft_ms"),
        "tokens_per_s": [tokens_per_second(r) for r in results],
        "started_at": stamps([r.started_at for r in results]),
        "finished_at": stamps([r.finished_at for r in results]),
        "run_id": [run_id] * len(results),
        "raw_response": answer("raw"),
        "request_body": [q.body.decode() for q in requests] if keep_request else [None] * len(results),
        "cost_usd": [r.cost_usd for r in results],
        "cost_estimated": [r.cost_estimated for r in results],
    }
    assert list(columns) == list(SCHEMA)
    return pl.DataFrame(columns, schema=SCHEMA)


def tokens_per_second(result: Result) -> float | None:
    """Generation speed: completion tokens over the time after the first token (or the whole call)."""
    parsed = result.parsed
    if parsed is None or not parsed.completion_tokens or result.latency_ms is None:
        return None
    generating_ms = result.latency_ms - (parsed.ttft_ms or 0.0)
    return parsed.completion_tokens / (generating_ms / 1000) if generating_ms > 0 else None


def part_name(run_id: str, shard: str, seq: int) -> str:
    return f"part-{run_id}-{shard}-{seq:05d}.parquet"


def write_part(folder: Path, name: str, frame: pl.DataFrame) -> Path:
    final = folder / name
    write_atomic(final, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True))
    return final


def part_files(output_dir: Path) -> list[Path]:
    return sorted((output_dir / MANIFEST_DIR).glob(PART_GLOB))


@contextlib.contextmanager
def manifest_errors(folder: Path) -> Iterator[None]:
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"cannot read the manifest in {folder}: {str(exc).splitlines()[0]}") from None


def journal_frame(output_dir: Path) -> pl.DataFrame | None:
    """The rows of the crash journals on disk (a run in progress, or killed and not yet followed
    by another), made by ``manifest_frame`` as the parts' rows are; None when there are none."""
    frames = [
        manifest_frame(records.results, endpoint=records.endpoint, run_id=records.run_id)
        for records in read_records(output_dir)
    ]
    return pl.concat(frames) if frames else None


def scan_all(output_dir: Path) -> pl.LazyFrame | None:
    """Every row of every part, then of the journals; None when nothing was written yet."""
    files = part_files(output_dir)
    frames = [pl.scan_parquet(files, schema=SCHEMA, missing_columns="insert", extra_columns="ignore")] if files else []
    journal = journal_frame(output_dir)
    if journal is not None:
        frames.append(journal.lazy())
    return pl.concat(frames) if frames else None


def scan_latest(output_dir: Path) -> pl.LazyFrame | None:
    """All parts and journals, the latest row per request key; None when nothing was written yet."""
    frame = scan_all(output_dir)
    if frame is None:
        return None
    return frame.sort("finished_at").unique("request_key", keep="last", maintain_order=True)


@dataclass(frozen=True, slots=True)
class Done:
    """The keys not to send again: the ok ones as the column they were read as (it joins with
    the plan index as it is, and a set of a million keys takes ~0.2 s to build, which a resumed
    run need not wait for), the permanent failures (few) as a set."""

    ok: pl.Series  # a key may repeat
    failed: set[int]

    def keys(self) -> DoneKeys:
        keys = DoneKeys(failed=self.failed)
        keys.add_read(self.ok)
        return keys


def read_done_keys(output_dir: Path, *, retry_failed: bool = False, files_per_read: int = 16) -> DoneKeys:
    return read_done(output_dir, retry_failed=retry_failed, files_per_read=files_per_read).keys()


def read_done(output_dir: Path, *, retry_failed: bool = False, files_per_read: int = 16) -> Done:
    """The keys not to send again, read a few parts at a time in the order they were written (the
    journals' rows last), so that memory holds the answer (8-byte keys) and never the whole manifest."""
    failed: set[int] = set()
    ok_columns = [pl.Series("short", [], dtype=pl.UInt64)]
    files = part_files(output_dir)
    short = short_keys(pl.col("request_key")).alias("short")
    permanent = (pl.col("status") == "failed") & (pl.col("error_kind") == "permanent")

    def sources() -> Iterator[pl.LazyFrame]:
        for start in range(0, len(files), files_per_read):
            chunk = files[start : start + files_per_read]
            yield pl.scan_parquet(chunk, schema=SCHEMA, missing_columns="insert", extra_columns="ignore")
        journal = journal_frame(output_dir)
        if journal is not None:
            yield journal.lazy()

    for source in sources():
        with manifest_errors(output_dir):
            frame = source.select(short, (pl.col("status") == "ok").alias("ok"), permanent.alias("permanent")).collect()
        ok_columns.append(frame.filter("ok").get_column("short"))
        if not retry_failed:  # a key's last row wins: a retry that failed again, or succeeded
            last = frame.group_by("short", maintain_order=True).agg(pl.col("permanent").last())
            failed.difference_update(last.filter(~pl.col("permanent")).get_column("short").to_list())
            failed.update(last.filter("permanent").get_column("short").to_list())
    ok = pl.concat(ok_columns)
    if failed:  # a key that was ever answered is done, whatever came after
        column = pl.Series(list(failed), dtype=pl.UInt64)
        failed = set(column.filter(~column.is_in(ok.implode())).to_list())
    return Done(ok, failed)
