"""Scaled-to-zero Hugging Face Inference Endpoints are woken, not hammered (issue 18): the real
huggingface_hub client against the simulator's management routes over loopback, and the 503s of a
cold start waited out by one prober, counting neither as attempts nor as failures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ScriptedEndpoint, chat_reply, questions, read_manifest, write_table

from batchrun.dispatch.pushback import Kind, read_pushback
from batchrun.dispatch.wake import Waker
from batchrun.errors import ExitCode, FatalError, JobError, SpecError
from batchrun.hfapi import EndpointState
from batchrun.runner import RunSummary, run_job
from batchrun.simulator import FaultPlan, Simulator, create_app, serve
from batchrun.simulator.cli import plan_from_args
from batchrun.spec import Job

pytestmark = pytest.mark.anyio

TOKEN = "hf_wake_secret_token_0123456789"
ROWS = 12


def make_job(tmp_path: Path, url: str, **endpoint: Any) -> Job:
    write_table(tmp_path / "input.parquet", questions(ROWS))
    return Job.from_dict(
        {
            "name": "wake",
            "input": "input.parquet",
            "output": "out",
            "id_column": "id",
            "endpoint": {"preset": "hf-endpoint", "base_url": url, "model": "tgi", "stream": False, **endpoint},
            "request": {"prompt": "{{ question }}"},
            "limits": {"concurrency": 4, "timeout_s": 10},
        },
        base_dir=tmp_path,
    )


async def run_against(sim: Simulator, tmp_path: Path, **endpoint: Any) -> RunSummary:
    async with serve(sim) as url:
        if "hf_endpoint" in endpoint:
            endpoint.setdefault("hf_api_url", f"{url}/v2")
        return await run_job(make_job(tmp_path, url, **endpoint), quiet=True)


@pytest.fixture(autouse=True)
def hf_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)


def assert_all_ok_first_time(out: Path) -> None:
    manifest = read_manifest(out)
    assert manifest.height == ROWS
    assert set(manifest["status"]) == {"ok"}
    assert set(manifest["attempts"]) == {1}


def assert_token_nowhere(out: Path, log: str) -> None:
    assert TOKEN not in log
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


async def test_a_scaled_to_zero_endpoint_is_resumed_once_then_paused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchrun")
    sim = create_app(FaultPlan(endpoint_state="scaledToZero", cold_start_s=1.0, require_token=TOKEN))
    summary = await run_against(sim, tmp_path, hf_endpoint="sim-org/my-llm", pause_after=True)
    assert summary.exit_code == ExitCode.OK, summary.line()
    assert sim.life.calls["resume"] == 1
    assert sim.life.calls["get"] >= 2  # the state before, then until it ran
    assert sim.life.calls["pause"] == 1
    assert sim.life.state == "paused"
    assert sim.stats.by_outcome.get("cold", 0) == 0  # no inference request before it was running
    assert sim.stats.total == ROWS
    assert_all_ok_first_time(tmp_path / "out")
    assert "resuming the Inference Endpoint sim-org/my-llm (scaledToZero)" in caplog.text
    assert "paused the Inference Endpoint sim-org/my-llm" in caplog.text
    assert_token_nowhere(tmp_path / "out", caplog.text)


async def test_a_running_endpoint_is_not_resumed_and_a_finished_job_leaves_it_alone(tmp_path: Path) -> None:
    sim = create_app(FaultPlan(require_token=TOKEN))
    async with serve(sim) as url:
        named = {"hf_endpoint": "sim-org/my-llm", "hf_api_url": f"{url}/v2"}
        summary = await run_job(make_job(tmp_path, url, **named), quiet=True)
        assert summary.exit_code == ExitCode.OK, summary.line()
        assert dict(sim.life.calls) == {"get": 1}
        again = await run_job(make_job(tmp_path, url, **named, pause_after=True), quiet=True)
    assert again.ok == 0 and again.exit_code == ExitCode.OK
    assert dict(sim.life.calls) == {"get": 1}  # nothing to do: the endpoint is neither asked nor paused
    assert sim.stats.total == ROWS


async def test_without_rights_the_cold_start_503s_are_waited_out_by_one_prober(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchrun")
    sim = create_app(
        FaultPlan(endpoint_state="scaledToZero", cold_start_s=1.5, manage_rights=False, require_token=TOKEN)
    )
    summary = await run_against(sim, tmp_path, hf_endpoint="sim-org/my-llm", pause_after=True)
    assert summary.exit_code == ExitCode.OK, summary.line()
    assert summary.failed == 0
    assert_all_ok_first_time(tmp_path / "out")  # the 503s were no attempts
    cold = sim.stats.by_outcome["cold"]
    assert 1 <= cold <= 4  # one prober, 0.5 s then 1 s apart: not 4 workers x 6 attempts
    assert sim.stats.total == ROWS + cold
    assert dict(sim.life.calls) == {"get": 1}  # refused (403): no resume, no pause
    assert "no right to manage it (HTTP 403" in caplog.text
    assert "the endpoint sim-org/my-llm is awake after" in caplog.text
    assert_token_nowhere(tmp_path / "out", caplog.text)


async def test_a_wake_timeout_stops_the_job_resumably(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batchrun")
    sim = create_app(FaultPlan(endpoint_state="scaledToZero", cold_start_s=60, manage_rights=False))
    async with serve(sim) as url:
        named = {"hf_endpoint": "sim-org/my-llm", "hf_api_url": f"{url}/v2", "wake_timeout": "1s"}
        summary = await run_job(make_job(tmp_path, url, **named), quiet=True)
        assert summary.exit_code == ExitCode.INCOMPLETE
        assert summary.fatal is not None and "did not wake within 1.0s" in summary.fatal
        assert "\n" not in summary.line()
        assert not list((tmp_path / "out" / "manifest").glob("*.parquet"))  # nothing recorded: all to do
        assert sim.stats.by_outcome["cold"] == sim.stats.total <= 3
        sim.life.state = "running"
        again = await run_job(make_job(tmp_path, url, **named), quiet=True)
    assert again.exit_code == ExitCode.OK, again.line()
    assert again.ok == ROWS
    assert_all_ok_first_time(tmp_path / "out")
    assert_token_nowhere(tmp_path / "out", caplog.text + summary.line())


async def test_a_failed_endpoint_stops_the_job_before_any_request(tmp_path: Path) -> None:
    sim = create_app(FaultPlan(endpoint_state="failed", require_token=TOKEN))
    summary = await run_against(sim, tmp_path, hf_endpoint="sim-org/my-llm")
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert summary.fatal is not None and "sim-org/my-llm is failed" in summary.fatal
    assert sim.stats.total == 0
    assert sim.life.calls["resume"] == 0


async def test_cold_503s_by_their_answers_alone(tmp_path: Path) -> None:
    """``wake_timeout`` without ``hf_endpoint``: 503s before the first answer are the cold start; after
    it, a 503 is an ordinary retryable answer. X-Scale-Up-Timeout asks the proxy to hold instead."""
    endpoint = ScriptedEndpoint()
    endpoint.script = [httpx.Response(503, text="Service Unavailable")] * 3
    job = make_job(tmp_path, "https://xyz.endpoints.huggingface.cloud", wake_timeout="5m")
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    summary = await run_job(job, transport=endpoint.transport(), sleep=sleep, quiet=True)
    assert summary.exit_code == ExitCode.OK, summary.line()
    assert_all_ok_first_time(tmp_path / "out")
    assert endpoint.count == ROWS + 3
    assert waits == [0.5, 1.0, 2.0]
    assert {r.headers["x-scale-up-timeout"] for r in endpoint.requests} == {"9"}  # under timeout_s = 10


async def test_after_the_first_answer_a_503_is_an_ordinary_retry(tmp_path: Path) -> None:
    endpoint = ScriptedEndpoint()
    endpoint.script = [httpx.Response(200, json=chat_reply("first")), httpx.Response(503, text="down")]
    job = make_job(tmp_path, "https://xyz.endpoints.huggingface.cloud", wake_timeout="5m")

    async def sleep(seconds: float) -> None:
        return None

    summary = await run_job(job, transport=endpoint.transport(), sleep=sleep, quiet=True)
    assert summary.exit_code == ExitCode.OK
    assert sorted(read_manifest(tmp_path / "out")["attempts"].to_list()) == [1] * (ROWS - 1) + [2]


async def test_without_huggingface_hub_the_job_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("batchrun.hfapi.importlib.util.find_spec", lambda name: None)
    job = make_job(tmp_path, "https://xyz.endpoints.huggingface.cloud", hf_endpoint="org/llm")
    with pytest.raises(JobError, match=r"pip install 'batchrun\[hf\]'") as raised:
        await run_job(job, quiet=True)
    assert raised.value.exit_code == ExitCode.BAD_JOB
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hf_endpoint": "just-a-name"}, "endpoint.hf_endpoint: 'just-a-name': give namespace/name"),
        ({"pause_after": True}, "endpoint.pause_after: needs hf_endpoint"),
        ({"hf_endpoint": "o/n", "wake_timeout": "soon"}, "endpoint.wake_timeout: invalid duration"),
        ({"hf_endpoint": "o/n", "hf_api_url": "http://169.254.169.254/v2"}, "endpoint.hf_api_url: "),
    ],
)
def test_bad_wake_fields_are_one_line(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_job(tmp_path, "https://xyz.endpoints.huggingface.cloud", **fields)


def test_wake_defaults(tmp_path: Path) -> None:
    job = make_job(tmp_path, "https://xyz.endpoints.huggingface.cloud", hf_endpoint="org/llm")
    assert job.endpoint.wake is not None and job.endpoint.wake.timeout_s == 600
    assert make_job(tmp_path, "https://x.test", wake_timeout="90s").endpoint.wake.timeout_s == 90  # type: ignore[union-attr]
    assert make_job(tmp_path, "https://x.test").endpoint.wake is None


def test_a_503_is_a_cold_start_only_while_starting() -> None:
    assert read_pushback(503, b"", starting=True) == read_pushback(503, b"", starting=True)
    cold = read_pushback(503, b'{"error": "Service Unavailable"}', starting=True)
    assert cold is not None and cold.kind is Kind.COLD
    assert read_pushback(503, b'{"error": "Service Unavailable"}') is None
    assert read_pushback(500, b"", starting=True) is None


def test_the_simulators_cold_start_option() -> None:
    import argparse

    from batchrun.simulator.cli import add_simulate_arguments

    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    plan = plan_from_args(parser.parse_args(["--cold-start", "40s", "--no-manage-rights"]))
    assert (plan.endpoint_state, plan.cold_start_s, plan.manage_rights) == ("scaledToZero", 40.0, False)
    assert plan_from_args(parser.parse_args([])).endpoint_state == "running"


class FakeManager:
    """The management API as a list of states: each read takes the next (the last one stays)."""

    def __init__(self, *states: str) -> None:
        self.states = list(states)
        self.calls: list[str] = []

    def _next(self, call: str) -> EndpointState:
        self.calls.append(call)
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return EndpointState(state, "https://xyz.endpoints.huggingface.cloud")

    def get(self) -> EndpointState:
        return self._next("get")

    def resume(self) -> EndpointState:
        return self._next("resume")

    def pause(self) -> EndpointState:
        return self._next("pause")


async def test_the_progress_line_says_what_the_waking_endpoint_does() -> None:
    now = [0.0]
    said: list[str] = []
    manager = FakeManager("paused", "pending", "initializing", "initializing", "running")

    async def sleep(seconds: float) -> None:
        said.append(waker.describe())
        now[0] += seconds

    waker = Waker("org/llm", 600, manager, pause_after=True, sleep=sleep, clock=lambda: now[0])
    assert await waker.enter()
    await waker.prepare()
    assert manager.calls == ["get", "resume", "get", "get", "get"]
    assert said == [
        "waking endpoint org/llm (pending, 0 s)",
        "waking endpoint org/llm (initializing, 1 s)",
        "waking endpoint org/llm (initializing, 3 s)",
    ]
    waker.answered()
    waker.leave()
    assert waker.warm and waker.describe() == ""
    assert not await waker.enter()  # warm: no prober any more
    await waker.close()
    assert manager.calls[-1] == "pause"


async def test_the_wake_timeout_covers_the_management_wait() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    waker = Waker("org/llm", 10, FakeManager("scaledToZero", "initializing"), sleep=sleep, clock=lambda: now[0])
    assert await waker.enter()
    with pytest.raises(FatalError, match=r"org/llm did not wake within 10s \(still initializing"):
        await waker.prepare()
    waker.leave()
    with pytest.raises(FatalError):  # the others, waiting at the gate, stop too
        await waker.enter()


async def test_a_running_endpoint_is_not_said_to_wake_and_another_url_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="batchrun")
    manager = FakeManager("running")
    waker = Waker("org/llm", 600, manager, url="https://other.example/v1/chat/completions")
    assert await waker.enter()
    await waker.prepare()
    assert manager.calls == ["get"]
    assert waker.describe() == ""
    assert "is at https://xyz.endpoints.huggingface.cloud, the job sends to https://other.example" in caplog.text
    await waker.close()  # pause_after not asked for
    assert manager.calls == ["get"]
