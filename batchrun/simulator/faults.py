"""Fault injection: what can go wrong, and the pure decision of what goes wrong for one request.

A :class:`FaultPlan` is a plain mutable dataclass: tests change it while the server runs.
For each request the simulator asks :func:`decide`, which looks, in this order, at

1. ``require_token`` -> ``"401"`` when the bearer token is missing or wrong;
2. ``script`` -> the next scripted outcome, consumed (``["500", "500"]`` fails the next two requests);
3. ``triggers`` -> the first :class:`Trigger` whose ``match`` is in the prompt text (order-free forcing,
   safe with concurrent workers);
4. ``quota`` -> ``"quota_openai"`` (429 ``insufficient_quota``) or ``"quota_hf"`` (402, monthly
   credits) on every request: an account with nothing left;
5. ``max_concurrent`` -> ``"overloaded"`` (TGI's 429 ``Model is overloaded``, no ``Retry-After``, at
   once) when more than ``max_concurrent`` requests are in flight, this one included;
6. ``max_rps`` -> ``"429"`` when more than ``max_rps`` requests were let in during the last second
   (requests turned away by this rule count against the window only with ``max_rps_counts_refused``,
   as many gateways do);
7. the ``rate_*`` fields -> one draw from ``random.Random(seed)`` over the kinds that fit the request.

``queue_after``: a server that queues instead of refusing (vLLM, Ollama, llama.cpp): above
``queue_after`` requests in flight, latency grows in proportion to them.

Outcomes that do not fit a request are adapted (:func:`adapt`): on a non-streaming request
``stream_cut`` becomes ``truncated`` and ``midstream_error`` becomes ``500``; on a streaming one
``truncated`` becomes ``stream_cut``. Random draws only pick kinds that fit.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, fields

OK = "ok"
#: Random kinds, in draw order, with the plan field holding their rate.
RATE_FIELDS: tuple[tuple[str, str], ...] = (
    ("429", "rate_429"),
    ("500", "rate_500"),
    ("502", "rate_502"),
    ("503", "rate_503"),
    ("loading", "rate_loading"),
    ("reset", "rate_reset"),
    ("stream_cut", "rate_stream_cut"),
    ("html", "rate_html"),
    ("truncated", "rate_truncated"),
    ("wrong_content_type", "rate_wrong_content_type"),
    ("midstream_error", "rate_midstream_error"),
    ("wrong_shape", "rate_wrong_shape"),
)
#: Outcomes a plan can force (script or trigger).
QUOTA_OUTCOMES = {"openai": "quota_openai", "hf": "quota_hf"}
FORCIBLE = frozenset(
    {OK, "400", "401", "403", "overloaded", *QUOTA_OUTCOMES.values()} | {kind for kind, _ in RATE_FIELDS}
)
ENDPOINT_STATES = ("running", "scaledToZero", "paused", "failed")
STREAM_ONLY = frozenset({"stream_cut", "midstream_error"})


@dataclass
class Trigger:
    """Force ``outcome`` on requests whose prompt contains ``match``; ``times=None`` means always."""

    match: str
    outcome: str
    times: int | None = None


@dataclass
class FaultPlan:
    """What goes wrong, and how slowly. Every fault is off by default."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_tail_ms: float = 0.0
    latency_tail_rate: float = 0.0
    chunk_delay_ms: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float | None = 1.0
    #: headers sent with every 429 besides ``Retry-After``, e.g. OpenAI's window used up:
    #: ``{"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}``
    headers_429: dict[str, str] = field(default_factory=dict)
    max_rps: float | None = None
    max_rps_counts_refused: bool = False
    max_concurrent: int | None = None
    queue_after: int | None = None
    quota: str | None = None  # "openai" | "hf"
    rate_500: float = 0.0
    rate_502: float = 0.0
    rate_503: float = 0.0
    rate_loading: float = 0.0
    estimated_time_s: float = 2.0
    rate_reset: float = 0.0
    rate_stream_cut: float = 0.0
    rate_html: float = 0.0
    rate_truncated: float = 0.0
    rate_wrong_content_type: float = 0.0
    rate_midstream_error: float = 0.0
    #: a whole, well-formed 200 of the wrong shape: a chat completion without choices, HF text without
    #: ``generated_text``, an SVG for an image, an image URL instead of ``b64_json``
    rate_wrong_shape: float = 0.0
    require_token: str | None = None
    #: Advertise keep-alive, then close the connection once each response is complete, as llama.cpp's
    #: llama-server does after a streamed answer (over a real socket only: in-process there is none).
    close_after_response: bool = False
    #: A Hugging Face Inference Endpoint's life (``hfendpoint.py``): its state at start (running,
    #: scaledToZero, paused, failed), the seconds a replica takes to start (after a resume, or the first
    #: request while scaled to zero; 503 meanwhile), and whether the token may manage it (403 if not).
    endpoint_state: str = "running"
    cold_start_s: float = 0.0
    manage_rights: bool = True
    seed: int = 0
    script: list[str] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` on a rate outside 0..1, rates summing over 1, or an unknown outcome."""
        total = 0.0
        for f in fields(self):
            if f.name.startswith("rate_") or f.name == "latency_tail_rate":
                value = float(getattr(self, f.name))
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{f.name} must be between 0 and 1, got {value}")
                total += value if f.name != "latency_tail_rate" else 0.0
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {total:g}, more than 1")
        if self.quota is not None and self.quota not in QUOTA_OUTCOMES:
            raise ValueError(f"unknown quota {self.quota!r}; known: {sorted(QUOTA_OUTCOMES)}")
        for name in ("max_concurrent", "queue_after"):
            if (value := getattr(self, name)) is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.endpoint_state not in ENDPOINT_STATES:
            known = ", ".join(ENDPOINT_STATES)
            raise ValueError(f"unknown endpoint_state {self.endpoint_state!r}; known: {known}")
        if self.cold_start_s < 0:
            raise ValueError(f"cold_start_s must be at least 0, got {self.cold_start_s}")
        for outcome in [*self.script, *(t.outcome for t in self.triggers)]:
            if outcome not in FORCIBLE:
                raise ValueError(f"unknown outcome {outcome!r}; known: {sorted(FORCIBLE)}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The fate of one request: its outcome, how long to wait first, and the Retry-After to send."""

    outcome: str
    delay_s: float = 0.0
    retry_after_s: float | None = None


@dataclass
class FaultState:
    """What the decisions remember between requests: the random stream and the rate window."""

    rng: random.Random = field(default_factory=random.Random)
    seeded_with: int | None = None
    window: deque[float] = field(default_factory=deque)
    in_flight: int = 0  # requests being answered now (the simulator counts them)

    def rng_for(self, seed: int) -> random.Random:
        """The random stream for ``seed``, restarted when the plan's seed changes."""
        if self.seeded_with != seed:
            self.rng.seed(seed)
            self.seeded_with = seed
        return self.rng


def adapt(outcome: str, *, stream: bool) -> str:
    """Map an outcome that does not fit the request onto the closest one that does."""
    if stream:
        return "stream_cut" if outcome == "truncated" else outcome
    return {"stream_cut": "truncated", "midstream_error": "500"}.get(outcome, outcome)


def _delay(plan: FaultPlan, rng: random.Random) -> float:
    ms = plan.latency_ms
    if plan.latency_jitter_ms > 0:
        ms += rng.uniform(0.0, plan.latency_jitter_ms)
    if plan.latency_tail_rate > 0 and rng.random() < plan.latency_tail_rate:
        ms += plan.latency_tail_ms
    return max(ms, 0.0) / 1000.0


def _forced(plan: FaultPlan, prompt: str) -> str | None:
    if plan.script:
        return plan.script.pop(0)
    for trigger in plan.triggers:
        if trigger.match in prompt and (trigger.times is None or trigger.times > 0):
            if trigger.times is not None:
                trigger.times -= 1
            return trigger.outcome
    return None


def _rps_wait(plan: FaultPlan, state: FaultState, now: float) -> float | None:
    """Seconds until the window has room, or None when this request may pass (and is recorded)."""
    if plan.max_rps is None:
        return None
    while state.window and state.window[0] <= now - 1.0:
        state.window.popleft()
    if len(state.window) >= plan.max_rps:
        wait = max(state.window[0] + 1.0 - now, 0.001)
        if plan.max_rps_counts_refused:
            state.window.append(now)
        return wait
    state.window.append(now)
    return None


def _draw(plan: FaultPlan, rng: random.Random, stream: bool) -> str:
    u = rng.random()
    for kind, name in RATE_FIELDS:
        if (kind in STREAM_ONLY and not stream) or (kind == "truncated" and stream):
            continue
        u -= getattr(plan, name)
        if u < 0:
            return kind
    return OK


def decide(plan: FaultPlan, state: FaultState, *, now: float, prompt: str, stream: bool, authorized: bool) -> Decision:
    """Choose the outcome of one request (see the module docstring for the order of the rules)."""
    rng = state.rng_for(plan.seed)
    delay = _delay(plan, rng)
    if plan.queue_after is not None and state.in_flight > plan.queue_after:
        delay *= state.in_flight / plan.queue_after  # a queue: each waits for the ones ahead
    if not authorized:
        return Decision("401", delay)
    forced = _forced(plan, prompt)
    if forced is not None:
        outcome = adapt(forced, stream=stream)
        return Decision(outcome, delay, plan.retry_after_s if outcome == "429" else None)
    if plan.quota is not None:
        return Decision(QUOTA_OUTCOMES[plan.quota])
    if plan.max_concurrent is not None and state.in_flight > plan.max_concurrent:
        return Decision("overloaded")  # TGI refuses at once, before any work
    wait = _rps_wait(plan, state, now)
    if wait is not None:
        return Decision("429", delay, wait)
    outcome = _draw(plan, rng, stream)
    return Decision(outcome, delay, plan.retry_after_s if outcome == "429" else None)


def token_ok(plan: FaultPlan, authorization: str | None) -> bool:
    """True when no token is required, or the ``Authorization`` header carries it as a bearer token."""
    if plan.require_token is None:
        return True
    return authorization == f"Bearer {plan.require_token}"
