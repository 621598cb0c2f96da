"""What the page shows, read from the manifest: aggregates over every row, samples for the tables.

The manifest's rows are the ones ``scan_latest`` picks (parts and crash journals, the latest row
per key), read a few columns at a time so that memory holds aggregates, not the manifest: six
columns of every row, the failed rows, and the texts of the sampled rows only. Prompts are not in
the manifest unless ``keep_request``: ``prompts.Prompts`` finds them for the sampled rows. This
module puts the page's numbers together; ``results`` reads the manifest, ``aggregates`` counts
over every row, ``samples`` picks the rows shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import InputError
from ..sink.manifest import manifest_errors, scan_all
from . import aggregates, samples
from .last_run import last_exit
from .prompts import Prompts
from .results import COUNTS, FAILED, OK, SAMPLED, SHORT, STATS, TOTALS, Results, latest

TIME_BINS = 60  # points on the over-time charts
MIN_BIN_S = 0.1  # a two-second run: 20 points, not 60 of one or two requests each


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


def load(output_dir: Path) -> Report:
    every = scan_all(output_dir)
    if every is None:
        raise InputError(f"no results in {output_dir} yet: run the job first")
    with manifest_errors(output_dir):
        results, frame = latest(every, every.select(SHORT, *STATS).collect(engine="streaming"))
        totals, counts = pl.collect_all(
            [results.scan.select(TOTALS), results.scan.group_by("endpoint").agg(COUNTS)], engine="streaming"
        )
        return build(output_dir, results, frame, totals.row(0, named=True), counts)


def build(
    output_dir: Path, results: Results, frame: pl.DataFrame, totals: dict[str, Any], counts: pl.DataFrame
) -> Report:
    """``frame``: the ``STATS`` of every result, ``totals`` and ``counts`` (by endpoint) the
    ``TOTALS`` and ``COUNTS`` of them; the texts come from ``results`` for the rows shown."""
    notes: list[str] = []
    started, finished = totals["started_at"], totals["finished_at"]
    wall_s = (
        (finished - started).total_seconds()
        if isinstance(started, datetime) and isinstance(finished, datetime)
        else 0.0
    )
    ok = OK
    # every aggregate runs lazily over the few columns it needs: an eager group_by or sort of 1M rows
    # holds ~100 MiB more than the frame itself
    stats = frame.lazy()
    by_endpoint = aggregates.by_endpoint(frame, counts)
    span = max(wall_s, 1.0)
    bin_s = max(span / TIME_BINS, MIN_BIN_S)
    every = f"{int(bin_s * 1_000_000)}us"
    until = (pl.col("finished_at") + pl.duration(microseconds=int(bin_s * 1_000_000))).alias("until")
    throughput = aggregates.binned(stats, every, ["endpoint", "status"]).with_columns(
        (pl.col("count") / bin_s).alias("per_s"), until
    )
    answered = stats.filter(ok)
    latency = aggregates.histogram(answered, "latency_ms")
    ttft = aggregates.histogram(answered, "ttft_ms")
    rows = frame["row_index"].n_unique()
    requests = frame.height
    is_image = bool(totals["has_image"])
    chosen = samples.sample_rows(frame)
    del frame  # the rest reads few rows, and the charts come next
    failed = results.read(*FAILED, where=~OK)
    kinds = failed.lazy().with_columns(pl.col("error_kind").fill_null("unknown").alias("kind"))
    errors_over_time = aggregates.binned(kinds, every, ["kind"]).with_columns(until)
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
    sampled = results.read(*SAMPLED, where=pl.col("row_index").is_in(chosen.implode()))
    prompts = Prompts(output_dir, sampled)
    answers = samples.answers(sampled, prompts) if not is_image else pl.DataFrame()
    images = samples.images(results, prompts) if is_image else pl.DataFrame()
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
        last_exit=last_exit(output_dir),
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
