"""What the page shows, read from the manifest: aggregates over every row, samples for the tables.

The manifest's rows are the ones ``scan_latest`` picks (parts and crash journals, the latest row
per key), read a few columns at a time so that memory holds aggregates, not the manifest: six
columns of every row, the failed rows, and the texts of the sampled rows only. Prompts are not in
the manifest unless ``keep_request``: ``prompts.Prompts`` finds them for the sampled rows.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import InputError
from ..models import short_keys
from ..sink.manifest import scan_all
from .last_run import LAST_RUN
from .prompts import Prompts

SAMPLE_ROWS = 2_000  # rows in the answers table: ~2 MB of text at most, searchable in the page
SAMPLE_IMAGES = 240  # thumbnails in the contact sheet: ~5 MB of JPEG at 256 px
TIME_BINS = 60  # points on the over-time charts
MIN_BIN_S = 0.1  # a two-second run: 20 points, not 60 of one or two requests each
HISTOGRAM_BINS = 30  # about this many bars, of a round width, up to the 99th percentile

_SHORT = short_keys(pl.col("request_key")).alias("short")
_OK = pl.col("status") == "ok"
# What the quantiles, bins and samples need of every row: ~48 bytes a row with the two names as
# categories (the manifest's stats columns as read held ~330 MiB at 1M rows). Sums, extremes and
# counts by endpoint come from one streaming pass (``_TOTALS``, ``_COUNTS``), not held a row at a time.
_STATS: list[str | pl.Expr] = [
    pl.col("endpoint").cast(pl.Categorical),
    pl.col("status").cast(pl.Categorical),
    "row_index",
    "finished_at",
    "latency_ms",
    "ttft_ms",
]
_TOTALS: list[pl.Expr] = [
    pl.col("started_at").min(),
    pl.col("finished_at").max(),
    pl.col("image_path").is_not_null().any().alias("has_image"),
    pl.col("cost_usd").count().alias("priced"),
    pl.col("cost_usd").sum(),
    pl.col("cost_estimated").fill_null(False).any(),
]
_COUNTS: list[pl.Expr] = [
    pl.len().alias("requests"),
    _OK.sum().alias("ok"),
    (~_OK).sum().alias("failed"),
    (pl.col("prompt_tokens").fill_null(0) + pl.col("completion_tokens").fill_null(0)).sum().alias("tokens"),
]
_FAILED = ["finished_at", "error_kind", "http_status", "error", "row_id", "row_index"]
_SAMPLED = ["row_id", "row_index", "endpoint", "sample", "status", "error", "response_text", "request_body"]
_IMAGES = ["row_index", "row_id", "sample", "seed", "endpoint", "image_path"]


@dataclass
class Report:
    output_dir: Path
    rows: int  # distinct input rows with a result
    requests: int
    by_endpoint: pl.DataFrame  # endpoint, requests, ok, failed, tokens, latency quantiles
    wall_s: float
    started: str
    finished: str
    last_exit: str
    throughput: pl.DataFrame  # minute bin, endpoint, status, count, per_s
    latency: pl.DataFrame  # histogram: endpoint, lo, hi, count (every ok row up to p99)
    ttft: pl.DataFrame  # the same for time to first token
    errors_over_time: pl.DataFrame  # bin, kind, count
    errors: pl.DataFrame  # kind, http_status, count, example, row
    answers: pl.DataFrame  # row, prompt, one answer column per endpoint
    images: pl.DataFrame  # row, sample, seed, endpoint, prompt, image_path
    is_image: bool
    cost: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Results:
    """The manifest's latest row per key, as a scan: ``by_time`` when a key repeats, so that the
    first failed row of a kind is the first to finish, as in the rows ``scan_latest`` sorts."""

    scan: pl.LazyFrame
    by_time: bool

    def read(self, *columns: str | pl.Expr, where: pl.Expr) -> pl.DataFrame:
        frame = self.scan.filter(where)
        if self.by_time:
            frame = frame.sort("finished_at", "_i")
        return frame.select(*columns).collect(engine="streaming")


def load(output_dir: Path) -> Report:
    every = scan_all(output_dir)
    if every is None:
        raise InputError(f"no results in {output_dir} yet: run the job first")
    with _manifest_errors(output_dir):
        results, frame = latest(every, every.select(_SHORT, *_STATS).collect(engine="streaming"))
        totals, counts = pl.collect_all(
            [results.scan.select(_TOTALS), results.scan.group_by("endpoint").agg(_COUNTS)], engine="streaming"
        )
        return build(output_dir, results, frame, totals.row(0, named=True), counts)


def latest(every: pl.LazyFrame, frame: pl.DataFrame) -> tuple[Results, pl.DataFrame]:
    """The latest row per key, as ``scan_latest`` picks it, found by the 8-byte short key in
    ``frame`` (a row's place in it is its place in ``every``); the rows of older results are
    filtered out of the scan only when a key repeats (a retried or resumed run)."""
    if frame["short"].n_unique() == frame.height:
        return Results(every, by_time=False), frame.drop("short")
    frame = frame.with_row_index("_i")
    kept = frame.select("_i", "short", "finished_at").sort("finished_at", "_i").unique("short", keep="last")["_i"]
    scan = every.with_row_index("_i").filter(pl.col("_i").is_in(kept.implode()))
    return Results(scan, by_time=True), frame.filter(pl.col("_i").is_in(kept.implode())).drop("_i", "short")


@contextlib.contextmanager
def _manifest_errors(output_dir: Path) -> Iterator[None]:
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"cannot read the manifest in {output_dir}: {str(exc).splitlines()[0]}") from None


def _names(frame: pl.DataFrame) -> pl.DataFrame:
    """Categories back to text, as the page and the charts read them."""
    return frame.with_columns(pl.col(pl.Categorical).cast(pl.String))


def build(
    output_dir: Path, results: Results, frame: pl.DataFrame, totals: dict[str, Any], counts: pl.DataFrame
) -> Report:
    """``frame``: the ``_STATS`` of every result, ``totals`` and ``counts`` (by endpoint) the
    ``_TOTALS`` and ``_COUNTS`` of them; the texts come from ``results`` for the rows shown."""
    notes: list[str] = []
    started, finished = totals["started_at"], totals["finished_at"]
    wall_s = (
        (finished - started).total_seconds()
        if isinstance(started, datetime) and isinstance(finished, datetime)
        else 0.0
    )
    ok = _OK
    # every aggregate runs lazily over the few columns it needs: an eager group_by or sort of 1M rows
    # holds ~100 MiB more than the frame itself
    stats = frame.lazy()
    by_endpoint = _by_endpoint(frame, counts)
    span = max(wall_s, 1.0)
    bin_s = max(span / TIME_BINS, MIN_BIN_S)
    every = f"{int(bin_s * 1_000_000)}us"
    until = (pl.col("finished_at") + pl.duration(microseconds=int(bin_s * 1_000_000))).alias("until")
    throughput = _binned(stats, every, ["endpoint", "status"]).with_columns(
        (pl.col("count") / bin_s).alias("per_s"), until
    )
    answered = stats.filter(ok)
    latency = histogram(answered, "latency_ms")
    ttft = histogram(answered, "ttft_ms")
    rows = frame["row_index"].n_unique()
    requests = frame.height
    is_image = bool(totals["has_image"])
    chosen = _sample_rows(frame, SAMPLE_ROWS)
    del frame  # the rest reads few rows, and the charts come next
    failed = results.read(*_FAILED, where=~_OK)
    kinds = failed.lazy().with_columns(pl.col("error_kind").fill_null("unknown").alias("kind"))
    errors_over_time = _binned(kinds, every, ["kind"]).with_columns(until)
    errors = (
        failed.group_by(pl.col("error_kind").fill_null("unknown").alias("kind"), "http_status")
        .agg(
            pl.len().alias("count"),
            pl.col("error").first().alias("example"),
            pl.col("row_id").first().alias("row_id"),
            pl.col("row_index").first().alias("row_index"),
        )
        .sort("count", descending=True)
    )
    del failed
    sampled = results.read(*_SAMPLED, where=pl.col("row_index").is_in(chosen.implode()))
    prompts = Prompts(output_dir, sampled)
    answers = _answers(sampled, prompts) if not is_image else pl.DataFrame()
    images = _images(results, prompts) if is_image else pl.DataFrame()
    if prompts.missing:
        notes.append(prompts.missing)
    return Report(
        output_dir=output_dir,
        rows=rows,
        requests=requests,
        by_endpoint=by_endpoint,
        wall_s=wall_s,
        started=str(started)[:19] if started is not None else "-",
        finished=str(finished)[:19] if finished is not None else "-",
        last_exit=_last_exit(output_dir),
        throughput=throughput,
        latency=latency,
        ttft=ttft,
        errors_over_time=errors_over_time,
        errors=errors,
        answers=answers,
        images=images,
        is_image=is_image,
        cost=_cost(totals),
        notes=notes,
    )


def _cost(totals: dict[str, Any]) -> str:
    """The spend the manifest records (``price`` in the job), and whether part of it is estimated."""
    if not totals["priced"]:
        return "not recorded (the job sets no price)"
    spent = float(totals["cost_usd"])
    estimated = bool(totals["cost_estimated"])
    return f"${spent:,.4f}" + (" (part estimated: the server reported no usage)" if estimated else "")


def histogram(frame: pl.LazyFrame, column: str) -> pl.DataFrame:
    """Bars of a round width (1, 2 or 5 times a power of ten) per endpoint, over every value up to
    the 99th percentile, so the slowest 1 % do not squeeze the rest into one bar (p95 is in the table)."""
    values = frame.select("endpoint", column).filter(pl.col(column).is_not_null())
    cut = values.select(pl.col(column).quantile(0.99)).collect().item()
    if cut is None:
        return pl.DataFrame(schema={"endpoint": pl.String, "lo": pl.Float64, "hi": pl.Float64, "count": pl.UInt32})
    width = _round_step(max(float(cut), 1e-3) / HISTOGRAM_BINS)
    lo = (pl.col(column) / width).floor() * width
    return (
        values.filter(pl.col(column) <= cut)
        .group_by("endpoint", lo.alias("lo"))
        .agg(pl.len().alias("count"))
        .with_columns((pl.col("lo") + width).alias("hi"), pl.col(pl.Categorical).cast(pl.String))
        .sort("endpoint", "lo")
        .collect()
    )


def _by_endpoint(frame: pl.DataFrame, counts: pl.DataFrame) -> pl.DataFrame:
    """``counts`` and the quantiles over each endpoint's ok rows, one Series each (a quantile inside
    a group_by of 1M rows held ~100 MiB)."""
    answered = frame["status"] == "ok"
    quantiles: dict[str, list[Any]] = {"endpoint": [], "p50_ms": [], "p95_ms": [], "ttft_p50_ms": []}
    for name in counts["endpoint"].to_list():
        mine = answered & (frame["endpoint"].is_null() if name is None else frame["endpoint"] == name)
        latency, ttft = frame["latency_ms"].filter(mine), frame["ttft_ms"].filter(mine)
        values = (name, latency.median(), latency.quantile(0.95), ttft.median())
        for column, value in zip(quantiles, values, strict=True):
            quantiles[column].append(value)
    schema = {"endpoint": pl.String, "p50_ms": pl.Float64, "p95_ms": pl.Float64, "ttft_p50_ms": pl.Float64}
    return counts.join(pl.DataFrame(quantiles, schema=schema), on="endpoint", how="left", nulls_equal=True).sort(
        "endpoint"
    )


def _binned(frame: pl.LazyFrame, every: str, groups: list[str]) -> pl.DataFrame:
    """Results by time bin as ``group_by_dynamic`` bins them (windows from ``every``'s epoch
    boundaries, empty ones left out), without sorting every row first."""
    start = pl.col("finished_at").dt.truncate(every)
    return _names(
        frame.filter(pl.col("finished_at").is_not_null())
        .group_by(*groups, start)
        .agg(pl.len().alias("count"))
        .sort(*groups, "finished_at")
        .collect()
    )


def _round_step(raw: float) -> float:
    power = 10 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def _sample_rows(frame: pl.DataFrame, limit: int) -> pl.Series:
    """The first ``limit`` input rows (in input order): a reader finds row 12 where row 12 is."""
    return frame["row_index"].unique().sort().head(limit)


def _answers(picked: pl.DataFrame, prompts: Prompts) -> pl.DataFrame:
    """One line per sampled (row, sample), one answer column per endpoint (side by side)."""
    answer = (
        pl.when(pl.col("status") == "ok")
        .then(pl.col("response_text"))
        .otherwise(pl.lit("[failed: ") + pl.col("error").fill_null("") + pl.lit("]"))
    )
    wide = (
        picked.with_columns(answer.alias("answer"))
        .pivot(on="endpoint", index=["row_index", "sample"], values="answer", aggregate_function="first")
        .sort("row_index", "sample")
    )
    ids = picked.group_by("row_index").agg(pl.col("row_id").first())
    wide = wide.join(ids, on="row_index", how="left")
    return wide.with_columns(prompts.column(wide["row_index"]))


def _images(results: Results, prompts: Prompts) -> pl.DataFrame:
    """The images of the first ``SAMPLE_IMAGES`` rows that have one."""
    has_image = pl.col("image_path").is_not_null()
    chosen = results.read("row_index", where=has_image)["row_index"].unique().sort().head(SAMPLE_IMAGES)
    picked = (
        results.read(*_IMAGES, where=pl.col("row_index").is_in(chosen.implode()) & has_image)
        .sort("row_index", "endpoint", "sample")
        .head(SAMPLE_IMAGES)
    )
    return picked.with_columns(prompts.column(picked["row_index"]))


def _last_exit(output_dir: Path) -> str:
    """The exit status of the last run, when the run left its summary; else not known."""
    path = output_dir / LAST_RUN
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "not recorded"
    if isinstance(data, dict) and "exit_code" in data:
        return f"{data['exit_code']}: {data.get('exit_meaning', '')}".rstrip(": ")
    return "not recorded"
