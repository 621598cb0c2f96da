"""Evaluation jobs (issue 16): the same rows against several endpoints, each its own lane."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import polars as pl
import pytest
from helpers import questions, read_manifest, write_table

from batchrun.cli import main
from batchrun.errors import ExitCode
from batchrun.runner import RunSummary, run_job
from batchrun.simulator import FaultPlan, Simulator, create_app, expected_chat_text
from batchrun.spec import load_job

pytestmark = pytest.mark.anyio


class Hosts(httpx.AsyncBaseTransport):
    """One in-process simulator per host name: two endpoints that fail each in its own way."""

    def __init__(self, sims: dict[str, Simulator]) -> None:
        self.transports = {host: httpx.ASGITransport(app=sim) for host, sim in sims.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.transports[request.url.host].handle_async_request(request)


def endpoint_toml(name: str, host: str, model: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        [[endpoints]]
        name = "{name}"
        preset = "openai-compatible"
        base_url = "http://{host}"
        model = "{model}"
        """
    ) + textwrap.dedent(extra)


def write_eval(tmp_path: Path, endpoints: list[str], *, rows: int = 12, top: str = "", request: str = "") -> Path:
    write_table(tmp_path / "input.parquet", questions(rows))
    job = tmp_path / "job.toml"
    job.write_text(
        textwrap.dedent(
            f"""
            name = "ev"
            input = "input.parquet"
            output = "out"
            id_column = "id"
            {top}
            [request]
            prompt = "{{{{ question }}}}"
            {request}
            [limits]
            concurrency = 3
            max_attempts = 2
            max_retry_wait_s = 0.05
            timeout_s = 10
            """
        )
        + "".join(endpoints)
    )
    return job


async def run(job: Path, sims: dict[str, Simulator]) -> RunSummary:
    return await run_job(load_job(job), transport=Hosts(sims), quiet=True)


async def test_every_row_goes_to_every_endpoint_with_its_own_params(tmp_path: Path) -> None:
    sims = {"a.test": create_app(), "b.test": create_app()}
    job = write_eval(
        tmp_path,
        [
            endpoint_toml("small", "a.test", "m-small"),
            endpoint_toml(
                "big", "b.test", "m-big", "params = { max_tokens = 3 }\n[endpoints.limits]\nconcurrency = 1\n"
            ),
        ],
        request="params = { max_tokens = 50, temperature = 0 }",
    )
    summary = await run(job, sims)
    assert summary.exit_code == ExitCode.OK
    assert (sims["a.test"].stats.total, sims["b.test"].stats.total) == (12, 12)
    manifest = read_manifest(tmp_path / "out")
    assert manifest.height == 24
    assert manifest.group_by("endpoint").len().sort("endpoint").rows() == [("big", 12), ("small", 12)]
    assert set(manifest.filter(pl.col("endpoint") == "small")["model"]) == {"m-small"}
    row = manifest.filter((pl.col("endpoint") == "small") & (pl.col("row_id") == "q3")).row(0, named=True)
    assert row["response_text"] == expected_chat_text("m-small", [{"role": "user", "content": "what is 3?"}])
    big = manifest.filter(pl.col("endpoint") == "big")
    assert big["completion_tokens"].max() == 3 and set(big["finish_reason"]) == {"length"}  # its own max_tokens
    assert manifest.filter(pl.col("endpoint") == "small")["completion_tokens"].max() > 3

    again = await run(job, sims)
    assert again.exit_code == ExitCode.OK
    assert (sims["a.test"].stats.total, sims["b.test"].stats.total) == (12, 12)


