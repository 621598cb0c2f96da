"""The output folder, through the real entry point: the same job finds the same folder from any
current directory; a folder belongs to one job; plan and export need no API key; export writes
where it is told, lists and structs included. The simulator counts what was sent."""

from __future__ import annotations

import collections.abc
import json
from pathlib import Path

import polars as pl
import pytest
from helpers import questions, write_table

from batchrun.cli import main
from batchrun.simulator import Simulator, create_app, serve_in_thread


@pytest.fixture(scope="module")
def live() -> collections.abc.Iterator[tuple[Simulator, str]]:
    sim = create_app()
    with serve_in_thread(sim) as url:
        yield sim, url


def job_file(folder: Path, url: str, *, name: str = "t", output: str | None = None, extra: str = "") -> Path:
    """A chat job against the live simulator, its input table beside it; ``extra`` goes in [endpoint]."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "input.parquet").exists():
        write_table(folder / "input.parquet", questions(3))
    out = f'output = "{output}"\n' if output is not None else ""
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\ninput = "input.parquet"\n{out}'
        f'[endpoint]\npreset = "openai-compatible"\nbase_url = "{url}"\nmodel = "m"\n{extra}'
        '[request]\nprompt = "{{ question }}"\n'
    )
    return path


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("batchrun: error:")]
    assert len(err) == 1, err
    return err[0]


def test_the_same_job_from_two_folders_uses_one_output_folder(
    live: tuple[Simulator, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, url = live
    job = job_file(tmp_path / "project" / "jobs", url)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    before = sim.stats.total
    assert main(["run", "../project/jobs/t.toml"]) == 0
    assert sim.stats.total == before + 3
    out = tmp_path / "project" / "jobs" / "outputs" / "t"
    assert len(pl.read_parquet(out / "manifest")) == 3
    assert not (tmp_path / "elsewhere" / "outputs").exists()
    assert f"-> {out}:" in capsys.readouterr().err  # the start line names the folder

    monkeypatch.chdir(job.parent)  # as a cron line would, from another folder
    assert main(["run", "t.toml"]) == 0
    assert sim.stats.total == before + 3
    assert "nothing to do: 3/3 done" in capsys.readouterr().out
    assert main(["run", str(job), "--output", str(out)]) == 0  # --output is relative to the current folder
    assert sim.stats.total == before + 3


def test_results_in_the_old_default_folder_are_not_sent_again(
    live: tuple[Simulator, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``outputs/<name>`` used to be under the current folder: a job run that way stops, saying where."""
    sim, url = live
    job_file(tmp_path / "jobs", url)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "jobs/t.toml", "--output", "outputs/t"]) == 0
    before = sim.stats.total
    assert main(["run", "jobs/t.toml"]) == 2
    line = one_error(capsys)
    assert "outputs/t" in line and str(tmp_path / "jobs" / "outputs" / "t") in line
    assert sim.stats.total == before
    assert not (tmp_path / "jobs" / "outputs").exists()


def test_another_job_cannot_take_over_a_folder(
    live: tuple[Simulator, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, url = live
    shared = tmp_path / "shared"
    first = job_file(tmp_path / "a", url, name="nightly", output=str(shared))
    assert main(["run", str(first)]) == 0
    before = sim.stats.total
    other = job_file(tmp_path / "b", url, name="weekly", output=str(shared))
    for command in (["run", str(other)], ["plan", str(other)], ["export", str(other), "--to", "x.csv"]):
        assert main(command) == 2
        line = one_error(capsys)
        assert "belongs to the job 'nightly'" in line and str(first) in line, line
    assert sim.stats.total == before
    assert len(pl.read_parquet(shared / "manifest")) == 3

    # the same job (same name): edited, or a copy in another folder, keeps its folder
    copy = job_file(tmp_path / "c", url, name="nightly", output=str(shared), extra='headers = { X-Try = "2" }\n')
    assert main(["run", str(copy)]) == 0
    assert sim.stats.total == before  # the same requests: nothing to send
    copy.write_text(copy.read_text().replace('model = "m"', 'model = "m2"'))
    assert main(["run", str(copy)]) == 0
    assert sim.stats.total == before + 3
    assert json.loads((shared / ".batchrun-job").read_text()) == {"job": "nightly", "job_file": str(copy)}


def test_an_older_pointer_names_its_job_through_the_job_file(
    live: tuple[Simulator, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, url = live
    first = job_file(tmp_path / "a", url, name="nightly", output="../out")
    assert main(["run", str(first)]) == 0
    (tmp_path / "out" / ".batchrun-job").write_text(f"{first}\n")  # as written before the name was kept
    other = job_file(tmp_path / "b", url, name="weekly", output="../out")
    before = sim.stats.total
    assert main(["run", str(other)]) == 2
    assert "belongs to the job 'nightly'" in one_error(capsys)
    assert main(["run", str(first)]) == 0
    assert sim.stats.total == before


def test_plan_and_export_need_no_api_key_but_run_does(
    live: tuple[Simulator, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, url = live
    job = job_file(tmp_path, url, output="out", extra='api_key_env = "TEST_TOKEN"\n')
    monkeypatch.setenv("TEST_TOKEN", "sekrit")
    assert main(["run", str(job)]) == 0
    monkeypatch.delenv("TEST_TOKEN")
    before = sim.stats.total
    assert main(["plan", str(job)]) == 0
    assert "to do            0" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "out"), "--to", str(tmp_path / "r.parquet")]) == 0
    assert main(["export", str(job), "--to", str(tmp_path / "r.jsonl")]) == 0
    assert len(pl.read_parquet(tmp_path / "r.parquet")) == 3 and len(pl.read_ndjson(tmp_path / "r.jsonl")) == 3
    capsys.readouterr()
    assert main(["run", str(job)]) == 2
    assert "environment variable TEST_TOKEN is not set" in one_error(capsys)
    assert sim.stats.total == before


def test_export_makes_its_folder_and_writes_lists_and_structs_as_json_in_csv(
    live: tuple[Simulator, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = live
    rows = [
        {"id": "q0", "question": "what is 0?", "tags": ["a", "b"], "meta": {"lang": "en", "n": 1}},
        {"id": "q1", "question": "what is 1?", "tags": [], "meta": {"lang": "fr", "n": 2}},
        {"id": "q2", "question": "what is 2?", "tags": None, "meta": None},
    ]
    write_table(tmp_path / "input.parquet", rows)
    job = job_file(tmp_path, url, output="out")
    assert main(["run", str(job)]) == 0

    target = tmp_path / "missing" / "folder" / "x.csv"
    assert main(["export", str(tmp_path / "out"), "--to", str(target)]) == 0
    exported = pl.read_csv(target).sort("id")
    assert exported["tags"].to_list() == ['["a", "b"]', "[]", None]
    assert [json.loads(m) if m else None for m in exported["meta"]] == [
        {"lang": "en", "n": 1},
        {"lang": "fr", "n": 2},
        None,
    ]
    assert exported["response_text"].to_list() == [f"[m] answer to: what is {i}?" for i in range(3)]

    assert main(["export", str(tmp_path / "out"), "--to", str(tmp_path / "deep" / "x.jsonl")]) == 0
    native = pl.read_ndjson(tmp_path / "deep" / "x.jsonl").sort("id")
    assert native["tags"].to_list() == [["a", "b"], [], None]

    (tmp_path / "afile").write_text("")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "out"), "--to", str(tmp_path / "afile" / "x.csv")]) == 2
    assert f"cannot write {tmp_path / 'afile' / 'x.csv'}" in one_error(capsys)
