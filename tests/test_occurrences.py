"""The occurrence index: exact counts of identical requests, in flat memory, spilling to disk."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import anyio
import pytest
from helpers import JobWriter, questions
from hypothesis import example, given, settings
from hypothesis import strategies as st

from batchrun import prepare
from batchrun.plan.occurrences import Occurrences
from batchrun.plan.planner import Planner
from batchrun.sink.files import remove_temp_files
from batchrun.spec import load_job


def reference(shorts: list[int]) -> list[int]:
    seen: Counter[int] = Counter()
    out = []
    for short in shorts:
        out.append(seen[short])
        seen[short] += 1
    return out


def counted(occurrences: Occurrences, shorts: list[int], flush_every: int = 0) -> list[int]:
    out = []
    for i, short in enumerate(shorts, 1):
        out.append(occurrences.count(short))
        if flush_every and i % flush_every == 0 and occurrences.flush_due:
            occurrences.flush()
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63, 2**64 - 1, 12345]), max_size=400),
    st.integers(1, 40),
    st.integers(0, 400),
)
def test_counts_are_exact_through_spills_and_a_resume(
    tmp_path_factory: object, shorts: list[int], spill_after: int, cut: int
) -> None:
    """A tiny filter (many false "maybe"s) and tiny spills: every count still matches a Counter,
    and a resume (seed with the first rows, then count on) matches counting straight through."""
    expected = reference(shorts)
    with Occurrences(expected=1, spill_after=spill_after) as occurrences:
        assert counted(occurrences, shorts, flush_every=7) == expected
    cut = min(cut, len(shorts))
    with Occurrences(expected=1, spill_after=spill_after) as resumed:
        resumed.seed(shorts[:cut])
        assert counted(resumed, shorts[cut:], flush_every=5) == expected[cut:]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63, 2**64 - 1, 12345]), min_size=1, max_size=400),
    st.lists(st.integers(0, 60), max_size=12),
    st.integers(1, 40),
    st.integers(0, 400),
)
@example(shorts=[5, 5, 7, 5, 2**64 - 1, 7, 5], cuts=[1, 4], spill_after=2, seeded=1)
def test_counting_a_block_at_once_gives_the_same_numbers_as_one_at_a_time(
    shorts: list[int], cuts: list[int], spill_after: int, seeded: int
) -> None:
    """``count_many`` over blocks of any size, mixed with single ``count`` calls, after a seed,
    through spills (a tiny filter: many false "maybe"s): every number matches a Counter."""
    import numpy as np

    expected = reference(shorts)
    seeded = min(seeded, len(shorts))
    got: list[int] = []
    with Occurrences(expected=1, spill_after=spill_after) as occurrences:
        occurrences.seed(shorts[:seeded])
        at = seeded
        for i, size in enumerate([*cuts, len(shorts)]):
            block = shorts[at : at + size]
            if i % 3 == 2:
                got += [occurrences.count(short) for short in block]
            else:
                got += occurrences.count_many(np.array(block, dtype=np.uint64)).tolist()
            at += len(block)
            if occurrences.flush_due:
                occurrences.flush()
    assert got == expected[seeded:]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63, 2**64 - 1, 12345]), max_size=400),
    st.lists(st.integers(1, 60), max_size=12),
)
def test_repeats_names_every_digest_that_occurs_twice(shorts: list[int], cuts: list[int]) -> None:
    """Counting only ``repeats`` (the others are 0) gives every number a Counter gives."""
    import numpy as np

    blocks, at = [], 0
    for size in [*cuts, len(shorts)]:
        blocks.append(np.array(shorts[at : at + size], dtype=np.uint64))
        at += size
    with Occurrences(expected=1, spill_after=8) as occurrences:  # a tiny filter: many false "maybe"s
        repeats = occurrences.repeats(iter(blocks))
        assert {short for short, n in Counter(shorts).items() if n > 1} <= set(repeats.tolist())
        assert occurrences.lookups == 0 and not occurrences.flush_due  # nothing counted meanwhile
        got = [occurrences.count(short) if short in set(repeats.tolist()) else 0 for short in shorts]
    assert got == reference(shorts)


def test_large_job_spills_to_a_scratch_folder_that_close_removes(tmp_path: Path) -> None:
    rnd = random.Random(7)
    shorts = [rnd.getrandbits(64) for _ in range(30_000)]
    shorts += rnd.sample(shorts, 3_000)  # 10 % repeated, after their first spill
    with Occurrences(expected=len(shorts), folder=tmp_path, spill_after=4096) as occurrences:
        assert counted(occurrences, shorts, flush_every=1000) == reference(shorts)
        scratch = list(tmp_path.glob(".tmp-occurrences-*"))
        assert len(scratch) == 1 and (scratch[0] / "seen.sqlite").is_file()
        # the filter answers almost every new request alone: the table is asked for the repeats
        assert 3_000 <= occurrences.lookups < 3_000 + 0.05 * 30_000
    assert list(tmp_path.iterdir()) == []


def test_small_job_never_touches_the_disk(tmp_path: Path) -> None:
    with Occurrences(expected=100, folder=tmp_path) as occurrences:
        assert counted(occurrences, [1, 2, 1, 3, 1]) == [0, 0, 1, 0, 2]
        assert list(tmp_path.iterdir()) == []


def test_a_killed_runs_scratch_folder_is_removed_by_the_next(tmp_path: Path) -> None:
    occurrences = Occurrences(folder=tmp_path, spill_after=1)
    occurrences.count(1)
    occurrences.flush()
    assert len(list(tmp_path.glob(".tmp-occurrences-*"))) == 1  # as if the run were killed here
    assert remove_temp_files(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_planner_keys_do_not_change_when_the_index_spills(write_job: JobWriter, tmp_path: Path) -> None:
    job = load_job(write_job())
    rows = [{"question": f"q{i % 700}"} for i in range(2_000)]  # every question about three times
    in_memory = [r.key for r in Planner(job).plan(rows)]
    spilled_index = Occurrences(expected=1, folder=tmp_path, spill_after=64)
    with spilled_index:
        spilled = [r.key for r in Planner(job, occurrences=spilled_index).plan(rows)]
        assert spilled_index.lookups > 0
    assert spilled == in_memory
    assert len(set(in_memory)) == 2_000


def test_plan_spills_the_recent_counts_at_every_batch_boundary(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``batchrun plan`` flushes as a run does, so the dict of recent counts stays near
    ``spill_after`` (count() alone would let it reach four times that); the counts are the same."""
    held: list[int] = []

    class Watched(Occurrences):
        def flush(self) -> None:
            held.append(len(self._recent))
            super().flush()

    monkeypatch.setattr(prepare, "BATCH_ROWS", 100)
    monkeypatch.setattr(prepare, "Occurrences", lambda expected: Watched(expected, spill_after=150))
    job = load_job(write_job(rows=[*questions(1_000), *questions(200)]))  # 200 repeated after a spill
    counts, _stale = anyio.run(lambda: prepare.plan_job(job))
    assert (counts.rows, counts.requests, counts.todo) == (1_200, 1_200, 1_200)
    assert len(held) >= 5 and max(held) < 150 + 100
