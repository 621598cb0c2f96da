"""The prompt of a sampled row: the job's prompt template rendered from its input row (read back
by ``row_index``, as export joins it), or, when the job file or the input is gone, the user message
of the kept request body. Only the sampled rows are rendered, and the input is read only as far as
the last of them, so a 1M-row run costs no replan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import BatchrunError


class Prompts:
    """The prompt text of sampled rows: the job's prompt template over the input row, else the
    kept body (of the rows in ``sampled``, which has the manifest's texts)."""

    def __init__(self, output_dir: Path, sampled: pl.DataFrame) -> None:
        self.output_dir = output_dir
        self.missing = ""
        self._by_row: dict[int, str] | None = None
        self.sampled = sampled

    def column(self, row_index: pl.Series) -> pl.Series:
        if self._by_row is None:
            self._by_row = self._read(set(row_index.to_list()))
            if not self._by_row:
                self._by_row = _from_bodies(self.sampled)
                if not self._by_row and not self.missing:
                    self.missing = "prompts not shown: the job's input could not be read and no request body was kept"
        by_row = self._by_row
        return pl.Series("prompt", [by_row.get(i) for i in row_index.to_list()], dtype=pl.String)

    def _read(self, wanted: set[int]) -> dict[int, str]:
        from ..export import job_for
        from ..plan.reader import Table
        from ..plan.shape import prompt_template
        from ..plan.templates import compile_template

        try:
            job = job_for(str(self.output_dir))
            template = prompt_template(job)
            if template is None:
                return {}
            render = compile_template(template, "prompt")
            found: dict[int, str] = {}
            start = 0
            last = max(wanted) if wanted else -1
            for chunk in Table(job.input, job.input_options).frames(65_536):
                if start > last:
                    break
                local = [i - start for i in sorted(wanted) if start <= i < start + chunk.height]
                for i, row in zip(local, chunk[local].to_dicts(), strict=True):
                    value = render({**row, "row": row})
                    found[start + i] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                start += chunk.height
            return found
        except (BatchrunError, OSError) as exc:
            self.missing = f"prompts from the request bodies: the job's input could not be read ({exc})"
            return {}


def _from_bodies(frame: pl.DataFrame) -> dict[int, str]:
    found: dict[int, str] = {}
    kept = frame.filter(pl.col("request_body").is_not_null()).unique("row_index")
    for index, body in kept.select("row_index", "request_body").iter_rows():
        try:
            found[index] = _prompt_in(json.loads(body))
        except ValueError:
            continue
    return found


def _prompt_in(body: Any) -> str:
    """The last user message of a chat body, or an image body's ``prompt``/``inputs``."""
    if isinstance(body, dict):
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        for name in ("prompt", "inputs"):
            if isinstance(body.get(name), str):
                return str(body[name])
    return json.dumps(body, ensure_ascii=False)
