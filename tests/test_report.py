"""``batchrun report``: what the page says about a run, from its manifest (no browser here;
tests/test_report_browser.py opens the page)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import httpx
import polars as pl
import pytest
from helpers import JobWriter, questions

from batchrun.cli import main
from batchrun.models import Parsed, Request, Result
from batchrun.report import data as report_data
from batchrun.report import samples as report_samples
from batchrun.report.page import script_json
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, Trigger, create_app
from batchrun.sink.manifest import manifest_frame, part_name, write_part
from batchrun.spec import load_job

pytest.importorskip("vl_convert")


def key(i: int, endpoint: str) -> str:
    return hashlib.sha256(f"{endpoint}/{i}".encode()).hexdigest()


def fabricate(out: Path, rows: int, endpoints: tuple[str, ...] = ("alpha", "beta"), fail_every: int = 0) -> None:
    """A manifest of ``rows`` rows answered by each endpoint (one part per endpoint), every
    ``fail_every``-th row failed at the second endpoint."""
    (out / "manifest").mkdir(parents=True)
    for n, endpoint in enumerate(endpoints):
        results = []
        for i in range(rows):
            request = Request(key(i, endpoint), f"r{i}", i, 0, "POST", "http://x/", b"{}", "m")
            t = 1_800_000_000.0 + i * 0.01
            if fail_every and n == 1 and i % fail_every == 0:
                results.append(
                    Result(request, "failed", 3, t, t + 0.5, 500.0, None, "retries_exhausted", 503, f"HTTP 503 at {i}")
                )
            else:
                parsed = Parsed(text=f"{endpoint} says {i}", prompt_tokens=3, completion_tokens=2, ttft_ms=10.0 + n)
                results.append(Result(request, "ok", 1, t, t + 0.1 + n / 10, 100.0 + 100 * n, parsed, http_status=200))
        frame = manifest_frame(results, endpoint=endpoint, run_id="run1")
        write_part(out / "manifest", part_name("run1", f"s{n}", 0), frame)


def test_aggregates_cover_every_row_and_answers_sit_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fabricate(out, 30, fail_every=10)
    report = report_data.load(out)
    assert (report.rows, report.requests) == (30, 60)
    by = {r["endpoint"]: r for r in report.by_endpoint.to_dicts()}
    assert (by["alpha"]["ok"], by["alpha"]["failed"], by["alpha"]["tokens"]) == (30, 0, 150)
    assert (by["beta"]["ok"], by["beta"]["failed"], by["beta"]["tokens"]) == (27, 3, 135)
    assert (by["alpha"]["p50_ms"], by["beta"]["p50_ms"]) == (100.0, 200.0)
    errors = report.errors.to_dicts()
    assert len(errors) == 1
    assert (errors[0]["kind"], errors[0]["http_status"], errors[0]["count"]) == ("retries_exhausted", 503, 3)
    assert errors[0]["example"] == f"HTTP 503 at {errors[0]['row_index']}"
    assert report.errors_over_time["count"].sum() == 3
    assert report.throughput["count"].sum() == 60
    # one line per row, the answer of each endpoint in its own column; a failed one says so
    answers = report.answers.sort("row_index")
    assert answers.height == 30
    assert answers.row(1, named=True)["alpha"] == "alpha says 1"
    assert answers.row(1, named=True)["beta"] == "beta says 1"
    assert answers.row(10, named=True)["beta"] == "[failed: HTTP 503 at 10]"
    assert report.last_exit == "not recorded"
    # no job file beside a fabricated manifest: the page says why there are no prompts
    assert answers["prompt"].null_count() == 30 and report.notes


def test_large_runs_show_a_sample_and_say_how_many_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_samples, "SAMPLE_ROWS", 40)
    out = tmp_path / "out"
    fabricate(out, 100, endpoints=("alpha",))
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    blob = re.search(r'<script type="application/json" id="answers-data">(.*?)</script>', html, re.S)
    assert blob is not None
    assert len(json.loads(blob.group(1))["rows"]) == 40
    assert "The first 40 of 100 rows" in html
    assert f"batchrun export {out} --to results.parquet" in html
    assert ">100<" in html  # the rows tile counts every row


@pytest.mark.anyio
async def test_a_chat_run_on_the_simulator_gives_prompts_answers_errors_and_exit_status(
    write_job: JobWriter, tmp_path: Path
) -> None:
    sim = create_app(FaultPlan(triggers=[Trigger("what is 3?", "400")]))
    job_path = write_job(rows=questions(12), top='id_column = "id"', limits="concurrency = 4\nmax_attempts = 1")
    summary = await run_job(load_job(job_path), transport=httpx.ASGITransport(app=sim), quiet=True)
    # run_job is what `batchrun run` calls; the CLI notes the summary, as here
    from batchrun.report.last_run import note_last_run

    note_last_run(tmp_path / "out", summary.fields())
    assert main(["report", str(tmp_path / "out")]) == 0
    page = tmp_path / "out" / "report.html"
    html = page.read_text()
    assert "3: finished, some requests failed" in html
    report = report_data.load(tmp_path / "out")
    assert (report.rows, report.requests) == (12, 12)
    assert report.errors["count"].to_list() == [1] and report.errors["http_status"].to_list() == [400]
    assert report.errors["row_id"].to_list() == ["q3"]
    row = report.answers.filter(pl.col("row_id") == "q5").row(0, named=True)
    assert row["prompt"] == "what is 5?"
    assert row["openai-compatible"] == "[m] answer to: what is 5?"
    assert html.count("<svg") >= 3  # throughput, latency, errors over time
    assert "http://" not in re.sub(r'xmlns(:\w+)?="http://www\.w3\.org/[^"]*"', "", html)


def test_no_results_yet_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    assert main(["report", str(tmp_path / "out")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"batchrun: error: no results in {tmp_path / 'out'} yet: run the job first"
    )


def test_script_json_cannot_close_its_element() -> None:
    text = script_json({"a": "</script><script>alert(1)</script> & <!--"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><script>alert(1)</script> & <!--"}


def test_a_key_answered_again_counts_once_with_its_latest_result(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fabricate(out, 30, fail_every=10)
    request = Request(key(10, "beta"), "r10", 10, 0, "POST", "http://x/", b"{}", "m")
    later = Result(request, "ok", 1, 1_900_000_000.0, 1_900_000_000.2, 200.0, Parsed(text="beta again"))
    write_part(out / "manifest", part_name("run2", "s1", 0), manifest_frame([later], endpoint="beta", run_id="run2"))
    report = report_data.load(out)
    assert report.requests == 60
    assert report.by_endpoint.filter(pl.col("endpoint") == "beta")["failed"].item() == 2
    assert report.answers.filter(pl.col("row_index") == 10)["beta"].item() == "beta again"


@pytest.mark.anyio
async def test_the_spend_is_shown_when_the_job_sets_a_price(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app()
    job_path = write_job(
        rows=questions(4),
        endpoint='base_url = "http://llm.test"\nmodel = "m"\n'
        "price = { input_per_million = 1000000, output_per_million = 0 }",
    )
    await run_job(load_job(job_path), transport=httpx.ASGITransport(app=sim), quiet=True)
    manifest = pl.read_parquet(tmp_path / "out" / "manifest")
    spent = float(manifest["cost_usd"].sum())  # $1 a prompt token: the prompt tokens the simulator counted
    assert spent == float(manifest["prompt_tokens"].sum()) > 0
    assert report_data.load(tmp_path / "out").cost == f"${spent:,.4f}"
