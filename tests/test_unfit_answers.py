"""Paid answers are not thrown away: a whole, well-formed 200 that does not hold what the job's
format promises fails its row for good, once, with the start of the answer kept; a body broken on
the way (not JSON, an HTML page, cut image bytes) or one that reports an error is still retried."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from helpers import JobWriter, ScriptedEndpoint, questions, read_manifest

from batchrun.endpoints.base import ANSWER_START_CHARS
from batchrun.endpoints.chat import ChatAdapter
from batchrun.endpoints.custom import CustomAdapter
from batchrun.endpoints.images import OpenAIImageAdapter, RawImageAdapter
from batchrun.errors import ExitCode, PermanentError, RetryableError
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, create_app, expected_generated_text, render_image
from batchrun.spec import load_job

ROWS = 5
LIMITS = "concurrency = 2\nmax_attempts = 6\nmax_retry_wait_s = 0.01"


def custom_job(write_job: JobWriter, response_path: str) -> Path:
    """A custom endpoint pointed at the simulator's HF text route, which answers ``[{"generated_text"}]``."""
    return write_job(
        rows=questions(ROWS),
        top='id_column = "id"',
        preset="custom",
        endpoint=f'url = "http://sim.test/models/gpt2"\nresponse_path = "{response_path}"',
        request='body = { inputs = "{{ question }}" }',
        limits=LIMITS,
    )


@pytest.mark.anyio
async def test_a_wrong_response_path_fails_each_row_once_and_keeps_the_answer(
    write_job: JobWriter, tmp_path: Path
) -> None:
    sim = create_app()
    job = custom_job(write_job, "[0].text")
    summary = await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.FAILED_ROWS
    assert sim.stats.total == ROWS  # one paid answer a row, not max_attempts of them
    manifest = read_manifest(tmp_path / "out").sort("row_index")
    assert set(manifest["status"]) == {"failed"} and set(manifest["error_kind"]) == {"permanent"}
    assert set(manifest["attempts"]) == {1} and set(manifest["http_status"]) == {200}
    assert all(e.startswith("nothing at [0].text in the answer: ") for e in manifest["error"])
    kept = [json.loads(text) for text in manifest["response_text"]]
    assert kept == [[{"generated_text": expected_generated_text("gpt2", f"what is {i}?", {})}] for i in range(ROWS)]

    again = await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert sim.stats.total == ROWS and again.ok + again.failed == 0  # not sent again, not paid again

    # the path fixed (the request keys are the same): --retry-failed sends them again, and they are ok
    job.write_text(job.read_text().replace("[0].text", "[0].generated_text"))
    fixed = await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), retry_failed=True, quiet=True)
    assert fixed.exit_code == ExitCode.OK and sim.stats.total == 2 * ROWS


@pytest.mark.anyio
async def test_a_chat_answer_without_choices_is_a_permanent_failure(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(FaultPlan(rate_wrong_shape=1.0))
    job = write_job(
        rows=questions(ROWS),
        top='id_column = "id"',
        endpoint='base_url = "http://sim.test"\nmodel = "m"\nstream = true',  # the server ignores the stream
        limits=LIMITS,
    )
    job.write_text(job.read_text() + "[sink]\nkeep_raw_response = true\n")
    summary = await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.FAILED_ROWS
    assert sim.stats.total == ROWS
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest["error_kind"]) == {"permanent"} and set(manifest["attempts"]) == {1}
    assert all(e.startswith("no choices[0].message in the answer") for e in manifest["error"])
    for text, raw in zip(manifest["response_text"], manifest["raw_response"], strict=True):
        assert raw == text and json.loads(raw)["choices"] == []  # short answers: the start is all of it


@pytest.mark.anyio
async def test_an_image_endpoint_answering_svg_fails_each_row_once(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    sim = create_app(FaultPlan(rate_wrong_shape=1.0))
    job = write_job(
        rows=[{"prompt": f"a cat, style {i}"} for i in range(ROWS)],
        preset="hf-text-to-image",
        endpoint='base_url = "http://sim.test"\nmodel = "some/diffusion"',
        request='inputs = "{{ prompt }}"\nparameters = { width = 32, height = 32 }',
        limits=LIMITS,
    )
    summary = await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.FAILED_ROWS
    assert sim.stats.total == ROWS
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest["error_kind"]) == {"permanent"} and set(manifest["attempts"]) == {1}
    assert all("image/svg+xml" in e for e in manifest["error"])
    assert all(t.startswith("<svg") for t in manifest["response_text"])
    assert not list((tmp_path / "out").glob("images/*/*"))


