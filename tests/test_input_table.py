"""What the table says is what is sent: whole jobs over CSV, TSV and JSONL tables as people have them
(ids with leading zeros, decimals as written, ``;`` separators, gzip and zstd, a folder of files),
run against the simulator in-process, asserting on the exact bodies it received and the manifest."""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import zstandard
from helpers import read_manifest

from batchrun.errors import ExitCode
from batchrun.prepare import plan_job
from batchrun.runner import RunSummary, run_job
from batchrun.simulator import Simulator, create_app
from batchrun.spec import load_job

pytestmark = pytest.mark.anyio


class Recording(httpx.AsyncBaseTransport):
    """The simulator in-process, keeping the JSON body of every request it was sent."""

    def __init__(self, sim: Simulator) -> None:
        self.inner = httpx.ASGITransport(app=sim)
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        return await self.inner.handle_async_request(request)

    def sent(self, field: str = "content") -> list[Any]:
        """The user message (or ``field`` of it) of every chat request, in arrival order."""
        return [body["messages"][-1][field] for body in self.bodies]


def chat_job(tmp_path: Path, input_lines: str, *, request: str = 'prompt = "{{ q }}"') -> Path:
    """A chat job over the simulator; ``input_lines`` say where the input is (and how to read it)."""
    path = tmp_path / "job.toml"
    head = 'name = "t"\noutput = "out"\nid_column = "id"\n'
    endpoint = '[endpoint]\npreset = "openai-compatible"\nbase_url = "http://sim.test"\nmodel = "m"\n'
    path.write_text(f"{head}{input_lines}\n{endpoint}[request]\n{request}\n[limits]\nconcurrency = 4\n")
    return path


async def run(job: Path, transport: Recording) -> RunSummary:
    return await run_job(load_job(job), transport=transport, quiet=True)


async def test_csv_cells_are_sent_exactly_as_written_and_the_row_id_is_the_id_as_written(tmp_path: Path) -> None:
    (tmp_path / "input.csv").write_bytes(
        b'id,q,user\n007,1.10,00042\n008,3.00, padded \n009,1e3,"a, b"\n010,"",x\n011,,x\n'
    )
    job = chat_job(
        tmp_path,
        'input = "input.csv"\nempty_prompts = "skip"',
        request='prompt = "{{ q }}"\nparams = { user = "{{ user }}" }',
    )
    transport = Recording(create_app())
    summary = await run(job, transport)
    assert summary.exit_code == ExitCode.OK and summary.counts.skipped == 2  # "" and an empty cell
    assert sorted(zip(transport.sent(), [b["user"] for b in transport.bodies], strict=True)) == [
        ("1.10", "00042"),
        ("1e3", "a, b"),
        ("3.00", " padded "),
    ]
    manifest = read_manifest(tmp_path / "out")
    assert sorted(manifest["row_id"]) == ["007", "008", "009"]


async def test_an_appended_row_with_a_text_id_leaves_earlier_rows_done(tmp_path: Path) -> None:
    rows = [(i, f"{i}.50") for i in range(1, 6)]
    (tmp_path / "input.csv").write_text("id,q\n" + "".join(f"{i},{q}\n" for i, q in rows))
    job = chat_job(tmp_path, 'input = "input.csv"')
    transport = Recording(create_app())
    await run(job, transport)
    assert sorted(transport.sent()) == ["1.50", "2.50", "3.50", "4.50", "5.50"]

    with open(tmp_path / "input.csv", "a") as table:
        table.write("x6,six\n")
    counts, stale = await plan_job(load_job(job))
    assert (counts.done, counts.todo, stale) == (5, 1, 0)
    again = await run(job, transport)
    assert transport.sent()[5:] == ["six"] and (again.counts.done, again.ok) == (5, 1)
    assert sorted(read_manifest(tmp_path / "out")["row_id"]) == ["1", "2", "3", "4", "5", "x6"]


