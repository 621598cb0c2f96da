"""A sharded first pass shares the content digests through the output folder (``plan.digests``):
N shards key exactly the requests one process keys, each key in exactly one shard, whichever
blocks the others left; and a shard renders only its blocks and its own rows when they did."""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import JobWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.cli import main
from batchrun.plan import digests
from batchrun.plan.feed import BATCH_ROWS, Feed
from batchrun.plan.keyindex import INDEX_DIR
from batchrun.plan.planner import Planner
from batchrun.plan.reader import Table
from batchrun.shard import Shard
from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.sink.manifest import part_files
from batchrun.spec import load_job

PROMPT = "{{ question }} / {{ 10 / x }}"  # x = 0: the row does not render (keyed by templates + row)


def table(n: int, seed: int) -> list[dict[str, Any]]:
    """Questions that repeat, some blank (skipped), some rows that do not render."""
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "question": " " if rng.random() < 0.1 else rng.choice("ab") + str(rng.randint(0, 3)),
            "x": 0 if rng.random() < 0.1 else 2,
        }
        for i in range(n)
    ]


def keyed(path: Path, shard: Shard, *, note: bool = True) -> tuple[list[str], pl.DataFrame | None]:
    """What ``shard`` sends of the job at ``path`` (its keys), and the plan index it wrote."""
    job = replace(load_job(path), shard=shard)
    planner = Planner(job)
    with planner.occurrences:
        feed = Feed.open(job, planner, note=note)
        slices = feed.slices(Table(job.input), BATCH_ROWS)
        keys = [r.key for start, frame in slices for r in feed.requests(start, frame)]
        feed.checkpoint(final=True)
    assert not shard.sharded or planner.counts.rows == feed.covered  # a first pass keys every row first
    folder = job.output_dir / INDEX_DIR / (shard.name if shard.sharded else "")
    parts = sorted(folder.glob("part-*.parquet"))
    index = pl.concat([pl.read_parquet(p) for p in parts]) if parts else None
    return keys, index


@pytest.mark.parametrize("fmt", ["parquet", "csv"])  # Parquet is sliced where asked, text read through
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(0, 70),
    appended=st.integers(0, 30),
    seed=st.integers(0, 10_000),
    n=st.integers(2, 4),
    block=st.integers(1, 9),
    dedupe=st.booleans(),
    samples=st.integers(1, 2),
)
def test_n_shards_key_exactly_what_one_process_keys(
    write_job: JobWriter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    rows: int,
    appended: int,
    seed: int,
    n: int,
    block: int,
    dedupe: bool,
    samples: int,
) -> None:
    monkeypatch.setattr(digests, "BLOCK_ROWS", block)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    rng = random.Random(seed)
    data = table(rows + appended, seed)
    for upto in (rows, rows + appended):  # input appended between runs: a new fingerprint, new blocks
        path = write_job(
            rows=data[:upto] or [{"id": 0, "question": "a", "x": 2}],
            fmt=fmt,
            top=f'dedupe = {str(dedupe).lower()}\nempty_prompts = "skip"',
            request=f'prompt = "{PROMPT}"\nsamples = {samples}',
        )
        one, whole = keyed(path, Shard())
        sent: list[str] = []
        order = rng.sample(range(n), n)
        for at, k in enumerate(order):
            if at and rng.random() < 0.5:  # a shard that never finished: some blocks are missing
                for file in (tmp_path / "out" / INDEX_DIR / "digests").rglob("block-*"):
                    if rng.random() < 0.5:
                        file.unlink()
            mine, index = keyed(path, Shard(k, n), note=rng.random() < 0.8)
            assert all(Shard(k, n).owns(key) for key in mine)
            sent += mine
            if index is not None:  # a run's plan index: the same entries as one process's
                assert whole is not None and index.equals(whole)
        assert sorted(sent) == sorted(one)  # every key, each in exactly one shard
        assert len(set(one)) == len(one)


def test_a_shard_renders_its_blocks_and_its_own_rows_when_the_others_wrote_theirs(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digests, "BLOCK_ROWS", 10)
    rows = [{"question": f"q{i % 30}"} for i in range(200)]  # repeats: occurrence numbers matter
    path = write_job(rows=rows)
    rendered: list[int] = []
    real = Planner._render

    def counted(self: Planner, row: Any, context: Any, index: int) -> Any:
        rendered.append(index)
        return real(self, row, context, index)

    monkeypatch.setattr(Planner, "_render", counted)
    one, _ = keyed(path, Shard())
    sent = []
    for k in range(4):
        rendered.clear()
        mine, _ = keyed(path, Shard(k, 4))
        sent += mine
        if k == 0:  # the first: every block, as one process (then its own rows again)
            assert len(rendered) == 200 + len(mine)
        else:  # the others read shard 0's blocks: only their own rows are rendered
            assert len(rendered) == len(set(rendered)) == len(mine)
    assert sorted(sent) == sorted(one)


def test_shards_run_together_send_each_request_once_and_share_the_blocks(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Four shard processes at once against one simulator: every row's request exactly once."""
    import subprocess
    import sys

    monkeypatch.setenv("OPENAI_API_KEY", "sk-digests")
    rows = [{"question": f"q{i % 50}"} for i in range(3000)]
    sim = create_app(FaultPlan())
    with serve_in_thread(sim) as url:
        path = write_job(rows=rows, endpoint=f'base_url = "{url}"\nmodel = "m"', limits="concurrency = 8")
        code = (
            "import sys; from batchrun.plan import digests; digests.BLOCK_ROWS = 100; "
            "from batchrun.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        command = [sys.executable, "-c", code, "run", str(path), "-q", "--shard"]
        shards = [subprocess.Popen([*command, f"{k}/4"]) for k in range(4)]
        assert [p.wait(timeout=120) for p in shards] == [0, 0, 0, 0]
        assert len(list((tmp_path / "out" / INDEX_DIR / "digests").rglob("block-*"))) == 30
        assert main(["run", str(path), "-q"]) == 0  # one process after them: nothing left
    assert sim.stats.total == sim.stats.by_outcome["ok"] == 3000
    keys = pl.concat([pl.read_parquet(p, columns=["request_key"]) for p in part_files(tmp_path / "out")])
    assert keys.height == keys["request_key"].n_unique() == 3000


@pytest.mark.anyio
async def test_a_first_pass_stops_between_blocks_when_its_run_is_stopped(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal while a shard keys every row (in a worker thread) stops it at the next block, not
    after the whole input."""
    import time
    from functools import partial

    import anyio

    monkeypatch.setattr(digests, "BLOCK_ROWS", 10)
    job = replace(load_job(write_job(rows=[{"question": f"q{i}"} for i in range(200)])), shard=Shard(0, 2))
    computed: list[int] = []
    real = digests.Blocks.compute

    def slow(self: digests.Blocks, planner: Planner, first: int, frame: pl.DataFrame) -> Any:
        time.sleep(0.2)  # 20 blocks: 4 s in all
        computed.append(first)
        return real(self, planner, first, frame)

    monkeypatch.setattr(digests.Blocks, "compute", slow)
    planner = Planner(job)
    with anyio.move_on_after(0.1) as scope:
        await anyio.to_thread.run_sync(partial(Feed.open, job, planner))
    assert scope.cancelled_caught
    assert 1 <= len(computed) <= 2  # the block under way when the run stopped, at most one more
    planner.occurrences.close()
