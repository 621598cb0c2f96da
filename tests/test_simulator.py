"""The simulator in-process (httpx.ASGITransport): every wire format, every fault, the counters."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

import batchrun.simulator as simulator
from batchrun.simulator import FaultPlan, Simulator, Trigger, create_app, expected_chat_text, render_image

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "name three colours please"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sim() -> Simulator:
    return create_app()


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as c:
        yield c


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_exports_are_sorted() -> None:
    assert simulator.__all__ == sorted(simulator.__all__)
    for name in ("FaultPlan", "SimStats", "Simulator", "create_app", "serve", "expected_chat_text"):
        assert name in simulator.__all__


@pytest.mark.anyio
async def test_chat_json(client: httpx.AsyncClient, sim: Simulator) -> None:
    r = await client.post(CHAT, json={"model": "m1", "messages": MESSAGES})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "m1"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected_chat_text("m1", MESSAGES)}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    assert (sim.stats.total, sim.stats.by_outcome["ok"], sim.stats.by_path[CHAT]) == (1, 1, 1)


@pytest.mark.anyio
async def test_chat_max_tokens(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json={"model": "m", "messages": MESSAGES, "max_tokens": 3})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == expected_chat_text("m", MESSAGES, max_tokens=3) == "[m] answer to:"


@pytest.mark.anyio
async def test_chat_stream_matches_json_and_reports_usage(client: httpx.AsyncClient) -> None:
    payload = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    r = await client.post(CHAT, json=payload)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == expected_chat_text("m", MESSAGES)
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) >= 2
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7


@pytest.mark.anyio
async def test_chat_stream_without_usage(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and all(e["choices"] for e in events[:-1])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status"),
    [({"model": "m"}, 422), ({"messages": []}, 422), ({"messages": MESSAGES, "max_tokens": "x"}, 422)],
)
async def test_chat_validation(client: httpx.AsyncClient, sim: Simulator, body: Any, status: int) -> None:
    r = await client.post(CHAT, json=body)
    assert r.status_code == status
    assert set(r.json()["error"]) >= {"message", "type", "code"}
    assert sim.stats.by_outcome[str(status)] == 1


@pytest.mark.anyio
async def test_invalid_json_and_unknown_route(client: httpx.AsyncClient, sim: Simulator) -> None:
    r = await client.post(CHAT, content=b"{nope")
    assert r.status_code == 400 and "message" in r.json()["error"]
    r = await client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "404"
    assert sim.stats.total == 1


def unstamped(value: Any) -> Any:
    """An answer without what differs between two calls (its id and creation time)."""
    return {k: v for k, v in value.items() if k not in ("id", "created")} if isinstance(value, dict) else value


@pytest.mark.anyio
async def test_the_fast_path_answers_as_starlettes_routes_do(client: httpx.AsyncClient, sim: Simulator) -> None:
    """POSTs to simulated routes skip Starlette's routing; Starlette's own routes reach the same endpoints."""
    requests = [
        (CHAT, {"model": "m", "messages": MESSAGES}),
        ("/models/openai-community/gpt2", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
        ("/models/gpt2", {"parameters": {}}),  # refused: 422
    ]
    fast = [await client.post(path, json=body) for path, body in requests]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url="http://sim.test") as routed:
        slow = [await routed.post(path, json=body) for path, body in requests]
    for a, b in zip(fast, slow, strict=True):
        assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"])
        assert unstamped(a.json()) == unstamped(b.json())
    assert [r.path for r in sim.stats.records] == [path for path, _ in requests] * 2
    assert [r.model for r in sim.stats.records][:2] == ["m", "openai-community/gpt2"]
    r = await client.get(CHAT)  # other methods still meet Starlette's 405, in OpenAI's error style
    assert r.status_code == 405 and r.json()["error"]["code"] == "405"
    assert sim.stats.total == 6


@pytest.mark.anyio
async def test_hf_text_generation(client: httpx.AsyncClient) -> None:
    r = await client.post("/models/openai-community/gpt2", json={"inputs": "Hello", "parameters": {}})
    assert r.json() == [{"generated_text": "[openai-community/gpt2] continuation of: Hello"}]
    r = await client.post("/models/gpt2", json={"parameters": {}})
    assert r.status_code == 422 and isinstance(r.json()["error"], str)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "parameters"),
    [
        ("/models/stabilityai/stable-diffusion-xl-base-1.0", {}),
        ("/models/some/model", {"width": 32}),
        ("/hf-inference/models/anything", {}),
    ],
)
async def test_hf_image_routes(client: httpx.AsyncClient, path: str, parameters: dict[str, Any]) -> None:
    params = {"width": 32, "height": 48, "seed": 3, **parameters}
    r = await client.post(path, json={"inputs": "a red fox", "parameters": params})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == render_image("a red fox", seed=3, width=32, height=48)
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (32, 48)


@pytest.mark.anyio
async def test_hf_image_seed_jpeg_and_limits(client: httpx.AsyncClient) -> None:
    path = "/hf-inference/models/black-forest-labs/FLUX.1-dev"
    a = await client.post(path, json={"inputs": "x", "parameters": {"seed": 1}})
    b = await client.post(path, json={"inputs": "x", "parameters": {"seed": 1}})
    c = await client.post(path, json={"inputs": "x", "parameters": {"seed": 2}})
    assert a.content == b.content != c.content
    j = await client.post(path, json={"inputs": "x"}, headers={"Accept": "image/jpeg"})
    assert j.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(j.content)) as img:
        assert (img.format, img.size) == ("JPEG", (64, 64))
    big = await client.post(path, json={"inputs": "x", "parameters": {"width": 4096}})
    assert big.status_code == 422 and "2048" in big.json()["error"]


@pytest.mark.anyio
async def test_openai_images(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/images/generations", json={"prompt": "a boat", "n": 2, "size": "40x30", "seed": 5})
    data = r.json()["data"]
    assert len(data) == 2 and isinstance(r.json()["created"], int)
    images = [base64.b64decode(d["b64_json"]) for d in data]
    assert images[0] == render_image("a boat", seed=5, width=40, height=30)
    assert images[1] == render_image("a boat", seed=6, width=40, height=30)
    with Image.open(io.BytesIO(images[0])) as img:
        assert img.size == (40, 30)
    bad = await client.post("/v1/images/generations", json={"prompt": "a", "size": "huge"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_auth(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.plan.require_token = "s3cret"
    r = await client.post(CHAT, json={"messages": MESSAGES})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = await client.post(CHAT, json={"messages": MESSAGES}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await client.post("/models/gpt2", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200
    assert sim.stats.auth_present == [False, True, True]
    assert sim.stats.by_outcome == {"401": 2, "ok": 1}
    assert "s3cret" not in json.dumps(sim.stats.as_dict())


@pytest.mark.anyio
async def test_429_with_retry_after_openai_and_hf(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.plan.retry_after_s = 0.5
    sim.plan.script = ["429", "429"]
    r = await client.post(CHAT, json={"messages": MESSAGES})
    assert r.status_code == 429 and r.headers["retry-after"] == "0.5" and r.headers["retry-after-ms"] == "500"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    r = await client.post("/models/gpt2", json={"inputs": "x"})
    assert r.status_code == 429 and isinstance(r.json()["error"], str)
    assert (await client.post(CHAT, json={"messages": MESSAGES})).status_code == 200


@pytest.mark.anyio
async def test_max_rps(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.plan.max_rps = 3
    codes = [(await client.post(CHAT, json={"messages": MESSAGES})).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]


@pytest.mark.anyio
@pytest.mark.parametrize("status", ["500", "502", "503", "400", "403"])
async def test_status_faults(client: httpx.AsyncClient, sim: Simulator, status: str) -> None:
    sim.plan.script = [status]
    r = await client.post(CHAT, json={"messages": MESSAGES})
    assert r.status_code == int(status) and "message" in r.json()["error"]
    assert sim.stats.by_outcome[status] == 1


@pytest.mark.anyio
async def test_model_loading(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.plan.estimated_time_s = 12.5
    sim.plan.script = ["loading", "loading"]
    r = await client.post("/models/gpt2", json={"inputs": "x"})
    assert r.status_code == 503 and r.json() == {"error": "Model is loading", "estimated_time": 12.5}
    r = await client.post(CHAT, json={"messages": MESSAGES})
    assert r.status_code == 503 and r.json()["estimated_time"] == 12.5


@pytest.mark.anyio
async def test_html_and_truncated_and_wrong_type(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.plan.script = ["html", "truncated", "wrong_content_type", "truncated", "wrong_content_type"]
    r = await client.post(CHAT, json={"messages": MESSAGES})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    r = await client.post(CHAT, json={"messages": MESSAGES})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        r.json()
    r = await client.post(CHAT, json={"messages": MESSAGES})
    assert r.headers["content-type"].startswith("text/plain") and r.text == expected_chat_text("tgi", MESSAGES)
    img = await client.post("/hf-inference/models/x", json={"inputs": "y"})
    assert img.headers["content-type"] == "image/png"
    assert render_image("y").startswith(img.content) and len(img.content) < len(render_image("y"))
    with pytest.raises(OSError):
        Image.open(io.BytesIO(img.content)).load()
    img = await client.post("/hf-inference/models/x", json={"inputs": "y"})
    assert img.status_code == 200 and img.headers["content-type"] == "application/json" and img.json()["error"]


@pytest.mark.anyio
async def test_stream_cut_and_midstream_error(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.plan.script = ["stream_cut", "midstream_error", "truncated"]
    payload = {"model": "m", "messages": MESSAGES, "stream": True}
    for expect_error in (False, True, False):
        events = sse_events((await client.post(CHAT, json=payload)).text)
        assert "[DONE]" not in events
        assert all(c["choices"][0]["finish_reason"] is None for c in events if "choices" in c)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in events if "choices" in c)
        assert expected_chat_text("m", MESSAGES).startswith(text) and text != expected_chat_text("m", MESSAGES)
        assert ("error" in events[-1]) is expect_error
    assert sim.stats.by_outcome == {"stream_cut": 2, "midstream_error": 1}
    assert sse_events((await client.post(CHAT, json=payload)).text)[-1] == "[DONE]"  # script used up


@pytest.mark.anyio
async def test_reset_in_process_raises_read_error(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.plan.script = ["reset"]
    with pytest.raises(httpx.ReadError):
        await client.post(CHAT, json={"messages": MESSAGES})
    assert sim.stats.by_outcome["reset"] == 1


@pytest.mark.anyio
async def test_triggers_force_by_prompt(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.plan.triggers = [Trigger("POISON", "500")]
    bad = [{"role": "user", "content": "POISON row"}]
    assert (await client.post(CHAT, json={"messages": bad})).status_code == 500
    assert (await client.post(CHAT, json={"messages": MESSAGES})).status_code == 200
    assert sim.stats.prompts("500") == ["POISON row"]


@pytest.mark.anyio
async def test_random_rates_are_reproducible() -> None:
    async def codes() -> list[int]:
        sim = create_app(FaultPlan(rate_500=0.5, seed=42))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://s") as c:
            return [(await c.post(CHAT, json={"messages": MESSAGES})).status_code for _ in range(20)]

    first = await codes()
    assert first == await codes() and {200, 500} == set(first)


@pytest.mark.anyio
async def test_control_routes(client: httpx.AsyncClient, sim: Simulator) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    await client.post(CHAT, json={"messages": MESSAGES})
    stats = (await client.get("/_sim/stats")).json()
    assert stats["total"] == 1 and stats["by_path"] == {CHAT: 1} and len(stats["arrivals"]) == 1
    r = await client.post("/_sim/plan", json={"script": ["503"], "triggers": [{"match": "z", "outcome": "500"}]})
    assert r.json()["script"] == ["503"] and sim.plan.triggers == [Trigger("z", "500")]
    assert (await client.post(CHAT, json={"messages": MESSAGES})).status_code == 503
    assert (await client.post("/_sim/plan", json={"rate_500": 7})).status_code == 400
    assert sim.plan.rate_500 == 0.0
    sim.plan.require_token = "hidden"
    assert (await client.get("/_sim/plan")).json()["require_token"] == "***"
    await client.post("/_sim/reset")
    assert sim.stats.total == 0 and sim.stats.as_dict()["by_outcome"] == {}


@pytest.mark.anyio
async def test_latency_is_applied(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.plan.latency_ms = 60
    start = time.monotonic()
    await client.post(CHAT, json={"messages": MESSAGES})
    assert time.monotonic() - start >= 0.055
