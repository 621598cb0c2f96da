"""Whole runs against the simulator, one per fault: the runner's answer to each thing that goes wrong.

Every transient fault is forced on chosen rows (``FaultPlan.triggers``), so each test knows exactly how
many requests must reach the simulator: one per row plus one per forced fault. Retry waits are real but
small (the plan's ``retry_after_s`` / ``estimated_time_s`` and the job's ``max_retry_wait_s``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import anyio
import httpx
import polars as pl
import pytest
from helpers import JobWriter, questions, read_manifest

from batchrun.errors import ExitCode
from batchrun.runner import RunSummary, run_job
from batchrun.simulator import FaultPlan, Simulator, Trigger, create_app, expected_chat_text, serve
from batchrun.spec import load_job

pytestmark = pytest.mark.anyio

Via = Literal["asgi", "socket"]

MODEL = "m"
SERVER_WAIT = 0.05  # the simulator's Retry-After and estimated_time
#: Every fault the runner must retry until the row is ok (the chat route's non-streaming faults).
TRANSIENT = ["429", "500", "502", "503", "loading", "reset", "html", "truncated", "wrong_content_type"]
#: Faults whose answer says how long to wait: the runner must wait exactly that (under the cap).
SERVER_TIMED = {"429", "loading"}
#: A rate ceiling far above anything these tests send. The adaptive rate halves the *ceiling* on a 429;
#: without one it halves the load it measured, which under-counts in a run less than a second old and
#: would slow the rest of these short runs to a few requests a second. (The max_rps test runs without one.)
CEILING = 600_000


class RecordingSleep:
    """A real sleep that remembers each wait the runner asked for (retry waits and the shared cool-down)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await anyio.sleep(seconds)


class WatchingTransport(httpx.AsyncBaseTransport):
    """Passes requests on; notes when each was sent and when each response reached the client, with its
    status. ``delays`` holds a request back in transit when its body holds the prompt (a slow network)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, delays: Mapping[str, float] | None = None) -> None:
        self.inner = inner
        self.delays = {json.dumps(p).encode(): d for p, d in (delays or {}).items()}
        self.sent: list[float] = []
        self.responses: list[tuple[float, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(time.monotonic())
        for needle, delay in self.delays.items():
            if needle in request.content:
                await anyio.sleep(delay)
        response = await self.inner.handle_async_request(request)
        self.responses.append((time.monotonic(), response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def limits_toml(
    concurrency: int = 4,
    max_attempts: int = 5,
    max_retry_wait_s: float = 0.1,
    requests_per_minute: float | None = CEILING,
) -> str:
    text = f"concurrency = {concurrency}\nmax_attempts = {max_attempts}\nmax_retry_wait_s = {max_retry_wait_s}\n"
    if requests_per_minute is not None:
        text += f"requests_per_minute = {requests_per_minute}\n"
    return text + "timeout_s = 10"


def prompt(i: int) -> str:
    return questions(1, start=i)[0]["question"]


def expected(i: int) -> str:
    return expected_chat_text(MODEL, [{"role": "user", "content": prompt(i)}])


def fast_plan(**changes: object) -> FaultPlan:
    return FaultPlan(retry_after_s=SERVER_WAIT, estimated_time_s=SERVER_WAIT, **changes)  # type: ignore[arg-type]


async def run_on(
    sim: Simulator,
    write_job: JobWriter,
    *,
    rows: int,
    via: Via = "asgi",
    limits: str = "",
    endpoint: str = "",
    sleep: RecordingSleep | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunSummary:
    """Run a chat job over ``rows`` questions against ``sim``: in-process, or over a loopback socket with
    the job's ``base_url`` set to the served address (no transport of ours in between)."""

    async def go(base_url: str, chosen: httpx.AsyncBaseTransport | None) -> RunSummary:
        job = write_job(
            rows=questions(rows),
            top='id_column = "id"',
            endpoint=f'base_url = "{base_url}"\nmodel = "{MODEL}"\n{endpoint}',
            limits=limits or limits_toml(),
        )
        return await run_job(load_job(job), transport=chosen, quiet=True, sleep=sleep or anyio.sleep)

    if via == "asgi":
        return await go("http://sim.test", transport or httpx.ASGITransport(app=sim))
    async with serve(sim) as url:
        return await go(url, transport)


def by_row(manifest: pl.DataFrame, column: str) -> dict[str, object]:
    return dict(zip(manifest["row_id"], manifest[column], strict=True))


