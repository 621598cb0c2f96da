"""What a job's requests look like: the body template, the prompt inside it, and the columns
they use. Pure: checked against the input's column names before anything is read or sent."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..endpoints.chat import body_template as chat_body
from ..endpoints.custom import hf_serverless_body
from ..endpoints.images import hf_image_body, openai_image_body
from ..errors import TemplateError
from ..spec import Job
from .templates import referenced_names


def job_body_template(job: Job) -> Any:
    req, ep = job.request, job.endpoint
    if ep.format == "chat":
        return chat_body(ep.model, req.system, req.prompt, req.messages, req.params)
    if ep.format == "image-hf":
        return hf_image_body(req.inputs if req.inputs is not None else req.prompt, req.parameters)
    if ep.format == "image-openai":
        return openai_image_body(ep.model, req.prompt, req.params)
    if req.body is not None:
        return req.body
    return hf_serverless_body(req.inputs if req.inputs is not None else req.prompt, req.parameters)


def prompt_template(job: Job) -> Any:
    """The template of the prompt itself (not the system text or the options): the part that must
    not be empty. None for custom bodies, where batchrun cannot tell which part is the prompt."""
    req, fmt = job.request, job.endpoint.format
    if fmt == "chat":
        if req.prompt is not None:
            return req.prompt
        return [m.get("content") for m in req.messages or () if m.get("role") == "user"]
    if fmt in ("image-hf", "image-openai") or job.endpoint.preset == "hf-serverless":
        return req.inputs if req.inputs is not None else req.prompt
    return None


def prompt_reader(job: Job) -> Callable[[Any], Any] | None:
    """Where ``prompt_template`` sits in the rendered body: a function that takes the prompt part
    out of a body, so emptiness is judged on what is sent, without rendering the prompt twice."""
    req, fmt = job.request, job.endpoint.format
    if fmt == "chat":
        if req.prompt is not None:
            return _last_message  # the user message comes after the system one
        first = 1 if req.system is not None else 0
        users = [first + i for i, m in enumerate(req.messages or ()) if m.get("role") == "user"]
        if not users:
            return None
        return lambda body: [_content(body["messages"][i]) for i in users]
    if fmt == "image-openai":
        return _field("prompt")
    if fmt == "image-hf" or (job.endpoint.preset == "hf-serverless" and req.body is None):
        return _field("inputs")
    return None


def _last_message(body: Any) -> Any:
    return _content(body["messages"][-1])


def _content(message: Any) -> Any:
    return message.get("content") if isinstance(message, dict) else message


def _field(name: str) -> Callable[[Any], Any]:
    return lambda body: body.get(name) if isinstance(body, dict) else None


def completion_cap(job: Job) -> int:
    """The most tokens one answer may take, from the job's own parameters (0 when unknown)."""
    params = {**job.request.params, **(job.request.parameters or {})}
    for name in ("max_tokens", "max_completion_tokens", "max_new_tokens"):
        if isinstance(params.get(name), int):
            return int(params[name])
    return 0


def prompt_columns(job: Job, columns: Iterable[str]) -> set[str]:
    """The input columns the prompt uses (all of them, if it reads ``row``): where to look for
    rows whose prompt may render empty."""
    available = set(columns)
    names: set[str] = set()
    for found in referenced_names(prompt_template(job), "prompt").values():
        names |= found
    return available if "row" in names else names & available


def check_columns(job: Job, columns: Iterable[str]) -> None:
    """Fail before any request if a template or the id column names a column the input lacks."""
    available = set(columns)
    if job.id_column is not None and job.id_column not in available:
        raise TemplateError(f"id_column {job.id_column!r} is not a column of the input ({_listing(available)})")
    templates = {"request": job_body_template(job), "endpoint.url": job.endpoint.url}
    for where, value in templates.items():
        for location, names in referenced_names(value, where).items():
            missing = sorted(names - available - {"row"})
            if missing:
                raise TemplateError(
                    f"template {location} uses column {missing[0]!r}, which the input does not have "
                    f"({_listing(available)})"
                )


def _listing(columns: set[str]) -> str:
    shown = sorted(columns)[:20]
    return "columns: " + ", ".join(shown) + (", ..." if len(columns) > 20 else "")
