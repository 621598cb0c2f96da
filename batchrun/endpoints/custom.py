"""Any JSON endpoint: the body is a template, the answer is found with a JMESPath expression."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from ..models import Parsed
from .base import load_json, unfit_answer

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
