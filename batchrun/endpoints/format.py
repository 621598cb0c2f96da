"""What a wire format is: everything batchrun knows about one kind of endpoint, in one class.

A format checks the job's ``[request]`` section, names the route, builds the body template, says
where the prompt sits in it, and makes the reader of its answers (the ``Adapter``: it parses a
whole answer or a stream and classifies what does not fit). Nothing outside ``endpoints/`` asks
which format a job has: it asks the format (``registry.wire_format``). Formats hold no state; the
registry keeps one of each, and a preset is a format plus defaults (``presets.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from ..errors import SpecError
from .base import Adapter

#: Takes the prompt part out of a rendered body.
PromptReader = Callable[[Any], Any]


class RequestSection(Protocol):
    """The job's ``[request]`` section (``spec.RequestSection``), as formats read it; named here so
    that ``endpoints/`` does not import the job file's module, which imports the registry."""

    @property
    def system(self) -> str | None: ...
    @property
    def prompt(self) -> str | None: ...
    @property
    def messages(self) -> list[dict[str, Any]] | None: ...
    @property
    def params(self) -> Mapping[str, Any]: ...
    @property
    def inputs(self) -> Any: ...
    @property
    def parameters(self) -> Mapping[str, Any] | None: ...
    @property
    def body(self) -> Any: ...


class Endpoint(Protocol):
    """The job's endpoint with its preset applied (``spec.Endpoint``), as formats read it."""

    @property
    def preset(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def stream(self) -> bool: ...
    @property
    def response_path(self) -> str | None: ...


class WireFormat:
    """The defaults: a JSON body to a route the job gives, no prompt batchrun can point at, no streaming."""

    name: ClassVar[str]
    route: ClassVar[str] = ""  # the URL template ({base_url}, {model}) when the preset names none
    accept: ClassVar[str] = "application/json"  # the Accept header
    streams: ClassVar[bool] = False  # may answer as an event stream (endpoint.stream)
    text_contents: ClassVar[bool] = False  # chat message contents are sent as text, whatever the column type
    seeds_samples: ClassVar[bool] = False  # each sample gets its own seed in parameters.seed

    def check_endpoint(self, endpoint: Endpoint, where: str) -> None:
        """Refuse an endpoint this format cannot talk to (``SpecError``, before anything is read)."""
        if endpoint.stream and not self.streams:
            raise SpecError(
                where, "endpoint.stream", f"the {endpoint.preset} preset does not stream; set stream = false"
            )

    def check_request(self, req: RequestSection, where: str) -> None:
        """Refuse a ``[request]`` section this format cannot build a body from."""

    def body_template(self, req: RequestSection, model: str | None) -> Any:
        """The request body as a template structure, rendered per row by the planner."""
        raise NotImplementedError

    def prompt_template(self, req: RequestSection) -> Any:
        """The template of the prompt itself (not the system text or the options): the part that must
        not render empty. None where batchrun cannot tell which part is the prompt."""
        return None

    def prompt_reader(self, req: RequestSection) -> PromptReader | None:
        """Where ``prompt_template`` sits in the rendered body, so emptiness is judged on what is sent."""
        return None

    def adapter(self, endpoint: Endpoint, *, keep_raw: bool, where: str) -> Adapter:
        """The reader of this endpoint's answers."""
        raise NotImplementedError


def field_reader(name: str) -> PromptReader:
    """Reads one top-level field of a JSON object body."""
    return lambda body: body.get(name) if isinstance(body, dict) else None
