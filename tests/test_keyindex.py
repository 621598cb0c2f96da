"""The plan index: a resumed run that skips rendering keyed rows sends exactly what a full
re-plan would, and the index is dropped whenever the job or the input changes."""

from __future__ import annotations

import itertools
import os
import random
import shutil
from pathlib import Path

import httpx
import polars as pl
import pytest
from helpers import JobWriter, ScriptedEndpoint, questions, read_manifest, write_table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.models import DoneKeys, short_key, short_keys
from batchrun.plan.feed import Feed
from batchrun.plan.keyindex import INDEX_DIR, PlanIndex
from batchrun.plan.planner import Planner
from batchrun.plan.reader import Table
from batchrun.runner import run_job
from batchrun.spec import load_job


def rows_with_duplicates(n: int, seed: int, empty: float = 0.0) -> list[dict[str, object]]:
    """Questions that repeat (about three times each), and a share ``empty`` of blank ones."""
    rng = random.Random(seed)
    return [
        {"id": i, "question": " " if rng.random() < empty else rng.choice("abc") + str(rng.randint(0, n // 3))}
        for i in range(n)
    ]


def full_plan(job_path: Path, rows: list[dict[str, object]]) -> list[tuple[int, int, str]]:
    return [(r.row_index, r.sample, r.key) for r in Planner(load_job(job_path)).plan(rows)]


@pytest.mark.parametrize(("dedupe", "samples", "seed"), [(False, 1, 1), (True, 1, 2), (False, 2, 3), (True, 2, 4)])
def test_resuming_through_the_index_plans_exactly_what_a_full_plan_would(
    write_job: JobWriter, tmp_path: Path, dedupe: bool, samples: int, seed: int
) -> None:
    rows = rows_with_duplicates(300, seed)
    job_path = write_job(
        rows=rows,
        top=f'dedupe = {str(dedupe).lower()}\nempty_prompts = "skip"',
        request=f'prompt = "{{{{ question }}}}"\nsamples = {samples}',
    )
    job = load_job(job_path)
    expected = full_plan(job_path, rows)
    frame = pl.DataFrame(rows)
    rng = random.Random(seed)

    # a first run keys the first 120 rows (in batches of 40), then dies; some of them were done
    first = Planner(job)
    feed = Feed.open(job, first)
    for start in range(0, 120, 40):
        list(feed.requests(start, frame.slice(start, 40)))
        feed.checkpoint(final=True)
        assert first.journal == []
    done_keys = [k for (i, _, k) in expected if i < 120 and rng.random() < 0.7]

    # the resumed run: of rows 0..119, only those with work left are read and rendered; the rest
    # of the input is planned as usual
    second = Planner(job, DoneKeys.of(ok=done_keys))
    resumed = Feed.open(job, second)
    assert resumed.covered == 120
    got, read = [], []
    for start, part in resumed.slices(Table(job.input), 50):
        read += part.get_column("id").to_list()
        got += [(r.row_index, r.sample, r.key) for r in resumed.requests(start, part)]
    assert sorted(got) == sorted(t for t in expected if t[2] not in set(done_keys))
    assert len(read) == len(set(read)) and set(read) >= set(range(120, 300))
    assert min(read) == resumed.todo.next_row(0) == min(i for i, _, k in expected if k not in set(done_keys))
    full = Planner(job, DoneKeys.of(ok=done_keys))
    list(full.plan(rows))
    assert second.counts == full.counts

    # frames that straddle the end of the index, handed over as they come, plan the same
    third = Planner(job, DoneKeys.of(ok=done_keys))
    straddled = Feed.open(job, third)
    again = [(r.row_index, r.sample, r.key) for i in range(0, 300, 70) for r in straddled.requests(i, frame[i:][:70])]
    assert sorted(again) == sorted(got) and third.counts == full.counts

    # the ok keys handed over as read (a column): only those no indexed row asks for join the
    # planner's set; one of them from an older job, stale
    fourth = Planner(job)
    column = pl.Series([short_key(k) for k in [*done_keys, "f" * 32]], dtype=pl.UInt64)
    deferred = Feed.open(job, fourth, column)
    assert deferred.stale == 1 and len(fourth.done_keys) == 1
    last = [
        (r.row_index, r.sample, r.key)
        for s, f in deferred.slices(Table(job.input), 50)
        for r in deferred.requests(s, f)
    ]
    assert sorted(last) == sorted(got) and fourth.counts == full.counts
    assert deferred.stale == 1 and len(fourth.done_keys) == 1  # the index accounts for the others


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stop=st.integers(0, 450),
    batch=st.integers(1, 70),
    read=st.integers(1, 70),
    dedupe=st.booleans(),
    samples=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_a_run_stopped_anywhere_resumes_exactly_as_a_full_plan(
    write_job: JobWriter, tmp_path: Path, stop: int, batch: int, read: int, dedupe: bool, samples: int, seed: int
) -> None:
    """A first run plans frames of ``batch`` rows and is stopped after ``stop`` requests (mid-row,
    at a row's end or never), having sent some of them (ok, or failed for good); the next run,
    reading slices of ``read`` rows through the index, plans what a full re-plan would, in order,
    with the same counts and stale keys."""
    rows = rows_with_duplicates(150, seed, empty=0.1)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    job_path = write_job(
        rows=rows,
        top=f'dedupe = {str(dedupe).lower()}\nempty_prompts = "skip"',
        request=f'prompt = "{{{{ question }}}}"\nsamples = {samples}',
    )
    job = load_job(job_path)
    frame = pl.DataFrame(rows)

    first = Feed.open(job, Planner(job))
    planned: list[str] = []
    whole = False
    for start in range(0, len(rows), batch):
        planned += [
            r.key for r in itertools.islice(first.requests(start, frame.slice(start, batch)), stop - len(planned))
        ]
        if len(planned) >= stop:
            first.checkpoint(final=True, stopped=True)
            break
        first.checkpoint(final=True)  # a part per frame
    else:
        whole = True
    rng = random.Random(seed)
    sent = [k for k in planned if rng.random() < 0.8]
    ok = [k for k in sent if rng.random() < 0.9] + ["f" * 32]  # and one key of an older job
    failed = [k for k in sent if k not in ok]

    full = Planner(job, DoneKeys.of(ok=ok, failed=failed))
    expected = [(r.row_index, r.sample, r.key) for r in full.plan(rows)]
    second = Planner(job, DoneKeys.of(failed=failed))
    feed = Feed.open(job, second, pl.Series([short_key(k) for k in ok], dtype=pl.UInt64), note=False)
    assert feed.covered == len(rows) if whole else feed.covered < len(rows)
    got = [(r.row_index, r.sample, r.key) for s, f in feed.slices(Table(job.input), read) for r in feed.requests(s, f)]
    assert got == expected
    assert second.counts == full.counts and feed.stale == full.stale == 1


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_slices_read_only_the_rows_asked_for(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"input{suffix}"
    write_table(source, [{"id": i} for i in range(100)])
    wanted = [10, 11, 35, *range(60, 100)]

    def next_row(row: int) -> int:
        return next((w for w in wanted if w >= row), 100)

    seen = []
    for start, frame in Table(str(source)).slices(8, next_row):
        ids = [int(i) for i in frame.get_column("id").to_list()]  # CSV cells are text
        assert start in wanted and ids == list(range(start, start + len(ids)))
        seen += ids
    assert len(seen) == len(set(seen)) and set(wanted) <= set(seen)
    assert len(seen) < 60


@pytest.mark.anyio
async def test_the_index_is_rebuilt_when_the_job_or_the_input_changes(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    job = write_job(rows=questions(30), limits="concurrency = 2")
    await run_job(load_job(job), transport=endpoint.transport(), quiet=True)
    index = tmp_path / "out" / INDEX_DIR
    fingerprint = (index / "fingerprint").read_text()
    assert list(index.glob("part-*.parquet"))

    again = await run_job(load_job(job), transport=endpoint.transport(), quiet=True)
    assert again.counts.done == 30 and endpoint.count == 30
    assert (index / "fingerprint").read_text() == fingerprint

    write_table(tmp_path / "input.parquet", questions(40))  # appended rows: a new input file
    os.utime(tmp_path / "input.parquet", ns=(1, 1))
    summary = await run_job(load_job(job), transport=endpoint.transport(), quiet=True)
    assert (summary.counts.done, summary.ok) == (30, 10) and endpoint.count == 40
    assert (index / "fingerprint").read_text() != fingerprint

    job.write_text(job.read_text().replace('prompt = "{{ question }}"', 'prompt = "Q: {{ question }}"'))
    changed = await run_job(load_job(job), transport=endpoint.transport(), quiet=True)
    assert changed.ok == 40 and changed.stale == 40  # a new template: new requests, the old results stale
    assert read_manifest(tmp_path / "out").height == 80


@pytest.mark.anyio
async def test_a_stopped_run_keeps_the_index_of_the_rows_it_planned(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    rows = rows_with_duplicates(3000, 5)
    job_path = write_job(rows=rows, request='prompt = "{{ question }}"\nsamples = 3', limits="concurrency = 4")

    def refuse_after_50(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401) if endpoint.count >= 50 else endpoint(request)

    # stopped by a fatal answer mid-batch: far fewer rows planned than an index part holds
    stopped = await run_job(load_job(job_path), transport=httpx.MockTransport(refuse_after_50), quiet=True)
    assert stopped.fatal and stopped.ok < 3 * 3000
    job = load_job(job_path)
    assert 0 < PlanIndex.open(job, note=False).covered < 3000

    resumed = await run_job(job, transport=endpoint.transport(), quiet=True)
    assert resumed.counts.rows == 3000 and resumed.counts.done == stopped.ok
    ok = read_manifest(tmp_path / "out").filter(pl.col("status") == "ok")
    assert sorted(ok.get_column("request_key").to_list()) == sorted(k for _, _, k in full_plan(job_path, rows))


@pytest.mark.anyio
async def test_a_damaged_index_only_costs_time(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    job = write_job(rows=questions(20))
    await run_job(load_job(job), transport=endpoint.transport(), quiet=True)
    for part in (tmp_path / "out" / INDEX_DIR).glob("part-*.parquet"):
        part.write_bytes(b"garbage")
    summary = await run_job(load_job(job), transport=httpx.MockTransport(endpoint), quiet=True)
    assert summary.counts.done == 20 and endpoint.count == 20


@pytest.mark.anyio
async def test_a_rewritten_input_with_the_same_size_and_time_is_noticed(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    job = write_job(rows=[{"question": f"q{i:03d}"} for i in range(50)])
    await run_job(load_job(job), transport=endpoint.transport(), quiet=True)
    source = tmp_path / "input.parquet"
    st = source.stat()
    data = source.read_bytes()
    write_table(source, [{"question": f"r{i:03d}"} for i in range(50)])  # same shape, new prompts
    assert len(source.read_bytes()) == len(data)  # the very same size...
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and modification time
    summary = await run_job(load_job(job), transport=endpoint.transport(), quiet=True)
    assert (summary.ok, summary.counts.done) == (50, 0)  # every new prompt was sent


@given(st.lists(st.binary(min_size=16, max_size=16).map(bytes.hex), max_size=50))
def test_a_column_of_keys_has_the_same_short_keys_as_each_key(keys: list[str]) -> None:
    """The manifest and the plan index match keys by ``short_keys``, the planner by ``short_key``."""
    column = pl.DataFrame({"key": keys}, schema={"key": pl.String}).select(short_keys(pl.col("key")))
    assert column.to_series().to_list() == [short_key(k) for k in keys]
