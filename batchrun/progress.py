"""An observer of the run: counts, rate and ETA, what is in flight and being retried, and why
requests failed. A live bar on a terminal; on cron, a start line, then a plain line every
``interval`` seconds (from a clock, not from results: a run whose requests are all being retried
still says so), so logs stay short."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio

from .log import event
from .models import Result
from .plan.planner import PlanCounts
from .summary import Failures

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

BAR_REFRESH_S = 0.25  # the bar's counts are updated on this clock, not for each result
LINE_INTERVAL_S = 10.0  # a plain progress line this often


class Progress:
    def __init__(
        self,
        total: int,
        *,
        plan: PlanCounts | None = None,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        interval: float | None = None,
        quiet: bool = False,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.plan = plan if plan is not None else PlanCounts()  # the planner's, as it plans
        self.ok = 0
        self.failed = 0
        self.failures = Failures()
        self.quiet = quiet
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval = LINE_INTERVAL_S if interval is None else interval
        self._start = time.monotonic()
        self.notes: Callable[[], str] = lambda: ""  # e.g. the adaptive rate, when it has cut
        self.activity: Callable[[], tuple[int, int]] = lambda: (0, 0)  # requests in flight, retries so far
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def start(self, job: str = "", output: Path | str | None = None, *, rows: int = 0, exact: bool = True) -> None:
        """Say what the run is about to do (the start line, or a JSON ``start`` event), then show
        the bar on a terminal. ``exact``: every row's work is known already (else ``to do`` is an
        upper bound, until the rows past the plan index are checked against the manifest)."""
        if self.quiet:
            return
        todo = max(0, self.total - self.done)
        event(
            f"run {job} -> {output}: {rows} rows, "
            + (
                f"{todo} requests to do, {self.done} already done"
                if exact
                else f"up to {todo} requests to do ({self.done} known done; the rest are matched "
                "against the manifest as they are read)"
            ),
            event="start",
            job=job,
            output=str(output),
            rows=rows,
            requests=self.total,
            already_done=self.done,
            to_do=todo,
            to_do_exact=exact,
        )
        if not self.interactive:
            return
        # rich only for the live bar: cron, --quiet and JSON logs do not pay for importing it
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "ok {task.fields[ok]}  failed {task.fields[failed]}  in flight {task.fields[in_flight]}  "
                "retries {task.fields[retries]}  {task.fields[rate]}/s"
            ),
            TimeRemainingColumn(),
            TextColumn("{task.fields[notes]}"),
            console=Console(file=self.stream),
            transient=False,
        )
        self._task = self._bar.add_task(
            "requests", total=self.total, completed=self.done, ok=0, failed=0, in_flight=0, retries=0, rate=0, notes=""
        )
        self._bar.start()

    @property
    def done(self) -> int:
        """Requests finished: answered in this run, or found done, shared or skipped by the plan."""
        return self.ok + self.failed + self.plan.done + self.plan.shared + self.plan.skipped + self.plan.other_shards

    def rate(self) -> float:
        elapsed = time.monotonic() - self._start
        return (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0

    def on_result(self, result: Result) -> None:
        if result.status == "ok":
            self.ok += 1
        else:
            self.failed += 1
            self.failures.add(result)

    async def tick(self) -> None:
        """Until cancelled: refresh the bar, or log a progress line every ``interval`` seconds."""
        if self.quiet:
            return
        while True:
            await anyio.sleep(BAR_REFRESH_S if self.interactive else self.interval)
            if self._bar is not None:
                self._refresh_bar()
            elif not self.interactive:
                in_flight, retries = self.activity()
                event(
                    self.line(),
                    event="progress",
                    done=self.done,
                    total=self.total,
                    ok=self.ok,
                    failed=self.failed,
                    in_flight=in_flight,
                    retries=retries,
                )

    def _refresh_bar(self) -> None:
        if self._bar is not None and self._task is not None:
            in_flight, retries = self.activity()
            self._bar.update(
                self._task,
                completed=self.done,
                ok=self.ok,
                failed=self.failed,
                in_flight=in_flight,
                retries=retries,
                rate=f"{self.rate():.1f}",
                notes=self.notes(),
            )

    def line(self) -> str:
        rate = self.rate()
        left = max(0, self.total - self.done)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        in_flight, retries = self.activity()
        notes = self.notes()
        line = (
            f"progress: {self.done}/{self.total} done, ok {self.ok}, failed {self.failed}, "
            f"in flight {in_flight}, retries {retries}, {rate:.1f}/s, eta {eta}"
        )
        return f"{line}; {notes}" if notes else line

    def stop(self) -> None:
        if self._bar is not None:
            self._refresh_bar()
            self._bar.stop()
            self._bar = None
