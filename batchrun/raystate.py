"""The state a ``--ray`` run shares between its processes, without Ray itself (so it is tested
plainly): the ``Coordinator`` (the actor's class: the job's send slots and the shards' counts), the
``Snapshot`` of progress the driver prints, and the ``Outcome`` that sums the shards' summaries."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .dispatch.limits import SlotSchedule
from .errors import ExitCode
from .summary import RunSummary


@dataclass(slots=True)
class ShardCounts:
    ok: int = 0
    failed: int = 0
    in_flight: int = 0
    to_do: int = 0


@dataclass(slots=True)
class Snapshot:
    """The job's progress as the shards last reported it; ``pids``: each shard's live attempt."""

    shards: int
    counts: dict[int, ShardCounts] = field(default_factory=dict)
    pids: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def line(self, finished: set[int]) -> str:
        ok = sum(c.ok for c in self.counts.values())
        failed = sum(c.failed for c in self.counts.values())
        in_flight = sum(c.in_flight for c in self.counts.values())
        to_do = sum(c.to_do for c in self.counts.values())
        rate = (ok + failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"ray: {len(set(self.pids) - finished)} of {self.shards} shards running, {len(finished)} finished; "
            f"{ok} ok, {failed} failed, in flight {in_flight}, {rate:.1f}/s, about {to_do} to do"
        )


class Coordinator:
    """The Ray actor: each endpoint's send slots for the whole job, and the shards' counts. The
    counts of a shard's dead attempts are kept: what they finished is done."""

    def __init__(self, shards: int, rates: dict[str, float]) -> None:
        self._schedules = {name: SlotSchedule(rate) for name, rate in rates.items()}
        self._shards = shards
        self._attempts: dict[int, dict[int, ShardCounts]] = {}
        self._started = time.monotonic()

    def slots(self, endpoint: str, count: int) -> list[float]:
        return self._schedules[endpoint].take(count)

    def grant(self, schedule: str, amount: float) -> float:
        return self._schedules[schedule].grant(amount)

    def report(self, shard: int, pid: int, counts: ShardCounts) -> None:
        self._attempts.setdefault(shard, {})[pid] = counts

    def snapshot(self) -> Snapshot:
        snap = Snapshot(self._shards, elapsed_s=time.monotonic() - self._started)
        for shard, attempts in self._attempts.items():
            latest = list(attempts)[-1]
            snap.pids[shard] = latest
            snap.counts[shard] = ShardCounts(
                ok=sum(a.ok for a in attempts.values()),
                failed=sum(a.failed for a in attempts.values()),
                in_flight=attempts[latest].in_flight,
                to_do=attempts[latest].to_do,
            )
        return snap


@dataclass(slots=True)
class Outcome:
    """Each shard's summary, or why it has none (its task failed for good)."""

    shards: int
    summaries: dict[int, RunSummary] = field(default_factory=dict)
    errors: dict[int, tuple[str, ExitCode]] = field(default_factory=dict)

    @property
    def exit_code(self) -> ExitCode:
        """The worst shard's (a shard lost for good leaves the job incomplete)."""
        codes = [s.exit_code for s in self.summaries.values()] + [code for _, code in self.errors.values()]
        return max(codes, key=_severity, default=ExitCode.OK)

    def lines(self) -> list[str]:
        """Each shard's summary line, then the job's: the shards' counts summed, the worst exit code."""
        lines = []
        for k in range(self.shards):
            if k in self.summaries:
                lines.append(f"shard {k}/{self.shards}: {self.summaries[k].line()}")
            elif k in self.errors:
                lines.append(f"shard {k}/{self.shards}: error: {self.errors[k][0]}")
        ok = sum(s.ok for s in self.summaries.values())
        failed = sum(s.failed for s in self.summaries.values())
        sent = sum(s.sent for s in self.summaries.values())
        code = self.exit_code
        lines.append(
            f"ray, {self.shards} shards: finished {ok + failed} requests ({ok} ok, {failed} failed) in the shards' "
            f"last runs; {sent} HTTP requests sent; exit {int(code)}: {code.meaning}"
        )
        return lines


def _severity(code: ExitCode) -> int:
    order = (ExitCode.OK, ExitCode.FAILED_ROWS, ExitCode.INCOMPLETE, ExitCode.LOCKED, ExitCode.BAD_JOB)
    return order.index(code)
