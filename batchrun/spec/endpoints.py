"""``[endpoint]`` or ``[[endpoints]]`` -> the job's endpoints, each checked against the job's
``[request]`` by its wire format."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ..errors import SpecError
from .batch import BATCH_FORMAT
from .endpoint import Endpoint, resolve_endpoint
from .models import EndpointSection, JobFile

#: An endpoint's name among several heads its columns in a wide export (``<name>.status``).
ENDPOINT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def resolve_endpoints(jf: JobFile, where: str, env: Any, needs_key: bool) -> tuple[Endpoint, ...]:
    """``[endpoint]``, or each of ``[[endpoints]]`` (named, the names unique; two that would send
    the same requests are refused: their results would share keys)."""
    if (jf.endpoint is None) == (jf.endpoints is None):
        if jf.endpoint is not None:
            raise SpecError(where, "endpoints", "give [endpoint] or [[endpoints]], not both")
        raise SpecError(where, "endpoint", "Field required (give [endpoint], or [[endpoints]] for several)")
    if jf.endpoint is not None:
        endpoint = resolve_endpoint(jf.endpoint, where, env, needs_key)
        if jf.input.format != BATCH_FORMAT:  # the batch file's bodies are the requests
            endpoint.wire.check_request(jf.request, where)
        return (endpoint,)
    entries = jf.endpoints or []
    if not entries:
        raise SpecError(where, "endpoints", "empty: give at least one [[endpoints]] table")
    seen: dict[str, int] = {}
    sends: dict[str, str] = {}
    resolved = []
    for at, entry in enumerate(entries):
        place = f"endpoints[{at}]"
        if not ENDPOINT_NAME_RE.match(entry.name):
            raise SpecError(
                where, f"{place}.name", f"{entry.name!r}: use letters, digits, '_' and '-' only (it names columns)"
            )
        if entry.name in seen:
            raise SpecError(where, f"{place}.name", f"{entry.name!r} is also the name of endpoints[{seen[entry.name]}]")
        seen[entry.name] = at
        section = EndpointSection.model_validate(entry.model_dump(exclude={"limits", "params"}))
        endpoint = resolve_endpoint(section, where, env, needs_key, place=place)
        limits = entry.limits.model_dump(exclude_none=True)
        endpoint = replace(endpoint, params=dict(entry.params), limits=limits)
        request = jf.request.model_copy(update={"params": {**jf.request.params, **entry.params}})
        if jf.input.format != BATCH_FORMAT:
            endpoint.wire.check_request(request, where)
        same = repr((endpoint.format, endpoint.url, endpoint.model, sorted(request.params.items(), key=str)))
        if same in sends:
            raise SpecError(where, place, f"{entry.name!r} sends what {sends[same]!r} sends (same URL, model, params)")
        sends[same] = entry.name
        resolved.append(endpoint)
    return tuple(resolved)
