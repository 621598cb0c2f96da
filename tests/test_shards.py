"""``--shard K/N`` (issue 19): shards split the requests by key, share one output folder, and
together send every request exactly once, whatever N each run used."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from helpers import JobWriter

from batchrun.cli import main
from batchrun.errors import JobError, OutputLockedError
from batchrun.export import export_table, job_for
from batchrun.shard import Shard, parse_shard
from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.sink.lock import OutputLock
from batchrun.sink.manifest import part_files
from batchrun.status import read_status


def per_shard(out: str) -> list[int]:
    """The counts of ``batchrun plan --shards N``'s line."""
    line = next(x for x in out.splitlines() if x.startswith("per shard"))
    return [int(part.split(": ")[1]) for part in line.removeprefix("per shard").strip().split(", ")]


def every_ok_row(out: Path) -> pl.DataFrame:
    """Every ok row in every part (not the latest per key): a key twice means it was sent twice."""
    return pl.read_parquet(part_files(out)).filter(pl.col("status") == "ok")


def test_two_shard_processes_at_once_send_every_request_once(write_job: JobWriter, tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "question": f"question {i}"} for i in range(400)]
    sim = create_app(FaultPlan(latency_ms=10, latency_jitter_ms=5))
    with serve_in_thread(sim) as url:
        job = write_job(rows=rows, endpoint=f'base_url = "{url}"\nmodel = "m"', top='id_column = "id"')
        env = {**os.environ, "OPENAI_API_KEY": "sk-shards"}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "batchrun", "run", str(job), "--quiet", "--shard", f"{k}/2"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            for k in range(2)
        ]
        outcomes = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outcomes
    assert sim.stats.total == len(rows)
    assert sim.stats.by_outcome["ok"] == len(rows)
    out = tmp_path / "out"
    names = [p.name for p in part_files(out)]
    assert any("-s0of2-" in name for name in names) and any("-s1of2-" in name for name in names)
    ok = every_ok_row(out)
    assert ok.height == len(rows) and ok["request_key"].n_unique() == len(rows)
    for k in range(2):  # each shard's parts hold exactly its keys
        keys = pl.read_parquet([p for p in part_files(out) if f"-s{k}of2-" in p.name])["request_key"]
        assert all(Shard(k, 2).owns(key) for key in keys)
    assert export_table(job_for(str(job)), tmp_path / "all.csv") == len(rows)
    assert pl.read_csv(tmp_path / "all.csv")["response_text"].null_count() == 0
    status = read_status(job_for(str(job)))
    assert set(status.shards) == {"s0of2", "s1of2"}
    assert all(s["exit_code"] == 0 and not s["running"] for s in status.shards.values())
    assert "shard s1of2: finished" in status.text()
    halves = [read_status(dataclasses.replace(job_for(str(job)), shard=Shard(k, 2))) for k in range(2)]
    by_shard = [sum(e["ok"] for e in h.endpoints.values()) for h in halves]  # status --shard K/2
    assert by_shard == [sum(Shard(k, 2).owns(key) for key in ok["request_key"]) for k in range(2)]
    assert sum(by_shard) == len(rows) and all(by_shard)


