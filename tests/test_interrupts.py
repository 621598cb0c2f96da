"""Signals, deadlines and the lock, through a real `batchrun run` subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from helpers import JobWriter, questions

from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.sink.manifest import scan_latest


def start(job: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job), "--progress", "lines", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_until(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def ok_rows(out: Path) -> pl.DataFrame:
    latest = scan_latest(out)
    return pl.DataFrame() if latest is None else latest.filter(pl.col("status") == "ok").collect()


def job_for(write_job: JobWriter, url: str, n: int = 200, concurrency: int = 8) -> Path:
    return write_job(
        rows=questions(n),
        endpoint=f'base_url = "{url}"\nmodel = "m"',
        top='id_column = "id"\n[sink]\nflush_rows = 10\nflush_seconds = 0.1',
        limits=f"concurrency = {concurrency}",
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_lets_in_flight_requests_finish(
    write_job: JobWriter, tmp_path: Path, signum: signal.Signals
) -> None:
    sim = create_app(FaultPlan(latency_ms=300))
    with serve_in_thread(sim) as url:
        job = job_for(write_job, url)
        proc = start(job)
        wait_until(lambda: sim.stats.total >= 20)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 4, err
        assert "no new requests" in err and signum.name in err
        assert "stopped early" in out and "exit 4" in out
        sent_before_resume = sim.stats.total
        done = ok_rows(tmp_path / "out")
        # every request that was sent finished within the grace period and was kept
        assert done.height == sent_before_resume
        sim.plan.latency_ms = 0
        again = start(job)
        out, err = again.communicate(timeout=60)
        assert again.returncode == 0, err
    assert ok_rows(tmp_path / "out").height == 200
    assert sim.stats.total == 200  # nothing sent twice


def test_second_sigint_cancels_in_flight_at_once_and_keeps_what_finished(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(FaultPlan(latency_ms=50, latency_tail_ms=4_000, latency_tail_rate=0.3, seed=1))
    with serve_in_thread(sim) as url:
        job = job_for(write_job, url, concurrency=8)
        proc = start(job, "--grace", "60s")
        wait_until(lambda: ok_rows(tmp_path / "out").height >= 10)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 4, err
        assert "again: cancelling" in err
    kept = ok_rows(tmp_path / "out")
    assert kept.height >= 10
    assert kept["request_key"].n_unique() == kept.height
    # the slow requests still in flight (4 s, against a grace of 60 s) were cancelled, not waited for:
    # sent, and never recorded
    assert sim.stats.total > kept.height


def test_max_runtime_stops_gracefully_and_resumes(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(FaultPlan(latency_ms=100))
    with serve_in_thread(sim) as url:
        job = job_for(write_job, url, n=300, concurrency=4)
        first = start(job, "--max-runtime", "1s", "--grace", "5s", "--log-format", "json")
        _, err = first.communicate(timeout=60)
        assert first.returncode == 4, err
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        summary = next(line for line in lines if line.get("event") == "summary")
        assert summary["exit_code"] == 4 and summary["stopped"] == "max runtime reached"
        assert any("max runtime reached" in line["message"] for line in lines)
        partial = ok_rows(tmp_path / "out").height
        assert 0 < partial < 300 and partial == sim.stats.total
        sim.plan.latency_ms = 0
        again = start(job)
        again.communicate(timeout=120)
        assert again.returncode == 0
    assert ok_rows(tmp_path / "out").height == 300 and sim.stats.total == 300


def test_a_second_run_of_the_same_job_exits_5(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(FaultPlan(latency_ms=200))
    with serve_in_thread(sim) as url:
        job = job_for(write_job, url, n=100, concurrency=2)
        first = start(job)
        wait_until(lambda: sim.stats.total >= 2)
        second = start(job)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 5
        assert "in use by another run" in err and f"pid {first.pid}" in err
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        # a killed holder leaves no stale lock
        third = start(job, "--max-runtime", "0.5s")
        third.communicate(timeout=30)
        assert third.returncode == 4
