"""An endpoint that may be asleep: the ``hf_endpoint``, ``pause_after``, ``wake_timeout`` and
``hf_api_url`` fields of an endpoint, checked together."""

from __future__ import annotations

import re
from argparse import ArgumentTypeError
from dataclasses import dataclass

from ..durations import parse_duration
from ..errors import SpecError
from ..origins import OriginError, policy_for
from .models import EndpointSection


@dataclass(frozen=True, slots=True)
class Wake:
    """An endpoint that may be asleep: woken through the management API when ``hf_endpoint`` names
    it, else by its answers (503s before the first answer are its cold start), within ``timeout_s``."""

    hf_endpoint: str | None
    timeout_s: float = 600.0
    pause_after: bool = False
    api_url: str | None = None  # None: huggingface_hub's (hfapi.MANAGEMENT_API)


HF_ENDPOINT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_wake(ep: EndpointSection, where: str) -> Wake | None:
    """``hf_endpoint``, ``pause_after``, ``wake_timeout`` and ``hf_api_url`` checked together."""
    if ep.hf_endpoint is None:
        for name in ("pause_after", "hf_api_url"):
            if getattr(ep, name):
                raise SpecError(where, f"endpoint.{name}", "needs hf_endpoint (the endpoint's namespace/name)")
        if ep.wake_timeout is None:
            return None
    elif not HF_ENDPOINT_RE.match(ep.hf_endpoint):
        raise SpecError(where, "endpoint.hf_endpoint", f"{ep.hf_endpoint!r}: give namespace/name, e.g. 'my-org/my-llm'")
    timeout = 600.0
    if ep.wake_timeout is not None:
        try:
            timeout = parse_duration(str(ep.wake_timeout))
        except ArgumentTypeError as exc:
            raise SpecError(where, "endpoint.wake_timeout", str(exc)) from None
        if timeout <= 0:
            raise SpecError(where, "endpoint.wake_timeout", "must be more than 0")
    if ep.hf_api_url is not None:
        try:
            policy_for(ep.hf_api_url, frozenset())  # the token goes there: the same checks as base_url
        except OriginError as exc:
            raise SpecError(where, "endpoint.hf_api_url", str(exc)) from None
        if not re.match(r"^https?://[^{}\s]+$", ep.hf_api_url):
            raise SpecError(where, "endpoint.hf_api_url", f"not an http(s) URL: {ep.hf_api_url!r}")
    return Wake(ep.hf_endpoint, timeout, ep.pause_after, ep.hf_api_url)
