"""The crash journal: what it holds reads back as the part rows would be; a torn end is dropped;
segments go once their results are in parts; a killed run's journal is folded, never twice; every
reader (resume, plan, export) sees journal rows as it sees parts."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from helpers import JobWriter, questions, read_manifest

from batchrun.export import results
from batchrun.models import Parsed, Request, Result
from batchrun.prepare import plan_job
from batchrun.runner import run_job
from batchrun.simulator import create_app
from batchrun.sink.fold import fold_journals
from batchrun.sink.journal import Journal, read_segment, segments
from batchrun.sink.manifest import MANIFEST_DIR, manifest_frame, part_name, read_done, scan_latest, write_part
from batchrun.sink.writer import ManifestWriter
from batchrun.spec import load_job

RUN = "20261204T000000000000Z-dead01"


def result(i: int, *, ok: bool = True, text: str | None = None, later: float = 0) -> Result:
    body = b'{"p":"\xc3\xa9\xff"}'  # not UTF-8 at the end: the journal keeps bytes as they are
    request = Request(f"{i:016x}{'0' * 48}", f"id{i}", i, i % 2, "POST", "http://x/v1", body, "m", seed=i)
    at = 1_764_115_200.123456 + i / 7 + later
    if not ok:
        return Result(request, "failed", 3, at, at + 1, error_kind="permanent", http_status=400, error="bad\nline")
    parsed = Parsed(
        text=text if text is not None else f"réponse {i} \u2603",
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=4,
        ttft_ms=1.25,
        raw='{"x": 1}',
    )
    return Result(request, "ok", 1, at, at + 0.5, latency_ms=500.0 + i / 3, parsed=parsed, http_status=200)


def image_result(i: int, relpath: str) -> Result:
    request = Request(f"{i:064x}", None, i, 0, "POST", "http://x/img", b"{}", "sd", seed=7)
    parsed = Parsed(
        mime_type="image/png", width=32, height=16, image_path=relpath, image_sha256="ab" * 32, image_bytes=9
    )
    return Result(request, "ok", 2, 1.5e9, 1.5e9 + 2, latency_ms=2000.0, parsed=parsed, http_status=200)


def journal(folder: Path, run_id: str = RUN) -> Journal:
    return Journal(folder, run_id=run_id, shard="s0of1", endpoint="e")


def test_journal_rows_are_the_rows_a_part_would_hold(tmp_path: Path) -> None:
    rows = [result(0), result(1, ok=False), result(2, text=""), image_result(3, "images/00/x.png")]
    j = journal(tmp_path)
    for r in rows:
        j.add(r)
    (found,) = segments(tmp_path)
    records = read_segment(found.path)
    assert records is not None and records.run_id == RUN and records.endpoint == "e"
    assert records.results == rows
    assert manifest_frame(records.results, endpoint="e", run_id=RUN).equals(
        manifest_frame(rows, endpoint="e", run_id=RUN)
    )


@pytest.mark.parametrize("tail", [b"", b'{"request": {"key"', b"\x00" * 300, b"not json\n", b'{"status": "ok"}\n'])
def test_a_torn_or_foreign_last_line_is_dropped(tmp_path: Path, tail: bytes) -> None:
    j = journal(tmp_path)
    for i in range(3):
        j.add(result(i))
    j.close()
    path = segments(tmp_path)[0].path
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.rindex(b"\n", 0, len(whole) - 1) + 1 + 40] + tail)  # the third cut short
    records = read_segment(path)
    assert records is not None
    assert [r.request.row_index for r in records.results] == [0, 1]


def test_a_header_cut_short_reads_as_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal-x-s0of1-00000.jsonl"
    path.write_bytes(b'{"format": 1, "run_id": "x", "endpo')
    assert read_segment(path) is None
    path.unlink()
    assert read_segment(path) is None  # removed by a live run between listing and reading


def test_segments_go_once_every_result_in_them_is_in_a_part(tmp_path: Path) -> None:
    writer = ManifestWriter(tmp_path, run_id=RUN, endpoint="e", flush_rows=1000)
    j = writer.journal
    for i in range(5):
        j.add(result(i))
    for i in range(3):  # two are still on their way to the writer when it flushes
        writer.add(result(i))
    writer.flush()
    assert j.on_disk() == [0]  # sealed, but holds two results no part has
    for i in range(5, 7):
        j.add(result(i))
    for i in range(3, 7):
        writer.add(result(i))
    writer.flush()
    assert j.on_disk() == [] and not segments(tmp_path)
    assert read_manifest(tmp_path)["row_index"].to_list() == list(range(7))
    j.add(result(7))  # a result whose worker was cancelled before it reached the writer
    writer.flush()
    j.close()
    (left,) = segments(tmp_path)
    records = read_segment(left.path)
    assert records is not None and [r.request.row_index for r in records.results] == [7]


def test_the_journal_is_bounded_by_the_parts_not_by_the_run(tmp_path: Path) -> None:
    writer = ManifestWriter(tmp_path, run_id=RUN, endpoint="e", flush_rows=10)
    sizes = []
    for i in range(200):
        writer.journal.add(result(i))
        writer.add(result(i))
        if writer.due():
            writer.flush()
        sizes.append(sum(s.path.stat().st_size for s in segments(tmp_path)))
    assert max(sizes) < 10 * len(result(0).request.key) * 20  # one segment of ten results at most
    assert sizes[-1] == 0


def write_run_part(folder: Path, run_id: str, seq: int, rows: list[Result]) -> None:
    (folder / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    write_part(
        folder / MANIFEST_DIR, part_name(run_id, "s0of1", seq), manifest_frame(rows, endpoint="e", run_id=run_id)
    )


def test_a_killed_runs_journal_is_folded_once_into_a_part_of_its_own(tmp_path: Path) -> None:
    write_run_part(tmp_path, RUN, 0, [result(i) for i in range(5)])
    j = journal(tmp_path)
    for i in range(3, 10):  # 3 and 4 are in the part too: the segment was not yet removed
        j.add(result(i))
    j.seal()
    for i in range(10, 12):
        j.add(result(i))
    folded = fold_journals(tmp_path)
    assert (folded.journals, folded.rows, folded.dropped) == (2, 7, 0)
    names = sorted(p.name for p in (tmp_path / MANIFEST_DIR).iterdir())
    assert names == [part_name(RUN, "s0of1", 0), part_name(RUN, "s0of1", 1)]
    rows = read_manifest(tmp_path)
    assert rows["row_index"].to_list() == list(range(12)) and set(rows["run_id"]) == {RUN}
    expected = manifest_frame([result(i) for i in range(12)], endpoint="e", run_id=RUN)
    assert rows.equals(expected)

    # killed after the fold's part, before its journals went: done again, nothing twice
    j = journal(tmp_path)
    for i in range(5, 12):
        j.add(result(i))
    assert fold_journals(tmp_path).rows == 0
    assert read_manifest(tmp_path)["request_key"].is_unique().all()
    assert not segments(tmp_path)


def test_a_folded_image_row_needs_its_file(tmp_path: Path) -> None:
    (tmp_path / "images" / "00").mkdir(parents=True)
    (tmp_path / "images" / "00" / "kept.png").write_bytes(b"x")
    j = journal(tmp_path)
    j.add(image_result(1, "images/00/kept.png"))
    j.add(image_result(2, "images/00/lost.png"))  # power loss: the line survived, the rename did not
    folded = fold_journals(tmp_path)
    assert (folded.rows, folded.dropped) == (1, 1)
    assert read_manifest(tmp_path)["image_path"].to_list() == ["images/00/kept.png"]


def test_fold_leaves_other_shards_alone(tmp_path: Path) -> None:
    other = Journal(tmp_path, run_id=RUN, shard="s1of2", endpoint="e")
    other.add(result(1))
    assert fold_journals(tmp_path).journals == 0
    assert len(segments(tmp_path)) == 1
    # a run alone in the folder folds every shard's journals, each into a part of its own shard
    assert fold_journals(tmp_path, shard=None).rows == 1
    assert [p.name for p in (tmp_path / MANIFEST_DIR).iterdir()] == [part_name(RUN, "s1of2", 0)]
    assert not segments(tmp_path)


def test_readers_see_journal_rows_as_they_see_parts(tmp_path: Path) -> None:
    write_run_part(tmp_path, "20261203T000000000000Z-old001", 0, [result(0), result(1, ok=False), result(2)])
    j = journal(tmp_path)
    j.add(result(1, later=60))  # retried and answered this time
    j.add(result(3))
    j.add(result(4, ok=False))
    done = read_done(tmp_path)
    assert sorted(done.ok.unique().to_list()) == [0, 1, 2, 3]
    assert done.failed == {4}
    latest = scan_latest(tmp_path)
    assert latest is not None
    frame = latest.collect().sort("row_index")
    assert frame["status"].to_list() == ["ok", "ok", "ok", "ok", "failed"]
    assert frame["run_id"].to_list() == [
        "20261203T000000000000Z-old001",
        RUN,
        "20261203T000000000000Z-old001",
        RUN,
        RUN,
    ]


@pytest.mark.anyio
async def test_a_run_after_a_kill_sends_nothing_the_journal_holds(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app()
    job = load_job(write_job(rows=questions(40), top='id_column = "id"'))
    await run_job(job, transport=httpx.ASGITransport(app=sim), quiet=True)
    first = read_manifest(job.output_dir).sort("row_index")
    assert first.height == 40 and sim.stats.total == 40
    # as a killed run leaves it: 25 results in a part, 15 only in its journal, the last line torn
    for part in (job.output_dir / MANIFEST_DIR).glob("part-*.parquet"):
        part.unlink()
    write_part(job.output_dir / MANIFEST_DIR, part_name(RUN, "s0of1", 0), first.head(25))
    j = journal(job.output_dir)
    for row in first.tail(15).iter_rows(named=True):
        request = Request(row["request_key"], row["row_id"], row["row_index"], 0, "POST", "u", b"{}", "m")
        j.add(Result(request, "ok", 1, 1.7e9, 1.7e9, parsed=Parsed(text=row["response_text"])))
    path = segments(job.output_dir)[0].path
    path.write_bytes(path.read_bytes()[:-7])

    counts, _ = await plan_job(job)  # plan reads the journal, and folds nothing
    assert (counts.done, counts.todo) == (39, 1)
    assert results(job)["response_text"].null_count() == 1  # export too
    assert segments(job.output_dir)

    sim.reset()
    summary = await run_job(job, transport=httpx.ASGITransport(app=sim), quiet=True)
    assert sim.stats.total == 1 and summary.sent == 1
    assert sim.stats.prompts() == ["what is 39?"]
    assert not segments(job.output_dir)
    rows = read_manifest(job.output_dir)
    assert rows.height == 40 and rows["request_key"].is_unique().all()


@pytest.mark.anyio
async def test_a_finished_run_leaves_no_journal(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app()
    job = load_job(write_job(rows=questions(30), top="[sink]\nflush_rows = 7"))
    await run_job(job, transport=httpx.ASGITransport(app=sim), quiet=True)
    assert not segments(job.output_dir)
    assert read_manifest(job.output_dir).height == 30


def test_each_flush_fsyncs_the_journal_before_its_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import batchrun.sink.journal as journal_module
    import batchrun.sink.writer as writer_module

    events: list[str] = []
    real_fsync, real_write_part = os.fsync, writer_module.write_part

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".jsonl"):
            events.append("journal")
        real_fsync(fd)

    def write_part(folder: Path, name: str, frame: object) -> Path:
        events.append("part")
        return real_write_part(folder, name, frame)  # type: ignore[arg-type]

    monkeypatch.setattr(journal_module.os, "fsync", fsync)
    monkeypatch.setattr(writer_module, "write_part", write_part)
    writer = ManifestWriter(tmp_path, run_id=RUN, endpoint="e")
    for i in range(3):
        writer.journal.add(result(i))
        writer.add(result(i))
    writer.flush()
    assert events == ["journal", "part"]


@pytest.mark.anyio
async def test_results_journaled_but_never_handed_over_still_reach_a_part(tmp_path: Path) -> None:
    import anyio

    writer = ManifestWriter(tmp_path, run_id=RUN, endpoint="e", flush_rows=4)
    send, receive = anyio.create_memory_object_stream[Result](16)
    async with send:
        for i in range(10):
            writer.journal.add(result(i))
            if i not in (3, 8):  # their workers were cancelled after the journal, before the hand-over
                send.send_nowait(result(i))
    seen: list[int] = []
    await writer.consume(receive, on_result=lambda r: seen.append(r.request.row_index))
    assert sorted(seen) == list(range(10))  # and counted, once each
    assert sorted(read_manifest(tmp_path)["row_index"].to_list()) == list(range(10))
    assert read_manifest(tmp_path)["request_key"].is_unique().all()
    assert not segments(tmp_path)
