"""The manifest as the report reads it: the latest row per key, as ``scan_latest`` picks it (parts
and crash journals), a few columns at a time, so that memory holds aggregates, not the manifest.
What each step reads is named here; what it makes of them is ``data``'s."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ..models import short_keys

SHORT = short_keys(pl.col("request_key")).alias("short")
OK = pl.col("status") == "ok"
# What the quantiles, bins and samples need of every row: ~48 bytes a row with the two names as
# categories (the manifest's stats columns as read held ~330 MiB at 1M rows). Sums, extremes and
# counts by endpoint come from one streaming pass (``TOTALS``, ``COUNTS``), not held a row at a time.
STATS: list[str | pl.Expr] = [
    pl.col("endpoint").cast(pl.Categorical),
    pl.col("status").cast(pl.Categorical),
    "row_index",
    "finished_at",
    "latency_ms",
    "ttft_ms",
]
TOTALS: list[pl.Expr] = [
    pl.col("started_at").min(),
    pl.col("finished_at").max(),
    pl.col("image_path").is_not_null().any().alias("has_image"),
    pl.col("cost_usd").count().alias("priced"),
    pl.col("cost_usd").sum(),
    pl.col("cost_estimated").fill_null(False).any(),
]
COUNTS: list[pl.Expr] = [
    pl.len().alias("requests"),
    OK.sum().alias("ok"),
    (~OK).sum().alias("failed"),
    (pl.col("prompt_tokens").fill_null(0) + pl.col("completion_tokens").fill_null(0)).sum().alias("tokens"),
]
FAILED = ["finished_at", "error_kind", "http_status", "error", "row_id", "row_index"]
SAMPLED = ["row_id", "row_index", "endpoint", "sample", "status", "error", "response_text", "request_body"]


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
