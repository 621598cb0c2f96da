"""Secrets stay secret: the API key, a header from ``headers_env`` and the proxy's password are in
no output, log, manifest or error, even when the server echoes the request's headers back in its
error pages (500s retried to exhaustion, then a 401 that stops the run). Through the CLI."""

from __future__ import annotations

import base64
import collections.abc
import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import pytest
from helpers import JobWriter, chat_reply, questions, read_manifest, write_table

from batchrun.cli import main
from batchrun.dispatch.redact import redact
from batchrun.errors import ExitCode
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, Trigger, create_app, serve_in_thread
from batchrun.spec import load_job

TOKEN = "sk-live-token-8d2e61"
HEADER_SECRET = "hdr-secret-5b7c90"
PROXY_PASSWORD = "proxy-pass-3a9f17"


class EchoHeaders:
    """An ASGI wrapper that makes a careless server: every error page repeats the request's headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # the server's hooks (attach_killer) are the simulator's
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        start: dict[str, Any] = {}

        async def echoing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start.update(message)
                return
            if start and message["type"] == "http.response.body":
                body = orjson.dumps({"error": {"message": f"refused; you sent {json.dumps(sent)}"}})
                headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        return await self.app(scope, receive, echoing)


@pytest.fixture(scope="module")
def echoing() -> collections.abc.Iterator[tuple[Any, str]]:
    sim = create_app(FaultPlan(triggers=[Trigger("boom", "500")]))
    with serve_in_thread(EchoHeaders(sim)) as url:  # type: ignore[arg-type]
        yield sim, url


def test_no_secret_in_any_output_log_or_manifest_after_errors_that_echo_them(
    echoing: tuple[Any, str],
    write_job: JobWriter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim, url = echoing
    monkeypatch.setenv("TEST_TOKEN", TOKEN)
    monkeypatch.setenv("MY_KEY_VAR", HEADER_SECRET)
    port = url.rsplit(":", 1)[1]
    # the simulator is its own proxy: uvicorn serves the absolute-form request a proxy is sent
    proxy = f"http://puser:{PROXY_PASSWORD}@127.0.0.1:{port}"
    rows = questions(6)
    rows[2]["question"] = rows[4]["question"] = "boom"
    endpoint = (
        f'base_url = "http://llm.test:{port}"\nmodel = "m"\napi_key_env = "TEST_TOKEN"\n'
        f'headers_env = {{ "X-Api-Key" = "MY_KEY_VAR" }}\nproxy = "{proxy}"'
    )
    path = write_job(
        rows=rows,
        top='id_column = "id"',
        endpoint=endpoint,
        limits="concurrency = 2\nmax_attempts = 2\nmax_retry_wait_s = 0.05",
    )
    text = path.read_text() + "\n[sink]\nkeep_raw_response = true\nkeep_request = true\n"
    path.write_text(text)
    before = sim.stats.total

    assert main(["run", str(path), "--log-format", "json"]) == ExitCode.FAILED_ROWS
    assert sim.stats.total - before == 4 + 2 * 2  # the 500s were retried once each
    failed = read_manifest(tmp_path / "out").filter(pl.col("status") == "failed")
    assert failed.height == 2
    # the server did echo them: the error text holds the headers, with the secrets blanked out
    for error in failed["error"].to_list():
        assert "Bearer ***" in error and '"x-api-key": "***"' in error, error

    sim.plan.require_token = "another-token"  # now a 401, echoing too: the run stops
    rows.append({"id": "q6", "question": "one more"})
    write_table(tmp_path / "input.parquet", rows)
    assert main(["run", str(path), "--log-format", "json"]) == ExitCode.INCOMPLETE
    sim.plan.require_token = None
    captured = capsys.readouterr()
    assert "401" in captured.out + captured.err and "***" in captured.out + captured.err

    job = load_job(path)
    outputs = [captured.out, captured.err, repr(job), str(job.endpoint)]
    outputs += [p.read_bytes().decode("latin-1") for p in (tmp_path / "out").rglob("*") if p.is_file()]
    basic = basic_of("puser", PROXY_PASSWORD)  # as the proxy header holds it
    for secret in (TOKEN, HEADER_SECRET, PROXY_PASSWORD, basic):
        assert not [o[:200] for o in outputs if secret in o], secret


def test_a_secret_cut_by_an_error_excerpt_is_not_left_half_shown() -> None:
    secrets = [TOKEN, basic_of("puser", PROXY_PASSWORD)]
    assert redact(f"you sent Bearer {TOKEN[:9]}", secrets) == "you sent Bearer ***"
    assert redact(f"Basic {secrets[1][:12]}", secrets) == "Basic ***"
    assert redact(f"{TOKEN} and {TOKEN}", secrets) == "*** and ***"
    assert redact("ends in sk-", secrets) == "ends in sk-"  # three characters are no secret yet


def basic_of(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_headers_env_variable_unset_is_exit_2_for_run_and_fine_for_plan(
    write_job: JobWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = 'base_url = "http://llm.test"\nmodel = "m"\nheaders_env = { "X-Api-Key" = "MY_KEY_VAR" }'
    path = write_job(rows=questions(2), endpoint=endpoint)
    assert main(["plan", str(path)]) == 0
    assert main(["run", str(path)]) == ExitCode.BAD_JOB
    err = capsys.readouterr().err
    assert "endpoint.headers_env.X-Api-Key" in err and "MY_KEY_VAR is not set" in err


@pytest.mark.anyio
async def test_an_ok_answer_that_repeats_the_token_keeps_it_blanked(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TOKEN", TOKEN)

    def handler(request: httpx.Request) -> httpx.Response:  # a server that tells what it got
        return httpx.Response(200, json=chat_reply(f"you said {request.headers['authorization']}"))

    path = write_job(
        rows=questions(3), endpoint='base_url = "http://llm.test"\nmodel = "m"\napi_key_env = "TEST_TOKEN"'
    )
    path.write_text(path.read_text() + "\n[sink]\nkeep_raw_response = true\n")
    summary = await run_job(load_job(path), transport=httpx.MockTransport(handler), quiet=True)
    assert summary.ok == 3
    manifest = read_manifest(tmp_path / "out")
    assert manifest["response_text"].to_list() == ["you said Bearer ***"] * 3
    assert all(TOKEN not in raw and "Bearer ***" in raw for raw in manifest["raw_response"].to_list())
