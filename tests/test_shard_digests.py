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
from helpers import JobWriter, count_renders
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.cli import main
from batchrun.models import Request
from batchrun.plan import digests
from batchrun.plan.feed import BATCH_ROWS, Feed
from batchrun.plan.keyindex import INDEX_DIR
from batchrun.plan.planner import Planner
from batchrun.plan.reader import Table
from batchrun.shard import Shard
from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.sink.manifest import part_files
from batchrun.spec import load_job

PROMPT = "{{ question }} / {{ 10 / (x | int) }}"  # x = 0: the row does not render (keyed by templates + row)


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
    requests, index = planned(path, shard, note=note)
    return [r.key for r in requests], index


def planned(path: Path, shard: Shard, *, note: bool = True) -> tuple[list[Request], pl.DataFrame | None]:
    """What ``shard`` sends of the job at ``path`` (every field of each request), and the plan
    index it wrote."""
    job = replace(load_job(path), shard=shard)
    planner = Planner(job)
    with planner.occurrences:
        feed = Feed.open(job, planner, note=note)
        slices = feed.slices(Table(job.input), BATCH_ROWS)
        keys = [r for start, frame in slices for r in feed.requests(start, frame)]
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
            top=f'dedupe = {str(dedupe).lower()}\nempty_prompts = "skip"\nid_column = "id"',
            request=f'prompt = "{PROMPT}"\nsamples = {samples}',
        )
        one, whole = planned(path, Shard())
        sent: list[Request] = []
        order = rng.sample(range(n), n)
        for at, k in enumerate(order):
            if at and rng.random() < 0.5:  # a shard that never finished: some blocks are missing
                for file in (tmp_path / "out" / INDEX_DIR / "digests").rglob("block-*"):
                    if rng.random() < 0.5:
                        file.unlink()
            mine, index = planned(path, Shard(k, n), note=rng.random() < 0.8)
            assert all(Shard(k, n).owns(request.key) for request in mine)
            sent += mine
            if index is not None:  # a run's plan index: the same entries as one process's
                assert whole is not None and index.equals(whole)
        # every request, each in exactly one shard, the same in every field (rendered, or built
        # from what the blocks kept)
        assert sorted(sent, key=by_key) == sorted(one, key=by_key)
        assert len({r.key for r in one}) == len(one)


def by_key(request: Request) -> str:
    return request.key


def test_a_shard_renders_its_blocks_and_its_own_rows_when_the_others_wrote_theirs(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digests, "BLOCK_ROWS", 10)
    rows = [{"question": f"q{i % 30}"} for i in range(200)]  # repeats: occurrence numbers matter
    path = write_job(rows=rows)
    rendered = count_renders(monkeypatch)
    one, _ = planned(path, Shard())
    sent: list[Request] = []
    for k in range(4):
        rendered.clear()
        mine, _ = planned(path, Shard(k, 4))
        assert mine
        sent += mine
        if k == 0:  # the first: every block, as one process; its own requests from what they kept
            assert sorted(rendered) == list(range(200))
        else:  # the others read shard 0's blocks and what they kept: nothing is rendered
            assert rendered == []
    assert sorted(sent, key=by_key) == sorted(one, key=by_key)

    bodies = sorted((path.parent / "out" / INDEX_DIR / "digests").rglob("bodies-*"))
    assert len(bodies) == 20  # one beside each block
    for file in bodies[::2]:  # lost (or cut): those blocks' rows are rendered again, the same
        file.write_bytes(file.read_bytes()[:100] if file == bodies[0] else b"")
    shutil.rmtree(path.parent / "out" / INDEX_DIR / Shard(1, 4).name)  # a first pass again
    rendered.clear()
    again, _ = planned(path, Shard(1, 4), note=False)
    assert sorted(again, key=by_key) == sorted((r for r in one if Shard(1, 4).owns(r.key)), key=by_key)
    lost = {r.row_index for r in again if r.row_index // 10 % 2 == 0}
    assert lost and sorted(rendered) == sorted(lost)


def test_what_blocks_kept_is_not_used_for_another_id_column(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row id is not part of a key: a job whose id column changed renders its rows again."""
    monkeypatch.setattr(digests, "BLOCK_ROWS", 10)
    rows = [{"a": f"x{i}", "b": f"y{i}", "question": f"q{i}"} for i in range(40)]
    for column in ("a", "b"):
        path = write_job(rows=rows, top=f'id_column = "{column}"')
        for k in range(2):
            mine, _ = planned(path, Shard(k, 2))
            assert mine and all(r.row_id == rows[r.row_index][column] for r in mine)


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


@pytest.mark.parametrize("stream", [False, True])
def test_image_samples_built_from_what_blocks_kept_carry_their_own_seeds(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Each sample's body (its seed: the row's plus the sample, or one derived from the request)
    is kept, and built as one process builds it; and a chat job's streaming fields are added."""
    monkeypatch.setattr(digests, "BLOCK_ROWS", 7)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    rows = [{"id": i, "q": f"a cat {i % 9}", "s": i if i % 3 else None} for i in range(40)]
    if stream:
        path = write_job(
            rows=rows,
            endpoint='base_url = "http://x"\nmodel = "m"\nstream = true',
            request='prompt = "{{ q }}"\nsamples = 2',
        )
    else:
        path = write_job(
            rows=rows,
            preset="hf-text-to-image",
            endpoint='model = "sdxl"',
            request='prompt = "{{ q }}"\nparameters = {width = 64, seed = "{{ s }}"}\nsamples = 3',
            top='id_column = "id"',
        )
    one, _ = planned(path, Shard())
    assert len(one) == 40 * (2 if stream else 3)
    sent: list[Request] = []
    for k in range(3):
        mine, _ = planned(path, Shard(k, 3))
        sent += mine
    assert sorted(sent, key=by_key) == sorted(one, key=by_key)
    assert stream or len({r.seed for r in one}) > 40  # seeds per sample
    assert not stream or all(b'"stream":true' in r.body for r in sent)


def test_rows_appended_after_a_first_pass_keyed_the_input_are_the_next_runs(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard keys every row before it sends (only the repeating digests are counted): rows
    appended to the input meanwhile are not planned with those counts; the next run, whose input
    has changed, keys them with the rest."""
    monkeypatch.setattr(digests, "BLOCK_ROWS", 10)
    path = write_job(rows=[{"question": f"q{i % 7}"} for i in range(30)], fmt="csv")
    job = replace(load_job(path), shard=Shard(0, 2))
    planner = Planner(job)
    with planner.occurrences:
        feed = Feed.open(job, planner)
        with (path.parent / "input.csv").open("a") as f:
            f.write("".join(f"q{i % 7}\n" for i in range(30, 45)))
        sent = [r for start, rows in feed.slices(Table(job.input), BATCH_ROWS) for r in feed.requests(start, rows)]
        feed.checkpoint(final=True)
    assert feed.covered == 30 and sent and max(r.row_index for r in sent) < 30
    whole, _ = planned(path, Shard())
    again = [r for k in range(2) for r in planned(path, Shard(k, 2))[0]]
    assert sorted(again, key=by_key) == sorted(whole, key=by_key) and len(whole) == 45
