"""The number of shards (issue 19): from the job file (``[limits] shards``), overridden by
``--shards``; and shards of two different N never run at once on one folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from helpers import JobWriter, count_renders

from batchrun.cli import main
from batchrun.errors import JobError, OutputLockedError
from batchrun.shard import Shard, parse_shard
from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.sink.lock import OutputLock
from batchrun.sink.manifest import part_files


def per_shard(out: str) -> list[int]:
    line = next(x for x in out.splitlines() if x.startswith("per shard"))
    return [int(part.split(": ")[1]) for part in line.removeprefix("per shard").strip().split(", ")]


def test_the_job_files_count_serves_auto_and_plan_and_shards_overrides_it(
    write_job: JobWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    job = str(write_job(rows=[{"question": f"q{i}"} for i in range(60)], limits="concurrency = 4\nshards = 3"))
    assert main(["plan", job]) == 0
    counts = per_shard(capsys.readouterr().out)
    assert len(counts) == 3 and sum(counts) == 60
    assert main(["plan", job, "--shards", "5"]) == 0
    assert len(per_shard(capsys.readouterr().out)) == 5
    assert parse_shard("auto", env={"JOB_COMPLETION_INDEX": "2"}, in_file=3) == Shard(2, 3)
    assert parse_shard("auto", shards=4, env={"JOB_COMPLETION_INDEX": "3"}, in_file=3) == Shard(3, 4)
    assert parse_shard("1/3", in_file=3) == Shard(1, 3)
    assert parse_shard("1/2", shards=2, in_file=3) == Shard(1, 2)  # --shards overrides the file
    slurm = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert parse_shard("auto", shards=4, env=slurm, in_file=3) == Shard(1, 4)
    with pytest.raises(JobError, match="the job file's shards = 3 but the Slurm array has 4 tasks"):
        parse_shard("auto", env=slurm, in_file=3)
    with pytest.raises(JobError, match="disagrees with --shards 3"):
        parse_shard("0/2", shards=3)


def test_a_shard_that_disagrees_with_the_job_file_is_exit_2_before_sending(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-count")
    sim = create_app(FaultPlan())
    with serve_in_thread(sim) as url:
        job = str(
            write_job(
                rows=[{"question": f"q{i}"} for i in range(20)],
                endpoint=f'base_url = "{url}"\nmodel = "m"',
                limits="concurrency = 4\nshards = 4",
            )
        )
        assert main(["run", job, "-q", "--shard", "0/2"]) == 2
        assert capsys.readouterr().err == (
            "batchrun: error: --shard 0/2 disagrees with the job file's shards = 4 "
            "(--shards 2 overrides the job file)\n"
        )
        assert sim.stats.total == 0
        monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
        assert main(["run", job, "-q", "--shard", "auto"]) == 0  # shard 1 of the file's 4
        first = sim.stats.total
        assert 0 < first < 20
        assert main(["run", job, "-q", "--shard", "0/2", "--shards", "2"]) == 0  # overridden: N changes, safely
        assert main(["run", job, "-q"]) == 0
        capsys.readouterr()
        assert main(["status", job, "--shard", "0/2"]) == 0  # reads shards of any N: no clash with the file's
        assert "batchrun: error" not in capsys.readouterr().err
    assert sim.stats.total == sim.stats.by_outcome["ok"] == 20


def test_shards_of_another_n_are_refused_while_one_runs(tmp_path: Path) -> None:
    with OutputLock(tmp_path, "a", Shard(0, 2)), OutputLock(tmp_path, "b", Shard(1, 2)):
        with pytest.raises(OutputLockedError, match=r"in use by shards of N=2 \(shards s0of2, s1of2\)"):
            OutputLock(tmp_path, "c", Shard(0, 3)).acquire()
        assert not (tmp_path / ".lock-s0of3").stat().st_size  # refused: its own lock let go, unnamed
    with OutputLock(tmp_path, "d", Shard(2, 3)):  # one N after another: fine
        with pytest.raises(OutputLockedError, match="N=3"):
            OutputLock(tmp_path, "e", Shard(0, 2)).acquire()
        with OutputLock(tmp_path, "f", Shard(0, 3)):
            pass


def test_two_processes_of_different_n_never_send_a_request_twice(write_job: JobWriter, tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "question": f"question {i}"} for i in range(120)]
    sim = create_app(FaultPlan(latency_ms=300))
    with serve_in_thread(sim) as url:
        job = write_job(
            rows=rows, endpoint=f'base_url = "{url}"\nmodel = "m"', top='id_column = "id"', limits="concurrency = 2"
        )
        env = {**os.environ, "OPENAI_API_KEY": "sk-counts"}

        def command(shard: str) -> list[str]:
            return [sys.executable, "-m", "batchrun", "run", str(job), "--quiet", "--shard", shard]

        # 60-odd requests, 2 at a time, 300 ms each: about 9 s of sending
        first = subprocess.Popen(command("0/2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        deadline = time.monotonic() + 60
        while sim.stats.total == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sim.stats.total > 0  # it holds its locks and sends
        second = subprocess.run(command("0/3"), capture_output=True, env=env, text=True, timeout=60)
        assert first.poll() is None  # refused while the first one ran
        first.communicate(timeout=60)
        assert first.returncode == 0
        assert second.returncode == 5, second.stderr
        assert second.stderr.count("\n") == 1 and "in use by shards of N=2 (shards s0of2)" in second.stderr
        sent_by_first = sim.stats.total
        assert sent_by_first == sum(
            Shard(0, 2).owns(k) for k in pl.read_parquet(part_files(tmp_path / "out"))["request_key"]
        )
        for shard in ("0/3", "1/3", "2/3"):  # N=3 after N=2: the rest, nothing twice
            assert subprocess.run(command(shard), env=env, capture_output=True).returncode == 0
    ok = pl.read_parquet(part_files(tmp_path / "out")).filter(pl.col("status") == "ok")
    assert sim.stats.total == sim.stats.by_outcome["ok"] == len(rows)
    assert ok.height == len(rows) and ok["request_key"].n_unique() == len(rows)


def test_a_resumed_shard_renders_only_its_own_rows_again(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-count")
    rows = [{"question": f"q{i % 40}"} for i in range(200)]  # repeats: occurrence numbers matter
    sim = create_app(FaultPlan())
    with serve_in_thread(sim) as url:
        job = str(write_job(rows=rows, endpoint=f'base_url = "{url}"\nmodel = "m"'))
        assert main(["plan", job, "--shards", "2"]) == 0
        mine, theirs = per_shard(capsys.readouterr().out)
        assert main(["run", job, "-q", "--shard", "0/2"]) == 0  # writes its plan index of every row
        assert sim.stats.total == mine
        rendered = count_renders(monkeypatch)
        capsys.readouterr()
        assert main(["plan", job, "--shard", "0/2"]) == 0
        out = capsys.readouterr().out
        assert "to do            0 (shard 0/2)" in out and f"other shards     {theirs}" in out
        assert rendered == [0]  # the templates' check; shard 1's rows, not done yet, are not rendered again
        rendered.clear()
        # no index of its own yet, but shard 0's run left the content digests of every row and
        # the requests rendered with them (plan.digests, plan.kept): only the first row (the
        # templates' check) is rendered; its own requests are built from what was kept
        assert main(["run", job, "-q", "--shard", "1/2"]) == 0
        assert rendered == [0]
    assert sim.stats.total == len(rows)


def _start_together(folder: Path, shards: tuple[Shard, Shard]) -> tuple[bool, bool]:
    """Two locks of ``shards`` taken at the same instant (threads: flock goes by open file, as
    between processes); which were taken, once both have tried."""
    import threading

    barrier, held = threading.Barrier(2), threading.Barrier(2)
    ok = [False, False]

    def start(i: int) -> None:
        lock = OutputLock(folder, f"r{i}", shards[i])
        barrier.wait()
        try:
            lock.acquire(shared_tries=2)
            ok[i] = True
        except OutputLockedError:
            pass
        held.wait()  # both have tried before either lets go
        lock.release()

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0], ok[1]


def test_shards_of_two_n_starting_together_never_both_run(tmp_path: Path) -> None:
    outcomes = []
    for round_ in range(8):
        (tmp_path / str(round_)).mkdir()
        outcomes.append(_start_together(tmp_path / str(round_), (Shard(0, 2), Shard(1, 3))))
    assert (True, True) not in outcomes, outcomes
    # one runs: the smaller N, or the one that was there first (both refused only if a loaded
    # machine stalls the greater N's shard past YIELD_S before it gives way)
    assert outcomes.count((False, False)) <= 2, outcomes


@pytest.mark.parametrize("shard", ["0/2", "1/2"])
def test_every_shard_checks_the_first_row_before_sending(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shard: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-count")
    sim = create_app(FaultPlan())
    with serve_in_thread(sim) as url:
        job = str(
            write_job(
                rows=[{"question": "a long question " * 20}],
                endpoint=f'base_url = "{url}"\nmodel = "m"',
                request='prompt = "{{ question }}"\nparams = { max_tokens = 64 }',
                limits="concurrency = 4\ntokens_per_minute = 50",
            )
        )
        assert main(["run", job, "-q", "--shard", shard]) == 2  # whichever shard row 0's key is in
    assert "tokens_per_minute" in capsys.readouterr().err
    assert sim.stats.total == 0
