"""JSONL values are sent exactly as JSON gives them, record by record: an int stays an int beside a
float in the same column, ``1.0`` stays a float, text stays text, objects and arrays stay whole, and
a row appended with another type changes nothing about the rows before it. Whole jobs against the
simulator in-process, asserting on the exact bytes it received."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest
from helpers import read_manifest

from batchrun.cli import main
from batchrun.errors import ExitCode, InputError
from batchrun.plan.reader import Table
from batchrun.prepare import plan_job
from batchrun.runner import RunSummary, run_job
from batchrun.simulator import Simulator, create_app
from batchrun.spec import load_job

pytestmark = pytest.mark.anyio

RECORDS = [
    b'{"id": 1, "q": "int", "n": 1}',
    b'{"id": 2, "q": "float", "n": 1.5}',
    b'{"id": 3, "q": "text", "n": "x"}',
    b'{"id": 4, "q": "whole float", "n": 1.0}',
    b'{"id": 5, "q": "object", "n": {"k": [1, null, true], "t": "007"}}',
    b'{"id": 6, "q": "big int", "n": 123456789012345678901234567890}',
    b'{"id": 7, "q": "array", "n": [2, 2.5, "y", {}]}',
    b'{"id": 8, "q": "missing"}',
]


class RawRecording(httpx.AsyncBaseTransport):
    """The simulator in-process, keeping the raw body of every request it was sent."""

    def __init__(self, sim: Simulator) -> None:
        self.inner = httpx.ASGITransport(app=sim)
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.content)
        return await self.inner.handle_async_request(request)

    def fields(self, name: str) -> dict[str, Any]:
        """``name`` of each chat request's body, by its user message, as JSON text (1 and 1.0 differ)."""
        sent = {}
        for raw in self.bodies:
            body = json.loads(raw)
            value = body.get(name, "<absent>")
            sent[body["messages"][-1]["content"]] = value if value == "<absent>" else json.dumps(value)
        return sent