def assert_all_ok(manifest: pl.DataFrame, rows: int, attempts: Mapping[int, int] | None = None) -> None:
    assert manifest.height == rows
    assert set(manifest["status"]) == {"ok"}
    assert by_row(manifest, "response_text") == {f"q{i}": expected(i) for i in range(rows)}
    assert set(manifest["http_status"]) == {200}
    assert set(manifest["finish_reason"]) == {"stop"}
    assert by_row(manifest, "completion_tokens") == {f"q{i}": len(expected(i).split()) for i in range(rows)}
    assert by_row(manifest, "prompt_tokens") == {f"q{i}": len(prompt(i).split()) for i in range(rows)}
    if attempts is not None:
        assert by_row(manifest, "attempts") == {f"q{i}": (attempts or {}).get(i, 1) for i in range(rows)}


@pytest.mark.parametrize(
    ("kind", "via"),
    [(kind, "asgi") for kind in TRANSIENT] + [("reset", "socket")],  # every kind over a socket: the next test
)
async def test_transient_fault_is_retried_until_every_row_is_ok(
    kind: str, via: Via, write_job: JobWriter, tmp_path: Path
) -> None:
    rows = 8
    sim = create_app(fast_plan(triggers=[Trigger(prompt(2), kind, times=1), Trigger(prompt(5), kind, times=2)]))
    sleep = RecordingSleep()
    summary = await run_on(sim, write_job, rows=rows, via=via, sleep=sleep)

    assert summary.exit_code == ExitCode.OK, summary.line()
    assert (summary.ok, summary.failed) == (rows, 0)
    assert_all_ok(read_manifest(tmp_path / "out"), rows, attempts={2: 2, 5: 3})
    assert sim.stats.total == rows + 3 == summary.sent
    assert sim.stats.by_outcome == {"ok": rows, kind: 3}
    assert sorted(sim.stats.prompts(kind)) == [prompt(2), prompt(5), prompt(5)]
    if kind in SERVER_TIMED:  # the wait the server named, not a backoff of our own
        assert sleep.calls.count(SERVER_WAIT) >= 3, sleep.calls
    assert all(0 <= s <= 0.1 for s in sleep.calls), sleep.calls  # max_retry_wait_s caps every wait


@pytest.mark.parametrize("kind", ["stream_cut", "midstream_error", "429", "loading", "reset", "html"])
async def test_streamed_job_retries_each_fault_until_every_row_is_ok(
    kind: str, write_job: JobWriter, tmp_path: Path
) -> None:
    """The same with ``stream = true``: a stream cut short or ended by an error event is never kept."""
    rows = 8
    sim = create_app(fast_plan(triggers=[Trigger(prompt(2), kind, times=1), Trigger(prompt(5), kind, times=2)]))
    summary = await run_on(sim, write_job, rows=rows, endpoint="stream = true")

    assert summary.exit_code == ExitCode.OK, summary.line()
    manifest = read_manifest(tmp_path / "out")
    assert_all_ok(manifest, rows, attempts={2: 2, 5: 3})
    assert manifest["ttft_ms"].null_count() == 0
    assert sim.stats.total == rows + 3 == summary.sent
    assert sim.stats.by_outcome == {"ok": rows, kind: 3}
    assert all(record.stream for record in sim.stats.records)


async def test_a_server_that_ignores_stream_true_is_read_as_json(write_job: JobWriter, tmp_path: Path) -> None:
    """``wrong_content_type`` on a stream is a plain JSON answer: usable as it is, so not sent again."""
    rows = 8
    triggers = [Trigger(prompt(2), "wrong_content_type", times=1), Trigger(prompt(5), "wrong_content_type", times=1)]
    sim = create_app(fast_plan(triggers=triggers))
    summary = await run_on(sim, write_job, rows=rows, endpoint="stream = true")

    assert summary.exit_code == ExitCode.OK, summary.line()
    manifest = read_manifest(tmp_path / "out")
    assert_all_ok(manifest, rows, attempts={})
    assert sim.stats.total == rows == summary.sent
    assert sim.stats.by_outcome == {"ok": rows - 2, "wrong_content_type": 2}
    no_ttft = manifest.filter(pl.col("ttft_ms").is_null())["row_id"]
    assert sorted(no_ttft) == ["q2", "q5"]  # no stream, so no time to first token


