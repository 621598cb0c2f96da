"""What a run did, as one line for people and as fields for log collectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ExitCode
from .plan.planner import PlanCounts


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    counts: PlanCounts
    stale: int
    sent: int  # HTTP requests, retries included
    ok: int
    failed: int
    previously_failed: int
    elapsed_s: float
    fatal: str | None
    stopped: str | None
    exit_code: ExitCode
    notes: str = ""  # e.g. how the adaptive rate ended

    def line(self) -> str:
        c = self.counts
        if self.ok + self.failed == 0 and self.fatal is None and self.stopped is None and c.todo == 0:
            text = f"nothing to do: {c.done}/{c.requests - c.shared} done"
        else:
            rate = (self.ok + self.failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0
            text = (
                f"finished {self.ok + self.failed} requests ({self.ok} ok, {self.failed} failed) in "
                f"{self.elapsed_s:.1f}s, {rate:.1f}/s; {c.done} were already done; {self.sent} HTTP requests sent"
            )
        if c.skipped:
            text += f"; {c.skipped} rows skipped (empty prompt)"
        if self.notes:
            text += f"; {self.notes}"
        if self.previously_failed:
            text += f"; {self.previously_failed} failed in earlier runs (--retry-failed sends them again)"
        if self.stale:
            text += f"; {self.stale} results in the manifest belong to an older version of the job"
        if self.fatal:
            text += f"; stopped early: {self.fatal}"
        if self.stopped:
            text += f"; stopped early ({self.stopped})"
        return f"{text}; exit {int(self.exit_code)}: {self.exit_code.meaning}"

    def fields(self) -> dict[str, Any]:
        """The summary as JSON fields, for log collectors."""
        c = self.counts
        return {
            "event": "summary",
            "run_id": self.run_id,
            "rows": c.rows,
            "requests": c.requests,
            "already_done": c.done,
            "ok": self.ok,
            "failed": self.failed,
            "http_requests": self.sent,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round((self.ok + self.failed) / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
            "stopped": self.fatal or self.stopped,
            "exit_code": int(self.exit_code),
            "exit_meaning": self.exit_code.meaning,
        }
