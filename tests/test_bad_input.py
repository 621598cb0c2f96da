"""Bad input gets one clear line and exit 2, before anything is sent, and the output is untouched.
Secrets never reach a file or a log line; values from the input never make a path."""

from __future__ import annotations

import collections.abc
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import polars as pl
import pytest
from helpers import JobWriter, questions

from batchrun.cli import main
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, Simulator, create_app, serve_in_thread
from batchrun.spec import load_job


@pytest.fixture(scope="module")
def live() -> collections.abc.Iterator[tuple[Simulator, str]]:
    sim = create_app()
    with serve_in_thread(sim) as url:
        yield sim, url


def raw(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def assert_refused(
    job: Path, sim: Simulator, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2, one line saying what and where, no request at the simulator, no output folder."""
    before = sim.stats.total
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert err[0].startswith("batchrun: error:")
    assert sim.stats.total == before
    assert not (tmp_path / "out").exists()


CSV_CASES = {
    "missing input file": (None, "file not found"),
    "empty file": (b"", "cannot read input"),
    "header only": (b"id,question\n", "the table has no rows"),
    "ragged rows": (b"id,question\n1,a\n2,b,extra\n", "found more fields than defined"),
    "bad quoting": (b'id,question\n1,"unclosed\n2,b\n', "could not parse"),
    "not utf-8": ("id,question\n1,caf\xe9\n".encode("latin-1"), "is the file saved as UTF-8?"),
    "null prompt": (
        b"id,question\n1,a\n2,\n3,c\n",
        "1 rows have an empty prompt (column question; the first is row 1)",
    ),
    "empty prompt": (b'id,question\n1,a\n2,""\n', "set empty_prompts"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_tables(
    case: str, live: tuple[Simulator, str], write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, url = live
    data, expected = CSV_CASES[case]
    job = write_job(fmt="csv", endpoint=f'base_url = "{url}"\nmodel = "m"')
    if data is not None:
        raw(tmp_path / "input.csv", data)
    assert_refused(job, sim, expected, tmp_path, capsys)


def test_corrupt_parquet(
    live: tuple[Simulator, str], write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, url = live
    job = write_job(rows=questions(5), endpoint=f'base_url = "{url}"\nmodel = "m"')
    data = (tmp_path / "input.parquet").read_bytes()
    raw(tmp_path / "input.parquet", data[: len(data) // 2])
    assert_refused(job, sim, "cannot read input", tmp_path, capsys)


def _files(tmp_path: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)


TABLE_CASES: dict[str, tuple[str, dict[str, bytes], str]] = {
    "a folder of several kinds": (
        'input = "in"',
        {"in/a.csv": b"id,question\n1,a\n", "in/b.parquet": b"PAR1"},
        "input {tmp}/in is a directory with files of several kinds (.csv, .parquet): use {tmp}/in/*.csv",
    ),
    "an empty folder": ('input = "in"', {"in/.hidden.csv": b"id,question\n1,a\n"}, "the folder has no files"),
    "a broken JSONL record": (
        'input = "in.jsonl"',
        {"in.jsonl": b'{"id": 1, "question": "a"}\n\n{"id": 2, "question": "b}\n{"id": 3, "question": "c"}\n'},
        "cannot read input {tmp}/in.jsonl, line 3: ",
    ),
    "a duplicate key in a JSONL record": (
        'input = "in.jsonl"',
        {"in.jsonl": b'{"id": 1, "question": "a"}\n{"id": 2, "question": "b", "id": 3}\n'},
        "cannot read input {tmp}/in.jsonl, line 2: the key 'id' appears twice in one object",
    ),
    "a JSONL line that is not an object": (
        'input = "in.jsonl"',
        {"in.jsonl": b'{"id": 1, "question": "a"}\n[2, "b"]\n'},
        "cannot read input {tmp}/in.jsonl, line 2: a record is a JSON object, not an array",
    ),
    "two JSONL records on one line": (
        'input = "in.jsonl"',
        {"in.jsonl": b'{"id": 1, "question": "a"} {"id": 2, "question": "b"}\n'},
        "cannot read input {tmp}/in.jsonl, line 1: more after the record at column 28: ",
    ),
    "a JSONL number beyond a float": (
        'input = "in.jsonl"',
        {"in.jsonl": b'{"id": 1, "question": "a", "w": 1e400}\n'},
        "cannot read input {tmp}/in.jsonl, line 1: the number 1e400 is beyond the range of a float",
    ),
    "a JSONL NaN": (
        'input = "in.jsonl"',
        {"in.jsonl": b'{"id": 1, "question": "a"}\n\n{"id": 2, "question": "b", "w": NaN}\n'},
        "cannot read input {tmp}/in.jsonl, line 3: NaN is not a JSON value",
    ),
    "a glob with one file unlike the others": (
        'input = "in/*.csv"',
        {
            "in/a.csv": b"id,question\n1,a\n",
            "in/b.csv": b"id,questoin\n2,b\n",
            "in/c.csv": b"id,question\n3,c\n",
        },
        "input {tmp}/in/*.csv: {tmp}/in/b.csv has columns (id, questoin), unlike the other files (id, question)",
    ),
    "a cell that does not fit its declared type": (
        '[input]\npath = "in.csv"\nschema = { id = "int" }',
        {"in.csv": b"id,question\n1,a\n2,b\nthree,c\n"},
        "cannot read input {tmp}/in.csv, line 4: column 'id' is declared int in [input] schema: 'three' is not",
    ),
    "a schema naming no column": (
        '[input]\npath = "in.csv"\nschema = { idd = "int" }',
        {"in.csv": b"id,question\n1,a\n"},
        "[input] schema names column 'idd', which the table does not have (columns: id, question)",
    ),
    "a schema for a Parquet table": (
        '[input]\npath = "in.parquet"\nschema = { id = "int" }',
        {},
        "[input] schema is for CSV and TSV tables (this one is parquet)",
    ),
    "a damaged gzip file": (
        'input = "in.csv.gz"',
        {
            "in.csv.gz": gzip.compress(b"id,question\n" + b"".join(b"%d,q %d\n" % (i, i * i) for i in range(9000)))[
                :20_000
            ]
        },
        "cannot read input {tmp}/in.csv.gz: damaged compressed data",
    ),
    "a bad separator": ('[input]\npath = "in.csv"\nseparator = ";;"', {}, "input.separator: Value error, one"),
    "an unknown type": ('[input]\npath = "in.csv"\nschema = { id = "integer" }', {}, "input.schema.id: Input should"),
    "an input that is not a path": ("input = 3", {}, "input: Value error, a path, or a table"),
    "an unknown format": ('[input]\npath = "in.txt"\nformat = "xls"', {}, "input.format: Input should be"),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_tables_and_input_options(
    case: str, live: tuple[Simulator, str], write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, url = live
    input_lines, files, expected = TABLE_CASES[case]
    job = write_job(rows=questions(3), endpoint=f'base_url = "{url}"\nmodel = "m"')
    job.write_text(
        job.read_text().replace('input = "input.parquet"', "").replace("[endpoint]", input_lines + "\n[endpoint]")
    )
    (tmp_path / "input.parquet").rename(tmp_path / "in.parquet")
    _files(tmp_path, files)
    assert_refused(job, sim, expected.format(tmp=tmp_path), tmp_path, capsys)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"request": 'prompt = "{{ nope }}"'}, "uses column 'nope'"),
        ({"request": 'prompt = "{% if %}"'}, "syntax error"),
        ({"preset": "tgi-server"}, "unknown preset 'tgi-server'"),
        (
            {"endpoint": 'base_url = "http://x"\nmodel = "m"\napi_key_env = "NOT_SET_ANYWHERE"'},
            "NOT_SET_ANYWHERE is not set",
        ),
        ({"endpoint": 'base_url = "localhost:8080"\nmodel = "m"'}, "not an http(s) URL"),
        ({"limits": "concurrency = -3"}, "limits.concurrency"),
        ({"limits": "requests_per_minute = 0"}, "limits.requests_per_minute"),
        ({"limits": "timeout_s = 0"}, "limits.timeout_s"),
        ({"request": 'prompt = "{{ question }}"\nprompts = 2'}, "request.prompts: unknown field (a typo?)"),
        ({"top": "dedup = true"}, "dedup: unknown field (a typo?)"),
        ({"request": 'prompt = "{{ questoin }}"'}, "uses column 'questoin'"),
        ({"top": 'id_column = "nope"'}, "id_column 'nope' is not a column"),
        ({"preset": "hf-endpoint"}, "environment variable HF_TOKEN is not set"),
        ({"endpoint": 'base_url = "ftp://x"\nmodel = "m"'}, "not an http(s) URL"),
        ({"request": ""}, "exactly one of prompt or messages"),
        ({"limits": "concurrency = 0"}, "limits.concurrency: Input should be greater than or equal to 1"),
    ],
)
def test_bad_job_files(
    kwargs: dict[str, str],
    expected: str,
    live: tuple[Simulator, str],
    write_job: JobWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim, url = live
    kwargs.setdefault("endpoint", f'base_url = "{url}"\nmodel = "m"')
    job = write_job(rows=questions(3), **kwargs)
    assert_refused(job, sim, expected, tmp_path, capsys)


def test_empty_prompts_can_be_skipped_and_are_reported(
    live: tuple[Simulator, str], write_job: JobWriter, tmp_path: Path
) -> None:
    _, url = live
    job = write_job(
        fmt="csv", endpoint=f'base_url = "{url}"\nmodel = "m"', top='empty_prompts = "skip"\nid_column = "id"'
    )
    raw(tmp_path / "input.csv", b"id,question\n1,a\n2,\n3,c\n4,\n")
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(job), "-q"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 rows skipped (empty prompt)" in proc.stdout
    assert "row 1 skipped: empty prompt" in proc.stderr and "row 3 skipped" in proc.stderr
    manifest = pl.read_parquet(tmp_path / "out" / "manifest")
    assert sorted(manifest["row_id"]) == ["1", "3"]


def test_secrets_never_reach_files_or_logs(
    write_job: JobWriter, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    token = "hf_SECRET_abc123_never_print_me"
    sim = create_app(FaultPlan(require_token=token))

    def leaky(request: httpx.Request) -> httpx.Response:
        # a server that echoes the key back in an error body
        return httpx.Response(400, json={"error": {"message": f"bad request for key {token}"}})

    with serve_in_thread(sim) as url:
        job = write_job(
            rows=questions(30),
            preset="hf-endpoint",
            endpoint=f'base_url = "{url}"\nstream = true',
            top='id_column = "id"',
            limits="concurrency = 4",
        )
        env = {**os.environ, "HF_TOKEN": token}
        for args in (["--progress", "lines"], ["--log-format", "json"]):
            proc = subprocess.run(
                [sys.executable, "-m", "batchrun", "run", str(job), *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            assert token not in proc.stdout + proc.stderr
    assert sim.stats.total == 30 and all(sim.stats.auth_present)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", token)
        loaded = load_job(job)
    assert token not in repr(loaded) and token not in str(loaded.endpoint)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".toml":
            assert token.encode() not in path.read_bytes(), path
    out, err = capfd.readouterr()
    assert token not in out + err


def test_echoed_key_is_redacted_in_the_manifest(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "sk-echoed-SECRET-42"
    monkeypatch.setenv("OPENAI_API_KEY", token)

    def leaky(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {token}"
        return httpx.Response(400, json={"error": {"message": f"bad request for key {token}"}})

    import anyio

    job = load_job(write_job(rows=questions(2), preset="openai", endpoint='model = "gpt-x"'))
    summary = anyio.run(lambda: run_job(job, transport=httpx.MockTransport(leaky), quiet=True))
    assert summary.exit_code == 3
    manifest = pl.read_parquet(tmp_path / "out" / "manifest")
    assert manifest["error"].to_list() == ["HTTP 400: bad request for key ***"] * 2
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes()


def test_input_values_never_make_paths(write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "t")
    nasty = ["../../etc/x", "/etc/passwd", "a\x00b", "..", "C:\\windows\\x", "ok"]
    rows = [{"id": v, "prompt": f"p{i}"} for i, v in enumerate(nasty)]
    sim = create_app()
    job = write_job(
        rows=rows,
        preset="hf-text-to-image",
        endpoint='base_url = "http://sim"\nmodel = "sdxl"',
        request='inputs = "{{ prompt }}"\nparameters = { width = 8, height = 8 }',
        top='id_column = "id"',
    )
    import anyio

    before = {p for p in Path("/").glob("*")}
    summary = anyio.run(lambda: run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True))
    assert summary.exit_code == 0
    out = (tmp_path / "out").resolve()
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("job.toml", "input.parquet")]
    assert files and all(p.resolve().is_relative_to(out) for p in files)
    assert len(list(out.glob("images/*/*.png"))) == 6
    assert {p for p in Path("/").glob("*")} == before
    manifest = pl.read_parquet(out / "manifest")
    assert sorted(manifest["row_id"]) == sorted(nasty)
    assert json.loads(json.dumps(manifest["image_path"].to_list()))[0].startswith("images/")


def test_output_folder_that_cannot_be_made(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(rows=questions(3), endpoint='base_url = "http://127.0.0.1:9"\nmodel = "m"')
    assert main(["run", str(job), "--output", str(tmp_path / "input.parquet" / "out")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_full_disk_stops_cleanly_and_keeps_what_was_flushed(
    write_job: JobWriter,
    endpoint: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import errno

    from helpers import ScriptedEndpoint

    import batchrun.sink.writer as writer_module

    scripted = ScriptedEndpoint()
    real_write_part = writer_module.write_part
    calls = {"n": 0}

    def filling_disk(folder: Path, name: str, frame: pl.DataFrame) -> Path:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_part(folder, name, frame)

    monkeypatch.setattr(writer_module, "write_part", filling_disk)
    monkeypatch.setattr("batchrun.cli.run_job", _with_transport(scripted))
    job = write_job(rows=questions(100), top="[sink]\nflush_rows = 10", limits="concurrency = 1")
    assert main(["run", str(job), "-q"]) == 4
    err = capsys.readouterr().err
    assert "cannot write the manifest" in err and "the disk is full" in err
    kept = pl.read_parquet(tmp_path / "out" / "manifest")
    assert kept.height == 20 and set(kept["status"]) == {"ok"}
    assert not list((tmp_path / "out").rglob(".tmp-*"))

    # every answer the parts could not take is in the crash journal: none is bought again
    from batchrun.sink.manifest import scan_latest

    sent = scripted.count
    recorded = scan_latest(tmp_path / "out")
    assert recorded is not None and recorded.collect().height == sent > 20

    monkeypatch.setattr(writer_module, "write_part", real_write_part)
    assert main(["run", str(job), "-q"]) == 0
    assert pl.read_parquet(tmp_path / "out" / "manifest").height == 100
    assert scripted.count == 100


def _with_transport(endpoint: object) -> object:
    from batchrun import runner

    async def run(job: object, **kwargs: object) -> object:
        kwargs.pop("handle_signals", None)
        return await runner.run_job(job, transport=endpoint.transport(), **kwargs)  # type: ignore[arg-type, attr-defined]

    return run
