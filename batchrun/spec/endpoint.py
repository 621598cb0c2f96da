"""One endpoint table -> an ``Endpoint``: its preset applied, its URL built and checked, its
credentials read from the environment, its network and wake settings resolved."""

from __future__ import annotations

import base64
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from ..endpoints.format import WireFormat
from ..endpoints.registry import wire_format
from ..errors import SpecError
from ..origins import OriginError, OriginPolicy, allowed_origin, policy_for
from ..presets import PRESETS, Auth
from .models import EndpointSection, PriceSection
from .network import Network, resolve_network
from .wake import Wake, resolve_wake


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint with its preset applied; ``api_key`` and ``secret_headers`` never print.
    ``origins``: where its requests (and credentials) may go."""

    name: str
    preset: str
    format: str  # the wire format's name
    url: str
    model: str | None
    auth: Auth
    auth_header: str
    api_key: SecretStr | None
    headers: dict[str, str]
    stream: bool
    stream_usage: bool
    response_path: str | None
    simulated: bool = False
    network: Network = field(default_factory=lambda: Network())
    # one of several (``[[endpoints]]``): what it overrides of the job's [request] params and [limits]
    params: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    price: PriceSection | None = None
    secret_headers: dict[str, SecretStr] = field(default_factory=dict)
    origins: OriginPolicy = field(default_factory=lambda: OriginPolicy(frozenset()))
    wake: Wake | None = None  # may be asleep: woken before the first request (dispatch/wake.py)

    def secrets(self) -> list[str]:
        """Every secret value the run holds, for redaction: never in an error, log or manifest."""
        values = [self.api_key, *self.secret_headers.values(), self.network.proxy, self.network.client_key_password]
        found = [v.get_secret_value() for v in values if v is not None]
        if self.network.proxy is not None:  # its password alone and as sent (Basic): a page may echo it
            parsed = urllib.parse.urlsplit(self.network.proxy.get_secret_value())
            if parsed.password:
                user, password = urllib.parse.unquote(parsed.username or ""), urllib.parse.unquote(parsed.password)
                basic = base64.b64encode(f"{user}:{password}".encode()).decode()
                found += [parsed.password, password, basic]
        return [value for value in found if value]

    @property
    def wire(self) -> WireFormat:
        """The wire format: it builds the bodies and reads the answers of this endpoint."""
        return wire_format(self.format)


def normalize_base_url(url: str) -> str:
    """Accept the endpoint root with or without a trailing ``/`` or ``/v1``."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def resolve_endpoint(
    ep: EndpointSection, where: str, env: Any, needs_key: bool = True, *, place: str = "endpoint"
) -> Endpoint:
    """The endpoint with its preset applied; a fault in one of ``[[endpoints]]`` is named by its place."""
    if place == "endpoint":
        return _resolve_one(ep, where, env, needs_key)
    try:
        return _resolve_one(ep, where, env, needs_key)
    except SpecError as exc:
        field = place + exc.field[len("endpoint") :] if exc.field.startswith("endpoint.") else exc.field
        raise SpecError(exc.path, field, exc.reason) from None


def _resolve_one(ep: EndpointSection, where: str, env: Any, needs_key: bool) -> Endpoint:
    preset = PRESETS.get(ep.preset)
    if preset is None:
        known = ", ".join(sorted(PRESETS))
        raise SpecError(where, "endpoint.preset", f"unknown preset {ep.preset!r} (known: {known})")
    simulated = preset.simulated
    model = ep.model if ep.model is not None else preset.model
    base_url = ep.base_url if ep.base_url is not None else preset.base_url
    if simulated:
        base_url = base_url or "http://simulator.invalid"  # replaced by the runner's live address
    wire = wire_format(preset.format)
    url_template = ep.url if ep.url is not None else (preset.url if preset.url is not None else wire.route)
    if not url_template:
        raise SpecError(where, "endpoint.url", f"the {preset.name} preset needs a url (a template)")
    if "{base_url}" in url_template:
        if not base_url:
            raise SpecError(where, "endpoint.base_url", f"the {preset.name} preset needs the endpoint root")
        if not re.match(r"^https?://[^/\s]+", base_url):
            raise SpecError(where, "endpoint.base_url", f"not an http(s) URL: {base_url!r}")
        url_template = url_template.replace("{base_url}", normalize_base_url(base_url))
    if "{model}" in url_template:
        if not model:
            raise SpecError(where, "endpoint.model", f"the {preset.name} preset needs a model")
        url_template = url_template.replace("{model}", model)
    if not re.match(r"^https?://", url_template):
        raise SpecError(where, "endpoint.url", f"not an http(s) URL: {url_template!r}")
    try:
        listed = frozenset(allowed_origin(text) for text in ep.allowed_origins)
    except OriginError as exc:
        raise SpecError(where, "endpoint.allowed_origins", str(exc)) from None
    try:
        origins = policy_for(url_template, listed)
    except OriginError as exc:
        raise SpecError(where, "endpoint.url" if ep.url is not None else "endpoint.base_url", str(exc)) from None

    key_env = ep.api_key_env if ep.api_key_env is not None else preset.api_key_env
    auth: Auth = ep.auth or ("bearer" if ep.api_key_env and preset.auth == "none" else preset.auth)
    if not preset.needs_key and ep.api_key_env is None and ep.auth is None:
        auth = "none"
    api_key: SecretStr | None = None
    if auth != "none":
        if not key_env:
            raise SpecError(where, "endpoint.api_key_env", f"auth = {auth!r} needs api_key_env")
        value = env.get(key_env)
        if value:
            api_key = SecretStr(value)
        elif needs_key:
            raise SpecError(
                where, "endpoint.api_key_env", f"environment variable {key_env} is not set (it holds the token)"
            )
    if auth == "header" and not ep.auth_header:
        raise SpecError(where, "endpoint.auth_header", "auth = 'header' needs the header's name")
    secret_headers: dict[str, SecretStr] = {}
    for header, variable in ep.headers_env.items():
        if header.lower() in {h.lower() for h in ep.headers}:
            raise SpecError(where, f"endpoint.headers_env.{header}", "also in endpoint.headers: give it once")
        if env.get(variable):
            secret_headers[header] = SecretStr(env[variable])
        elif needs_key:
            raise SpecError(where, f"endpoint.headers_env.{header}", f"environment variable {variable} is not set")
    endpoint = Endpoint(
        name=ep.name or preset.name,
        preset=preset.name,
        format=wire.name,
        url=url_template,
        model=model,
        auth=auth,
        auth_header=ep.auth_header or "Authorization",
        api_key=api_key,
        headers=dict(ep.headers),
        stream=ep.stream if ep.stream is not None else preset.stream,
        stream_usage=ep.stream_usage,
        response_path=ep.response_path if ep.response_path is not None else preset.response_path,
        simulated=simulated,
        network=Network() if simulated else resolve_network(ep, url_template, where, env),
        secret_headers=secret_headers,
        origins=origins,
        price=ep.price,
        wake=resolve_wake(ep, where),
    )
    wire.check_endpoint(endpoint, where)
    return endpoint
