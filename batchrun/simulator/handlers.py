"""One handler per wire format: validate the body, pass the fault gate, answer deterministically."""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from starlette.responses import PlainTextResponse, Response, StreamingResponse

from .answers import chat_reply, expected_generated_text, last_user_text
from .faults import Decision, FaultPlan
from .images import int_or_none, parse_openai_size, parse_size, render_image, wants_jpeg
from .incoming import Incoming
from .responses import BadRequest, FastJSONResponse, Style, chat_completion, chat_stream, json_bytes, truncated


class Host(Protocol):
    """What a handler asks of the simulator (``app.Simulator``, which imports this module)."""

    plan: FaultPlan

    async def admit(self, incoming: Incoming, *, model: str, prompt: str, stream: bool) -> Decision: ...

    def common_fault(self, style: Style, decision: Decision) -> Response | None: ...

    def next_id(self, prefix: str) -> str: ...


Handler = Callable[[Host, Incoming, dict[str, Any]], Awaitable[Response]]

IMAGE_MODEL_HINTS = ("diffusion", "flux", "sdxl", "image")
IMAGE_PARAMETERS = frozenset({"width", "height", "num_inference_steps", "guidance_scale"})


def _ok_json(payload: Any, outcome: str, plain: str) -> Response:
    """The normal JSON answer, or its ``truncated`` / ``wrong_content_type`` (text/plain) variants."""
    if outcome == "truncated":
        return truncated(json_bytes(payload), "application/json")
    if outcome == "wrong_content_type":
        return PlainTextResponse(plain)
    return FastJSONResponse(payload)


