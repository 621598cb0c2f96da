"""Streaming chat completions: the pure assembler, the SSE reading edge, and whole runs over
real loopback sockets against the simulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import polars as pl
import pytest
from helpers import JobWriter, questions, read_manifest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.dispatch.stream import read_event_stream
from batchrun.endpoints.sse import ChatStream
from batchrun.errors import ExitCode, RetryableError
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, Trigger, create_app, expected_chat_text, serve
from batchrun.spec import load_job


def chunk(content: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    data: dict[str, object] = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    if usage is not None:
        data["usage"] = usage
    return json.dumps(data)


def feed_all(stream: ChatStream, datas: list[str]) -> None:
    for i, data in enumerate(datas):
        if stream.feed("message", data, now=float(i)):
            break


def test_null_first_delta_usage_on_last_chunk_and_no_done() -> None:
    stream = ChatStream()
    feed_all(
        stream,
        [chunk(None), chunk("Hel"), chunk("lo"), chunk("", "stop", {"prompt_tokens": 4, "completion_tokens": 2})],
    )
    parsed = stream.result(started=0.0)
    assert (parsed.text, parsed.finish_reason, parsed.prompt_tokens, parsed.completion_tokens) == (
        "Hello",
        "stop",
        4,
        2,
    )
    assert parsed.ttft_ms == 1000.0  # the first content arrived with the second event


def test_usage_in_a_chunk_without_choices_after_finish() -> None:
    stream = ChatStream()
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    feed_all(stream, [chunk("a"), chunk(None, "length"), usage, "[DONE]", chunk("ignored")])
    parsed = stream.result(started=0.0)
    assert (parsed.text, parsed.finish_reason, parsed.completion_tokens) == ("a", "length", 1)


def test_a_cut_stream_keeps_no_partial_text() -> None:
    stream = ChatStream()
    feed_all(stream, [chunk("partial "), chunk("answer")])
    with pytest.raises(RetryableError, match="ended before a finish_reason"):
        stream.result(started=0.0)


@pytest.mark.parametrize(
    ("event", "data", "match"),
    [
        (
            "message",
            json.dumps({"error": "Request failed during generation", "error_type": "generation"}),
            "generation",
        ),
        ("message", json.dumps({"error": {"message": "overloaded", "type": "server_error"}}), "overloaded"),
        ("error", "upstream gone", "error event"),
        ("message", '{"choices": [', "not JSON"),
    ],
)
def test_error_events_and_malformed_chunks_are_retryable(event: str, data: str, match: str) -> None:
    stream = ChatStream()
    stream.feed("message", chunk("x"), 0.0)
    with pytest.raises(RetryableError, match=match):
        stream.feed(event, data, 1.0)


def sse_body(parts: list[str], *, newline: str, comments: bool, split_data: bool) -> bytes:
    out = []
    for data in parts:
        if comments:
            out.append(f": ping{newline}")
        if split_data and data.startswith("{") and ", " in data:
            head, tail = data.split(", ", 1)  # one JSON document over two data: lines, joined with \n
            out.append(f"data: {head},{newline}data: {tail}{newline}{newline}")
        else:
            out.append(f"data: {data}{newline}{newline}")
    return "".join(out).encode()


async def rechunked(body: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        if start < cut < len(body):
            yield body[start:cut]
            start = cut
    yield body[start:]


TEXT = ["Grüße ", "aus ", "Köln — ", "日本語 ", "ok"]


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=40),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    comments=st.booleans(),
    split_data=st.booleans(),
)
def test_sse_reading_survives_any_chunking(cuts: list[int], newline: str, comments: bool, split_data: bool) -> None:
    parts = [chunk(t) for t in TEXT] + [chunk(None, "stop", {"prompt_tokens": 3, "completion_tokens": 5}), "[DONE]"]
    body = sse_body(parts, newline=newline, comments=comments, split_data=split_data)

    async def read() -> tuple[str | None, str | None, int | None]:
        response = httpx.Response(
            200, headers={"content-type": "text/event-stream; charset=utf-8"}, content=rechunked(body, cuts)
        )
        parsed = await read_event_stream(response, ChatStream(), started=0.0)
        return parsed.text, parsed.finish_reason, parsed.completion_tokens

    import anyio

    assert anyio.run(read) == ("".join(TEXT), "stop", 5)


# --- whole runs over loopback ------------------------------------------------------------------

STREAMING = 'base_url = "{url}"\nmodel = "m"\nstream = true'


def write_stream_job(
    write_job: JobWriter, url: str, n: int, *, output: str, stream: bool = True, limits: str = ""
) -> Path:
    job = write_job(
        rows=questions(n),
        top='id_column = "id"',
        endpoint=STREAMING.format(url=url).replace("stream = true", f"stream = {str(stream).lower()}"),
        limits=limits or "concurrency = 16\nmax_retry_wait_s = 0.05",
    )
    job.write_text(job.read_text().replace('output = "out"', f'output = "{output}"'))
    return job


@pytest.mark.anyio
async def test_streamed_answers_equal_plain_ones_over_sockets(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(FaultPlan(chunk_delay_ms=1))
    async with serve(sim) as url:
        plain = await run_job(load_job(write_stream_job(write_job, url, 500, output="plain", stream=False)), quiet=True)
        streamed = await run_job(load_job(write_stream_job(write_job, url, 500, output="streamed")), quiet=True)
    assert plain.exit_code == streamed.exit_code == ExitCode.OK
    assert sim.stats.total == 1000
    a = read_manifest(tmp_path / "plain").sort("row_index")
    b = read_manifest(tmp_path / "streamed").sort("row_index")
    # streaming is a transport detail: the same questions have the same keys and the same answers
    assert a["request_key"].to_list() == b["request_key"].to_list()
    assert a["response_text"].to_list() == b["response_text"].to_list()
    assert b["response_text"][0] == expected_chat_text("m", [{"role": "user", "content": "what is 0?"}])
    assert b["completion_tokens"].to_list() == a["completion_tokens"].to_list()
    assert b["ttft_ms"].null_count() == 0 and a["ttft_ms"].null_count() == 500
    assert (b["ttft_ms"] < b["latency_ms"]).all()
    assert b["tokens_per_s"].null_count() == 0


@pytest.mark.anyio
async def test_cut_streams_are_retried_until_whole(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(FaultPlan(rate_stream_cut=0.1, seed=3))
    async with serve(sim) as url:
        summary = await run_job(load_job(write_stream_job(write_job, url, 300, output="out")), quiet=True)
    assert summary.exit_code == ExitCode.OK
    manifest = read_manifest(tmp_path / "out")
    assert manifest.height == 300 and set(manifest["status"]) == {"ok"}
    cuts = sim.stats.by_outcome["stream_cut"]
    assert cuts > 10
    assert sim.stats.total == 300 + cuts
    assert manifest["attempts"].sum() == 300 + cuts
    for row in manifest.iter_rows(named=True):
        n = int(row["row_id"][1:])
        assert row["response_text"] == expected_chat_text("m", [{"role": "user", "content": f"what is {n}?"}])


@pytest.mark.anyio
async def test_midstream_error_and_reset_are_retried(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(
        FaultPlan(triggers=[Trigger("what is 3?", "midstream_error", times=2), Trigger("what is 5?", "reset", times=1)])
    )
    async with serve(sim) as url:
        summary = await run_job(load_job(write_stream_job(write_job, url, 10, output="out")), quiet=True)
    assert summary.exit_code == ExitCode.OK
    assert sim.stats.total == 13
    manifest = read_manifest(tmp_path / "out")
    attempts = dict(zip(manifest["row_id"], manifest["attempts"], strict=True))
    assert (attempts["q3"], attempts["q5"], attempts["q0"]) == (3, 2, 1)
    assert manifest.filter(pl.col("row_id") == "q3")["response_text"][0].endswith("what is 3?")


@pytest.mark.anyio
async def test_timeout_bounds_the_silence_between_chunks_not_the_stream(write_job: JobWriter, tmp_path: Path) -> None:
    long_question = " ".join(f"word{i}" for i in range(60))  # about 22 chunks of 3 words
    sim = create_app(FaultPlan(chunk_delay_ms=100))
    async with serve(sim) as url:
        job = write_job(
            rows=[{"id": "long", "question": long_question}],
            top='id_column = "id"',
            endpoint=f'base_url = "{url}"\nmodel = "m"\nstream = true',
            limits="timeout_s = 0.5\nmax_attempts = 1",
        )
        summary = await run_job(load_job(job), quiet=True)
        assert summary.exit_code == ExitCode.OK  # a 2 s answer, never 0.5 s of silence
        row = read_manifest(tmp_path / "out").row(0, named=True)
        assert row["latency_ms"] > 1500 and row["ttft_ms"] < row["latency_ms"] / 4  # the first of ~22 chunks
        assert row["response_text"] == expected_chat_text("m", [{"role": "user", "content": long_question}])

        sim.plan.chunk_delay_ms = 800  # now a silence longer than timeout_s: a read timeout, retried, then failed
        job.write_text(job.read_text().replace('output = "out"', 'output = "out2"'))
        summary = await run_job(load_job(job), quiet=True)
        assert summary.exit_code == ExitCode.FAILED_ROWS
        failed = read_manifest(tmp_path / "out2").row(0, named=True)
        assert failed["error"].startswith("timed out (ReadTimeout)") and failed["response_text"] is None
