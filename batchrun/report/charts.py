"""The page's charts: Vega-Lite specs built with Altair, rendered to static SVG by vl-convert's
bundled engine, so the page carries no chart script and draws with no network."""

from __future__ import annotations

from typing import Any

import polars as pl

from .data import Report

WIDTH = 440
HEIGHT = 190
TIME_AXIS = "%H:%M:%S"


def render(report: Report) -> dict[str, str]:
    """Chart title -> SVG text, for the charts that have data."""
    import altair as alt
    import vl_convert as vlc

    alt.data_transformers.disable_max_rows()
    charts: dict[str, Any] = {}
    if report.throughput.height:
        done = report.throughput.group_by("finished_at", "until", "status").agg(pl.col("per_s").sum())
        status = alt.Scale(domain=["ok", "failed"], range=["#4c78a8", "#e45756"])
        charts["Throughput (finished requests per second)"] = _over_time(
            alt, _stacked(done, "status", "per_s", ["ok", "failed"]), "status", "requests/s", status
        )
    if report.latency.height:
        charts["Latency per endpoint (ms, ok requests, up to p99)"] = _histogram(alt, report.latency)
    if report.ttft.height:
        charts["Time to first token per endpoint (ms, up to p99)"] = _histogram(alt, report.ttft)
    if report.errors_over_time.height:
        kinds = sorted(report.errors_over_time["kind"].unique().to_list())
        charts["Errors over time by kind"] = _over_time(
            alt, _stacked(report.errors_over_time, "kind", "count", kinds), "kind", "failed requests", alt.Undefined
        )
    return {
        title: vlc.vegalite_to_svg(chart.properties(width=WIDTH, height=HEIGHT).to_dict())
        for title, chart in charts.items()
    }


def _stacked(frame: pl.DataFrame, group: str, value: str, order: list[str]) -> pl.DataFrame:
    """``y0``/``y1`` of each bar, stacked in ``order`` within its time bin: bars drawn from x to x2
    (a bin's own start and end, so one bin is as clear as sixty) are stacked here, not by Vega-Lite."""
    rank = pl.col(group).replace_strict(order, list(range(len(order))), default=len(order))
    stacked = frame.sort("finished_at", rank).with_columns(pl.col(value).cum_sum().over("finished_at").alias("y1"))
    return stacked.with_columns((pl.col("y1") - pl.col(value)).alias("y0"))


def _over_time(alt: Any, frame: pl.DataFrame, group: str, title: str, scale: Any) -> Any:
    return (
        alt.Chart(_records(frame))
        .mark_rect(opacity=0.9)
        .encode(
            x=alt.X("finished_at:T", title="time (UTC)", axis=alt.Axis(format=TIME_AXIS)),
            x2="until:T",
            y=alt.Y("y1:Q", title=title),
            y2="y0:Q",
            color=alt.Color(f"{group}:N", scale=scale, legend=alt.Legend(orient="top", title=None)),
        )
    )


def _histogram(alt: Any, frame: pl.DataFrame) -> Any:
    """One histogram per endpoint, overlaid (see ``aggregates.histogram``)."""
    return (
        alt.Chart(_records(frame.with_columns(pl.lit(0).alias("zero"))))
        .mark_rect(opacity=0.6, stroke="white", strokeWidth=0.5)
        .encode(
            x=alt.X("lo:Q", title="milliseconds"),
            x2="hi:Q",
            y=alt.Y("count:Q", title="requests"),
            y2="zero:Q",
            color=alt.Color("endpoint:N", legend=alt.Legend(orient="top", title=None)),
        )
    )


def _records(frame: pl.DataFrame) -> Any:
    """Inline data as Vega-Lite reads it (datetimes as ISO text)."""
    import altair as alt

    dates = [name for name, dtype in frame.schema.items() if dtype == pl.Datetime or isinstance(dtype, pl.Datetime)]
    values = frame.with_columns(pl.col(d).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ") for d in dates).to_dicts()
    return alt.Data(values=values)  # type: ignore[no-untyped-call]