async def test_every_fault_in_one_job(write_job: JobWriter, tmp_path: Path) -> None:
    rows = 24
    triggers = [Trigger(prompt(2 * i + 1), kind, times=1) for i, kind in enumerate(TRANSIENT)]
    sim = create_app(fast_plan(triggers=triggers))
    summary = await run_on(sim, write_job, rows=rows, via="socket", limits=limits_toml(concurrency=8))

    assert summary.exit_code == ExitCode.OK, summary.line()
    assert_all_ok(read_manifest(tmp_path / "out"), rows, attempts={2 * i + 1: 2 for i in range(len(TRANSIENT))})
    assert sim.stats.total == rows + len(TRANSIENT) == summary.sent
    assert sim.stats.by_outcome == {"ok": rows, **dict.fromkeys(TRANSIENT, 1)}


async def test_random_faults_from_a_seeded_plan(write_job: JobWriter, tmp_path: Path) -> None:
    """Faults drawn at random (one worker, so the draws are reproducible): all rows end ok anyway."""
    rates = {f"rate_{k}": 0.04 for k in ("429", "500", "502", "503", "loading", "reset", "html", "truncated")}
    sim = create_app(fast_plan(seed=7, rate_wrong_content_type=0.03, **rates))
    rows = 20
    summary = await run_on(sim, write_job, rows=rows, limits=limits_toml(1, 10, 0.05))

    assert summary.exit_code == ExitCode.OK, summary.line()
    manifest = read_manifest(tmp_path / "out")
    assert_all_ok(manifest, rows)
    faults = sim.stats.total - rows
    assert faults >= 3, sim.stats.by_outcome  # seed 7 draws a handful
    assert sim.stats.by_outcome["ok"] == rows
    assert manifest["attempts"].sum() == sim.stats.total == summary.sent


async def test_its_own_rate_limit_is_waited_out(write_job: JobWriter, tmp_path: Path) -> None:
    """``max_rps``: the simulator answers 429 with the time until its window has room."""
    rows, max_rps = 16, 10
    sim = create_app(FaultPlan(max_rps=max_rps))
    summary = await run_on(sim, write_job, rows=rows, limits=limits_toml(rows, 10, 2, requests_per_minute=None))

    assert summary.exit_code == ExitCode.OK, summary.line()
    manifest = read_manifest(tmp_path / "out")
    assert_all_ok(manifest, rows)
    turned_away = sim.stats.by_outcome["429"]
    assert turned_away >= 1  # more than max_rps arrive at once (how many more: the shared cool-down decides)
    assert sim.stats.by_outcome == {"ok": rows, "429": turned_away}
    assert sim.stats.total == rows + turned_away == summary.sent == manifest["attempts"].sum()


async def test_sustained_429s_pause_every_worker(write_job: JobWriter, tmp_path: Path) -> None:
    """The shared cool-down: once 429s are sustained (eight refused rows in a row after eight
    successes: over 10 % of the answers), no worker sends until its Retry-After is up. (Issue 15 on
    purpose: one 429 among many successes no longer pauses everyone; the test below shows that.)"""
    rows, concurrency, pause = 64, 8, 0.3
    refused = range(8, 16)
    triggers = [Trigger(prompt(i), "429", times=1) for i in refused]
    sim = create_app(FaultPlan(latency_ms=20, retry_after_s=pause, triggers=triggers))
    watch = WatchingTransport(httpx.ASGITransport(app=sim))
    summary = await run_on(sim, write_job, rows=rows, limits=limits_toml(concurrency, 3, 5), transport=watch)

    assert summary.exit_code == ExitCode.OK, summary.line()
    assert_all_ok(read_manifest(tmp_path / "out"), rows, attempts=dict.fromkeys(refused, 2))
    assert sim.stats.total == rows + len(refused)
    told = [t for t, status in watch.responses if status == 429][-1]  # the last: sustained by then
    # Requests already on their way when the 429 came back may still land just after it (margin 80 ms);
    # then nothing may arrive until Retry-After is up (margin 50 ms).
    during = [t - told for t in sim.stats.arrivals if told + 0.08 < t < told + pause - 0.05]
    assert during == [], f"requests arrived during the cool-down, at +{during} s"
    later = [t for t in sim.stats.arrivals if t >= told + pause - 0.05]
    assert len(later) > concurrency  # the other workers had work, and held it back


