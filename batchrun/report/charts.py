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
        done = report.throughput.group_by("finished_at", "status").agg(pl.col("per_s").sum())
        charts["Throughput (finished requests per second)"] = (
            alt.Chart(_records(done))
            .mark_area(opacity=0.8, interpolate="step-after")
            .encode(
                x=alt.X("finished_at:T", title="time (UTC)", axis=alt.Axis(format=TIME_AXIS)),
                y=alt.Y("per_s:Q", title="requests/s", stack=True),
                color=alt.Color(
                    "status:N",
                    scale=alt.Scale(domain=["ok", "failed"], range=["#4c78a8", "#e45756"]),
                    legend=alt.Legend(orient="top"),
                ),
            )
        )
    if report.latencies.height:
        charts["Latency per endpoint (ms, ok requests, up to p99)"] = _distribution(alt, report.latencies, "latency_ms")
        ttft = report.latencies.filter(pl.col("ttft_ms").is_not_null())
        if ttft.height:
            charts["Time to first token per endpoint (ms, up to p99)"] = _distribution(alt, ttft, "ttft_ms")
    if report.errors_over_time.height:
        charts["Errors over time by kind"] = (
            alt.Chart(_records(report.errors_over_time))
            .mark_bar()
            .encode(
                x=alt.X("finished_at:T", title="time (UTC)", axis=alt.Axis(format=TIME_AXIS)),
                y=alt.Y("count:Q", title="failed requests"),
                color=alt.Color("kind:N", title="error kind", legend=alt.Legend(orient="top")),
            )
        )
    return {
        title: vlc.vegalite_to_svg(chart.properties(width=WIDTH, height=HEIGHT).to_dict())
        for title, chart in charts.items()
    }


def _distribution(alt: Any, frame: pl.DataFrame, column: str) -> Any:
    """A histogram per endpoint, overlaid; the slowest 1 % are left out so the tail does not
    squeeze the body into one bar (the table above has p95)."""
    cut = frame[column].quantile(0.99)
    shown = frame.filter(pl.col(column) <= cut) if cut is not None else frame
    return (
        alt.Chart(_records(shown.select("endpoint", column)))
        .mark_bar(opacity=0.75)
        .encode(
            x=alt.X(f"{column}:Q", bin=alt.Bin(maxbins=40), title="milliseconds"),
            y=alt.Y("count():Q", title="requests", stack=None),
            color=alt.Color("endpoint:N", legend=alt.Legend(orient="top")),
        )
    )


def _records(frame: pl.DataFrame) -> Any:
    """Inline data as Vega-Lite reads it (datetimes as ISO text)."""
    import altair as alt

    dates = [name for name, dtype in frame.schema.items() if dtype == pl.Datetime or isinstance(dtype, pl.Datetime)]
    values = frame.with_columns(pl.col(d).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ") for d in dates).to_dicts()
    return alt.Data(values=values)
