"""An endpoint that refuses for ever (issue: stall): the job stops after ``limits.give_up_after`` of
refusals with nothing accepted, or at once when the refusal announces a longer wait; exit 4, resumable.

The spell's bookkeeping with an injected clock; whole runs against the simulator (429 for every
request, with OpenAI's window headers as aimock's ``mock-429`` sends them), asserting on request
counts, the manifest and the exit code; the CLI's one line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anyio
import httpx
import pytest
from helpers import JobWriter, chat_reply, questions, read_manifest, run_on

from batchrun.cli import main
from batchrun.dispatch.adaptive import AdaptiveRate
from batchrun.dispatch.stall import RefusalSpell, refusal
from batchrun.errors import ExitCode, SpecError
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, create_app, serve_in_thread
from batchrun.simulator.cli import add_simulate_arguments, plan_from_args
from batchrun.simulator.faults import Trigger
from batchrun.spec import load_job

pytestmark = pytest.mark.anyio

#: aimock's mock-429: every request refused, the token window used up, reset in 6 minutes
MOCK_429 = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
DAILY = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "23h59m0s"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the spell


def test_the_spell_counts_only_while_requests_are_tried() -> None:
    clock = Clock()
    spell = RefusalSpell(900, clock=clock)
    spell.begin()
    assert spell.refused("HTTP 429") is None
    clock.now += 600  # ten minutes refused, a request being tried all along
    spell.end()
    clock.now += 3600  # an hour idle (nothing to send, or the job stopped taking work): not counted
    spell.begin()
    assert spell.seconds() == 600
    clock.now += 299
    assert spell.refused("HTTP 429") is None
    clock.now += 1
    line = spell.refused("HTTP 429: rate_limit_exceeded, x-ratelimit-remaining-tokens 0, reset 6m0s")
    assert line == (
        "refused every request for 15m0s (HTTP 429: rate_limit_exceeded, x-ratelimit-remaining-tokens 0, reset 6m0s)"
    )


def test_an_accepted_answer_ends_the_spell() -> None:
    clock = Clock()
    spell = RefusalSpell(60, clock=clock)
    spell.begin()
    spell.refused("HTTP 429")
    clock.now += 59
    spell.accepted()
    assert spell.seconds() == 0 and not spell.refusing
    clock.now += 59  # accepted, then nothing refused: no spell
    assert spell.seconds() == 0
    assert spell.refused("HTTP 429") is None  # a new spell starts here
    clock.now += 59
    assert spell.refused("HTTP 429") is None
    clock.now += 1
    assert spell.refused("HTTP 429") is not None


def test_an_announced_wait_longer_than_the_spell_stops_at_once() -> None:
    spell = RefusalSpell(900, clock=Clock())
    spell.begin()
    assert spell.refused("HTTP 429", announced_s=360) is None  # 6 minutes: worth waiting for
    line = spell.refused("HTTP 429: x-ratelimit-remaining-requests 0, reset 23h59m0s", announced_s=86340)
    assert line == (
        "asks to wait 23h59m0s (limits.give_up_after is 15m0s): "
        "HTTP 429: x-ratelimit-remaining-requests 0, reset 23h59m0s"
    )


def test_give_up_after_zero_never_gives_up() -> None:
    clock = Clock()
    spell = RefusalSpell(0, clock=clock)
    spell.begin()
    for _ in range(100):
        clock.now += 3600
        assert spell.refused("HTTP 429", announced_s=86400) is None


@pytest.mark.parametrize(
    ("setting", "seconds"),
    [(None, 900.0), ('"15m"', 900.0), ('"2h"', 7200.0), ("30", 30.0), ('"0"', 0.0), ("false", 0.0)],
)
def test_the_setting(write_job: JobWriter, setting: str | None, seconds: float) -> None:
    limits = "concurrency = 4" + (f"\ngive_up_after = {setting}" if setting else "")
    job = load_job(write_job(rows=questions(1), limits=limits))
    assert job.limits.give_up_after == seconds


@pytest.mark.parametrize("setting", ['"soon"', "true", "-1"])
def test_a_bad_setting_names_the_field(write_job: JobWriter, setting: str) -> None:
    with pytest.raises(SpecError, match="give_up_after"):
        load_job(write_job(rows=questions(1), limits=f"give_up_after = {setting}"))


# ---------------------------------------------------------------- whole runs


async def test_a_daily_window_used_up_stops_at_once(write_job: JobWriter, tmp_path: Path) -> None:
    """The endpoint says no request passes before tomorrow: the job stops on the first refusals,
    naming the reset, and no row is failed for it (all stay to do)."""
    concurrency = 8
    sim = create_app(FaultPlan(rate_429=1.0, retry_after_s=None, headers_429=DAILY))
    summary = await run_on(sim, write_job, 200, f"concurrency = {concurrency}")
    assert summary.exit_code == ExitCode.INCOMPLETE == 4
    assert 1 <= sim.stats.total <= concurrency, sim.stats.by_outcome
    assert summary.fatal is not None and "asks to wait 23h59m0s" in summary.fatal
    assert "x-ratelimit-remaining-requests 0, reset 23h59m0s" in summary.fatal
    assert summary.failed == 0 and not list((tmp_path / "out" / "manifest").glob("part-*.parquet"))


async def test_an_endpoint_that_refuses_for_ever_is_given_up(write_job: JobWriter, tmp_path: Path) -> None:
    """mock-429 scaled down to a short spell (its window resets sooner than the spell, else it would
    stop at once): the run stops with exit 4 long before the table is done, the line saying what the
    endpoint said; the rows not tried stay to do."""
    rows = 1000
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "100ms"}
    sim = create_app(FaultPlan(rate_429=1.0, retry_after_s=0.05, headers_429=headers))
    limits = 'concurrency = 4\nmax_attempts = 100\nmax_retry_wait_s = 0.05\ngive_up_after = "0.3s"'
    summary = await run_on(sim, write_job, rows, limits)
    assert summary.exit_code == ExitCode.INCOMPLETE, summary.line()
    assert sim.stats.by_outcome == {"429": sim.stats.total}
    assert sim.stats.total < 200, sim.stats.total  # not a request per row, nor retries for ever
    assert summary.fatal is not None and "refused every request for" in summary.fatal
    assert "HTTP 429: rate_limit_exceeded" in summary.fatal and "reset 100ms" in summary.fatal
    assert summary.fatal.endswith("reset 100ms)")  # no "run again": the exit text says it
    assert summary.ok == 0 and summary.failed == 0  # every row stays to do


async def test_overload_answers_for_ever_are_given_up(write_job: JobWriter) -> None:
    """TGI's ``Model is overloaded`` on every request (a server that never frees a slot): the same stop."""
    sim = create_app(FaultPlan(triggers=[Trigger("what", "overloaded")]))
    limits = 'concurrency = 4\nmax_attempts = 100\nmax_retry_wait_s = 0.05\ngive_up_after = "0.3s"'
    summary = await run_on(sim, write_job, 1000, limits)
    assert summary.exit_code == ExitCode.INCOMPLETE, summary.line()
    assert sim.stats.by_outcome == {"overloaded": sim.stats.total} and sim.stats.total < 200
    assert summary.fatal is not None and "refused every request for" in summary.fatal
    assert summary.fatal.endswith("(HTTP 429: overloaded: Model is overloaded)")