def chat_job(tmp_path: Path, request: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(
        'name = "t"\noutput = "out"\nid_column = "id"\ninput = "input.jsonl"\n'
        '[endpoint]\npreset = "openai-compatible"\nbase_url = "http://sim.test"\nmodel = "m"\n'
        f"[request]\n{request}\n[limits]\nconcurrency = 4\n"
    )
    return path


async def run(job: Path, transport: RawRecording) -> RunSummary:
    return await run_job(load_job(job), transport=transport, quiet=True)


async def test_each_value_is_sent_with_its_own_json_type(tmp_path: Path) -> None:
    (tmp_path / "input.jsonl").write_bytes(b"\n".join(RECORDS) + b"\n")
    job = chat_job(tmp_path, 'prompt = "{{ q }}"\nparams = { user = "{{ n }}", note = "n={{ n }}" }')
    transport = RawRecording(create_app())
    assert (await run(job, transport)).exit_code == ExitCode.OK
    assert transport.fields("user") == {
        "int": "1",
        "float": "1.5",
        "text": '"x"',
        "whole float": "1.0",
        "object": '{"k": [1, null, true], "t": "007"}',
        "big int": "123456789012345678901234567890",
        "array": '[2, 2.5, "y", {}]',
        "missing": "null",
    }
    assert transport.fields("note")["whole float"] == '"n=1.0"' and transport.fields("note")["int"] == '"n=1"'
    assert b'"user":1.0' in next(b for b in transport.bodies if b'"whole float"' in b)  # the bytes, not a reading
    assert sorted(read_manifest(tmp_path / "out")["row_id"]) == [str(i) for i in range(1, 9)]


async def test_a_custom_body_gets_the_values_and_the_row_as_json_gives_them(tmp_path: Path) -> None:
    (tmp_path / "input.jsonl").write_bytes(b"\n".join(RECORDS[:5]) + b"\n")
    path = tmp_path / "job.toml"
    path.write_text(
        'name = "t"\noutput = "out"\nid_column = "id"\ninput = "input.jsonl"\n'
        '[endpoint]\npreset = "custom"\nurl = "http://sim.test/v1/chat/completions"\n'
        'response_path = "choices[0].message.content"\n'
        '[request]\nbody = { model = "m", messages = [{ role = "user", content = "{{ q }}" }], value = "{{ n }}" }\n'
    )
    transport = RawRecording(create_app())
    assert (await run(path, transport)).exit_code == ExitCode.OK
    sent = {json.loads(b)["messages"][0]["content"]: json.loads(b)["value"] for b in transport.bodies}
    objects = {"object": {"k": [1, None, True], "t": "007"}}
    assert sent == {"int": 1, "float": 1.5, "text": "x", "whole float": 1.0, **objects}
    assert type(sent["int"]) is int and type(sent["whole float"]) is float


async def test_an_appended_row_of_another_type_leaves_earlier_rows_done(tmp_path: Path) -> None:
    table = tmp_path / "input.jsonl"
    table.write_bytes(b"".join(b'{"id": %d, "q": "q%d", "n": %d}\n' % (i, i, i) for i in range(1, 6)))
    job = chat_job(tmp_path, 'prompt = "{{ q }}"\nparams = { user = "{{ n }}" }')
    transport = RawRecording(create_app())
    assert (await run(job, transport)).exit_code == ExitCode.OK
    assert transport.fields("user") == {f"q{i}": str(i) for i in range(1, 6)}

    with open(table, "ab") as file:  # a float where there were ints, and a key no row had
        file.write(b'{"id": "x6", "q": "six", "n": 6.0, "meta": {"a": [1]}}\n')
    counts, stale = await plan_job(load_job(job))
    assert (counts.done, counts.todo, stale) == (5, 1, 0)
    again = await run(job, transport)
    assert (again.counts.done, again.ok) == (5, 1) and len(transport.bodies) == 6
    assert transport.fields("user")["six"] == "6.0"
    assert sorted(read_manifest(tmp_path / "out")["row_id"]) == ["1", "2", "3", "4", "5", "x6"]


def test_columns_are_the_keys_of_the_first_records_and_a_missing_key_is_null(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"b": 1}\n\n{"a": "x", "b": 2}\n' + b'{"b": 3}\n' * 10_000 + b'{"late": true, "b": 4}\n')
    table = Table(str(path), block_bytes=4096)
    assert table.columns == ["b", "a"]
    rows = [row for frame in table.frames(4096) for row in frame.to_dicts()]
    assert len(rows) == 10_003 and rows[:2] == [{"b": 1, "a": None}, {"b": 2, "a": "x"}]
    assert rows[-1] == {"b": 4, "a": None}  # a key first seen after the first 10,000 records is no column


def test_empty_prompts_are_found_in_jsonl_values(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = ['{"q": "a"}', '{"q": ""}', '{"q": "  "}', "{}", '{"q": null}', '{"q": 0}', '{"q": false}', '{"q": []}']
    lines += ['{"q": [""]}', '{"q": {"k": null}}', '{"q": 1}', '{"q": true}', '{"q": ["x"]}', '{"q": {"k": "v"}}']
    path.write_text("\n".join(lines) + "\n")
    stats = Table(str(path)).inspect(["q"])  # without a renderer, every candidate counts
    assert (stats.rows, stats.empty_prompts, stats.first_empty) == (14, 9, 1)


def test_a_bad_record_past_the_first_block_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [b'{"id": %d, "q": "question %d"}' % (i, i) for i in range(20_000)]
    lines[15_000] = b'{"id": 15000, "q": "a", "q": "b"}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    table = Table(str(path), block_bytes=4096)  # the columns come from the first 10,000 records
    message = f"cannot read input {path}, line 15001: the key 'q' appears twice in one object"
    with pytest.raises(InputError, match=message):
        table.inspect(["q"])
    with pytest.raises(InputError, match=message):
        list(table.frames(2048))


def test_export_of_mixed_values_keeps_each_as_written(tmp_path: Path) -> None:
    (tmp_path / "input.jsonl").write_bytes(b"\n".join(RECORDS) + b"\n")
    job = chat_job(tmp_path, 'prompt = "{{ q }}"')
    transport = RawRecording(create_app())
    assert anyio.run(run, job, transport).exit_code == ExitCode.OK
    assert main(["export", str(tmp_path / "out"), "--to", str(tmp_path / "r.parquet")]) == 0
    exported = pl.read_parquet(tmp_path / "r.parquet").sort("id")
    assert exported["id"].to_list() == list(range(1, 9))  # one type for all: kept
    assert exported["n"].to_list() == [
        "1",
        "1.5",
        "x",
        "1.0",
        '{"k": [1, null, true], "t": "007"}',
        "123456789012345678901234567890",
        '[2, 2.5, "y", {}]',
        None,
    ]


async def test_an_int_beside_a_float_is_sent_as_an_int(tmp_path: Path) -> None:
    (tmp_path / "input.jsonl").write_bytes(
        b'{"id": 1, "q": "one word please", "n": 1}\n{"id": 2, "q": "b", "n": 1.5}\n'
    )
    job = chat_job(tmp_path, 'prompt = "{{ q }}"\nparams = { max_tokens = "{{ n }}" }')
    transport = RawRecording(create_app())
    await run(job, transport)
    assert transport.fields("max_tokens") == {"one word please": "1", "b": "1.5"}
    manifest = read_manifest(tmp_path / "out").sort("row_id")
    assert manifest["status"].to_list()[0] == "ok" and manifest["finish_reason"].to_list()[0] == "length"
