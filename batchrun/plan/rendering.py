"""One input row -> what its requests would send (body, URL, row id, model), and whether its
prompt is empty: the job's templates compiled once, applied to a row at a time.

Apart from the planner so that planning, keying a shard's blocks and rebuilding a resumed run's
rows render a row with the same code; a row that cannot be rendered raises ``TemplateError``
here and the planner decides what becomes of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import TemplateError
from ..spec import Job
from .bodies import EMPTY_PROMPT, as_model, as_seed, canonical_json, is_empty, text_contents
from .shape import job_body_template, prompt_reader, prompt_template
from .templates import compile_template, referenced_names


class Renderer:
    """Renders the rows of one endpoint of a job."""

    def __init__(self, job: Job) -> None:
        self.render_body = compile_template(job_body_template(job), "request")
        self.render_url = compile_template(job.endpoint.url, "endpoint.url")
        self.render_model = compile_template(job.endpoint.model, "endpoint.model")
        self.needs_row = any(
            "row" in names
            for value in (job_body_template(job), job.endpoint.url, prompt_template(job))
            for names in referenced_names(value).values()
        )
        self.text_contents = job.endpoint.wire.text_contents and not job.batch_input  # a batch body goes as written
        self.seeded = job.endpoint.wire.seeds_samples
        self.id_column = job.id_column
        # emptiness is judged on the prompt part of the rendered body: what would be sent
        self.prompt_of = prompt_reader(job)
        self.render_prompt = compile_template(prompt_template(job), "prompt") if self.prompt_of is not None else None
        self._templates = canonical_json([job_body_template(job), job.endpoint.url, job.endpoint.model])

    def render(self, row: Mapping[str, Any], index: int) -> tuple[Any, tuple[str, str | None, str | None]]:
        """The body, URL, row id and model of one row; ``TemplateError`` if any of them cannot be made."""
        context = {**row, "row": row} if self.needs_row else row
        rendered = self._body(context)
        where = self._where(row, context, rendered, index)
        seed = (rendered.get("parameters") or {}).get("seed") if self.seeded and isinstance(rendered, dict) else None
        if seed is not None:
            as_seed(seed, index)  # a seed that is not an integer fails the row, every sample of it
        return rendered, where

    def unrendered(self, row: Mapping[str, Any]) -> bytes:
        """What stands for the body in the key of a row that does not render: the templates and
        the row's values, so a fixed template renders the row anew."""
        return canonical_json([self._templates.decode(), dict(row)])

    def row_id(self, row: Mapping[str, Any]) -> str | None:
        return None if self.id_column is None or row.get(self.id_column) is None else str(row[self.id_column])

    def refusal(self, rendered: Any) -> str | None:
        """Why this body is not to be sent: its prompt part is empty."""
        if self.prompt_of is not None and is_empty(self.prompt_of(rendered)):
            return EMPTY_PROMPT
        return None

    def renders_empty(self, row: Mapping[str, Any]) -> bool:
        """Whether the prompt of ``row`` renders empty: the check before sending, on the rows whose
        prompt columns are null, blank or false (``Table.inspect``). The prompt template alone is
        rendered (half the cost of the body); it renders what ``prompt_of`` reads from the body."""
        if self.render_prompt is None:
            return False
        try:
            return is_empty(self.render_prompt({**row, "row": row} if self.needs_row else row))
        except TemplateError:
            return False  # not empty: a row that does not render fails on its own when planned

    def _body(self, context: Mapping[str, Any]) -> Any:
        rendered = self.render_body(context)
        if self.text_contents:
            text_contents(rendered)
        return rendered

    def _where(
        self, row: Mapping[str, Any], context: Mapping[str, Any], rendered: Any, index: int
    ) -> tuple[str, str | None, str | None]:
        """The URL, the row id and the model (as sent) of one input row."""
        url = self.render_url(context)
        if not isinstance(url, str):
            raise TemplateError(f"template endpoint.url renders {url!r} for row {index}, not a URL")
        row_id = None
        if self.id_column is not None and row.get(self.id_column) is not None:
            row_id = str(row[self.id_column])
        model = rendered.get("model") if isinstance(rendered, dict) else None
        if model is None:  # not in the body (an image or serverless URL names it): the job's, rendered
            model = self.render_model(context)
        return url, row_id, as_model(model)
