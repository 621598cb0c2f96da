"""``run --ray`` on a local Ray (2 CPUs, loopback only, no dashboard): 2 shards against the
simulator over loopback (the workers are other processes), one worker SIGKILLed mid-run. Ray runs
its task again, the new run resumes from the manifest: every request has exactly one row, ok; the
server saw at most the rows plus what was in flight at the kill; the job's one rate held across
both shards."""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.util
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import JobWriter, every_row, most_in_one_second

from batchrun.cli import main
from batchrun.dispatch.limits import SlotBatches, SlotSchedule, TokenGrants
from batchrun.errors import ExitCode, OutputLockedError
from batchrun.rayconnect import _on_loopback
from batchrun.rayrun import (
    SLOT_WINDOW_S,
    Options,
    _rates,
    _run_shard,
    manifest_line,
    run_on_ray,
)
from batchrun.raystate import Coordinator, Outcome, ShardCounts, Snapshot
from batchrun.shard import Shard
from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.spec import load_job

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'batchrun[ray]')"
)

ROWS = 240
CONCURRENCY = 4  # per shard
PER_MINUTE = 1200  # the whole job's: 20/s, so the run lasts ~12 s and the kill falls mid-run


@needs_ray
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
    assert manifest_line(job).startswith(f"the manifest: {ROWS} requests ok, 0 failed, 0 to do")
    answered = sim.stats.by_outcome["ok"]
    assert ROWS <= answered <= ROWS + CONCURRENCY  # only what the dead worker had in flight (at most its
    # concurrency) went twice
    batch = int(PER_MINUTE / 60 * SLOT_WINDOW_S)
    assert most_in_one_second(sim.stats.arrivals) <= PER_MINUTE / 60 + batch


