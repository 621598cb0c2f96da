"""Whole runs against a scripted endpoint (httpx.MockTransport): results, resume, retries, failures."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import polars as pl
import pytest
from helpers import JobWriter, ScriptedEndpoint, questions, read_manifest, write_table

from batchrun.errors import ExitCode
from batchrun.runner import RunSummary, run_job
from batchrun.spec import load_job

pytestmark = pytest.mark.anyio


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await anyio.lowlevel.checkpoint()


async def run(job_path: Path, endpoint: ScriptedEndpoint, **kwargs: object) -> RunSummary:
    kwargs.setdefault("sleep", FakeSleep())
    return await run_job(load_job(job_path), transport=endpoint.transport(), quiet=True, **kwargs)  # type: ignore[arg-type]


async def test_every_row_gets_one_ok_result_and_rerun_sends_nothing(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    job = write_job(rows=questions(50), top='id_column = "id"')
    summary = await run(job, endpoint)
    assert summary.exit_code == ExitCode.OK
    assert endpoint.count == 50
    manifest = read_manifest(tmp_path / "out")
    assert manifest.height == 50
    assert set(manifest["status"]) == {"ok"}
    assert sorted(manifest["row_id"]) == sorted(f"q{i}" for i in range(50))
    row = manifest.filter(pl.col("row_id") == "q7").row(0, named=True)
    assert row["response_text"] == "echo: what is 7?"
    assert (row["finish_reason"], row["prompt_tokens"], row["completion_tokens"]) == ("stop", 3, 2)
    assert row["attempts"] == 1 and row["http_status"] == 200 and row["latency_ms"] >= 0

    again = await run(job, endpoint)
    assert endpoint.count == 50
    assert again.exit_code == ExitCode.OK
    assert again.line().startswith("nothing to do: 50/50 done")


async def test_appended_rows_are_the_only_ones_sent(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    job = write_job(rows=questions(20))
    await run(job, endpoint)
    write_table(tmp_path / "input.parquet", questions(30))
    summary = await run(job, endpoint)
    assert endpoint.count == 30
    assert (summary.counts.done, summary.ok) == (20, 10)
    assert read_manifest(tmp_path / "out")["request_key"].n_unique() == 30


async def test_identical_rows_get_two_requests_unless_dedupe(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    rows = [{"question": "same"}, {"question": "same"}, {"question": "other"}]
    await run(write_job(rows=rows), endpoint)
    assert endpoint.count == 3
    assert read_manifest(tmp_path / "out").height == 3

    fresh = ScriptedEndpoint()
    job = write_job(rows=rows, top="dedupe = true")
    job.write_text(job.read_text().replace('output = "out"', 'output = "out2"'))
    summary = await run(job, fresh)
    assert fresh.count == 2
    assert summary.counts.shared == 1


async def test_429_with_retry_after_is_waited_out_and_retried(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    endpoint.script = [httpx.Response(429, headers={"Retry-After": "1"}, json={"error": {"message": "slow down"}})]
    sleep = FakeSleep()
    summary = await run(write_job(rows=questions(1)), endpoint, sleep=sleep)
    assert summary.exit_code == ExitCode.OK
    assert endpoint.count == 2
    assert 1.0 in sleep.calls
    assert read_manifest(tmp_path / "out")["attempts"].to_list() == [2]


async def test_real_retry_after_wait(write_job: JobWriter, endpoint: ScriptedEndpoint) -> None:
    endpoint.script = [httpx.Response(429, headers={"Retry-After": "1"})]
    start = anyio.current_time()
    summary = await run_job(load_job(write_job(rows=questions(1))), transport=endpoint.transport(), quiet=True)
    assert summary.exit_code == ExitCode.OK
    assert anyio.current_time() - start >= 0.95


async def test_two_500s_then_200_ends_ok_after_three_attempts(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    endpoint.script = [httpx.Response(500, text="boom"), httpx.Response(500, text="boom")]
    summary = await run(write_job(rows=questions(1)), endpoint)
    assert summary.exit_code == ExitCode.OK
    row = read_manifest(tmp_path / "out").row(0, named=True)
    assert (row["status"], row["attempts"], row["response_text"]) == ("ok", 3, "echo: what is 0?")


async def test_retries_exhausted_is_a_failed_row(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    endpoint.by_prompt["what is 0?"] = [httpx.Response(503, text="down")] * 3
    summary = await run(write_job(rows=questions(2), limits="concurrency = 2\nmax_attempts = 3"), endpoint)
    assert summary.exit_code == ExitCode.FAILED_ROWS
    failed = read_manifest(tmp_path / "out").filter(pl.col("status") == "failed").row(0, named=True)
    assert (failed["error_kind"], failed["http_status"], failed["attempts"]) == ("retryable_exhausted", 503, 3)
    # a rerun retries the exhausted one (it was never a permanent failure)
    again = await run(write_job(rows=questions(2), limits="concurrency = 2\nmax_attempts = 3"), endpoint)
    assert again.exit_code == ExitCode.OK
    assert endpoint.count == 3 + 1 + 1


async def test_400_is_permanent_and_exits_3(write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path) -> None:
    endpoint.by_prompt["what is 1?"] = [httpx.Response(400, json={"error": {"message": "prompt too long"}})]
    job = write_job(rows=questions(3))
    summary = await run(job, endpoint)
    assert summary.exit_code == ExitCode.FAILED_ROWS
    assert endpoint.count == 3
    failed = read_manifest(tmp_path / "out").filter(pl.col("status") == "failed").row(0, named=True)
    assert (failed["error_kind"], failed["http_status"], failed["attempts"]) == ("permanent", 400, 1)
    assert failed["error"] == "HTTP 400: prompt too long"
    # a rerun does not resend the permanent failure, and still reports it
    again = await run(job, endpoint)
    assert endpoint.count == 3
    assert again.exit_code == ExitCode.FAILED_ROWS
    # unless asked to
    endpoint.by_prompt.clear()
    retried = await run(job, endpoint, retry_failed=True)
    assert endpoint.count == 4
    assert retried.exit_code == ExitCode.OK


async def test_401_stops_the_job_after_a_handful(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    endpoint.script = [httpx.Response(401, json={"error": {"message": "bad token"}})] * 1000
    summary = await run(write_job(rows=questions(500)), endpoint)
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert endpoint.count <= 8
    assert summary.fatal is not None and "401" in summary.fatal and "llm.test" in summary.fatal
    # nothing is recorded as done, so the next run (with a good token) does everything
    assert not list((tmp_path / "out" / "manifest").glob("part-*.parquet"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_csv_parquet_and_jsonl_give_the_same_manifest(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path, fmt: str
) -> None:
    rows = [{"id": i, "question": f"q {i}", "n": i * 1.5} for i in range(10)]
    await run(write_job(rows=rows, top='id_column = "id"'), endpoint)
    columns = ["request_key", "row_id", "response_text", "status"]
    parquet = read_manifest(tmp_path / "out").select(columns).sort("request_key")
    job = write_job(rows=rows, fmt=fmt, top='id_column = "id"')
    job.write_text(job.read_text().replace('output = "out"', f'output = "out-{fmt}"'))
    await run(job, endpoint)
    other = read_manifest(tmp_path / f"out-{fmt}").select(columns).sort("request_key")
    assert other.equals(parquet)


async def test_hf_serverless_preset(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    job = write_job(
        rows=questions(3),
        preset="hf-serverless",
        endpoint='model = "gpt2"',
        request='inputs = "{{ question }}"\nparameters = { max_new_tokens = 5 }',
    )
    summary = await run(job, endpoint)
    assert summary.exit_code == ExitCode.OK
    sent = endpoint.requests[0]
    assert str(sent.url) == "https://api-inference.huggingface.co/models/gpt2"
    assert sent.headers["authorization"] == "Bearer hf_secret_value"
    assert b'"parameters":{"max_new_tokens":5}' in sent.content
    assert sorted(read_manifest(tmp_path / "out")["response_text"]) == [f"gen: what is {i}?" for i in range(3)]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert b"hf_secret_value" not in path.read_bytes()


async def test_custom_preset_with_named_header_and_url_template(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TOKEN", "k-123")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"result": {"answers": [{"text": request.url.path}]}})

    job = write_job(
        rows=questions(2),
        preset="custom",
        endpoint='url = "http://api.test/ask/{{ id }}"\nauth = "header"\nauth_header = "X-Api-Key"\n'
        'api_key_env = "TEST_TOKEN"\nresponse_path = "result.answers[0].text"',
        request='body = { q = "{{ question }}", opts = { n = 1 } }',
    )
    summary = await run_job(load_job(job), transport=httpx.MockTransport(handler), quiet=True)
    assert summary.exit_code == ExitCode.OK
    assert {r.headers["x-api-key"] for r in seen} == {"k-123"}
    assert "authorization" not in seen[0].headers
    assert sorted(read_manifest(tmp_path / "out")["response_text"]) == ["/ask/q0", "/ask/q1"]


async def test_200_with_html_body_is_retried(write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path) -> None:
    endpoint.script = [httpx.Response(200, text="<html>proxy error</html>", headers={"content-type": "text/html"})]
    summary = await run(write_job(rows=questions(1)), endpoint)
    assert summary.exit_code == ExitCode.OK
    assert read_manifest(tmp_path / "out")["attempts"].to_list() == [2]


async def test_404_on_every_request_stops_the_job(write_job: JobWriter, endpoint: ScriptedEndpoint) -> None:
    endpoint.script = [httpx.Response(404, text="Not Found")] * 1000
    summary = await run(write_job(rows=questions(300), limits="concurrency = 4"), endpoint)
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert endpoint.count <= 10 + 4
    assert summary.fatal is not None and "in a row failed (none succeeded yet)" in summary.fatal
    assert "HTTP 404" in summary.fatal


async def test_404_for_some_rows_among_successes_is_per_row(write_job: JobWriter, endpoint: ScriptedEndpoint) -> None:
    for i in range(0, 60, 2):
        endpoint.by_prompt[f"what is {i}?"] = [httpx.Response(404, json={"error": "no such model"})]
    summary = await run(write_job(rows=questions(60), limits="concurrency = 1"), endpoint)
    assert summary.exit_code == ExitCode.FAILED_ROWS
    assert (summary.ok, summary.failed) == (30, 30)


def test_unresolvable_host_stops_the_job_with_one_line(write_job: JobWriter, tmp_path: Path) -> None:
    import subprocess
    import sys

    job = write_job(
        rows=questions(200),
        endpoint='base_url = "http://no-such-host.invalid"\nmodel = "m"',
        limits="concurrency = 8\nmax_retry_wait_s = 0.01",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(job), "-q"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 4, proc.stderr
    assert "stopped early: openai-compatible (http://no-such-host.invalid/v1/chat/completions)" in proc.stdout
    assert "cannot connect" in proc.stdout


async def test_export_joins_every_input_row_even_with_dedupe(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    from batchrun.cli import main

    rows = [{"id": "a", "question": "same"}, {"id": "b", "question": "same"}, {"id": "c", "question": "other"}]
    job = write_job(rows=rows, top='id_column = "id"\ndedupe = true')
    await run(job, endpoint)
    assert endpoint.count == 2
    assert await anyio.to_thread.run_sync(main, ["export", str(tmp_path / "out"), "--to", str(tmp_path / "r.csv")]) == 0
    exported = pl.read_csv(tmp_path / "r.csv").sort("id")
    assert exported["id"].to_list() == ["a", "b", "c"]
    assert exported["response_text"].to_list() == ["echo: same", "echo: same", "echo: other"]
    assert exported["status"].to_list() == ["ok"] * 3
