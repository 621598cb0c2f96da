"""OpenAI batch files in and out: a file made for the Batch API runs unchanged (each line's body is
sent as written, its custom_id is the row id) and ``export --format openai-batch`` writes the Batch
API's output lines, in input order, whose bodies the official SDK reads. The simulator in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import read_manifest
from openai.types.chat import ChatCompletion

from batchrun.cli import main
from batchrun.errors import ExitCode, InputError, SpecError
from batchrun.plan.batchfile import output_line
from batchrun.runner import run_job
from batchrun.simulator import Simulator, create_app
from batchrun.spec import load_job

pytestmark = pytest.mark.anyio

LINES: list[dict[str, Any]] = [
    {
        "custom_id": "request-2",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world!"}],
            "max_tokens": 1000,
        },
    },
    {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": " 007 "}], "temperature": 1.0},
    },
    {
        "custom_id": "007",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "other", "messages": [{"role": "user", "content": "x"}], "seed": 12345678901234567890},
    },
]


class Recording(httpx.AsyncBaseTransport):
    """The simulator in-process, keeping the raw body of every request it was sent."""

    def __init__(self, sim: Simulator) -> None:
        self.inner = httpx.ASGITransport(app=sim)
        self.sent: list[tuple[str, bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.url.path, request.content))
        return await self.inner.handle_async_request(request)


def batch_job(tmp_path: Path, lines: list[dict[str, Any]], extra: str = "") -> Path:
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    path = tmp_path / "job.toml"
    path.write_text(
        'name = "t"\noutput = "out"\n[input]\npath = "requests.jsonl"\nformat = "openai-batch"\n'
        f'[endpoint]\npreset = "openai-compatible"\nbase_url = "http://sim.test"\n{extra}'
    )
    return path


async def test_a_batch_file_runs_unchanged_and_exports_what_the_sdk_reads(tmp_path: Path) -> None:
    job = batch_job(tmp_path, LINES)
    transport = Recording(create_app())
    assert (await run_job(load_job(job), transport=transport, quiet=True)).exit_code == ExitCode.OK
    assert [path for path, _ in transport.sent] == ["/v1/chat/completions"] * 3
    sent = sorted((json.loads(body) for _, body in transport.sent), key=lambda b: b["messages"][-1]["content"])
    assert sent == sorted((line["body"] for line in LINES), key=lambda b: b["messages"][-1]["content"])
    bodies = b"".join(body for _, body in transport.sent)
    assert b'"temperature":1.0' in bodies and b"12345678901234567890" in bodies  # the values, not a reading
    manifest = read_manifest(tmp_path / "out")
    assert sorted(zip(manifest["row_id"], manifest["model"], strict=True)) == [
        ("007", "other"),
        ("request-1", "gpt-4o-mini"),
        ("request-2", "gpt-4o-mini"),
    ]

    results = tmp_path / "results.jsonl"
    assert main(["export", str(tmp_path / "out"), "--format", "openai-batch", "--to", str(results)]) == 0
    out = [json.loads(line) for line in results.read_text().splitlines()]
    assert [line["custom_id"] for line in out] == ["request-2", "request-1", "007"]  # input order
    assert all(set(line) == {"id", "custom_id", "response", "error"} for line in out)
    assert all(line["id"].startswith("batch_req_") and line["error"] is None for line in out)
    assert len({line["id"] for line in out}) == 3
    for line in out:
        assert line["response"]["status_code"] == 200 and isinstance(line["response"]["request_id"], str)
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content


async def test_a_line_for_another_route_stops_the_run_before_anything_is_sent(tmp_path: Path) -> None:
    lines = [LINES[0], {**LINES[1], "url": "/v1/embeddings"}]
    transport = Recording(create_app())
    with pytest.raises(InputError, match=r"requests.jsonl, line 2: url \"/v1/embeddings\" is not the endpoint's route"):
        await run_job(load_job(batch_job(tmp_path, lines)), transport=transport, quiet=True)
    assert transport.sent == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({**LINES[1], "body": {"messages": []}}, "the body names no model"),
        ({**LINES[1], "body": {**LINES[1]["body"], "stream": True}}, "the body asks for a stream"),
        ({**LINES[1], "custom_id": 7}, "custom_id is 7, not text"),
        (
            {"custom_id": "x", "url": "/v1/chat/completions", "body": {}},
            "an openai-batch line needs custom_id, method, url, body (no method)",
        ),
    ],
)
async def test_a_line_that_cannot_be_sent_as_written_is_named(
    tmp_path: Path, line: dict[str, Any], reason: str
) -> None:
    transport = Recording(create_app())
    with pytest.raises(InputError, match=r"requests.jsonl, line 3: " + re.escape(reason)):
        await run_job(load_job(batch_job(tmp_path, [LINES[0], LINES[2], line])), transport=transport, quiet=True)
    assert transport.sent == []


def test_the_cli_names_the_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = batch_job(tmp_path, [LINES[0], {**LINES[1], "method": "GET"}])
    assert main(["run", str(job)]) == ExitCode.BAD_JOB
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'requests.jsonl, line 2: method "GET"' in err[0]
    assert not (tmp_path / "out" / "manifest").exists()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('[request]\nprompt = "{{ q }}"\n', "request.prompt"),
        ("stream = true\n", "endpoint.stream"),
    ],
)
def test_a_batch_job_takes_its_requests_from_the_file(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_job(batch_job(tmp_path, LINES, extra), needs_key=False)
    assert caught.value.field == field


def test_several_endpoints_add_no_params_to_a_batch_body(tmp_path: Path) -> None:
    job = batch_job(tmp_path, LINES)
    text = job.read_text().split("[endpoint]")[0]
    entry = '[[endpoints]]\nname = "{}"\npreset = "openai-compatible"\nbase_url = "http://{}.test"\n'
    job.write_text(text + entry.format("a", "a") + entry.format("b", "b") + "params = { temperature = 0 }\n")
    with pytest.raises(SpecError) as caught:
        load_job(job, needs_key=False)
    assert caught.value.field == "endpoints[1].params"


async def test_a_batch_file_is_known_by_its_first_line(tmp_path: Path) -> None:
    job = batch_job(tmp_path, LINES[:2])
    job.write_text(job.read_text().replace('format = "openai-batch"\n', ""))
    assert load_job(job, needs_key=False).batch_input
    transport = Recording(create_app())
    assert (await run_job(load_job(job), transport=transport, quiet=True)).exit_code == ExitCode.OK
    assert sorted(json.loads(body)["messages"][-1]["content"] for _, body in transport.sent) == [
        " 007 ",
        "Hello world!",
    ]


def test_a_jsonl_table_with_a_prompt_is_not_a_batch_file(tmp_path: Path) -> None:
    job = batch_job(tmp_path, LINES, 'model = "m"\n[request]\nprompt = "{{ custom_id }}"\n')
    job.write_text(job.read_text().replace('format = "openai-batch"\n', ""))
    assert not load_job(job, needs_key=False).batch_input


def test_a_failed_request_has_no_response_and_an_error() -> None:
    line = output_line("r1", "ab" * 32, "failed", 400, "permanent", "bad request: max_tokens", None)
    assert line == {
        "id": "batch_req_" + "ab" * 16,
        "custom_id": "r1",
        "response": None,
        "error": {"code": "permanent_400", "message": "bad request: max_tokens"},
    }
    assert output_line("r2", "cd" * 32, None, None, None, None, None)["error"]["code"] == "not_run"
