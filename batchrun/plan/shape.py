"""What a job's requests look like: the body template, the prompt inside it, and the columns
they use. Pure: checked against the input's column names before anything is read or sent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..endpoints.format import PromptReader
from ..errors import TemplateError
from ..spec import Job
from .templates import referenced_names


def job_body_template(job: Job) -> Any:
    if job.batch_input:
        return job.request.body  # the batch line's body, as written
    return job.endpoint.wire.body_template(job.request, job.endpoint.model)


def prompt_template(job: Job) -> Any:
    """The template of the prompt itself: the part that must not be empty (None where the format
    cannot tell, as for custom bodies, and batch files' bodies)."""
    return None if job.batch_input else job.endpoint.wire.prompt_template(job.request)


def prompt_reader(job: Job) -> PromptReader | None:
    """A function that takes the prompt part out of a rendered body, so emptiness is judged on what
    is sent, without rendering the prompt twice."""
    return None if job.batch_input else job.endpoint.wire.prompt_reader(job.request)


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
