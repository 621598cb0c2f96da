"""Errors are judged by phase: before the first request a bad template is exit 2 and one line;
after it, a row that does not render is that row's permanent failure (kept, not sent) and the run
goes on; anything unexpected stops the run the graceful way (flushed, unlocked, exit 4, one line,
the traceback only with --debug). Through the real CLI entry point."""

from __future__ import annotations

import collections.abc
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import JobWriter, read_manifest

from batchrun.cli import main
from batchrun.dispatch.call import Caller
from batchrun.errors import ExitCode
from batchrun.models import Request, Result
from batchrun.simulator import Simulator, create_app, serve_in_thread

ROWS = 60
BAD_ROW = 51

# (what the prompt template does, the column value that breaks it, a word of the reason)
FAILING = [
    ("{{ question }} / {{ 10 / x }}", 0, "ZeroDivisionError"),
    ("{{ question }} {{ x.upper(1, 2, 3) }}", "text", "TypeError"),
    ("{{ question }} {{ x['k'] }}", "text", "template request"),
    ("{{ question }} {{ [1, 2, 3][x] }}", 7, "template request"),
    ("{{ question }} {{ range(x) | list }}", "text", "TypeError"),
]


def rows(bad_at: int, bad_value: Any, good_value: Any = 2) -> list[dict[str, Any]]:
    # x has one type in every row (a Parquet column); only the value at ``bad_at`` breaks the template
    return [
        {"id": f"q{i}", "question": f"what is {i}?", "x": bad_value if i == bad_at else good_value} for i in range(ROWS)
    ]


@pytest.fixture(scope="module")
def live() -> collections.abc.Iterator[tuple[Simulator, str]]:
    sim = create_app()
    with serve_in_thread(sim) as url:
        yield sim, url


def job(write_job: JobWriter, url: str, prompt: str, table: list[dict[str, Any]]) -> Path:
    return write_job(
        rows=table, top='id_column = "id"', endpoint=f'base_url = "{url}"\nmodel = "m"', request=f'prompt = "{prompt}"'
    )


@pytest.mark.parametrize(("prompt", "bad", "reason"), FAILING)
def test_a_template_failing_on_the_first_row_is_exit_2_before_anything_is_sent(
    prompt: str,
    bad: Any,
    reason: str,
    live: tuple[Simulator, str],
    write_job: JobWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim, url = live
    before = sim.stats.total
    path = job(write_job, url, prompt, rows(0, bad, bad))  # every row fails: the first is checked
    assert main(["run", str(path)]) == ExitCode.BAD_JOB
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("batchrun: error: "), err
    assert reason in err[0] or "template" in err[0]
    assert sim.stats.total == before
    assert not (tmp_path / "out" / "manifest").exists()


@pytest.mark.parametrize(("prompt", "bad", "reason"), [f for f in FAILING if f[1] != "text"])
def test_a_template_failing_mid_run_fails_that_row_and_the_run_goes_on(
    prompt: str,
    bad: Any,
    reason: str,
    live: tuple[Simulator, str],
    write_job: JobWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim, url = live
    before = sim.stats.total
    path = job(write_job, url, prompt, rows(BAD_ROW, bad))
    assert main(["run", str(path)]) == ExitCode.FAILED_ROWS
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert sim.stats.total - before == ROWS - 1  # the bad row was never sent
    manifest = read_manifest(tmp_path / "out")
    failed = manifest.filter(pl.col("status") == "failed")
    assert failed["row_id"].to_list() == [f"q{BAD_ROW}"]
    assert failed["error_kind"].to_list() == ["permanent"] and failed["attempts"].to_list() == [0]
    assert failed["error"][0].startswith("the row does not render: template request") and reason in failed["error"][0]
    assert manifest.filter(pl.col("status") == "ok").height == ROWS - 1

    # the next run sends nothing: the row failed for good with these templates
    assert main(["run", str(path)]) == ExitCode.FAILED_ROWS
    assert sim.stats.total - before == ROWS - 1
    assert "nothing to do" in capsys.readouterr().out


def test_a_mid_run_template_failure_in_a_text_table_row(
    live: tuple[Simulator, str], write_job: JobWriter, tmp_path: Path
) -> None:
    """A CSV: the issue's own case, ``{{ 10 / x }}`` over x = 0 on row 51 (declared an int)."""
    sim, url = live
    before = sim.stats.total
    path = write_job(
        rows=rows(BAD_ROW, 0),
        fmt="csv",
        top='id_column = "id"',
        endpoint=f'base_url = "{url}"\nmodel = "m"',
        request='prompt = "{{ question }} {{ 10 / (x | int) }}"',
    )
    assert main(["run", str(path), "-q"]) == ExitCode.FAILED_ROWS
    assert sim.stats.total - before == ROWS - 1
    failed = read_manifest(tmp_path / "out").filter(pl.col("status") == "failed")
    assert failed["row_id"].to_list() == [f"q{BAD_ROW}"] and "ZeroDivisionError" in failed["error"][0]


@pytest.fixture
def a_bug_on_the_tenth_request(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Caller.__call__
    calls = 0

    async def buggy(self: Caller, request: Request) -> Result:
        nonlocal calls
        calls += 1
        if calls == 10:
            raise RuntimeError("a bug in batchrun")
        return await real(self, request)

    monkeypatch.setattr(Caller, "__call__", buggy)


@pytest.mark.usefixtures("a_bug_on_the_tenth_request")
@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_stops_the_run_gracefully(
    debug: bool, live: tuple[Simulator, str], write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = live
    path = job(write_job, url, "{{ question }}", rows(-1, 0))
    assert main(["run", str(path), *(["--debug"] if debug else [])]) == ExitCode.INCOMPLETE
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("batchrun: error:")]
    assert lines == [
        "batchrun: error: stopped: unexpected RuntimeError: a bug in batchrun (run with --debug for the traceback); "
        "what finished is saved, run again to resume"
    ]
    assert ("Traceback" in err) == debug
    kept = read_manifest(tmp_path / "out")
    assert 0 < kept.height < ROWS and set(kept["status"]) == {"ok"}  # what finished was flushed


def test_after_an_unexpected_stop_the_next_run_resumes(
    live: tuple[Simulator, str], write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, url = live
    path = job(write_job, url, "{{ question }}", rows(-1, 0))
    with monkeypatch.context() as patched:
        real = Caller.__call__

        async def buggy(self: Caller, request: Request) -> Result:
            if request.row_index == 30:
                raise RuntimeError("a bug")
            return await real(self, request)

        patched.setattr(Caller, "__call__", buggy)
        assert main(["run", str(path), "-q"]) == ExitCode.INCOMPLETE
    first = read_manifest(tmp_path / "out").height
    before = sim.stats.total
    assert main(["run", str(path), "-q"]) == ExitCode.OK  # the lock was released
    assert sim.stats.total - before == ROWS - first  # only what was not done
    assert read_manifest(tmp_path / "out")["request_key"].n_unique() == ROWS