async def test_adding_an_endpoint_sends_only_its_requests_and_keeps_the_single_keys(tmp_path: Path) -> None:
    """A job of one ``[endpoint]`` grown into two ``[[endpoints]]``: the first one's keys are the
    single endpoint's (its answers are reused), only the new endpoint's requests go out; removing
    it again leaves its results in the manifest."""
    sims = {"a.test": create_app(), "b.test": create_app()}
    write_table(tmp_path / "input.parquet", questions(8))
    single = tmp_path / "single.toml"
    single.write_text(
        'name = "ev"\ninput = "input.parquet"\noutput = "out"\n[request]\nprompt = "{{ question }}"\n'
        '[endpoint]\npreset = "openai-compatible"\nbase_url = "http://a.test"\nmodel = "m-small"\n'
    )
    assert (await run(single, sims)).exit_code == ExitCode.OK
    keys = set(read_manifest(tmp_path / "out")["request_key"])
    job = write_eval(
        tmp_path, [endpoint_toml("small", "a.test", "m-small"), endpoint_toml("big", "b.test", "m-big")], rows=8
    )
    job.write_text(job.read_text().replace('id_column = "id"', ""))
    assert (await run(job, sims)).exit_code == ExitCode.OK
    assert (sims["a.test"].stats.total, sims["b.test"].stats.total) == (8, 8)
    manifest = read_manifest(tmp_path / "out")
    assert keys <= set(manifest["request_key"]) and manifest["request_key"].n_unique() == 16
    assert (await run(single, sims)).exit_code == ExitCode.OK
    assert sims["a.test"].stats.total == 8 and read_manifest(tmp_path / "out")["request_key"].n_unique() == 16


async def test_a_fatal_answer_stops_only_its_endpoint(tmp_path: Path) -> None:
    sims = {"a.test": create_app(), "b.test": create_app(FaultPlan(require_token="right"))}
    job = write_eval(
        tmp_path,
        [endpoint_toml("good", "a.test", "m"), endpoint_toml("locked", "b.test", "m", 'api_key_env = "WRONG"\n')],
        rows=40,
    )
    summary = await run_job(load_job(job, env={"WRONG": "nope"}), transport=Hosts(sims), quiet=True)
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert summary.fatal is not None and summary.fatal.startswith("locked (http://b.test/v1/chat/completions) answered")
    assert "good" not in summary.fatal
    manifest = read_manifest(tmp_path / "out")
    assert manifest.filter(pl.col("endpoint") == "good").height == 40
    assert set(manifest.filter(pl.col("endpoint") == "good")["status"]) == {"ok"}
    assert manifest.filter(pl.col("endpoint") == "locked").height == 0  # fatal: nothing recorded, all to do
    assert sims["b.test"].stats.total <= 3  # at most its concurrency


