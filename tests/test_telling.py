"""What a run says while it works and when it ends: a start line (or JSON start event) naming the job
and its output folder, progress lines with requests in flight and retries, and a summary that
names the causes of failures, with counts and an example each."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import questions, write_table

from batchrun import progress as progress_module
from batchrun.cli import main
from batchrun.log import configure
from batchrun.models import Request, Result
from batchrun.plan.planner import PlanCounts
from batchrun.progress import Progress
from batchrun.simulator import FaultPlan, Trigger, create_app, serve_in_thread
from batchrun.summary import Failures


def job_file(tmp_path: Path, url: str, rows: int = 6, limits: str = "concurrency = 2") -> Path:
    write_table(tmp_path / "input.parquet", questions(rows))
    path = tmp_path / "night.toml"
    path.write_text(
        'name = "night"\ninput = "input.parquet"\noutput = "out"\n'
        f'[endpoint]\npreset = "openai-compatible"\nbase_url = "{url}"\nmodel = "m"\n'
        f'[request]\nprompt = "{{{{ question }}}}"\n[limits]\n{limits}\n'
    )
    return path


FAULTS = [
    Trigger("what is 1?", "400"),
    Trigger("what is 2?", "400"),
    Trigger("what is 3?", "400"),
    Trigger("what is 4?", "500"),
]
LIMITS = "concurrency = 2\nmax_attempts = 2\nmax_retry_wait_s = 0.01"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_summary_names_the_causes_of_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = create_app(FaultPlan(triggers=list(FAULTS)))
    with serve_in_thread(sim) as url:
        assert main(["run", str(job_file(tmp_path, url, limits=LIMITS)), "--progress", "lines"]) == 3
    assert sim.stats.total == 6 + 1  # the 500 once more
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "failed requests by cause:",
        '  3 x permanent http 400: "Bad request (simulated)"',
        '  1 x retryable_exhausted http 500: "Internal server error (simulated)"',
    ], out
    assert out[3].startswith("finished 6 requests (2 ok, 4 failed)") and len(out) == 4


def test_json_logs_have_a_start_event_and_a_summary_with_the_causes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = create_app(FaultPlan(triggers=list(FAULTS)))
    with serve_in_thread(sim) as url:
        job = job_file(tmp_path, url, limits=LIMITS)
        assert main(["run", str(job), "--log-format", "json"]) == 3
        events = json_lines(capsys.readouterr().err)
        out = str(tmp_path / "out")
        start = events[0]
        assert (
            start["event"] == "start"
            and start["message"] == f"run night -> {out}: 6 rows, 6 requests to do, 0 already done"
        )
        assert {k: start[k] for k in ("job", "output", "rows", "requests", "already_done", "to_do", "to_do_exact")} == {
            "job": "night",
            "output": out,
            "rows": 6,
            "requests": 6,
            "already_done": 0,
            "to_do": 6,
            "to_do_exact": True,
        }
        summary = events[-1]
        assert (summary["event"], summary["job"], summary["output"], summary["failed"]) == ("summary", "night", out, 4)
        assert summary["errors"] == [
            {"count": 3, "kind": "permanent", "http_status": 400, "example": "HTTP 400: Bad request (simulated)"},
            {
                "count": 1,
                "kind": "retryable_exhausted",
                "http_status": 500,
                "example": "HTTP 500: Internal server error (simulated)",
            },
        ]

        # again: the permanent failures are done, the retryable one is sent again
        sim.plan.triggers = []
        before = sim.stats.total
        assert main(["run", str(job), "--log-format", "json"]) == 3
        events = json_lines(capsys.readouterr().err)
        assert (events[0]["already_done"], events[0]["to_do"]) == (5, 1)
        assert events[-1]["errors"] == [] and sim.stats.total == before + 1


def test_plain_lines_start_at_once_and_show_retries_in_flight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request is retried: the progress lines say so while ``failed`` is still 0."""
    monkeypatch.setattr(progress_module, "LINE_INTERVAL_S", 0.02)
    sim = create_app(FaultPlan(latency_ms=100, triggers=[Trigger("what is", "500", times=4)]))
    with serve_in_thread(sim) as url:
        job = job_file(tmp_path, url, rows=4, limits="concurrency = 4\nmax_attempts = 3\nmax_retry_wait_s = 0.01")
        assert main(["run", str(job), "--progress", "lines"]) == 0
    assert sim.stats.total == 8
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"batchrun: run night -> {tmp_path / 'out'}: 4 rows, 4 requests to do, 0 already done"
    seen = [re.search(r"failed (\d+), in flight (\d+), retries (\d+)", line) for line in err[1:]]
    counts = [tuple(int(n) for n in m.groups()) for m in seen if m]
    assert any(failed == 0 and in_flight > 0 and retries > 0 for failed, in_flight, retries in counts), err


def result(kind: str, status: int | None, error: str) -> Result:
    request = Request("k", None, 0, 0, "POST", "http://x", b"{}", "m")
    return Result(request, "failed", 1, 0.0, 0.0, error_kind=kind, http_status=status, error=error)


def test_failures_group_messages_that_differ_only_in_numbers() -> None:
    failures = Failures()
    for i in range(7):
        failures.add(result("permanent", 404, f"HTTP 404: model 'm{i % 2}' not found (request id req_{i}ab)"))
    failures.add(result("retryable_exhausted", None, "timed out (ReadTimeout)"))
    failures.add(result("permanent", 400, "HTTP 400: bad"))
    causes = failures.causes()
    assert [(c.count, c.kind, c.http_status) for c in causes] == [
        (7, "permanent", 404),
        (1, "retryable_exhausted", None),
        (1, "permanent", 400),
    ]
    assert causes[0].example == "HTTP 404: model 'm0' not found (request id req_0ab)"
    assert causes[0].line() == "7 x permanent http 404: \"model 'm0' not found (request id req_0ab)\""
    assert causes[1].line() == '1 x retryable_exhausted: "timed out (ReadTimeout)"'


@pytest.mark.anyio
async def test_the_plain_line_comes_from_a_clock_not_from_results() -> None:
    stream = io.StringIO()
    configure("json", stream=stream, level=logging.INFO)
    progress = Progress(10, plan=PlanCounts(done=2), interactive=False, interval=0.01)
    progress.activity = lambda: (3, 5)
    progress.start("j", Path("/o"), rows=10, exact=False)
    with anyio.move_on_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(progress.tick)
            while stream.getvalue().count("\n") < 3:  # the start event, then two progress lines
                await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    events = json_lines(stream.getvalue())
    assert events[0]["message"] == (
        "run j -> /o: 10 rows, up to 8 requests to do (2 known done; the rest are matched against the manifest "
        "as they are read)"
    )
    assert [(e["event"], e["in_flight"], e["retries"], e["failed"]) for e in events[1:3]] == [("progress", 3, 5, 0)] * 2
    assert "in flight 3, retries 5" in events[1]["message"]
