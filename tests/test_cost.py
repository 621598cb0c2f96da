"""Pricing and the budget, as plain values (batchrun/cost.py)."""

from __future__ import annotations

from batchrun.cost import WORST_OUTPUT_TOKENS, Budget, cost_of, worst_case
from batchrun.models import Parsed, Request, Result
from batchrun.spec import PriceSection

PRICE = PriceSection(input_per_million=2.0, output_per_million=8.0, per_request=0.01)
REQUEST = Request("k", None, 0, 0, "POST", "http://x", b"x" * 400, "m")


def result(parsed: Parsed | None, status: str = "ok") -> Result:
    return Result(REQUEST, status, 1, 0.0, 1.0, parsed=parsed)  # type: ignore[arg-type]


def test_cost_from_reported_usage() -> None:
    cost, estimated = cost_of(result(Parsed(text="a", prompt_tokens=1000, completion_tokens=500)), PRICE, 50)
    assert cost == 0.01 + (1000 * 2.0 + 500 * 8.0) / 1e6 and estimated is False


def test_cost_estimated_from_body_and_max_tokens_when_no_usage() -> None:
    cost, estimated = cost_of(result(Parsed(text="a")), PRICE, 50)
    assert cost == 0.01 + (100 * 2.0 + 50 * 8.0) / 1e6 and estimated is True


def test_failures_cost_nothing_and_images_cost_per_image() -> None:
    assert cost_of(result(None, "failed"), PRICE, 50) == (None, None)
    per_image = PriceSection(per_image=0.04)
    assert cost_of(result(Parsed(image_path="images/a.png")), per_image, 0) == (0.04, False)


def test_worst_case_and_budget() -> None:
    assert worst_case(REQUEST, PRICE, 50) == 0.01 + (100 * 2.0 + 50 * 8.0) / 1e6
    assert worst_case(REQUEST, PRICE, 0) == 0.01 + (100 * 2.0 + WORST_OUTPUT_TOKENS * 8.0) / 1e6
    stops: list[str] = []
    budget = Budget(1.0, lambda: stops.append("stop"))
    assert budget.take(0.6) and not budget.take(0.6)  # 0.6 in flight: a second could pass 1.0
    assert stops == ["stop"] and budget.refused
    budget.settle(0.6, 0.2, True)
    assert (budget.spent, budget.reserved) == (0.2, 0.0)
    assert budget.describe() == "cost ~$0.2000 of the $1 budget; budget reached"
    assert not budget.take(0.81) and stops == ["stop"]  # called once