async def test_a_429_storm_on_one_endpoint_leaves_the_other_alone(tmp_path: Path) -> None:
    sims = {"a.test": create_app(), "b.test": create_app(FaultPlan(rate_429=1.0, retry_after_s=0.01))}
    job = write_eval(tmp_path, [endpoint_toml("calm", "a.test", "m"), endpoint_toml("stormy", "b.test", "m")])
    summary = await run(job, sims)
    assert summary.exit_code == ExitCode.FAILED_ROWS
    manifest = read_manifest(tmp_path / "out")
    calm = manifest.filter(pl.col("endpoint") == "calm")
    assert calm.height == 12 and set(calm["status"]) == {"ok"} and set(calm["attempts"]) == {1}
    stormy = manifest.filter(pl.col("endpoint") == "stormy")
    assert set(stormy["error_kind"]) == {"retryable_exhausted"} and set(stormy["http_status"]) == {429}
    assert sims["a.test"].stats.total == 12 and sims["b.test"].stats.total == 24


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        (
            [endpoint_toml("a", "a.test", "m1"), endpoint_toml("a", "b.test", "m2")],
            "endpoints[1].name: 'a' is also the name of endpoints[0]",
        ),
        ([endpoint_toml("a.b", "a.test", "m1")], "endpoints[0].name: 'a.b': use letters, digits"),
        (
            [endpoint_toml("a", "a.test", "m1"), endpoint_toml("b", "a.test", "m1")],
            "endpoints[1]: 'b' sends what 'a' sends",
        ),
        (
            [endpoint_toml("a", "a.test", "m1"), '[endpoint]\npreset = "openai-compatible"\nbase_url = "http://x"\n'],
            "endpoints: give [endpoint] or [[endpoints]], not both",
        ),
        ([endpoint_toml("a", "a.test", "")], "endpoints[0].model: a chat endpoint needs a model name"),
        (
            [endpoint_toml("a", "a.test", "m", "[endpoints.limits]\nconcurrency = 0\n")],
            "endpoints.0.limits.concurrency",
        ),
    ],
)
def test_bad_endpoints_exit_2_with_one_line(
    tmp_path: Path, endpoints: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_eval(tmp_path, endpoints)
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_plan_counts_every_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_eval(tmp_path, [endpoint_toml("a", "a.test", "m1"), endpoint_toml("b", "b.test", "m2")], rows=5)
    assert main(["plan", str(job)]) == 0
    out = capsys.readouterr().out
    assert "rows read        5" in out and "requests         10" in out and "to do            10" in out


async def test_status_answers_per_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sims = {"a.test": create_app(), "b.test": create_app(FaultPlan(rate_429=1.0, retry_after_s=0.01))}
    job = write_eval(tmp_path, [endpoint_toml("calm", "a.test", "m"), endpoint_toml("stormy", "b.test", "m")], rows=10)
    await run(job, sims)
    capsys.readouterr()
    assert main(["status", str(tmp_path / "out"), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    calm, stormy = found["endpoints"]["calm"], found["endpoints"]["stormy"]
    assert (calm["ok"], calm["failed"], calm["left"]) == (10, 0, 0)
    assert (stormy["ok"], stormy["failed"], stormy["permanent"], stormy["left"]) == (0, 10, 0, 10)
    assert 0 <= calm["latency_ms"]["p50"] <= calm["latency_ms"]["p95"] <= calm["latency_ms"]["p99"]
    assert stormy["latency_ms"]["p50"] is None
    assert calm["prompt_tokens"] > 0 and calm["completion_tokens"] > 0 and stormy["completion_tokens"] == 0
    [error] = stormy["errors"]
    assert (error["kind"], error["http_status"], error["count"]) == ("retryable_exhausted", 429, 10)
    assert error["example"]

    assert main(["status", str(job)]) == 0
    text = capsys.readouterr().out
    assert "calm: 10 ok, 0 failed" in text and "stormy: 0 ok, 10 failed (0 for good)" in text
    assert "     10 retryable_exhausted 429: " in text


def simulated_eval(tmp_path: Path, rows: int) -> Path:
    write_table(tmp_path / "input.csv", questions(rows))
    job = tmp_path / "job.toml"
    job.write_text(
        'name = "ev"\ninput = "input.csv"\noutput = "out"\nid_column = "id"\n'
        '[request]\nprompt = "{{ question }}"\nparams = { max_tokens = 50 }\n'
        '[[endpoints]]\nname = "small"\npreset = "simulator"\nmodel = "m-small"\n'
        '[[endpoints]]\nname = "big"\npreset = "simulator"\nmodel = "m-big"\nparams = { max_tokens = 3 }\n'
    )
    return job


def test_limit_then_whole_job_then_wide_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The smoke test first (``--limit``), then the whole job sends only the rest; the wide export
    puts both endpoints' answers side by side, one row per input row."""
    job = simulated_eval(tmp_path, 9)
    assert main(["plan", str(job), "--limit", "4"]) == 0
    assert "requests         8" in capsys.readouterr().out
    assert main(["run", str(job), "--limit", "4", "-q"]) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest.height == 8 and sorted(set(manifest["row_index"])) == [0, 1, 2, 3]
    capsys.readouterr()
    assert main(["plan", str(job)]) == 0
    out = capsys.readouterr().out
    assert "already done     8" in out and "to do            10" in out
    assert main(["run", str(job), "-q"]) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest.height == 18 and manifest["request_key"].n_unique() == 18
    assert all((tmp_path / "out" / "plan-index" / name / "fingerprint").is_file() for name in ("small", "big"))
    capsys.readouterr()
    assert main(["plan", str(job)]) == 0  # through each endpoint's plan index
    out = capsys.readouterr().out
    assert "already done     18" in out and "to do            0" in out and "stale" not in out

    wide = tmp_path / "wide.parquet"
    assert main(["export", str(tmp_path / "out"), "--to", str(wide), "--wide"]) == 0
    frame = pl.read_parquet(wide)
    assert frame.height == 9
    assert frame["id"].to_list() == [f"q{i}" for i in range(9)]
    assert set(frame["small.status"]) == {"ok"} and set(frame["big.status"]) == {"ok"}
    assert frame["small.response_text"][2] == expected_chat_text("m-small", [{"role": "user", "content": "what is 2?"}])
    assert set(frame["big.finish_reason"]) == {"length"} and "big.latency_ms" in frame.columns
    long = tmp_path / "long.csv"
    assert main(["export", str(job), "--to", str(long)]) == 0
    frame = pl.read_csv(long)
    assert frame.height == 18 and frame.group_by("endpoint").len().sort("endpoint").rows() == [("big", 9), ("small", 9)]


PRICE = "price = { input_per_million = 1000.0, output_per_million = 4000.0, per_request = 0.001 }\n"


async def test_cost_from_usage_or_estimated_and_status_sums_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sims = {"a.test": create_app(), "b.test": create_app()}
    job = write_eval(
        tmp_path,
        [
            endpoint_toml("usage", "a.test", "m", PRICE),
            endpoint_toml("silent", "b.test", "m", PRICE + "stream = true\nstream_usage = false\n"),
        ],
        rows=6,
        request="params = { max_tokens = 20 }",
    )
    assert (await run(job, sims)).exit_code == ExitCode.OK
    manifest = read_manifest(tmp_path / "out")
    usage = manifest.filter(pl.col("endpoint") == "usage")
    expected = 0.001 + (usage["prompt_tokens"] * 1000.0 + usage["completion_tokens"] * 4000.0) / 1e6
    assert usage["cost_usd"].to_list() == pytest.approx(expected.to_list())
    assert set(usage["cost_estimated"]) == {False}
    silent = manifest.filter(pl.col("endpoint") == "silent")
    assert silent["prompt_tokens"].null_count() == 6 and set(silent["cost_estimated"]) == {True}
    # no usage: the prompt from the body's bytes / 4 (a few dozen tokens here), the answer at max_tokens
    assert all(0.001 + 20 * 4000.0 / 1e6 < c < 0.001 + (200 * 1000.0 + 20 * 4000.0) / 1e6 for c in silent["cost_usd"])
    capsys.readouterr()
    assert main(["status", str(job), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["endpoints"]
    assert found["usage"]["cost_usd"] == pytest.approx(sum(expected))
    assert found["silent"]["cost_estimated"] is True and found["usage"]["cost_estimated"] is False


async def test_the_budget_stops_before_the_spend_passes_it(tmp_path: Path) -> None:
    """Each request may cost up to ~$0.09 (20 answer tokens at $4000/M and its prompt): a $0.5
    budget stops the run with rows left (exit 4), the spend under it; the rest go out later."""
    sims = {"a.test": create_app()}
    job = write_eval(
        tmp_path, [endpoint_toml("only", "a.test", "m", PRICE)], rows=20, request="params = { max_tokens = 20 }"
    )
    text = job.read_text().replace('id_column = "id"', 'id_column = "id"\nmax_cost = 0.5')
    job.write_text(text)
    summary = await run(job, sims)
    assert summary.exit_code == ExitCode.INCOMPLETE
    manifest = read_manifest(tmp_path / "out")
    assert 0 < manifest.height < 20 and manifest["cost_usd"].sum() <= 0.5
    assert sims["a.test"].stats.total == manifest.height  # nothing sent that was not recorded
    assert "budget" in summary.line() and "of the $0.5 budget" in summary.line()
    job.write_text(text.replace("max_cost = 0.5", "max_cost = 100"))
    assert (await run(job, sims)).exit_code == ExitCode.OK
    assert read_manifest(tmp_path / "out").height == 20 and sims["a.test"].stats.total == 20


def test_plan_estimates_tokens_and_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_eval(
        tmp_path, [endpoint_toml("a", "a.test", "m", PRICE)], rows=10, request="params = { max_tokens = 20 }"
    )
    assert main(["plan", str(job)]) == 0
    out = capsys.readouterr().out
    assert "at most 200 in answers" in out and "cost at most     $" in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("price = { input_per_million = -1 }\n", "input_per_million: Input should be greater than or equal to 0"),
        ("", "max_cost: Input should be greater than or equal to 0"),
    ],
)
def test_negative_price_or_budget_exit_2(
    tmp_path: Path, change: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_eval(tmp_path, [endpoint_toml("a", "a.test", "m", change)], top="" if change else "max_cost = -1")
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    with pytest.raises(SystemExit) as exited:
        main(["run", str(job), "--max-cost", "-2"])
    assert exited.value.code == 2 and "--max-cost: an amount in USD, 0 or more" in capsys.readouterr().err


async def test_one_endpoint_of_its_own_keeps_its_params_and_limits(tmp_path: Path) -> None:
    sims = {"a.test": create_app()}
    job = write_eval(tmp_path, [endpoint_toml("only", "a.test", "m", "params = { max_tokens = 3 }\n")], rows=4)
    assert load_job(job).lanes()[0].request.params == {"max_tokens": 3}
    assert (await run(job, sims)).exit_code == ExitCode.OK
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest["completion_tokens"]) == {3} and set(manifest["endpoint"]) == {"only"}
