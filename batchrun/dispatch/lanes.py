"""Several endpoints in one job: one lane each, a lane being a whole pool (its own producer,
workers, limiter, cool-down and health), so a 429 storm on one never pauses another, and a fatal
answer cancels only its own lane (its requests not yet sent stay to do) while the others finish.

Each lane plans the input on its own: sharing one producer would make the fastest endpoint wait,
once the slowest one's queue is full, for the slowest (head-of-line blocking). The cost is one
read and render of the input per endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..errors import BatchrunError
from ..models import Result
from .pool import Pool, Producer


class Lanes:
    """The pools of a job's endpoints, run side by side, stopped together (signals, deadline, a
    sink that cannot write); ``stopped`` is what stopped them all, ``closed`` the lanes a fatal
    answer closed."""

    def __init__(self, names: Sequence[str], pools: Sequence[Pool]) -> None:
        self.names = list(names)
        self.pools = list(pools)
        self.stopped: str | None = None

    async def run(self, producers: Sequence[Producer], results: MemoryObjectSendStream[Result]) -> None:
        async with results, anyio.create_task_group() as tg:
            for pool, produce in zip(self.pools, producers, strict=True):
                tg.start_soon(pool.run, produce, results.clone())

    def stop(self, reason: str, grace: float) -> None:
        self.stopped = self.stopped or reason
        for pool in self.pools:
            pool.stop(reason, grace)

    def cancel(self, reason: str) -> None:
        self.stopped = self.stopped or reason
        for pool in self.pools:
            pool.cancel(reason)

    @property
    def in_flight(self) -> int:
        return sum(pool.in_flight for pool in self.pools)

    @property
    def error(self) -> BatchrunError | None:
        return next((pool.error for pool in self.pools if pool.error is not None), None)

    @property
    def incomplete(self) -> bool:
        """Whether any lane stopped before its work was done."""
        return self.stopped is not None or any(pool.stopped is not None for pool in self.pools)

    def closed(self) -> list[tuple[str, str]]:
        """The lanes a fatal answer closed: (endpoint name, the answer)."""
        return [(name, str(pool.fatal)) for name, pool in zip(self.names, self.pools, strict=True) if pool.fatal]


@dataclass(slots=True)
class LaneTally:
    """Each endpoint's ok and failed counts this run, for the progress line."""

    ok: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    def on_result(self, result: Result) -> None:
        name = result.request.endpoint or ""
        counts = self.ok if result.status == "ok" else self.failed
        counts[name] = counts.get(name, 0) + 1

    def describe(self, names: Sequence[str], rates: Sequence[str], elapsed_s: float) -> str:
        parts = []
        for name, rate in zip(names, rates, strict=True):
            ok, failed = self.ok.get(name, 0), self.failed.get(name, 0)
            if not (ok or failed or rate):
                continue  # nothing to say (a finished job: nothing sent)
            per_s = (ok + failed) / elapsed_s if elapsed_s > 0 else 0.0
            part = f"{name} {ok} ok" + (f" {failed} failed" if failed else "") + f" {per_s:.1f}/s"
            parts.append(part + (f" ({rate})" if rate else ""))
        return "; ".join(parts)
