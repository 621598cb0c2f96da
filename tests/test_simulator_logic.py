"""Pure parts of the simulator: answers, images, the fault decision, the CLI option parsing."""

from __future__ import annotations

import argparse
import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from batchrun.simulator import FaultPlan, Trigger, add_simulate_arguments, expected_chat_text, render_image
from batchrun.simulator.answers import chat_reply, content_text, expected_generated_text, stream_pieces
from batchrun.simulator.cli import plan_from_args
from batchrun.simulator.faults import FaultState, adapt, decide


def test_chat_text_is_model_and_last_user_message() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "what is"}, {"type": "image_url"}, {"text": "2+2"}]},
    ]
    assert expected_chat_text("m1", messages) == "[m1] answer to: what is 2+2"
    assert expected_chat_text("m1", [{"role": "system", "content": "x"}]) == "[m1] answer to: "


def test_max_tokens_cuts_words_and_sets_length() -> None:
    messages = [{"role": "user", "content": "one two three four five"}]
    full = chat_reply("m", messages)
    assert (full.finish_reason, full.completion_tokens, full.prompt_tokens) == ("stop", 8, 5)
    cut = chat_reply("m", messages, max_tokens=4)
    assert cut.text == "[m] answer to: one" == expected_chat_text("m", messages, max_tokens=4)
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 4)
    assert chat_reply("m", messages, max_tokens=8).finish_reason == "stop"


def test_generated_text_rules() -> None:
    assert expected_generated_text("gpt2", "Once") == "[gpt2] continuation of: Once"
    assert expected_generated_text("gpt2", "Once", {"return_full_text": True}) == "Once[gpt2] continuation of: Once"
    assert expected_generated_text("gpt2", "a b c", {"max_new_tokens": 2}) == "[gpt2] continuation"


@given(st.text())
def test_stream_pieces_join_back_exactly(text: str) -> None:
    pieces = stream_pieces(text)
    assert "".join(pieces) == text
    assert all(pieces)


def test_content_text_ignores_non_text_parts() -> None:
    assert content_text([{"type": "image_url", "image_url": {"url": "x"}}]) == ""
    assert content_text(None) == ""


def test_images_are_deterministic_and_sized() -> None:
    a = render_image("a cat", seed=1, width=40, height=24)
    assert a == render_image("a cat", seed=1, width=40, height=24)
    assert a != render_image("a cat", seed=2, width=40, height=24)
    assert render_image("a cat") == render_image("a cat", seed=0)
    with Image.open(io.BytesIO(a)) as img:
        assert (img.format, img.size) == ("PNG", (40, 24))
    with Image.open(io.BytesIO(render_image("a cat", fmt="jpeg"))) as img:
        assert (img.format, img.size) == ("JPEG", (64, 64))


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultPlan(rate_500=1.5)
    with pytest.raises(ValueError, match="sum"):
        FaultPlan(rate_500=0.6, rate_429=0.6)
    with pytest.raises(ValueError, match="unknown outcome"):
        FaultPlan(script=["boom"])


def _decide(plan: FaultPlan, state: FaultState, prompt: str = "p", now: float = 0.0, stream: bool = False) -> str:
    return decide(plan, state, now=now, prompt=prompt, stream=stream, authorized=True).outcome


def test_script_is_consumed_in_order_then_normal() -> None:
    plan, state = FaultPlan(script=["500", "429", "ok", "reset"]), FaultState()
    assert [_decide(plan, state) for _ in range(5)] == ["500", "429", "ok", "reset", "ok"]
    assert plan.script == []


def test_triggers_match_prompt_text_and_count_down() -> None:
    plan = FaultPlan(triggers=[Trigger("poison", "500"), Trigger("flaky", "503", times=2)])
    state = FaultState()
    outcomes = [_decide(plan, state, p) for p in ["poison!", "flaky", "fine", "flaky", "flaky", "poison"]]
    assert outcomes == ["500", "503", "ok", "503", "ok", "500"]


def test_unauthorized_wins_and_does_not_consume_script() -> None:
    plan, state = FaultPlan(script=["500"]), FaultState()
    assert decide(plan, state, now=0, prompt="", stream=False, authorized=False).outcome == "401"
    assert plan.script == ["500"]


def test_max_rps_sliding_window() -> None:
    plan, state = FaultPlan(max_rps=2), FaultState()
    assert [_decide(plan, state, now=t) for t in (0.0, 0.1, 0.2)] == ["ok", "ok", "429"]
    wait = decide(plan, state, now=0.5, prompt="", stream=False, authorized=True)
    assert wait.outcome == "429" and wait.retry_after_s == pytest.approx(0.5)
    assert _decide(plan, state, now=1.01) == "ok"  # the request at 0.0 left the window


def test_rates_are_seeded_and_roughly_right() -> None:
    def draws(seed: int) -> list[str]:
        plan, state = FaultPlan(rate_500=0.3, rate_429=0.2, seed=seed), FaultState()
        return [_decide(plan, state) for _ in range(2000)]

    first = draws(7)
    assert first == draws(7) and first != draws(8)
    assert 500 < first.count("500") < 700 and 320 < first.count("429") < 480


def test_stream_only_kinds_adapt_or_are_skipped() -> None:
    assert adapt("stream_cut", stream=False) == "truncated"
    assert adapt("midstream_error", stream=False) == "500"
    assert adapt("truncated", stream=True) == "stream_cut"
    plan, state = FaultPlan(rate_stream_cut=1.0), FaultState()
    assert _decide(plan, state, stream=False) == "ok"
    assert _decide(plan, state, stream=True) == "stream_cut"


def test_latency_parts() -> None:
    plan, state = FaultPlan(latency_ms=20, latency_tail_ms=1000, latency_tail_rate=1.0), FaultState()
    assert decide(plan, state, now=0, prompt="", stream=False, authorized=True).delay_s == pytest.approx(1.02)
    plan = FaultPlan(latency_ms=10, latency_jitter_ms=5)
    delays = [decide(plan, state, now=0, prompt="", stream=False, authorized=True).delay_s for _ in range(50)]
    assert all(0.010 <= d <= 0.015 for d in delays) and len(set(delays)) > 1


def test_cli_arguments_build_a_plan() -> None:
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    args = parser.parse_args(
        ["--port", "0", "--latency", "50ms", "--error-rate", "0.05", "--rate-429", "0.1", "--token", "X"]
    )
    plan = plan_from_args(args)
    assert (plan.latency_ms, plan.rate_500, plan.rate_429, plan.require_token) == (50.0, 0.05, 0.1, "X")
    assert not plan.close_after_response
    assert plan_from_args(parser.parse_args(["--close-after-response"])).close_after_response
    with pytest.raises(SystemExit):
        parser.parse_args(["--rate-500", "2"])