def _optional_int(body: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        if body.get(name) is not None:
            try:
                value = int_or_none(body, name)
            except ValueError as exc:
                raise BadRequest(422, str(exc)) from exc
            if value is not None and value < 0:
                raise BadRequest(422, f"{name} must be >= 0")
            return value
    return None


async def chat(sim: Host, request: Incoming, body: dict[str, Any]) -> Response:
    """OpenAI chat completions, as JSON or as an SSE stream."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest(422, "messages: field required, a non-empty list of message objects")
    max_tokens = _optional_int(body, "max_tokens", "max_completion_tokens")
    model = str(body.get("model") or "tgi")
    stream = body.get("stream") is True
    decision = await sim.admit(request, model=model, prompt=last_user_text(messages), stream=stream)
    fault = sim.common_fault("openai", decision)
    if fault is not None:
        return fault
    reply = chat_reply(model, messages, max_tokens)
    cid = sim.next_id("chatcmpl")
    if decision.outcome == "wrong_shape":  # a whole answer without choices, asked for a stream or not
        return FastJSONResponse({**chat_completion(cid, model, reply), "choices": []})
    if not stream:
        return _ok_json(chat_completion(cid, model, reply), decision.outcome, reply.text)
    if decision.outcome == "wrong_content_type":  # a server that ignores "stream": true
        return FastJSONResponse(chat_completion(cid, model, reply))
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    chunks = chat_stream(
        cid,
        model,
        reply,
        outcome=decision.outcome,
        include_usage=include_usage,
        chunk_delay_s=sim.plan.chunk_delay_ms / 1000.0,
    )
    return StreamingResponse(
        chunks,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def svg_image(prompt: str, width: int | None, height: int | None) -> bytes:
    """A small SVG picture of ``prompt`` (the wrong-shape answer of the image routes)."""
    w, h = width or 64, height or 64
    title = html.escape(prompt)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"><title>{title}</title>'
        f'<rect width="{w}" height="{h}" fill="#4a7"/></svg>'
    ).encode()


def is_image_request(model: str, parameters: Mapping[str, Any]) -> bool:
    """The rule for ``/models/{model}``: image model names or image parameters mean text-to-image."""
    lowered = model.lower()
    return any(h in lowered for h in IMAGE_MODEL_HINTS) or bool(IMAGE_PARAMETERS & parameters.keys())


def _parameters(body: Mapping[str, Any]) -> dict[str, Any]:
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(422, "parameters must be an object")
    return parameters


def _inputs(body: Mapping[str, Any]) -> str:
    inputs = body.get("inputs")
    if not isinstance(inputs, str) or not inputs:
        raise BadRequest(422, "inputs: field required, a non-empty string")
    return inputs


async def hf_models(sim: Host, request: Incoming, body: dict[str, Any]) -> Response:
    """HF serverless: text generation, or text-to-image for image models (see ``is_image_request``)."""
    model = request.model
    parameters = _parameters(body)
    if is_image_request(model, parameters):
        return await hf_image(sim, request, body)
    inputs = _inputs(body)
    _optional_int(parameters, "max_new_tokens")
    decision = await sim.admit(request, model=model, prompt=inputs, stream=False)
    fault = sim.common_fault("hf", decision)
    if fault is not None:
        return fault
    text = expected_generated_text(model, inputs, parameters)
    if decision.outcome == "wrong_shape":  # another task's answer: no generated_text
        return FastJSONResponse([{"summary_text": text}])
    return _ok_json([{"generated_text": text}], decision.outcome, text)


async def hf_image(sim: Host, request: Incoming, body: dict[str, Any]) -> Response:
    """HF text-to-image: the body of a 200 is the image itself."""
    model = request.model
    parameters = _parameters(body)
    inputs = _inputs(body)
    try:
        width = parse_size(parameters.get("width"))
        height = parse_size(parameters.get("height"))
        seed = int_or_none(parameters, "seed")
    except ValueError as exc:
        raise BadRequest(422, str(exc)) from exc
    decision = await sim.admit(request, model=model, prompt=inputs, stream=False)
    fault = sim.common_fault("hf", decision)
    if fault is not None:
        return fault
    if decision.outcome == "wrong_content_type":
        return FastJSONResponse({"error": "Image generation failed (simulated)"})
    if decision.outcome == "wrong_shape":  # a whole picture, in a format batchrun does not keep
        return Response(svg_image(inputs, width, height), media_type="image/svg+xml")
    fmt = "jpeg" if wants_jpeg(request.accept) else "png"
    data = render_image(inputs, seed=seed, width=width, height=height, fmt=fmt)
    if decision.outcome == "truncated":
        return truncated(data, f"image/{fmt}")
    return Response(data, media_type=f"image/{fmt}")


async def openai_images(sim: Host, request: Incoming, body: dict[str, Any]) -> Response:
    """OpenAI images: ``n`` pictures as base64 (``b64_json``) or data URLs (``response_format="url"``)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest(400, "prompt: a non-empty string is required")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        raise BadRequest(400, "n must be an integer between 1 and 10")
    try:
        width, height = parse_openai_size(body.get("size"))
        seed = int_or_none(body, "seed")
    except ValueError as exc:
        raise BadRequest(400, str(exc)) from exc
    fmt = "jpeg" if body.get("output_format") in ("jpeg", "jpg") else "png"
    as_url = body.get("response_format") == "url"
    model = str(body.get("model") or "dall-e-sim")
    decision = await sim.admit(request, model=model, prompt=prompt, stream=False)
    fault = sim.common_fault("openai", decision)
    if fault is not None:
        return fault
    if decision.outcome == "wrong_shape":  # links, although b64_json was asked for
        links = [{"url": f"https://images.invalid/{sim.next_id('img')}.{fmt}"} for _ in range(n)]
        return FastJSONResponse({"created": int(time.time()), "data": links})
    data = []
    for i in range(n):
        b64 = base64.b64encode(render_image(prompt, seed=(seed or 0) + i, width=width, height=height, fmt=fmt)).decode()
        data.append({"url": f"data:image/{fmt};base64,{b64}"} if as_url else {"b64_json": b64})
    return _ok_json(
        {"created": int(time.time()), "data": data}, decision.outcome, "image generation failed (simulated)"
    )
