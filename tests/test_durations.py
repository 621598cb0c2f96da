"""One duration syntax for every command-line flag: ``batchrun run --grace/--max-runtime`` and the
simulator's latencies and Retry-After."""

from __future__ import annotations

import argparse

import pytest

from batchrun.cli import build_parser
from batchrun.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("2s", 2.0),
        ("1.5m", 90.0),
        ("2h", 7200.0),
        ("0", 0.0),
        ("30", 30.0),  # a bare number is seconds (the simulator refused it before: --retry-after 5 is 5 s)
        (".5s", 0.5),
        ("1.s", 1.0),
        (" 10 m ", 600.0),
    ],
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["fast", "-1s", "1e3", "inf", "nan", "5d", "1h30m", "", "ms"])
def test_anything_else_is_one_clear_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"use e\.g\. 500ms, 30s, 50m or 2h"):
        parse_duration(text)


def test_run_and_simulate_read_durations_alike() -> None:
    parser = build_parser()
    run = parser.parse_args(["run", "job.toml", "--grace", "1.5m", "--max-runtime", "2h"])
    assert (run.grace, run.max_runtime) == (90.0, 7200.0)
    simulate = parser.parse_args(["simulate", "--latency", "50ms", "--retry-after", "2", "--chunk-delay", ".5s"])
    assert (simulate.latency, simulate.retry_after, simulate.chunk_delay) == pytest.approx((0.05, 2.0, 0.5))
