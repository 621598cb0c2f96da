"""Any JSON endpoint (the body is a template, the answer is found with a JMESPath expression), and
HF's serverless Inference API, which is one with a body batchrun knows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from ..models import Parsed
from .base import load_json, unfit_answer
from .format import Endpoint, PromptReader, RequestSection, WireFormat, field_reader

if TYPE_CHECKING:
    import jmespath.parser


def hf_serverless_body(inputs: Any, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """The HF serverless Inference API payload: ``{"inputs": ..., "parameters": {...}}``."""
    body: dict[str, Any] = {"inputs": inputs}
    if parameters:
        body["parameters"] = dict(parameters)
    return body


def compile_path(expression: str, where: str) -> jmespath.parser.ParsedResult:
    import jmespath  # only custom endpoints read their answer with JMESPath
    import jmespath.exceptions

    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.ParseError as exc:
        raise SpecError(where, "endpoint.response_path", f"not valid JMESPath: {exc}") from None


class CustomAdapter:
    """Reads the answer at ``response_path``; nothing there fails the row for good (``unfit_answer``)."""

    streaming = False
    decodes_images = False

    def __init__(self, response_path: str, where: str = "job", keep_raw: bool = False) -> None:
        self.path = compile_path(response_path, where)
        self.expression = response_path
        self.keep_raw = keep_raw

    def parse(self, headers: Mapping[str, str], content: bytes) -> Parsed:
        data = load_json(content)
        value = self.path.search(data)
        if value is None:
            raise unfit_answer(f"nothing at {self.expression}", data, content, keep_raw=self.keep_raw)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return Parsed(text=text, raw=content.decode("utf-8", errors="replace") if self.keep_raw else None)


class CustomFormat(WireFormat):
    """The job gives the URL, the body template and the JMESPath of the answer."""

    name = "custom"

    def check_endpoint(self, endpoint: Endpoint, where: str) -> None:
        if not endpoint.response_path:
            raise SpecError(where, "endpoint.response_path", "a custom endpoint needs a JMESPath response mapping")
        super().check_endpoint(endpoint, where)

    def check_request(self, req: RequestSection, where: str) -> None:
        if req.body is None:
            raise SpecError(where, "request.body", "a custom endpoint needs a body template")

    def body_template(self, req: RequestSection, model: str | None) -> Any:
        return req.body

    def adapter(self, endpoint: Endpoint, *, keep_raw: bool, where: str) -> CustomAdapter:
        assert endpoint.response_path is not None  # check_endpoint refused an endpoint without one
        return CustomAdapter(endpoint.response_path, where, keep_raw=keep_raw)


class HFServerlessFormat(CustomFormat):
    """``{"inputs", "parameters"}`` to ``/models/{model}``, unless the job gives its own body."""

    name = "hf-serverless"
    route = "{base_url}/models/{model}"

    def check_request(self, req: RequestSection, where: str) -> None:
        if req.body is None and req.inputs is None and req.prompt is None:
            raise SpecError(where, "request.inputs", "hf-serverless needs inputs (or prompt), e.g. '{{ text }}'")

    def body_template(self, req: RequestSection, model: str | None) -> Any:
        if req.body is not None:
            return req.body
        return hf_serverless_body(req.inputs if req.inputs is not None else req.prompt, req.parameters)

    def prompt_template(self, req: RequestSection) -> Any:
        if req.body is not None:
            return None  # the job's own body: batchrun cannot tell which part is the prompt
        return req.inputs if req.inputs is not None else req.prompt

    def prompt_reader(self, req: RequestSection) -> PromptReader | None:
        return None if req.body is not None else field_reader("inputs")
