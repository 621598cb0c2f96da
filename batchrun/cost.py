"""What requests cost, from an endpoint's ``price``, and the budget (``--max-cost``) that stops a run
before its spend could pass it.

A result is priced by the usage the server reported; when it reported none, by an estimate (the
body's bytes / 4 for the prompt, ``max_tokens`` for the answer, as ``tokens_per_minute`` counts),
marked as estimated. Only answered requests cost: an error answer is not billed by the APIs
priced here. The budget counts every request in flight at its worst case (the whole
``max_tokens``, or ``WORST_OUTPUT_TOKENS`` when the job sets none), so the spend never passes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol

from .dispatch.pool import Unsent
from .models import Request, Result

#: the answer's tokens assumed for the budget when the job sets no max_tokens
WORST_OUTPUT_TOKENS = 4096

Call = Callable[[Request], Awaitable[Result]]


class Price(Protocol):
    input_per_million: float
    output_per_million: float
    per_request: float
    per_image: float


def _tokens(price: Price, prompt: float, completion: float) -> float:
    return (prompt * price.input_per_million + completion * price.output_per_million) / 1_000_000


def cost_of(result: Result, price: Price, completion_cap: int) -> tuple[float | None, bool | None]:
    """The cost of ``result`` in USD and whether it is an estimate; (None, None) if it was not answered."""
    parsed = result.parsed
    if result.status != "ok" or parsed is None:
        return None, None
    cost = price.per_request
    if parsed.image is not None or parsed.image_path is not None:
        cost += price.per_image
    prompt, completion = parsed.prompt_tokens, parsed.completion_tokens
    estimated = prompt is None or completion is None
    if prompt is None:
        prompt = round(len(result.request.body) / 4)
    if completion is None:
        completion = completion_cap or round(len((parsed.text or "").encode()) / 4)
    if not (price.input_per_million or price.output_per_million):
        estimated = False  # no token prices: nothing was estimated
    return cost + _tokens(price, prompt, completion), estimated


def worst_case(request: Request, price: Price, completion_cap: int) -> float:
    """The most one request can cost: its prompt estimate and the whole answer allowed."""
    output = completion_cap or WORST_OUTPUT_TOKENS
    return price.per_request + price.per_image + _tokens(price, len(request.body) / 4, output)


class Budget:
    """The job's spend against ``max_usd``: ``spent`` (answers priced) and ``reserved`` (requests in
    flight, at their worst case). ``exhausted`` is called once, when a request would not fit."""

    def __init__(self, max_usd: float | None, exhausted: Callable[[], None] = lambda: None) -> None:
        self.max_usd = max_usd
        self.exhausted = exhausted
        self.spent = 0.0
        self.estimated = False  # some of the spend is an estimate
        self.reserved = 0.0
        self.refused = False

    def take(self, worst: float) -> bool:
        if self.max_usd is not None and self.spent + self.reserved + worst > self.max_usd:
            if not self.refused:
                self.refused = True
                self.exhausted()
            return False
        self.reserved += worst
        return True

    def settle(self, worst: float, cost: float | None, estimated: bool | None) -> None:
        self.reserved -= worst
        self.spent += cost or 0.0
        self.estimated = self.estimated or bool(estimated)

    def describe(self) -> str:
        spend = f"{'~' if self.estimated else ''}${self.spent:.4f}"
        if self.max_usd is None:
            return f"cost {spend}"
        return f"cost {spend} of the ${self.max_usd:g} budget" + ("; budget reached" if self.refused else "")


def priced(call: Call, price: Price | None, completion_cap: int, budget: Budget) -> Call:
    """``call``, each result priced (``cost_usd``, ``cost_estimated``) and held to the budget: a
    request that could pass it is not sent (``Unsent``: it stays to do)."""
    if price is None and budget.max_usd is None:
        return call

    async def send(request: Request) -> Result:
        worst = 0.0 if price is None or request.refused is not None else worst_case(request, price, completion_cap)
        if not budget.take(worst):
            raise Unsent("the budget is reached")
        cost: float | None = None
        estimated: bool | None = None
        try:
            result = await call(request)
            if price is not None:
                cost, estimated = cost_of(result, price, completion_cap)
        finally:
            budget.settle(worst, cost, estimated)
        if cost is None:
            return result
        return dataclasses.replace(result, cost_usd=cost, cost_estimated=estimated)

    return send
