"""Aggregates over every result, for the table by endpoint and the charts: quantiles per endpoint,
counts by time bin, histograms up to p99. They alone see every row, so each runs lazily or over one
Series at a time, over the few columns ``results.STATS`` reads, and holds little beyond that frame."""

from __future__ import annotations

import math
from typing import Any

import polars as pl

HISTOGRAM_BINS = 30  # about this many bars, of a round width, up to the 99th percentile


def names(frame: pl.DataFrame) -> pl.DataFrame:
    """Categories back to text, as the page and the charts read them."""
    return frame.with_columns(pl.col(pl.Categorical).cast(pl.String))


def histogram(frame: pl.LazyFrame, column: str) -> pl.DataFrame:
    """Bars of a round width (1, 2 or 5 times a power of ten) per endpoint, over every value up to
    the 99th percentile, so the slowest 1 % do not squeeze the rest into one bar (p95 is in the table)."""
    values = frame.select("endpoint", column).filter(pl.col(column).is_not_null())
    cut = values.select(pl.col(column).quantile(0.99)).collect().item()
    if cut is None:
        return pl.DataFrame(schema={"endpoint": pl.String, "lo": pl.Float64, "hi": pl.Float64, "count": pl.UInt32})
    width = round_step(max(float(cut), 1e-3) / HISTOGRAM_BINS)
    lo = (pl.col(column) / width).floor() * width
    return (
        values.filter(pl.col(column) <= cut)
        .group_by("endpoint", lo.alias("lo"))
        .agg(pl.len().alias("count"))
        .with_columns((pl.col("lo") + width).alias("hi"), pl.col(pl.Categorical).cast(pl.String))
        .sort("endpoint", "lo")
        .collect()
    )


def by_endpoint(frame: pl.DataFrame, counts: pl.DataFrame) -> pl.DataFrame:
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


def binned(frame: pl.LazyFrame, every: str, groups: list[str]) -> pl.DataFrame:
    """Results by time bin as ``group_by_dynamic`` bins them (windows from ``every``'s epoch
    boundaries, empty ones left out), without sorting every row first."""
    start = pl.col("finished_at").dt.truncate(every)
    return names(
        frame.filter(pl.col("finished_at").is_not_null())
        .group_by(*groups, start)
        .agg(pl.len().alias("count"))
        .sort(*groups, "finished_at")
        .collect()
    )


def round_step(raw: float) -> float:
    power = 10 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))
