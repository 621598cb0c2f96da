"""SIGKILL at any moment loses nothing: a real `batchrun run` subprocess killed mid-way, resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from helpers import JobWriter

from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.sink.manifest import scan_latest

CONCURRENCY = 8
FLUSH_ROWS = 25


def start(job: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_TOKEN": "hf_kill_test"}
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def wait_for_images(out: Path, at_least: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(1 for _ in out.glob("images/*/*.png")) >= at_least:
            return
        time.sleep(0.02)


def recorded(out: Path) -> dict[str, int]:
    """Images with an ok manifest row, by path, with their inode (to see whether they are rewritten)."""
    latest = scan_latest(out)
    if latest is None:
        return {}
    ok = latest.filter(pl.col("status") == "ok").select("image_path").collect()["image_path"].to_list()
    return {p: (out / p).stat().st_ino for p in ok}


def test_sigkill_mid_run_then_resume_gives_every_image_once(write_job: JobWriter, tmp_path: Path) -> None:
    rows = [{"id": i, "prompt": f"a dog, take {i}"} for i in range(200)]
    sim = create_app(FaultPlan(latency_ms=15, latency_jitter_ms=10))
    with serve_in_thread(sim) as url:
        job = write_job(
            rows=rows,
            preset="hf-text-to-image",
            endpoint=f'base_url = "{url}"\nmodel = "sdxl"',
            request='inputs = "{{ prompt }}"\nparameters = { width = 32, height = 32 }\nsamples = 2',
            top=f'id_column = "id"\n[sink]\nflush_rows = {FLUSH_ROWS}\nflush_seconds = 0.2',
            limits=f"concurrency = {CONCURRENCY}",
        )
        out = tmp_path / "out"
        kept: dict[str, int] = {}
        kills = 0
        for target in (40, 150, 290):
            proc = start(job)
            wait_for_images(out, target, proc)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=30)
            now = recorded(out)
            for path, inode in kept.items():
                assert now[path] == inode, f"{path} was fetched and written again after it was recorded"
            kept = now
        final = start(job)
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err.decode()

    manifest = scan_latest(out)
    assert manifest is not None
    done = manifest.collect()
    assert done.height == 400 and set(done["status"]) == {"ok"}
    images = sorted(out.glob("images/*/*.png"))
    assert len(images) == 400
    assert not list(out.rglob(".tmp-*"))
    for path, inode in kept.items():
        assert (out / path).stat().st_ino == inode
    # at most what was in flight or not yet flushed at each kill was sent again
    assert kills >= 2
    # in flight (CONCURRENCY), queued for the sink (2 x CONCURRENCY) or not yet flushed (FLUSH_ROWS)
    assert 400 <= sim.stats.total <= 400 + kills * (CONCURRENCY + 2 * CONCURRENCY + FLUSH_ROWS), (
        sim.stats.total,
        kills,
    )


def test_random_kills_of_a_chat_job_lose_nothing_and_resend_little(write_job: JobWriter, tmp_path: Path) -> None:
    import random

    rng = random.Random(2026)
    rows = [{"id": f"r{i}", "question": f"question {i}"} for i in range(2000)]
    sim = create_app(FaultPlan(latency_ms=20, latency_jitter_ms=20))  # a whole run takes ~4 s
    concurrency, flush_rows = 16, 50
    with serve_in_thread(sim) as url:
        job = write_job(
            rows=rows,
            endpoint=f'base_url = "{url}"\nmodel = "m"',
            top=f'id_column = "id"\n[sink]\nflush_rows = {flush_rows}\nflush_seconds = 0.2',
            limits=f"concurrency = {concurrency}",
        )
        out = tmp_path / "out"
        kills = 0
        for _ in range(8):
            if kills == 4:
                break
            proc = start(job)
            time.sleep(rng.uniform(0.7, 1.6))  # the interpreter takes ~0.6 s to start
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=30)
            latest = scan_latest(out)
            if latest is not None:  # readable after every kill, one row per key
                seen = latest.collect()
                assert seen["request_key"].n_unique() == seen.height
        final = start(job)
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err.decode()

    done = pl.read_parquet(sorted((out / "manifest").glob("part-*.parquet")))
    latest_rows = scan_latest(out)
    assert latest_rows is not None
    ok = latest_rows.filter(pl.col("status") == "ok").collect()
    assert sorted(ok["row_id"]) == sorted(r["id"] for r in rows)
    assert not list(out.rglob(".tmp-*"))
    assert kills >= 3
    # resent: at most what was in flight, queued for the sink or not yet flushed at each kill
    assert done.height == len(rows)  # across all parts of all runs, every request was recorded once
    assert sim.stats.total <= len(rows) + kills * (concurrency + 2 * concurrency + flush_rows)