def test_run_ray_without_ray_installed_is_one_line_and_exit_2(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    job = write_job(rows=[{"question": "q"}])
    assert main(["run", str(job), "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["batchrun: error: --ray needs Ray: pip install 'batchrun[ray]'"]
    assert not (tmp_path / "out").exists()


def test_run_ray_takes_shards_not_a_shard(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(rows=[{"question": "q"}])
    assert main(["run", str(job), "--ray", "--shard", "0/2"]) == 2
    assert capsys.readouterr().err.strip() == "batchrun: error: --ray runs every shard: give --shards N, not --shard"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_slot_schedule_hands_out_evenly_spaced_slots_and_banks_none() -> None:
    clock = Clock()
    schedule = SlotSchedule(61, clock)  # one slot spare: a second apart
    assert schedule.take(3) == [0.0, 1.0, 2.0]
    clock.now += 0.5
    assert schedule.take(2) == [2.5, 3.5]  # after the slots already handed out
    clock.now += 60
    assert schedule.take(1) == [0.0]  # an idle spell is not followed by a burst


def test_slot_schedule_grants_tokens_a_chunk_at_a_time() -> None:
    clock = Clock()
    schedule = SlotSchedule(61, clock)  # a token a second
    assert schedule.grant(3) == 0.0
    assert schedule.grant(2) == 3.0  # once the first chunk's time has passed
    clock.now += 60
    assert schedule.grant(1) == 0.0


@pytest.mark.anyio
async def test_token_grants_fetch_only_what_the_credit_lacks() -> None:
    fetched: list[float] = []

    async def fetch(amount: float) -> float:
        fetched.append(amount)
        return 0.0

    tokens = TokenGrants(fetch, chunk=100)
    for take in (30, 60, 500):
        await tokens.take(take)
    assert fetched == [100, 490]  # 30 and 60 from the first chunk; 500 needs 490 more than the 10 left


@pytest.mark.anyio
async def test_slot_batches_fetch_a_batch_per_call_and_drop_stale_slots() -> None:
    clock = Clock()
    calls: list[int] = []

    async def fetch(count: int) -> Sequence[float]:
        calls.append(count)
        return [0.0] * count

    slots = SlotBatches(fetch, batch=4, interval=1.0, clock=clock)
    for _ in range(10):
        await slots.acquire()
    assert calls == [4, 4, 4] and slots.fetched == 12
    clock.now += 5  # the two slots left are stale: dropped, not sent in a burst
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(slots.acquire)
    assert calls == [4, 4, 4, 4]  # the three waiters shared one fetch


def test_the_job_exits_with_the_worst_shard_code() -> None:
    outcome = Outcome(3, errors={2: ("lost", ExitCode.INCOMPLETE)})
    assert outcome.exit_code == ExitCode.INCOMPLETE
    assert outcome.lines()[-2:] == [
        "shard 2/3: error: lost",
        "ray, 3 shards: finished 0 requests (0 ok, 0 failed) in the shards' last runs; 0 HTTP requests sent; "
        "exit 4: stopped early; run again to resume",
    ]


def test_the_coordinator_keeps_what_a_dead_attempt_finished() -> None:
    coordinator = Coordinator(2, {"a": 600})
    coordinator.report(0, 101, ShardCounts(ok=30, failed=1, in_flight=4, to_do=90))
    coordinator.report(1, 102, ShardCounts(ok=40, in_flight=4, to_do=80))
    coordinator.report(0, 103, ShardCounts(ok=5, in_flight=2, to_do=60))  # shard 0 again, in a new worker
    snapshot = coordinator.snapshot()
    assert snapshot.pids == {0: 103, 1: 102}
    assert snapshot.counts[0] == ShardCounts(ok=35, failed=1, in_flight=2, to_do=60)
    line = snapshot.line(finished={1})
    assert line.startswith("ray: 1 of 2 shards running, 1 finished; 75 ok, 1 failed, in flight 6, ")
    assert line.endswith(", about 140 to do")


class InProcess:
    """A coordinator handle without Ray: ``handle.method.remote(...)`` is awaitable, as an actor's is."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    def snapshot_now(self) -> Snapshot:
        return self._coordinator.snapshot()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._coordinator, name)

        class Remote:
            @staticmethod
            async def remote(*args: Any) -> Any:
                return method(*args)

        return Remote


@pytest.mark.anyio
async def test_shards_in_one_process_share_the_coordinator_rate(write_job: JobWriter) -> None:
    rows = [{"id": f"r{i}", "question": f"question {i}"} for i in range(100)]
    sim = create_app(FaultPlan(latency_ms=20))
    with serve_in_thread(sim) as url:
        job = load_job(
            write_job(
                rows=rows,
                endpoint=f'base_url = "{url}"\nmodel = "m"',
                limits=f"concurrency = {CONCURRENCY}\nrequests_per_minute = {PER_MINUTE}",
            )
        )
        coordinator = InProcess(Coordinator(2, _rates(job)))
        async with anyio.create_task_group() as tg:
            for k in range(2):
                tg.start_soon(_run_shard, dataclasses.replace(job, shard=Shard(k, 2)), coordinator, Options())
                while k not in coordinator.snapshot_now().pids:  # one process: its temp file names are the
                    await anyio.sleep(0.01)  # same for both shards, so they start one after the other
    assert sim.stats.by_outcome == {"ok": 100}
    assert every_row(job.output_dir).height == 100
    batch = int(PER_MINUTE / 60 * SLOT_WINDOW_S)
    # not 2 x the rate: the 100 sends span at least what the job's rate allows, less one batch (a busy
    # machine only stretches the span; a per-second count also sees its event loops' stalls)
    arrivals = sorted(sim.stats.arrivals)
    assert arrivals[-1] - arrivals[0] >= (100 - 1 - batch) / (PER_MINUTE / 60)
    snapshot = coordinator.snapshot_now()
    assert sum(c.ok for c in snapshot.counts.values()) == 100


@pytest.mark.anyio
async def test_a_shard_that_cannot_run_raises_its_own_error(write_job: JobWriter) -> None:
    job = dataclasses.replace(load_job(write_job(rows=[{"question": "q"}])), shard=Shard(0, 2))
    job.output_dir.mkdir()
    held = os.open(job.output_dir / ".lock-s0of2", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(OutputLockedError):  # itself, not in an ExceptionGroup: Ray hands it to the driver
            await _run_shard(job, InProcess(Coordinator(2, {})), Options())
    finally:
        os.close(held)


def test_a_loopback_address_keeps_ray_on_loopback() -> None:
    assert _on_loopback(None) and _on_loopback("127.0.0.1:6379") and _on_loopback("ray://localhost:10001")
    assert not _on_loopback("auto") and not _on_loopback("10.0.0.5:6379")