async def test_given_up_disabled_keeps_the_old_way(write_job: JobWriter, tmp_path: Path) -> None:
    """``give_up_after = false``: rows fail one by one when their attempts run out, as before."""
    rows = 6
    sim = create_app(FaultPlan(rate_429=1.0, retry_after_s=0.01))
    summary = await run_on(sim, write_job, rows, "concurrency = 2\nmax_attempts = 2\ngive_up_after = false")
    assert summary.exit_code == ExitCode.FAILED_ROWS, summary.line()
    assert summary.fatal is None
    manifest = read_manifest(tmp_path / "out")
    assert manifest.height == rows and set(manifest["error_kind"]) == {"retryable_exhausted"}
    assert sim.stats.total == rows * 2


async def test_accepted_answers_keep_the_spell_from_growing(write_job: JobWriter, tmp_path: Path) -> None:
    """A window of 20 a second that refuses a good share of a burst: answers keep being accepted, so
    a spell far shorter than the run never ends it."""
    rows = 60
    sim = create_app(FaultPlan(max_rps=20, max_rps_counts_refused=True))
    limits = 'concurrency = 32\nmax_attempts = 30\ngive_up_after = "1.5s"'
    summary = await run_on(sim, write_job, rows, limits)
    assert summary.exit_code == ExitCode.OK, summary.line()
    assert read_manifest(tmp_path / "out").height == rows and sim.stats.by_outcome["429"] > 0


def test_the_cli_says_it_in_one_line(write_job: JobWriter, capsys: pytest.CaptureFixture[str]) -> None:
    sim = create_app(FaultPlan(rate_429=1.0, retry_after_s=None, headers_429=DAILY))
    with serve_in_thread(sim) as url:
        job = write_job(rows=questions(50), endpoint=f'base_url = "{url}"\nmodel = "m"')
        assert main(["run", str(job), "--quiet"]) == 4
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    said = (
        f"stopped early: openai-compatible ({url}/v1/chat/completions) answered: asks to wait 23h59m0s "
        "(limits.give_up_after is 15m0s): HTTP 429: rate_limit_exceeded: Rate limit reached (simulated), "
        "x-ratelimit-remaining-requests 0, reset 23h59m0s"
    )
    assert said in out[0]
    assert out[0].endswith("exit 4: " + ExitCode.INCOMPLETE.meaning)


# ---------------------------------------------------------------- after a window is used up


