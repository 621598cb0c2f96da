"""What the simulator received, so tests can assert how many requests were really sent."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as seen by the simulator (never the token: only whether a header was there)."""

    path: str
    model: str
    prompt: str
    outcome: str
    arrival: float
    has_auth: bool
    stream: bool


@dataclass
class SimStats:
    """Counters over the simulated endpoints (``/_sim/*`` control routes and ``/health`` not counted)."""

    by_path: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)
    auth_present: list[bool] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    #: Prompts in ``records`` are cut to this many characters to keep memory small.
    prompt_excerpt: int = 200

    @property
    def total(self) -> int:
        """How many requests reached a simulated endpoint."""
        return len(self.arrivals)

    def record(self, rec: RequestRecord) -> None:
        """Count one request once its outcome is known."""
        if len(rec.prompt) > self.prompt_excerpt:
            rec = replace(rec, prompt=rec.prompt[: self.prompt_excerpt])
        self.by_path[rec.path] += 1
        self.by_outcome[rec.outcome] += 1
        self.arrivals.append(rec.arrival)
        self.auth_present.append(rec.has_auth)
        self.records.append(rec)

    def prompts(self, outcome: str | None = None) -> list[str]:
        """Prompt excerpts in arrival order, optionally only those with ``outcome``."""
        return [r.prompt for r in self.records if outcome is None or r.outcome == outcome]

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.by_path.clear()
        self.by_outcome.clear()
        self.arrivals.clear()
        self.auth_present.clear()
        self.records.clear()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``GET /_sim/stats`` returns)."""
        return {
            "total": self.total,
            "by_path": dict(sorted(self.by_path.items())),
            "by_outcome": dict(sorted(self.by_outcome.items())),
            "arrivals": list(self.arrivals),
            "auth_present": list(self.auth_present),
        }
