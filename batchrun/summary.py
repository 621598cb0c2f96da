"""What a run did, as one line for people and as fields for log collectors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ExitCode
from .models import Result
from .plan.planner import PlanCounts

SHOWN_CAUSES = 5  # lines of the failure breakdown; the rest are counted on one more line
MAX_CAUSES = 1000  # distinct causes kept; past that, new ones are counted by kind and status only
_VARYING = re.compile(r"\w*\d\w*")  # ids, ports, counts: what differs between two of the same failure
_HTTP_PREFIX = re.compile(r"^HTTP \d+: ")


@dataclass(frozen=True, slots=True)
class Cause:
    """Failed requests that share a kind, an HTTP status and a message (numbers aside)."""

    count: int
    kind: str
    http_status: int | None
    example: str  # the first message, as the manifest has it

    def line(self, width: int = 0) -> str:
        status = f" http {self.http_status}" if self.http_status is not None else ""
        example = _HTTP_PREFIX.sub("", self.example) if self.http_status is not None else self.example
        return f"{self.count:>{width}} x {self.kind}{status}: {_quoted(example)}"

    def fields(self) -> dict[str, Any]:
        return {"count": self.count, "kind": self.kind, "http_status": self.http_status, "example": self.example}


def _quoted(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return '"' + (text if len(text) <= limit else text[: limit - 1] + "…") + '"'


class Failures:
    """Counts this run's failed results by cause, so the summary can say why, not just how many."""

    def __init__(self) -> None:
        self._causes: dict[tuple[str, int | None, str], list[Any]] = {}  # key -> [count, first message]

    def add(self, result: Result) -> None:
        kind, status, message = result.error_kind or "failed", result.http_status, result.error or ""
        key = (kind, status, _VARYING.sub("#", message)[:200])
        entry = self._causes.get(key)
        if entry is None:
            if len(self._causes) >= MAX_CAUSES:
                key = (kind, status, "")
                entry = self._causes.setdefault(key, [0, message])
            else:
                entry = self._causes[key] = [0, message]
        entry[0] += 1

    def causes(self) -> tuple[Cause, ...]:
        """Every cause, the most frequent first (the first seen first among equals)."""
        ordered = sorted(self._causes.items(), key=lambda item: -item[1][0])
        return tuple(Cause(count, kind, status, example) for (kind, status, _), (count, example) in ordered)


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
    job: str = ""
    output: str = ""
    causes: tuple[Cause, ...] = ()  # this run's failures, the most frequent first

    def text(self) -> str:
        """The failure breakdown (when a request failed), then the summary line, always last."""
        return "\n".join([*self.breakdown(), self.line()])

    def breakdown(self) -> list[str]:
        if not self.causes:
            return []
        shown = self.causes[:SHOWN_CAUSES]
        width = len(str(shown[0].count))
        lines = ["failed requests by cause:", *(f"  {cause.line(width)}" for cause in shown)]
        rest = self.causes[SHOWN_CAUSES:]
        if rest:
            n = sum(cause.count for cause in rest)
            lines.append(f"  and {n} more in {len(rest)} other causes (the manifest's error column has each)")
        return lines

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
            "job": self.job,
            "output": self.output,
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
            "errors": [cause.fields() for cause in self.causes[:SHOWN_CAUSES]],
        }
