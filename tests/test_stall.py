"""An endpoint that refuses for ever (issue: stall): the job stops after ``limits.give_up_after`` of
refusals with nothing accepted, or at once when the refusal announces a longer wait; exit 4, resumable.

The spell's bookkeeping with an injected clock; whole runs against the simulator (429 for every
request, with OpenAI's window headers as aimock's ``mock-429`` sends them), asserting on request
counts, the manifest and the exit code; the CLI's one line.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import JobWriter, questions, read_manifest

from batchrun.cli import main
from batchrun.dispatch.stall import RefusalSpell
from batchrun.errors import ExitCode, SpecError
from batchrun.runner import RunSummary, run_job
from batchrun.simulator import FaultPlan, Simulator, create_app, serve_in_thread
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
        "refused every request for 15m0s (HTTP 429: rate_limit_exceeded, x-ratelimit-remaining-tokens 0, "
        "reset 6m0s); run again to resume"
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
        "HTTP 429: x-ratelimit-remaining-requests 0, reset 23h59m0s; run again to resume"
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


async def run_on(sim: Simulator, write_job: JobWriter, rows: int, limits: str) -> RunSummary:
    job = write_job(
        rows=questions(rows),
        top='id_column = "id"',
        endpoint='base_url = "http://sim.test"\nmodel = "m"',
        limits=limits,
    )
    return await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)


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
    assert summary.fatal.endswith("run again to resume")
    assert summary.ok == 0 and summary.failed == 0  # every row stays to do


async def test_overload_answers_for_ever_are_given_up(write_job: JobWriter) -> None:
    """TGI's ``Model is overloaded`` on every request (a server that never frees a slot): the same stop."""
    sim = create_app(FaultPlan(triggers=[Trigger("what", "overloaded")]))
    limits = 'concurrency = 4\nmax_attempts = 100\nmax_retry_wait_s = 0.05\ngive_up_after = "0.3s"'
    summary = await run_on(sim, write_job, 1000, limits)
    assert summary.exit_code == ExitCode.INCOMPLETE, summary.line()
    assert sim.stats.by_outcome == {"overloaded": sim.stats.total} and sim.stats.total < 200
    assert summary.fatal is not None and "refused every request for" in summary.fatal
    assert "(HTTP 429: overloaded: Model is overloaded); run again to resume" in summary.fatal


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
        "x-ratelimit-remaining-requests 0, reset 23h59m0s; run again to resume"
    )
    assert said in out[0]
    assert out[0].endswith("exit 4: " + ExitCode.INCOMPLETE.meaning)
