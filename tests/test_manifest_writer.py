"""The manifest writer alone: what goes into a part, in which order, and how rows are made."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun.models import Parsed, Request, Result
from batchrun.runner import new_run_id
from batchrun.sink.manifest import MANIFEST_DIR, manifest_frame, part_files, part_name
from batchrun.sink.writer import ManifestWriter


def result(i: int, *, ok: bool = True, at: float = 1_764_115_200.25) -> Result:
    request = Request(f"{i:064x}", f"id{i}", i, 0, "POST", "http://x/v1", b"{}", "m")
    if not ok:
        return Result(request, "failed", 3, at, at + 1, error_kind="permanent", http_status=400, error="bad")
    parsed = Parsed(text=f"answer {i}", finish_reason="stop", prompt_tokens=3, completion_tokens=4, ttft_ms=1.0)
    return Result(request, "ok", 1, at, at + 0.5, latency_ms=500.0, parsed=parsed, http_status=200)


@pytest.mark.anyio
async def test_results_waiting_together_go_into_parts_in_order_never_over_flush_rows(tmp_path: Path) -> None:
    writer = ManifestWriter(tmp_path, run_id="20261126T000000Z-abc123", endpoint="e", flush_rows=3)
    send, receive = anyio.create_memory_object_stream[Result](16)
    seen: list[int] = []
    async with send:
        for i in range(10):  # all queued before the writer runs: it takes them without waiting
            send.send_nowait(result(i, ok=i != 4))
    await writer.consume(receive, on_result=lambda r: seen.append(r.request.row_index))

    assert seen == list(range(10))
    parts = part_files(tmp_path)
    assert [p.name[-13:] for p in parts] == [f"{seq:05d}.parquet" for seq in range(4)]
    frames = [pl.read_parquet(p) for p in parts]
    assert [f.height for f in frames] == [3, 3, 3, 1]
    rows = pl.concat(frames)
    assert rows["row_index"].to_list() == list(range(10))
    assert rows["status"].to_list() == ["ok"] * 4 + ["failed"] + ["ok"] * 5
    assert writer.written == 10 and writer.seq == 4 and not writer.buffer
    assert (tmp_path / MANIFEST_DIR).is_dir()


def test_a_row_holds_what_the_result_says() -> None:
    ok, failed = result(1), result(2, ok=False)
    frame = manifest_frame([ok, failed], endpoint="e", run_id="r")
    first, second = frame.to_dicts()
    assert first["response_text"] == "answer 1" and first["prompt_tokens"] == 3 and first["endpoint"] == "e"
    assert first["tokens_per_s"] == pytest.approx(4 / 0.499)
    assert first["started_at"] == datetime(2025, 11, 26, 0, 0, 0, 250_000, tzinfo=UTC)
    assert second["response_text"] is None and second["error"] == "bad" and second["http_status"] == 400
    assert second["run_id"] == "r" and second["tokens_per_s"] is None


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_timestamps_round_to_the_microsecond_as_datetime_does(at: float) -> None:
    frame = manifest_frame([result(0, at=at)], endpoint="e", run_id="r")
    assert frame["started_at"][0] == datetime.fromtimestamp(at, UTC)


@pytest.mark.parametrize("files_per_read", [1, 64])
def test_a_keys_last_row_decides_whether_it_failed_for_good(tmp_path: Path, files_per_read: int) -> None:
    """Read together or apart, the later of two parts wins: a permanent failure retried and failed
    again for another reason is sent again; one that failed for good last time is not."""
    from batchrun.models import short_key
    from batchrun.sink.manifest import read_done_keys

    def key(i: int) -> str:
        return f"{i:016x}" * 2

    def failed(i: int, kind: str) -> Result:
        request = Request(key(i), None, i, 0, "POST", "http://x/v1", b"{}", "m")
        return Result(request, "failed", 3, 1.0, 2.0, error_kind=kind, http_status=400, error="e")

    folder = tmp_path / MANIFEST_DIR
    folder.mkdir()
    runs = [
        {1: "permanent", 2: "retryable_exhausted", 3: "permanent"},  # the earlier run
        {1: "retryable_exhausted", 2: "permanent", 3: "permanent"},  # the later one
    ]
    for n, kinds in enumerate(runs):
        run_id = f"2026112{n}T000000Z-abc123"
        frame = manifest_frame([failed(i, kind) for i, kind in kinds.items()], endpoint="e", run_id=run_id)
        frame.write_parquet(folder / f"part-{run_id}-s0of1-00000.parquet")
    done = read_done_keys(tmp_path, files_per_read=files_per_read)
    assert done.failed == {short_key(key(i)) for i in (2, 3)}


def test_runs_made_one_after_another_have_ids_that_sort_in_that_order() -> None:
    """Part files sort by run id, and a key's last row decides whether it failed for good: two runs
    within one second must not swap (their random tags alone would, half the time)."""
    ids = [new_run_id() for _ in range(200)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    names = [part_name(run_id, "s0of1", 0) for run_id in ids]
    assert names == sorted(names)