@pytest.mark.anyio
async def test_the_kept_answer_is_cut_and_never_holds_the_key(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TOKEN", "sk-secret-123")
    answer = {"object": "chat.completion", "note": "you sent sk-secret-123", "padding": "x" * 2000}
    endpoint.script = [httpx.Response(200, json=answer)]
    job = write_job(
        rows=questions(1),
        endpoint='base_url = "http://llm.test"\nmodel = "m"\napi_key_env = "TEST_TOKEN"',
        limits=LIMITS,
    )
    summary = await run_job(load_job(job), transport=endpoint.transport(), quiet=True)
    assert summary.exit_code == ExitCode.FAILED_ROWS and endpoint.count == 1
    row = read_manifest(tmp_path / "out").row(0, named=True)
    assert row["error_kind"] == "permanent"
    sent = json.dumps(answer, separators=(",", ":"))
    assert row["response_text"] == sent[:ANSWER_START_CHARS].replace("sk-secret-123", "***")
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert b"sk-secret-123" not in path.read_bytes()


@pytest.mark.anyio
async def test_broken_bodies_and_error_reports_are_still_retried(
    write_job: JobWriter, endpoint: ScriptedEndpoint, tmp_path: Path
) -> None:
    endpoint.script = [
        httpx.Response(200, text='{"choices": [{"mess', headers={"content-type": "application/json"}),
        httpx.Response(200, text="<html>502 from the proxy</html>", headers={"content-type": "text/html"}),
        httpx.Response(200, json={"error": {"message": "overloaded", "type": "server_error"}}),
        httpx.Response(200, json={"object": "error", "message": "try again"}),  # vLLM's error shape
    ]
    summary = await run_job(
        load_job(write_job(rows=questions(1), limits="concurrency = 1\nmax_retry_wait_s = 0.01")),
        transport=endpoint.transport(),
        quiet=True,
    )
    assert summary.exit_code == ExitCode.OK and endpoint.count == 5
    assert read_manifest(tmp_path / "out")["attempts"].to_list() == [5]


def test_which_200s_are_permanent() -> None:
    body = b'{"choices": []}'
    with pytest.raises(PermanentError) as caught:
        ChatAdapter(keep_raw=True).parse({}, body)
    assert (caught.value.http_status, caught.value.answer, caught.value.raw) == (200, body.decode(), body.decode())
    assert caught.value.reason == "no choices[0].message"
    with pytest.raises(RetryableError, match="reports an error"):
        ChatAdapter().parse({}, b'{"error": "model overloaded"}')
    with pytest.raises(PermanentError, match=r"nothing at \[0\].text"):
        CustomAdapter("[0].text").parse({}, b'[{"generated_text": "x"}]')
    with pytest.raises(RetryableError, match="invalid JSON"):
        CustomAdapter("[0].text").parse({}, b'[{"generated_te')

    png = render_image("x", width=8, height=8)
    raw = RawImageAdapter()
    with pytest.raises(PermanentError, match="image/svg"):
        raw.parse({"content-type": "image/svg+xml"}, b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    with pytest.raises(PermanentError, match="expected an image, got application/json"):
        raw.parse({"content-type": "application/json"}, b'[{"generated_text": "a cat"}]')
    with pytest.raises(RetryableError, match="not a valid image"):
        raw.parse({"content-type": "image/png"}, png[:-30])  # cut bytes
    with pytest.raises(RetryableError, match="expected an image, got text/html"):
        raw.parse({"content-type": "text/html"}, b"<html>gateway</html>")
    assert raw.parse({}, png).mime_type == "image/png"  # no content type: the bytes say what they are
    with pytest.raises(PermanentError, match="not valid base64"):
        OpenAIImageAdapter().parse({}, b'{"data": [{"b64_json": "not base64!"}]}')
