"""A job the endpoint can never answer stops after SAME_PERMANENT_FAILURES requests, not after paying
for every row: the same permanent failure that many times in a row, with no success yet, is fatal."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from helpers import JobWriter, questions, read_manifest

from batchrun.cli import main
from batchrun.dispatch.health import SAME_PERMANENT_FAILURES, EndpointHealth, failure_signature
from batchrun.endpoints.base import classify
from batchrun.errors import ExitCode, PermanentError
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, Trigger, create_app, serve_in_thread
from batchrun.spec import load_job

ROWS = 30
LIMITS = "concurrency = 1\nmax_attempts = 3\nmax_retry_wait_s = 0.01"


def prompt(i: int) -> str:
    return questions(1, start=i)[0]["question"]


def test_the_same_400_on_every_request_stops_the_job_through_the_cli(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = create_app(FaultPlan(triggers=[Trigger("", "400")]))  # every request: the same 400
    with serve_in_thread(sim) as url:
        job = write_job(
            rows=questions(ROWS), top='id_column = "id"', endpoint=f'base_url = "{url}"\nmodel = "m"', limits=LIMITS
        )
        assert main(["run", str(job), "-q"]) == ExitCode.INCOMPLETE
    assert sim.stats.total == SAME_PERMANENT_FAILURES
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert f"answered: {SAME_PERMANENT_FAILURES} requests in a row failed the same way" in lines[0]
    assert f"openai-compatible ({url}/v1/chat/completions)" in lines[0]
    assert "HTTP 400: Bad request (simulated)" in lines[0] and "exit 4" in lines[0]
    manifest = read_manifest(tmp_path / "out")  # the ones answered before the stop are kept
    assert manifest.height == SAME_PERMANENT_FAILURES - 1
    assert set(manifest["error_kind"]) == {"permanent"} and set(manifest["http_status"]) == {400}


@pytest.mark.anyio
async def test_a_wrong_response_path_stops_the_job(write_job: JobWriter) -> None:
    sim = create_app()
    job = write_job(
        rows=questions(ROWS),
        preset="custom",
        endpoint='url = "http://sim.test/models/gpt2"\nresponse_path = "[0].text"',
        request='body = { inputs = "{{ question }}" }',
        limits=LIMITS,
    )
    summary = await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert sim.stats.total == SAME_PERMANENT_FAILURES
    assert summary.fatal is not None and "failed the same way" in summary.fatal
    assert "nothing at [0].text in the answer: [{" in summary.fatal  # the cause, and an example answer


@pytest.mark.anyio
async def test_at_concurrency_the_stop_costs_at_most_the_requests_in_flight(write_job: JobWriter) -> None:
    sim = create_app(FaultPlan(triggers=[Trigger("", "400")]))
    job = write_job(rows=questions(200), endpoint='base_url = "http://sim.test"\nmodel = "m"', limits="concurrency = 8")
    summary = await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert SAME_PERMANENT_FAILURES <= sim.stats.total < SAME_PERMANENT_FAILURES + 8


@pytest.mark.anyio
async def test_after_a_success_permanent_failures_are_the_rows_own(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(FaultPlan(triggers=[Trigger(prompt(i), "400") for i in range(1, ROWS)]))
    job = write_job(
        rows=questions(ROWS),
        top='id_column = "id"',
        endpoint='base_url = "http://sim.test"\nmodel = "m"',
        limits=LIMITS,
    )
    summary = await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.FAILED_ROWS and summary.fatal is None
    assert sim.stats.total == ROWS
    manifest = read_manifest(tmp_path / "out")
    assert manifest.height == ROWS and (manifest["status"] == "failed").sum() == ROWS - 1


@pytest.mark.anyio
async def test_different_permanent_failures_do_not_stop_the_job(write_job: JobWriter, tmp_path: Path) -> None:
    """400s and answers without choices, alternating, no success: each row fails on its own."""
    kinds = ["400", "wrong_shape"]
    sim = create_app(FaultPlan(triggers=[Trigger(prompt(i), kinds[i % 2]) for i in range(ROWS)]))
    job = write_job(rows=questions(ROWS), endpoint='base_url = "http://sim.test"\nmodel = "m"', limits=LIMITS)
    summary = await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.FAILED_ROWS and summary.fatal is None
    assert sim.stats.total == ROWS
    assert set(read_manifest(tmp_path / "out")["error_kind"]) == {"permanent"}


def context_error(tokens: int) -> PermanentError:
    message = f"This model's maximum context length is 4096 tokens. However, you requested {tokens} tokens."
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    error = classify(400, {}, body.encode())
    assert isinstance(error, PermanentError)
    return error


def test_failures_that_differ_only_in_numbers_fail_the_same_way() -> None:
    assert failure_signature(context_error(5012)) == failure_signature(context_error(4100))
    assert failure_signature(context_error(5012)) != failure_signature(classify(422, {}, b'{"error": "x"}'))
    health = EndpointHealth()
    fatal = [health.failed(context_error(5000 + i)) for i in range(SAME_PERMANENT_FAILURES)]
    assert fatal[:-1] == [None] * (SAME_PERMANENT_FAILURES - 1)
    assert fatal[-1] is not None and "maximum context length" in fatal[-1].message


def test_a_success_or_another_failure_resets_the_count() -> None:
    health = EndpointHealth()
    for _ in range(SAME_PERMANENT_FAILURES - 1):
        assert health.failed(context_error(5000)) is None
    assert health.failed(classify(422, {}, b'{"error": "another"}')) is None  # a new streak of one
    for _ in range(SAME_PERMANENT_FAILURES - 2):
        assert health.failed(context_error(5000)) is None
    health.succeeded()
    for _ in range(3 * SAME_PERMANENT_FAILURES):
        assert health.failed(context_error(5000)) is None