class Window:
    """A rate window as OpenAI reports it: ``size`` requests per ``period`` seconds (fixed windows from
    the first request), each answer carrying ``x-ratelimit-remaining-requests`` and
    ``x-ratelimit-reset-requests``; a request over the window is a 429. Records arrival times."""

    def __init__(self, size: int, period: float, latency: float = 0.02, used_up: bool = False) -> None:
        self.size, self.period, self.latency = size, period, latency
        self.used_up = used_up  # the first window was used up by another client before the run
        self.arrivals: list[float] = []
        self.refused = 0
        self.refused_later = 0  # after the first window
        self._start: float | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        self.arrivals.append(now)
        self._start = now if self._start is None else self._start
        index = int((now - self._start) / self.period)
        used = sum(1 for t in self.arrivals if int((t - self._start) / self.period) == index)
        used += self.size if self.used_up and index == 0 else 0
        reset = self._start + (index + 1) * self.period - now
        headers = {
            "x-ratelimit-remaining-requests": str(max(0, self.size - used)),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
        }
        await anyio.sleep(self.latency)
        if used > self.size:
            self.refused += 1
            self.refused_later += index > 0
            return httpx.Response(
                429, headers=headers, json={"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}
            )
        return httpx.Response(200, headers=headers, json=chat_reply("fine"))

    def busiest(self, after: float, bin_s: float = 0.1) -> int:
        """The most arrivals in one ``bin_s`` after the first window's reset."""
        start = (self._start or 0.0) + after
        bins: dict[int, int] = {}
        for t in self.arrivals:
            if t >= start:
                bins[int((t - start) / bin_s)] = bins.get(int((t - start) / bin_s), 0) + 1
        return max(bins.values(), default=0)


@pytest.mark.parametrize("used_up", [False, True])
async def test_workers_do_not_leave_together_after_a_reset(write_job: JobWriter, tmp_path: Path, used_up: bool) -> None:
    """16 a second, 16 workers, no rate set: the window is used up (by the run's first burst, or by
    another client before the run), every worker waits for the reset, and then they leave one at a
    time at the rate the endpoint accepted (or spread over the reset time), not all at the reset
    instant: before, 12 to 16 arrived in the first 100 ms after each reset."""
    window = Window(size=16, period=1.0, used_up=used_up)
    rows = 40
    job = write_job(rows=questions(rows), limits="concurrency = 16\nmax_attempts = 30\nmax_retry_wait_s = 2")
    summary = await run_job(load_job(job), transport=httpx.MockTransport(window), quiet=True)
    assert summary.exit_code == ExitCode.OK, summary.line()
    assert read_manifest(tmp_path / "out").height == rows
    assert window.busiest(after=window.period) <= 4, window.arrivals
    assert window.refused_later <= 2, window.arrivals
    assert "window(s) used up" in summary.notes


def test_the_restart_pace_after_a_window_used_up() -> None:
    clock = Clock()
    rate = AdaptiveRate(None, clock=clock)
    for _ in range(30):  # 30 answers in 3 s, the last one saying the window is used up
        clock.now += 0.1
        rate.on_success()
    assert rate.on_exhausted(0.5, workers=16) and rate.per_minute == pytest.approx(600)
    assert not rate.on_exhausted(0.5, workers=16)  # the others of the burst: one change
    assert rate.describe() == "adaptive rate 600/min after 1 window(s) used up, last on window used up, accepted 10.0/s"
    cold = AdaptiveRate(None, clock=Clock())  # nothing accepted yet: 16 workers over a 2 s reset
    assert cold.on_exhausted(2.0, workers=16) and cold.per_minute == pytest.approx(480)
    slower = AdaptiveRate(120, clock=clock)  # a configured rate slower than that already spaces them
    for _ in range(30):
        slower.on_success()
    assert not slower.on_exhausted(0.5, workers=16) and slower.per_minute == 120


def test_what_a_refusal_said() -> None:
    window = (360.0, "x-ratelimit-remaining-tokens 0, reset 6m0s")
    assert refusal(429, "rate_limit_exceeded: Rate limit exceeded.", 1.0, window) == (
        "HTTP 429: rate_limit_exceeded: Rate limit exceeded., x-ratelimit-remaining-tokens 0, reset 6m0s",
        360.0,
    )
    assert refusal(503, "overloaded", 30.0, None) == ("HTTP 503: overloaded, Retry-After 30s", 30.0)
    assert refusal(429, "Model is overloaded", None, None) == ("HTTP 429: Model is overloaded", None)


async def test_the_simulator_sends_429_headers() -> None:
    """``batchrun simulate --rate-429 1 --header-429 'x-ratelimit-remaining-tokens: 0' ...``: aimock's mock-429."""
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    args = ["--rate-429", "1", "--header-429", "x-ratelimit-remaining-tokens: 0"]
    plan = plan_from_args(parser.parse_args([*args, "--header-429", "x-ratelimit-reset-tokens:6m0s"]))
    assert plan.headers_429 == MOCK_429
    with pytest.raises(SystemExit):
        parser.parse_args(["--header-429", "no colon"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(plan))) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post("http://sim.test/v1/chat/completions", json=body)
    assert response.status_code == 429 and response.headers["x-ratelimit-reset-tokens"] == "6m0s"
    assert response.headers["x-ratelimit-remaining-tokens"] == "0" and response.headers["retry-after"] == "1"