async def test_a_semicolon_csv_with_declared_types(tmp_path: Path) -> None:
    (tmp_path / "input.csv").write_text("id;q;n\n1;a, b;2\n2;c;3\n")
    job = chat_job(
        tmp_path,
        '[input]\npath = "input.csv"\nseparator = ";"\nschema = { n = "int" }',
        request='prompt = "{{ q }}"\nparams = { max_tokens = "{{ n }}" }',
    )
    transport = Recording(create_app())
    assert (await run(job, transport)).exit_code == ExitCode.OK
    assert sorted((b["messages"][-1]["content"], b["max_tokens"]) for b in transport.bodies) == [("a, b", 2), ("c", 3)]


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("input.csv.gz", gzip.compress),
        ("input.tsv.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
        ("input.jsonl.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
        ("input.jsonl.gz", gzip.compress),
    ],
)
async def test_compressed_tables_are_read_and_a_rerun_sends_nothing(tmp_path: Path, name: str, compress: Any) -> None:
    frame = pl.DataFrame({"id": [f"{i:03d}" for i in range(300)], "q": [f"question {i}.10" for i in range(300)]})
    if ".jsonl" in name:
        data = frame.write_ndjson().encode()
    else:
        data = frame.write_csv(separator="\t" if ".tsv" in name else ",").encode()
    # two frames/members, as pzstd and concatenated gzip files have them
    half = data.index(b"\n", len(data) // 2) + 1
    (tmp_path / name).write_bytes(compress(data[:half]) + compress(data[half:]))
    job = chat_job(tmp_path, f'input = "{name}"')
    transport = Recording(create_app())
    assert (await run(job, transport)).exit_code == ExitCode.OK
    assert sorted(transport.sent()) == sorted(frame["q"])
    assert sorted(read_manifest(tmp_path / "out")["row_id"]) == list(frame["id"])
    again = await run(job, transport)
    assert len(transport.bodies) == 300 and again.line().startswith("nothing to do: 300/300 done")


async def test_a_folder_of_parquet_files_is_one_table(tmp_path: Path) -> None:
    folder = tmp_path / "prompts"
    folder.mkdir()
    for part, ids in (("part-1.parquet", [3, 4]), ("part-0.parquet", [1, 2])):
        pl.DataFrame({"id": ids, "q": [f"q{i}" for i in ids]}).write_parquet(folder / part)
    (folder / "_SUCCESS").write_text("")  # what Spark leaves behind is not a table
    job = chat_job(tmp_path, 'input = "prompts"')
    transport = Recording(create_app())
    assert (await run(job, transport)).exit_code == ExitCode.OK
    assert sorted(transport.sent()) == ["q1", "q2", "q3", "q4"]
    assert read_manifest(tmp_path / "out").sort("row_index")["row_id"].to_list() == ["1", "2", "3", "4"]


async def test_format_names_the_kind_of_a_file_whose_name_does_not(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text('{"id": 7, "q": "hello"}\n')
    job = chat_job(tmp_path, '[input]\npath = "prompts.txt"\nformat = "jsonl"')
    transport = Recording(create_app())
    assert (await run(job, transport)).exit_code == ExitCode.OK
    assert transport.sent() == ["hello"] and read_manifest(tmp_path / "out")["row_id"].to_list() == ["7"]


async def test_a_text_seed_column_gives_integer_seeds_per_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    (tmp_path / "input.csv").write_text("id,prompt,seed,steps\n007,a cat,42,4\n")
    path = tmp_path / "job.toml"
    path.write_text(
        textwrap.dedent(
            """
            name = "t"
            output = "out"
            id_column = "id"
            [input]
            path = "input.csv"
            schema = { steps = "int" }
            [endpoint]
            preset = "hf-text-to-image"
            base_url = "http://sim.test/"
            model = "m"
            [request]
            inputs = "{{ prompt }}"
            parameters = { width = 16, height = 16, seed = "{{ seed }}", num_inference_steps = "{{ steps }}" }
            samples = 2
            """
        )
    )
    transport = Recording(create_app())
    assert (await run(path, transport)).exit_code == ExitCode.OK
    sent = sorted((b["parameters"]["seed"], b["parameters"]["num_inference_steps"]) for b in transport.bodies)
    assert sent == [(42, 4), (43, 4)]  # the seed is made an integer by the planner; other numbers by the schema
    manifest = read_manifest(tmp_path / "out")
    assert sorted(manifest["seed"]) == [42, 43] and set(manifest["row_id"]) == {"007"}


def test_the_plan_index_is_rebuilt_when_the_input_options_change(tmp_path: Path) -> None:
    from batchrun.plan.keyindex import fingerprint

    (tmp_path / "input.csv").write_text("id;q\n1;a\n")
    prints = set()
    for options in ('separator = ";"', 'separator = ";"\nschema = { id = "int" }', 'separator = ";"\nformat = "csv"'):
        prints.add(fingerprint(load_job(chat_job(tmp_path, f'[input]\npath = "input.csv"\n{options}'))))
    assert len(prints) == 3
