"""An observer of the run: counts, rate and ETA. A live bar on a terminal; on cron, a plain
line every ``interval`` seconds, so logs stay short."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from .log import event
from .models import Result

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID


class Progress:
    def __init__(
        self,
        total: int,
        *,
        already_done: int = 0,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        interval: float = 10.0,
        quiet: bool = False,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.done = already_done
        self.ok = 0
        self.failed = 0
        self.quiet = quiet
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval = interval
        self._start = time.monotonic()
        self._last_line = self._start
        self.notes: Callable[[], str] = lambda: ""  # e.g. the adaptive rate, when it has cut
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def start(self) -> None:
        if self.quiet or not self.interactive:
            return
        # rich only for the live bar: cron, --quiet and JSON logs do not pay for importing it
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}  {task.fields[rate]}/s"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[notes]}"),
            console=Console(file=self.stream),
            transient=False,
        )
        self._task = self._bar.add_task(
            "requests", total=self.total, completed=self.done, ok=0, failed=0, rate=0, notes=""
        )
        self._bar.start()

    def rate(self) -> float:
        elapsed = time.monotonic() - self._start
        return (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0

    def on_result(self, result: Result) -> None:
        self.done += 1
        if result.status == "ok":
            self.ok += 1
        else:
            self.failed += 1
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, ok=self.ok, failed=self.failed, rate=f"{self.rate():.1f}")
        elif not self.quiet and time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            event(self.line(), event="progress", done=self.done, total=self.total, ok=self.ok, failed=self.failed)

    def line(self) -> str:
        rate = self.rate()
        left = max(0, self.total - self.done)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        notes = self.notes()
        line = f"progress: {self.done}/{self.total} done, ok {self.ok}, failed {self.failed}, {rate:.1f}/s, eta {eta}"
        return f"{line}; {notes}" if notes else line

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