def test_changing_the_shard_count_between_runs_sends_nothing_twice(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-shards")
    rows = [{"id": f"r{i}", "question": f"question {i % 50}"} for i in range(240)]  # repeats: occurrences
    sim = create_app(FaultPlan())
    with serve_in_thread(sim) as url:
        job = str(write_job(rows=rows, endpoint=f'base_url = "{url}"\nmodel = "m"', top='id_column = "id"'))
        assert main(["run", job, "-q", "--shard", "0/2", "--limit", "100"]) == 0  # 2 shards, partly
        first = sim.stats.total
        assert 0 < first < 100
        assert main(["run", job, "-q", "--shard", "1/3"]) == 0
        assert main(["run", job, "-q", "--shard", "2/3"]) == 0
        assert main(["plan", job, "--shards", "3"]) == 0
        planned = capsys.readouterr().out
        before_last = sim.stats.total
        assert main(["run", job, "-q"]) == 0  # 1 shard: the rest
    assert sim.stats.by_outcome["ok"] == sim.stats.total == len(rows)
    ok = every_ok_row(tmp_path / "out")
    assert ok.height == len(rows) and ok["request_key"].n_unique() == len(rows)
    # what shard 0 of 3 never ran is what is left: the plan said how many each shard would send
    assert "per shard        0/3: " in planned
    counts = per_shard(planned)
    assert counts[1] == counts[2] == 0 and counts[0] == len(rows) - before_last > 0


def test_plan_with_shards_splits_the_requests(write_job: JobWriter, capsys: pytest.CaptureFixture[str]) -> None:
    job = str(write_job(rows=[{"question": f"q{i}"} for i in range(90)]))
    assert main(["plan", job, "--shards", "4"]) == 0
    counts = per_shard(capsys.readouterr().out)
    assert len(counts) == 4 and sum(counts) == 90 and all(counts)
    assert main(["plan", job, "--shard", "1/4"]) == 0
    out = capsys.readouterr().out
    assert f"to do            {counts[1]} (shard 1/4)" in out
    assert f"other shards     {90 - counts[1]}" in out


@pytest.mark.parametrize("value", ["2/2", "x", "1/0", "-1/2", "auto"])
def test_a_bad_shard_is_one_line_and_exit_2(
    write_job: JobWriter, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = str(write_job(rows=[{"question": "q"}]))
    assert main(["run", job, f"--shard={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("batchrun: error: --shard")


def test_shards_without_a_shard_is_exit_2(write_job: JobWriter, capsys: pytest.CaptureFixture[str]) -> None:
    job = str(write_job(rows=[{"question": "q"}]))
    assert main(["run", job, "--shards", "2"]) == 2
    assert capsys.readouterr().err == "batchrun: error: --shards 2: give the shard too (--shard K/N, or --shard auto)\n"


def test_shard_auto_reads_kubernetes_and_slurm() -> None:
    assert parse_shard("auto", shards=4, env={"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 4)
    assert parse_shard("auto", env={"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "5"}) == Shard(2, 5)
    slurm_from_1 = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert parse_shard("auto", env=slurm_from_1) == Shard(7, 8)
    assert parse_shard("3/8") == Shard(3, 8)
    bad = [
        ({"JOB_COMPLETION_INDEX": "0"}, None),  # Kubernetes does not say how many
        ({"JOB_COMPLETION_INDEX": "4"}, 4),
        ({"JOB_COMPLETION_INDEX": "one"}, 4),
        ({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4"}, None),  # a step
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}, 3),
        ({}, 2),
    ]
    for env, shards in bad:
        with pytest.raises(JobError):
            parse_shard("auto", shards=shards, env=env)


def test_a_key_stays_in_its_shard() -> None:
    key = "00000000000000070123456789abcdef"
    assert [Shard(k, 3).owns(key) for k in range(3)] == [False, True, False]
    assert Shard(0, 7).owns(key) and Shard().owns(key)


def test_shards_share_the_folder_but_not_their_own_lock(tmp_path: Path) -> None:
    with OutputLock(tmp_path, "a", Shard(0, 2)):
        with pytest.raises(OutputLockedError, match="shard s0of2"):
            OutputLock(tmp_path, "b", Shard(0, 2)).acquire()
        with pytest.raises(OutputLockedError, match="shards s0of2"):
            OutputLock(tmp_path, "c").acquire()  # an unsharded run waits for every shard
        cleaned: list[str] = []
        with OutputLock(tmp_path, "d", Shard(1, 2), while_alone=lambda: cleaned.append("x")) as second:
            assert not second.alone
        assert cleaned == []  # another shard runs: its temp files and journals are not ours to touch
    with OutputLock(tmp_path, "g", Shard(1, 3), while_alone=lambda: cleaned.append("x")) as first:
        assert first.alone and cleaned == ["x"]
    with OutputLock(tmp_path, "e"), pytest.raises(OutputLockedError):
        OutputLock(tmp_path, "f", Shard(1, 2)).acquire(shared_tries=2)
