"""``run --ray`` on a local Ray (2 CPUs, loopback only, no dashboard): 2 shards against the
simulator over loopback (the workers are other processes), one worker SIGKILLed mid-run. Ray runs
its task again, the new run resumes from the manifest: every request has exactly one row, ok; the
server saw at most the rows plus what was in flight at the kill; the job's one rate held across
both shards."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import polars as pl
import pytest
from helpers import JobWriter

from batchrun.errors import ExitCode
from batchrun.rayrun import SLOT_WINDOW_S, Options, Snapshot, run_on_ray
from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.sink.manifest import journal_frame, part_files
from batchrun.spec import load_job

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'batchrun[ray]')"
)

ROWS = 240
CONCURRENCY = 4  # per shard
PER_MINUTE = 1200  # the whole job's: 20/s, so the run lasts ~12 s and the kill falls mid-run


def every_row(out: Path) -> pl.DataFrame:
    """Every row recorded, in every part and every journal (not the latest per key)."""
    frames = [pl.read_parquet(part_files(out))] if part_files(out) else []
    journal = journal_frame(out)
    if journal is not None:
        frames.append(journal)
    return pl.concat(frames) if frames else pl.DataFrame(schema={"request_key": pl.String})


def most_in_one_second(arrivals: list[float]) -> int:
    times = sorted(arrivals)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_two_shards_on_ray_survive_a_killed_worker_and_share_one_rate(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # what run_on_ray sets for a local Ray
    rows = [{"id": f"r{i}", "question": f"question {i}"} for i in range(ROWS)]
    sim = create_app(FaultPlan(latency_ms=40, latency_jitter_ms=20))
    killed: list[int] = []
    seen: list[Snapshot] = []

    def kill_one(snapshot: Snapshot) -> None:
        seen.append(snapshot)
        ok = sum(c.ok for c in snapshot.counts.values())
        if not killed and ok >= ROWS // 4 and 0 in snapshot.pids:
            killed.append(snapshot.pids[0])
            os.kill(snapshot.pids[0], signal.SIGKILL)

    with serve_in_thread(sim) as url:
        job_file = write_job(
            rows=rows,
            endpoint=f'base_url = "{url}"\nmodel = "m"',
            top='id_column = "id"',
            limits=f"concurrency = {CONCURRENCY}\nrequests_per_minute = {PER_MINUTE}",
        )
        job = load_job(job_file)
        outcome = run_on_ray(
            job, str(job_file), address=None, shards=2, options=Options(), quiet=True, cpus=2, watch=kill_one
        )

    assert killed, "the run ended before a worker could be killed"
    assert seen[-1].pids[0] != killed[0]  # Ray ran shard 0 again in another worker
    assert outcome.exit_code == ExitCode.OK, outcome.lines()
    assert sorted(outcome.summaries) == [0, 1]
    rows_made = every_row(job.output_dir)
    assert rows_made.height == ROWS and rows_made["request_key"].is_unique().all()
    assert set(rows_made["status"]) == {"ok"}
    answered = sim.stats.by_outcome["ok"]
    assert ROWS <= answered <= ROWS + CONCURRENCY  # only what the dead worker had in flight went twice
    batch = int(PER_MINUTE / 60 * SLOT_WINDOW_S)
    assert most_in_one_second(sim.stats.arrivals) <= PER_MINUTE / 60 + batch
