"""A job over an OpenAI batch file (``format = "openai-batch"``): found by its first line, and the
job's fields set so that each line's body is sent as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..plan.batchfile import MODEL_FROM_BODY, looks_like_batch
from ..plan.sources import kind_of
from .models import EndpointEntry, JobFile

BATCH_FORMAT = "openai-batch"


def detected_batch(jf: JobFile, input_path: Path) -> bool:
    """An input of one JSON Lines file whose first line is a Batch API request, for a job whose
    ``[request]`` builds no body (with a prompt or messages, those keys are just columns)."""
    if jf.request.model_dump(exclude_defaults=True, exclude={"samples"}):
        return False
    return kind_of(str(input_path)) == "ndjson" and input_path.is_file() and looks_like_batch(str(input_path))


def batch_job(jf: JobFile, where: str) -> JobFile:
    """A job over an OpenAI batch file: each line's ``body`` is sent as written (the ``{{ body }}``
    template is a plain lookup), its ``custom_id`` is the row id and its body names the model. The
    raw answer is kept: the batch output file holds the whole response body."""
    given = jf.request.model_dump(exclude_defaults=True, exclude={"samples"})
    if given:
        field = next(iter(given))
        raise SpecError(where, f"request.{field}", "an openai-batch input carries its own request bodies")
    for at, section in enumerate([jf.endpoint] if jf.endpoint is not None else jf.endpoints or []):
        place = "endpoint" if jf.endpoint is not None else f"endpoints[{at}]"
        if section.stream:
            raise SpecError(where, f"{place}.stream", "an openai-batch input is answered whole; set stream = false")
        if isinstance(section, EndpointEntry) and section.params:
            raise SpecError(where, f"{place}.params", "an openai-batch input carries its own request bodies")

    def model_from_body(section: Any) -> Any:
        return section if section.model is not None else section.model_copy(update={"model": MODEL_FROM_BODY})

    return jf.model_copy(
        update={
            "id_column": jf.id_column or "custom_id",
            "request": jf.request.model_copy(update={"body": "{{ body }}"}),
            "sink": jf.sink.model_copy(update={"keep_raw_response": True}),
            "endpoint": None if jf.endpoint is None else model_from_body(jf.endpoint),
            "endpoints": None if jf.endpoints is None else [model_from_body(e) for e in jf.endpoints],
        }
    )