async def test_one_429_among_successes_delays_only_its_own_row(write_job: JobWriter, tmp_path: Path) -> None:
    """A sporadic 429 is no limit: its row waits out its Retry-After and is sent again, while the other
    workers keep sending, and the rate is not cut."""
    rows, concurrency, pause = 64, 8, 0.3
    sim = create_app(FaultPlan(latency_ms=20, retry_after_s=pause, triggers=[Trigger(prompt(24), "429", times=1)]))
    watch = WatchingTransport(httpx.ASGITransport(app=sim))
    summary = await run_on(sim, write_job, rows=rows, limits=limits_toml(concurrency, 3, 5), transport=watch)

    assert summary.exit_code == ExitCode.OK, summary.line()
    assert_all_ok(read_manifest(tmp_path / "out"), rows, attempts={24: 2})
    assert sim.stats.total == rows + 1
    (told,) = [t for t, status in watch.responses if status == 429]
    during = [t for t in sim.stats.arrivals if told < t < told + pause - 0.05]
    assert len(during) > concurrency  # the others went on sending through that row's wait
    assert "cut" not in summary.notes


async def test_a_second_429_extends_the_pause_for_workers_already_waiting(write_job: JobWriter, tmp_path: Path) -> None:
    """The first three requests are refused (nothing succeeded yet: sustained), the last two slow on the
    wire, their 429s 150 ms apart: no worker sends until the last Retry-After is up, including the
    workers already waiting out the first ones."""
    rows, pause = 30, 0.4
    triggers = [Trigger(prompt(i), "429", times=1) for i in range(3)]
    sim = create_app(FaultPlan(latency_ms=10, retry_after_s=pause, triggers=triggers))
    watch = WatchingTransport(httpx.ASGITransport(app=sim), delays={prompt(0): 0.05, prompt(1): 0.2})
    summary = await run_on(sim, write_job, rows=rows, limits=limits_toml(3, 3, 5), transport=watch)

    assert summary.exit_code == ExitCode.OK, summary.line()
    assert_all_ok(read_manifest(tmp_path / "out"), rows, attempts={0: 2, 1: 2, 2: 2})
    assert sim.stats.total == rows + 3
    told = [t for t, status in watch.responses if status == 429]
    assert len(told) == 3 and told[2] - told[1] > 0.1
    early = [round(t - told[2], 3) for t in watch.sent if told[2] + 0.02 < t < told[2] + pause - 0.02]
    assert early == [], f"requests sent during the extended cool-down, at +{early} s after the last 429"


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        ("500", 500, "HTTP 500: Internal server error (simulated)"),
        ("503", 503, "HTTP 503: Service unavailable (simulated)"),
        ("reset", None, "ReadError: [Errno 104] Connection reset by peer (simulated)"),
        ("html", None, "invalid JSON in a 2xx response: <!DOCTYPE html>"),
    ],
)
async def test_a_fault_that_never_clears_fails_its_row_and_the_next_run_retries_it(
    kind: str, status: int | None, error: str, write_job: JobWriter, tmp_path: Path
) -> None:
    rows, attempts = 4, 3
    sim = create_app(fast_plan(triggers=[Trigger(prompt(2), kind)]))
    summary = await run_on(sim, write_job, rows=rows, limits=limits_toml(4, attempts, 0.05))

    assert summary.exit_code == ExitCode.FAILED_ROWS, summary.line()
    assert (summary.ok, summary.failed) == (rows - 1, 1)
    manifest = read_manifest(tmp_path / "out")
    failed = manifest.filter(pl.col("status") == "failed").row(0, named=True)
    assert (failed["row_id"], failed["error_kind"], failed["attempts"]) == ("q2", "retryable_exhausted", attempts)
    assert failed["http_status"] == status
    assert failed["error"].startswith(error), failed["error"]
    assert sim.stats.total == rows - 1 + attempts == summary.sent
    assert sim.stats.by_outcome == {"ok": rows - 1, kind: attempts}

    sim.plan.triggers.clear()  # the endpoint recovers: the next run sends that row, and only it
    again = await run_on(sim, write_job, rows=rows, limits=limits_toml(4, attempts, 0.05))
    assert again.exit_code == ExitCode.OK, again.line()
    assert (again.ok, again.counts.done) == (1, rows - 1)
    assert sim.stats.total == rows + attempts
    assert_all_ok(read_manifest(tmp_path / "out").filter(pl.col("status") == "ok"), rows)


