"""The Python API: a job as a dict or a file, run from plain code (``run``) or inside a running
event loop (``arun``), its results as a DataFrame, and errors raised rather than printed."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import JobWriter, questions, write_table

import batchrun
from batchrun.errors import ExitCode, SpecError
from batchrun.log import logger
from batchrun.simulator import create_app


def job_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "api",
        "input": "input.parquet",
        "id_column": "id",
        "output": "out",
        "endpoint": {"preset": "simulator"},
        "request": {"prompt": "{{ question }}"},
        "limits": {"concurrency": 4},
    }
    return {**data, **overrides}


def test_a_job_dict_runs_against_the_simulator_and_its_results_are_a_dataframe(tmp_path: Path) -> None:
    write_table(tmp_path / "input.parquet", questions(7))
    sim = create_app()
    job = batchrun.Job.from_dict(job_dict(), base_dir=tmp_path)
    assert job.output_dir == tmp_path / "out" and job.input == str(tmp_path / "input.parquet")

    summary = batchrun.run(job, transport=httpx.ASGITransport(app=sim))

    assert (summary.ok, summary.failed, summary.exit_code) == (7, 0, ExitCode.OK)
    assert (summary.rows, summary.requests, summary.http_requests) == (7, 7, 7)
    assert sim.stats.total == 7
    frame = summary.results()
    assert frame.height == 7
    assert {"id", "question", "request_key", "status", "response_text", "latency_ms"} <= set(frame.columns)
    assert frame.sort("id")["id"].to_list() == [f"q{i}" for i in range(7)]
    assert frame["status"].to_list() == ["ok"] * 7
    assert all("what is" in text for text in frame["response_text"].to_list())
    assert repr(summary) == "<Summary api: 7 ok, 0 failed, exit 0>"
    assert str(summary).endswith("exit 0: every request ok")
    assert (tmp_path / "out" / "last_run.json").is_file()  # `batchrun report` shows its exit status

    again = batchrun.run(job, transport=httpx.ASGITransport(app=sim))
    assert (again.ok, again.already_done, sim.stats.total) == (0, 7, 7)  # resumed: nothing sent


def test_a_job_file_path_runs_and_output_replaces_its_folder(write_job: JobWriter, tmp_path: Path) -> None:
    path = write_job(rows=questions(3), preset="simulator", endpoint="", top='id_column = "id"')
    sim = create_app()
    summary = batchrun.run(str(path), output=str(tmp_path / "elsewhere"), transport=httpx.ASGITransport(app=sim))
    assert (summary.ok, summary.output_dir, sim.stats.total) == (3, tmp_path / "elsewhere", 3)
    assert summary.results().height == 3


@pytest.mark.anyio
async def test_arun_runs_inside_a_running_event_loop(tmp_path: Path) -> None:
    write_table(tmp_path / "input.parquet", questions(5))
    sim = create_app()
    job = batchrun.Job.from_dict(job_dict(request={"prompt": "{{ question }}", "samples": 2}), base_dir=tmp_path)
    summary = await batchrun.arun(job, transport=httpx.ASGITransport(app=sim))
    assert (summary.ok, summary.requests, sim.stats.total) == (10, 10, 10)
    frame = summary.results()
    assert frame.height == 10 and sorted(set(frame["sample"].to_list())) == [0, 1]


@pytest.mark.anyio
async def test_run_inside_a_running_event_loop_is_refused_and_points_to_arun(tmp_path: Path) -> None:
    write_table(tmp_path / "input.parquet", questions(2))
    sim = create_app()
    job = batchrun.Job.from_dict(job_dict(), base_dir=tmp_path)
    with pytest.raises(RuntimeError, match=r"await batchrun\.arun"):
        batchrun.run(job, transport=httpx.ASGITransport(app=sim))
    assert sim.stats.total == 0 and not (tmp_path / "out").exists()


def test_run_refuses_from_a_coroutine_of_asyncio_too(tmp_path: Path) -> None:
    async def main() -> None:
        batchrun.run(batchrun.Job.from_dict(job_dict(), base_dir=tmp_path))

    with pytest.raises(RuntimeError, match="running event loop"):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("change", "toml"),
    [
        ({"limits": {"concurrency": 0}}, "[limits]\nconcurrency = 0\n"),
        ({"limitz": {}}, "[limitz]\n"),
        ({"endpoint": {"preset": "nope"}}, '[endpoint]\npreset = "nope"\n'),
    ],
)
def test_a_bad_field_in_a_dict_gives_the_same_error_as_in_a_job_file(
    tmp_path: Path, change: dict[str, Any], toml: str
) -> None:
    base = {k: v for k, v in job_dict().items() if k not in change and k not in ("limits", "endpoint", "request")}
    if "endpoint" not in change:
        base["endpoint"] = {"preset": "simulator"}
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in base.items() if not isinstance(v, dict)]
    lines += [
        f"[{k}]\n" + "".join(f'{a} = "{b}"\n' for a, b in v.items()) for k, v in base.items() if isinstance(v, dict)
    ]
    path = tmp_path / "job.toml"
    path.write_text("\n".join(lines) + "\n" + toml)
    with pytest.raises(SpecError) as from_file:
        batchrun.Job.from_file(path)
    with pytest.raises(SpecError) as from_dict:
        batchrun.Job.from_dict({**base, **change}, base_dir=tmp_path)
    assert (from_dict.value.field, from_dict.value.reason) == (from_file.value.field, from_file.value.reason)
    assert str(from_file.value) == f"{path}: {from_file.value.field}: {from_file.value.reason}"
    assert str(from_dict.value) == f"<job dict>: {from_file.value.field}: {from_file.value.reason}"
    assert "\n" not in str(from_dict.value)
    assert from_dict.value.exit_code == ExitCode.BAD_JOB


def test_errors_are_raised_with_their_exit_code_not_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = batchrun.Job.from_dict(job_dict(input="missing.csv"), base_dir=tmp_path)
    with pytest.raises(batchrun.InputError) as caught:
        batchrun.run(job, transport=httpx.ASGITransport(app=create_app()))
    assert caught.value.exit_code == ExitCode.BAD_JOB and "missing.csv" in str(caught.value)
    assert capsys.readouterr() == ("", "")


def test_progress_lines_when_asked_go_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logger, "handlers", [])  # as in a fresh process: no CLI test configured it
    monkeypatch.setattr(logger, "propagate", True)
    write_table(tmp_path / "input.parquet", questions(2))
    job = batchrun.Job.from_dict(job_dict(), base_dir=tmp_path)
    batchrun.run(job, progress="lines", transport=httpx.ASGITransport(app=create_app()))
    err = capsys.readouterr().err
    assert f"batchrun: run api -> {tmp_path / 'out'}: 2 rows, 2 requests to do" in err
    batchrun.run(job, transport=httpx.ASGITransport(app=create_app()))  # not a terminal: quiet
    assert capsys.readouterr() == ("", "")
    assert (logger.handlers, logger.propagate) == ([], True)  # the run's handler is gone


class ZMQInteractiveShell:  # the name a Jupyter kernel's shell has
    pass


@pytest.mark.parametrize(
    ("terminal", "notebook", "widgets", "asked", "shown"),
    [
        (True, False, False, None, "bar"),
        (False, False, False, None, None),  # cron, a pipe: quiet
        (False, True, True, None, "bar"),  # rich draws it in an ipywidgets output
        (False, True, False, None, "lines"),  # without ipywidgets rich would only warn
        (False, False, False, True, "lines"),
        (True, False, False, False, None),
        (False, False, False, "bar", "bar"),
    ],
)
def test_progress_shows_on_a_terminal_and_in_a_notebook_by_default(
    monkeypatch: pytest.MonkeyPatch, terminal: bool, notebook: bool, widgets: bool, asked: Any, shown: str | None
) -> None:
    from batchrun import api

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    shell = ZMQInteractiveShell() if notebook else None
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (object() if widgets else None) if name == "ipywidgets" else found(name, *a),
    )
    assert api._progress(asked) == shown
