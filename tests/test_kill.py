"""SIGKILL at random moments loses only the requests in flight: real `batchrun run` subprocesses
against the simulator over loopback, killed at least five times, then run to the end.

The bound (issue 14): requests answered ok by the server <= rows x samples + kills x concurrency,
and in the end every request has exactly one ok row across all parts and journals."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from helpers import JobWriter, every_row

from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.simulator.app import Simulator
from batchrun.sink.journal import segments
from batchrun.sink.manifest import scan_latest

KILLS = 5


def start(job: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_TOKEN": "hf_kill_test"}
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def kill_at_random(job: Path, sim: Simulator, rng: random.Random, most: int) -> bool:
    """Start a run; once the server has seen 1 to ``most`` of its requests, and a random moment
    after that, SIGKILL it. False if it finished first."""
    proc = start(job)
    target = sim.stats.total + rng.randint(1, most)
    deadline = time.monotonic() + 60
    while sim.stats.total < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(rng.uniform(0, 0.02))
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return killed


def recorded_images(out: Path) -> dict[str, int]:
    """Images with an ok row, by path, with their inode (to see whether one is fetched again)."""
    latest = scan_latest(out)
    if latest is None:
        return {}
    ok = latest.filter(pl.col("status") == "ok").select("image_path").collect()["image_path"].drop_nulls().to_list()
    return {p: (out / p).stat().st_ino for p in ok}


def kill_then_finish(job: Path, out: Path, sim: Simulator, *, seed: int, most: int) -> int:
    rng = random.Random(seed)
    kills, kept = 0, recorded_images(out)
    for _ in range(3 * KILLS):
        if kills == KILLS:
            break
        kills += kill_at_random(job, sim, rng, most)
        rows = every_row(out)  # readable after every kill, journal included; no key twice
        assert rows["request_key"].is_unique().all()
        now = recorded_images(out)
        for path, inode in kept.items():
            assert now[path] == inode, f"{path} was fetched and written again after it was recorded"
        kept = now
    final = start(job)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()
    assert kills == KILLS
    return kills


def check_the_end(out: Path, sim: Simulator, *, requests: int, kills: int, concurrency: int) -> None:
    rows = every_row(out)
    assert rows.height == requests and rows["request_key"].is_unique().all()
    assert set(rows["status"]) == {"ok"}
    assert not segments(out) and not list(out.rglob(".tmp-*"))
    answered = sim.stats.by_outcome["ok"]
    assert requests <= answered <= requests + kills * concurrency, (answered, kills)


@pytest.mark.parametrize("stream", [False, True])
def test_random_kills_of_a_chat_job_resend_only_what_was_in_flight(
    write_job: JobWriter, tmp_path: Path, stream: bool
) -> None:
    rows = [{"id": f"r{i}", "question": f"question {i}"} for i in range(600)]
    concurrency = 16
    sim = create_app(FaultPlan(latency_ms=20, latency_jitter_ms=10))
    with serve_in_thread(sim) as url:
        job = write_job(
            rows=rows,
            endpoint=f'base_url = "{url}"\nmodel = "m"\nstream = {str(stream).lower()}',
            top='id_column = "id"',  # the default flush: 1,000 rows or 5 s, longer than any run here
            limits=f"concurrency = {concurrency}",
        )
        out = tmp_path / "out"
        kills = kill_then_finish(job, out, sim, seed=2026 + stream, most=60)
    check_the_end(out, sim, requests=len(rows), kills=kills, concurrency=concurrency)
    latest = scan_latest(out)
    assert latest is not None
    ok = latest.collect()
    assert sorted(ok["row_id"]) == sorted(r["id"] for r in rows)
    assert ok["response_text"].null_count() == 0


def test_random_kills_of_an_image_job_fetch_no_image_twice(write_job: JobWriter, tmp_path: Path) -> None:
    rows = [{"id": i, "prompt": f"a dog, take {i}"} for i in range(120)]
    concurrency, samples = 8, 2
    sim = create_app(FaultPlan(latency_ms=15, latency_jitter_ms=10))
    with serve_in_thread(sim) as url:
        job = write_job(
            rows=rows,
            preset="hf-text-to-image",
            endpoint=f'base_url = "{url}"\nmodel = "sdxl"',
            request=f'inputs = "{{{{ prompt }}}}"\nparameters = {{ width = 32, height = 32 }}\nsamples = {samples}',
            top='id_column = "id"',
            limits=f"concurrency = {concurrency}",
        )
        out = tmp_path / "out"
        kills = kill_then_finish(job, out, sim, seed=14, most=20)
    requests = len(rows) * samples
    check_the_end(out, sim, requests=requests, kills=kills, concurrency=concurrency)
    assert len(list(out.glob("images/*/*.png"))) == requests
    latest = scan_latest(out)
    assert latest is not None
    assert latest.collect()["image_path"].n_unique() == requests