async def test_403_mid_run_stops_keeps_what_finished_and_the_next_run_does_the_rest(
    write_job: JobWriter, tmp_path: Path
) -> None:
    rows, concurrency = 60, 4
    sim = create_app(fast_plan(triggers=[Trigger(prompt(30), "403", times=1)]))
    first = await run_on(sim, write_job, rows=rows, limits=limits_toml(concurrency))

    assert first.exit_code == ExitCode.INCOMPLETE, first.line()
    assert first.fatal is not None and "403" in first.fatal
    sent = sim.stats.total
    assert sim.stats.by_outcome["403"] == 1
    assert sent <= 31 + 2 * concurrency  # rows 0-30, and what the other workers had in flight
    kept = read_manifest(tmp_path / "out")
    assert set(kept["status"]) == {"ok"}  # the 403 is the endpoint's refusal, not a failure of row 30
    assert "q30" not in set(kept["row_id"])
    assert kept.height >= 30 - concurrency
    assert by_row(kept, "response_text") == {r: expected(int(str(r)[1:])) for r in kept["row_id"]}

    second = await run_on(sim, write_job, rows=rows, limits=limits_toml(concurrency))
    assert second.exit_code == ExitCode.OK, second.line()
    assert second.counts.done == kept.height
    assert sim.stats.total == sent + rows - kept.height
    assert_all_ok(read_manifest(tmp_path / "out"), rows)


async def test_400_fails_that_row_for_good_and_exits_3(write_job: JobWriter, tmp_path: Path) -> None:
    rows = 6
    sim = create_app(fast_plan(triggers=[Trigger(prompt(1), "400")]))
    summary = await run_on(sim, write_job, rows=rows)

    assert summary.exit_code == ExitCode.FAILED_ROWS == 3
    assert (summary.ok, summary.failed) == (rows - 1, 1)
    manifest = read_manifest(tmp_path / "out")
    failed = manifest.filter(pl.col("status") == "failed").row(0, named=True)
    assert (failed["row_id"], failed["error_kind"], failed["http_status"], failed["attempts"]) == (
        "q1",
        "permanent",
        400,
        1,
    )
    assert failed["error"] == "HTTP 400: Bad request (simulated)"
    assert failed["response_text"] is None
    ok = manifest.filter(pl.col("status") == "ok")
    assert by_row(ok, "response_text") == {f"q{i}": expected(i) for i in range(rows) if i != 1}
    assert sim.stats.total == rows == summary.sent
    assert sim.stats.by_outcome == {"ok": rows - 1, "400": 1}

    again = await run_on(sim, write_job, rows=rows)  # a permanent failure is not sent again
    assert again.exit_code == ExitCode.FAILED_ROWS
    assert again.previously_failed == 1
    assert sim.stats.total == rows


@pytest.mark.parametrize("via", ["asgi", "socket"])
@pytest.mark.parametrize("token", [None, "sk-sim-wrong-19c2f"])
async def test_401_stops_the_job_within_one_request_per_worker(
    token: str | None, via: Via, write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    right = "sk-sim-right-7f3a0"
    rows, concurrency = 50, 4
    sim = create_app(fast_plan(require_token=right))
    endpoint = ""
    if token is not None:
        monkeypatch.setenv("TEST_TOKEN", token)
        endpoint = 'api_key_env = "TEST_TOKEN"'
    summary = await run_on(sim, write_job, rows=rows, via=via, endpoint=endpoint, limits=limits_toml(concurrency))

    assert summary.exit_code == ExitCode.INCOMPLETE == 4
    assert summary.fatal is not None and "401" in summary.fatal
    sent = sim.stats.total
    assert 1 <= sent <= concurrency
    assert sim.stats.by_outcome == {"401": sent}
    assert sim.stats.auth_present == [token is not None] * sent
    assert not list((tmp_path / "out" / "manifest").glob("part-*.parquet"))  # nothing recorded as done

    monkeypatch.setenv("TEST_TOKEN", right)  # fixed: the next run does every row
    fixed = await run_on(
        sim, write_job, rows=rows, via=via, endpoint='api_key_env = "TEST_TOKEN"', limits=limits_toml(concurrency)
    )
    assert fixed.exit_code == ExitCode.OK, fixed.line()
    assert_all_ok(read_manifest(tmp_path / "out"), rows)
    assert sim.stats.total == sent + rows
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert right.encode() not in data and b"sk-sim-wrong" not in data
