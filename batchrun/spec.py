"""Job file -> validated, preset-filled ``Job``. The only module that reads ``os.environ``.

A bad job file fails here, before any input is read or request sent, with the file, the field
and the reason on one line.
"""

from __future__ import annotations

import base64
import os
import re
import tomllib
import urllib.parse
from argparse import ArgumentTypeError
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # pure with a dict

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .durations import parse_duration
from .endpoints.format import WireFormat
from .endpoints.registry import wire_format
from .errors import JobError, SpecError
from .origins import OriginError, OriginPolicy, allowed_origin, policy_for
from .owner import moved_default
from .plan.batchfile import MODEL_FROM_BODY, looks_like_batch
from .plan.sources import kind_of
from .presets import PRESETS, Auth
from .shard import Shard
from .sink.remote import RemoteOutput, remote_output

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DICT_JOB = "<job dict>"  # names a job given as a dict where a job file's path would be


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceSection(_Strict):
    """USD: per million prompt and answer tokens, per request, per image."""

    input_per_million: float = Field(default=0.0, ge=0)
    output_per_million: float = Field(default=0.0, ge=0)
    per_request: float = Field(default=0.0, ge=0)
    per_image: float = Field(default=0.0, ge=0)


class EndpointSection(_Strict):
    preset: str
    base_url: str | None = None
    url: str | None = None
    api_key_env: str | None = None
    auth: Auth | None = None
    auth_header: str | None = None
    model: str | None = None
    stream: bool | None = None
    stream_usage: bool = True  # ask for usage in the stream (stream_options.include_usage)
    response_path: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, str] = Field(default_factory=dict)  # header -> variable holding a secret value
    allowed_origins: list[str] = Field(default_factory=list)  # where credentials may go (docs/security.md)
    name: str | None = None
    # networks (README "Networks"): paths are relative to the job file
    ca_bundle: str | None = None  # a PEM file or a folder of hashed certificates
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None
    client_key_password_env: str | None = None
    proxy: str | None = None
    price: PriceSection | None = None
    # a Hugging Face Inference Endpoint that may be asleep (README "Scaled-to-zero endpoints")
    hf_endpoint: str | None = None  # "namespace/name": woken through the management API
    pause_after: bool = False
    wake_timeout: float | str | None = None  # seconds or "10m"; the default with hf_endpoint: 10 minutes
    hf_api_url: str | None = None  # the management API root, default huggingface_hub's


class EndpointLimits(_Strict):
    """What one endpoint of several may override of the job's ``[limits]``."""

    concurrency: int | None = Field(default=None, ge=1, le=10_000)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)


class EndpointEntry(EndpointSection):
    """One of ``[[endpoints]]``: a whole endpoint, named, with its own limits and ``params``
    (merged over the job's ``[request] params``)."""

    name: str
    limits: EndpointLimits = Field(default_factory=EndpointLimits)
    params: dict[str, Any] = Field(default_factory=dict)


class RequestSection(_Strict):
    system: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: Any = None
    parameters: dict[str, Any] | None = None
    body: Any = None
    samples: int = Field(default=1, ge=1, le=10_000)


class LimitsSection(_Strict):
    concurrency: int = Field(default=16, ge=1, le=10_000)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=6, ge=1, le=100)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retry_wait_s: float = Field(default=120.0, gt=0)
    shards: int | None = Field(default=None, ge=1, le=10_000)  # the N of ``--shard auto`` and ``plan`` (issue 19)
    # refusals (429/503 overload) with nothing accepted for this long stop the job: exit 4, resumable
    give_up_after: float = Field(default=900.0, ge=0)  # seconds; "15m", "2h"; 0 or false: never

    @field_validator("give_up_after", mode="before")
    @classmethod
    def _spell(cls, value: Any) -> Any:
        if isinstance(value, bool):
            if value:
                raise ValueError('a duration such as "15m", or false')
            return 0.0
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ArgumentTypeError as exc:
                raise ValueError(str(exc)) from None
        return value


class OutputSection(_Strict):
    flush_rows: int = Field(default=1000, ge=1)
    flush_seconds: float = Field(default=5.0, gt=0)
    keep_raw_response: bool = False
    keep_request: bool = False  # the body as sent, as JSON text: never headers or credentials


ColumnType = Literal["str", "int", "float", "bool", "date"]


class InputSection(_Strict):
    """``input = "path"``, or ``[input]`` with the path and how to read it."""

    path: str
    # when the suffix does not tell; "openai-batch": OpenAI Batch API request lines, each body sent as written
    format: Literal["csv", "tsv", "parquet", "jsonl", "ndjson", "openai-batch"] | None = None
    separator: str | None = None  # CSV/TSV: one byte, e.g. ";"
    columns: dict[str, ColumnType] = Field(default_factory=dict, alias="schema")  # CSV/TSV: cells are text unless named

    @field_validator("separator")
    @classmethod
    def _one_byte(cls, value: str | None) -> str | None:
        if value is not None and (len(value.encode()) != 1 or value in '"\r\n'):
            raise ValueError('one character (one byte), not a quote or a newline, e.g. ";"')
        return value


@dataclass(frozen=True, slots=True)
class InputOptions:
    """How to read the input table: ``format`` (None: from the file names), the CSV/TSV
    ``separator`` (None: ``,`` or tab) and the types of CSV/TSV columns read as other than text."""

    format: str | None = None
    separator: str | None = None
    schema: dict[str, str] = field(default_factory=dict)


class JobFile(_Strict):
    name: str
    input: InputSection
    id_column: str | None = None
    output: str | None = None
    dedupe: bool = False
    empty_prompts: Literal["error", "skip"] = "error"
    max_cost: float | None = Field(default=None, ge=0)  # USD: stop before the spend could pass it
    endpoint: EndpointSection | None = None
    endpoints: list[EndpointEntry] | None = None
    request: RequestSection = Field(default_factory=RequestSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    sink: OutputSection = Field(default_factory=OutputSection)

    @field_validator("input", mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value}
        if not isinstance(value, dict):
            raise ValueError('a path, or a table: [input] path = "...", separator = ";", schema = {...}')
        return value


@dataclass(frozen=True, slots=True)
class Network:
    """How the endpoint is reached: the CAs trusted (a file or a folder, and what named it, for error
    hints; neither: certifi's), a client certificate, a proxy. The proxy (it may hold a password in
    its URL) and the key's password are secrets: they never print."""

    ca_file: str | None = None
    ca_dir: str | None = None
    ca_source: str = "certifi"
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None
    client_key_password: SecretStr | None = None
    proxy: SecretStr | None = None


@dataclass(frozen=True, slots=True)
class Wake:
    """An endpoint that may be asleep: woken through the management API when ``hf_endpoint`` names
    it, else by its answers (503s before the first answer are its cold start), within ``timeout_s``."""

    hf_endpoint: str | None
    timeout_s: float = 600.0
    pause_after: bool = False
    api_url: str | None = None  # None: huggingface_hub's (hfapi.MANAGEMENT_API)


HF_ENDPOINT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _wake(ep: EndpointSection, where: str) -> Wake | None:
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


@dataclass(frozen=True, slots=True)
class Job:
    """A validated job, its paths resolved and its preset applied: from a job file or a dict."""

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, output: str | None = None) -> Job:
        """The job file at ``path``: paths in it are relative to its folder."""
        return load_job(Path(path), output=output)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, base_dir: str | os.PathLike[str] | None = None, output: str | None = None
    ) -> Job:
        """A job given as the dict a job file would hold (TOML's tables as dicts), checked as strictly:
        its relative paths (input, output) are relative to ``base_dir``, the current folder by default."""
        path = Path(os.path.abspath(base_dir if base_dir is not None else ".")) / DICT_JOB
        return resolve(validate(data, DICT_JOB), path, output=output, env=os.environ, where=DICT_JOB)

    name: str
    path: Path
    input: str  # absolute path or glob
    id_column: str | None
    output_dir: Path
    dedupe: bool
    empty_prompts: str
    endpoint: Endpoint
    request: RequestSection
    limits: LimitsSection
    sink: OutputSection
    input_options: InputOptions = field(default_factory=InputOptions)
    endpoints: tuple[Endpoint, ...] = ()  # every endpoint, ``endpoint`` the one this view is for
    max_cost: float | None = None  # USD
    shard: Shard = field(default_factory=Shard)  # ``--shard K/N``: which requests this process sends
    remote: RemoteOutput | None = None  # output on object storage; ``output_dir`` is then its staging folder

    @property
    def batch_input(self) -> bool:
        """Whether the input is an OpenAI batch file: each line's ``body`` is the request, as written."""
        return self.input_options.format == BATCH_FORMAT

    @property
    def several(self) -> bool:
        """Whether the job has several endpoints (``[[endpoints]]`` of more than one)."""
        return len(self.endpoints) > 1

    def lanes(self) -> list[Job]:
        """The job as each endpoint sees it: that endpoint, its params over ``[request] params``,
        its limits over ``[limits]``. A job of one endpoint with nothing of its own is its own lane."""
        if not self.several and not (self.endpoint.params or self.endpoint.limits):
            return [self]
        return [
            replace(
                self,
                endpoint=endpoint,
                request=self.request.model_copy(update={"params": {**self.request.params, **endpoint.params}}),
                limits=self.limits.model_copy(update=endpoint.limits),
            )
            for endpoint in self.endpoints
        ]


def load_job(
    path: str | Path, *, output: str | None = None, env: dict[str, str] | None = None, needs_key: bool = True
) -> Job:
    """Read, validate and resolve a job file; raise ``SpecError`` naming the field at fault.
    ``needs_key=False`` is for commands that send nothing (``plan``, ``export``): the API key
    variable may be unset, and ``api_key`` stays None."""
    path = Path(path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(where, "", "job file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(where, "", f"cannot read the job file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(where, "", f"not valid TOML: {exc}") from None
    return resolve(
        validate(data, where), path, output=output, env=os.environ if env is None else env, needs_key=needs_key
    )


def validate(data: Any, where: str) -> JobFile:
    """The job's fields checked, as read from a file or given as a dict; the first fault as a ``SpecError``."""
    try:
        return JobFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown field (a typo?)" if err["type"] == "extra_forbidden" else err["msg"]
        raise SpecError(where, loc, msg) from None


def _remote_output(text: str | None, env: Any, where: str) -> RemoteOutput | None:
    try:
        return None if text is None else remote_output(text, env)
    except JobError as exc:
        raise SpecError(where, "output", str(exc)) from None


def remote_target(text: str) -> RemoteOutput | None:
    """A command's target (``status s3://bucket/prefix``) as an object-storage output, or None."""
    try:
        return remote_output(text, os.environ)
    except JobError as exc:
        raise JobError(f"{text}: {exc}") from None


def resolve(
    jf: JobFile, path: Path, *, output: str | None, env: Any, needs_key: bool = True, where: str | None = None
) -> Job:
    """Paths in the job file are relative to the job file's folder, the default output folder
    (``outputs/<name>``) too, so the same job (a cron line, another shell) finds the same folder
    from any current directory; ``--output`` is a command-line path, relative to the current one.
    ``where`` names the job in errors (default: the path)."""
    where = str(path) if where is None else where
    if not NAME_RE.match(jf.name):
        raise SpecError(where, "name", "use letters, digits, '.', '_' and '-' only (it names a folder)")
    base = path.resolve().parent
    given = jf.input.path
    input_path = Path(given) if Path(given).is_absolute() else base / given
    remote = _remote_output(output if output is not None else jf.output, env, where)
    if remote is not None:  # the run works in a local staging folder, mirrored to the bucket
        out = remote.staging
    elif output is not None:
        out = Path(os.path.abspath(output))
    elif jf.output is not None:
        out = Path(os.path.normpath(base / jf.output))
    else:
        out = base / "outputs" / jf.name
        if moved := moved_default(jf.name, out, Path("outputs") / jf.name):
            raise SpecError(where, "output", moved)
    if jf.input.format is None and _detected_batch(jf, input_path):
        jf = jf.model_copy(update={"input": jf.input.model_copy(update={"format": BATCH_FORMAT})})
    if jf.input.format == BATCH_FORMAT:
        jf = _batch_job(jf, where)
    endpoints = _resolve_endpoints(jf, where, env, needs_key)
    endpoint = endpoints[0]
    if jf.input.format == BATCH_FORMAT and (odd := next((e for e in endpoints if e.format != "chat"), None)):
        raise SpecError(where, "input.format", f"an openai-batch input goes to a chat endpoint, not {odd.preset}")
    return Job(
        name=jf.name,
        path=path,
        input=str(input_path),
        id_column=jf.id_column,
        output_dir=out,
        remote=remote,
        dedupe=jf.dedupe,
        empty_prompts=jf.empty_prompts,
        endpoint=endpoint,
        request=jf.request,
        limits=jf.limits,
        sink=jf.sink,
        input_options=InputOptions(format=jf.input.format, separator=jf.input.separator, schema=dict(jf.input.columns)),
        endpoints=endpoints,
        max_cost=jf.max_cost,
    )


BATCH_FORMAT = "openai-batch"


def _detected_batch(jf: JobFile, input_path: Path) -> bool:
    """An input of one JSON Lines file whose first line is a Batch API request, for a job whose
    ``[request]`` builds no body (with a prompt or messages, those keys are just columns)."""
    if jf.request.model_dump(exclude_defaults=True, exclude={"samples"}):
        return False
    return kind_of(str(input_path)) == "ndjson" and input_path.is_file() and looks_like_batch(str(input_path))


def _batch_job(jf: JobFile, where: str) -> JobFile:
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


#: An endpoint's name among several heads its columns in a wide export (``<name>.status``).
ENDPOINT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _resolve_endpoints(jf: JobFile, where: str, env: Any, needs_key: bool) -> tuple[Endpoint, ...]:
    """``[endpoint]``, or each of ``[[endpoints]]`` (named, the names unique; two that would send
    the same requests are refused: their results would share keys)."""
    if (jf.endpoint is None) == (jf.endpoints is None):
        if jf.endpoint is not None:
            raise SpecError(where, "endpoints", "give [endpoint] or [[endpoints]], not both")
        raise SpecError(where, "endpoint", "Field required (give [endpoint], or [[endpoints]] for several)")
    if jf.endpoint is not None:
        endpoint = _resolve_endpoint(jf.endpoint, where, env, needs_key)
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
        endpoint = _resolve_endpoint(section, where, env, needs_key, place=place)
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


def normalize_base_url(url: str) -> str:
    """Accept the endpoint root with or without a trailing ``/`` or ``/v1``."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _resolve_endpoint(
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
        network=Network() if simulated else _network(ep, url_template, where, env),
        secret_headers=secret_headers,
        origins=origins,
        price=ep.price,
        wake=_wake(ep, where),
    )
    wire.check_endpoint(endpoint, where)
    return endpoint


#: Where the CAs to trust come from when the job does not name them, first set wins (requests' and
#: curl's variables after OpenSSL's, as pip and huggingface_hub read them).
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def _network(ep: EndpointSection, url: str, where: str, env: Any) -> Network:
    base = Path(where).resolve().parent

    def path(value: str, name: str, *, folder: bool = False) -> Path:
        found = Path(value).expanduser()
        found = found if found.is_absolute() else base / found
        if not (found.is_file() or (folder and found.is_dir())):
            raise SpecError(where, name, f"no such {'file or folder' if folder else 'file'}: {value}")
        return found

    ca_file = ca_dir = None
    source = "certifi"
    named = [("endpoint.ca_bundle", ep.ca_bundle)] + [(name, env.get(name)) for name in CA_VARIABLES]
    for name, value in named:
        if value:
            ca = path(value, name, folder=True)
            ca_file, ca_dir, source = (None, str(ca), name) if ca.is_dir() else (str(ca), None, name)
            break
    password = None
    if ep.client_key_password_env:
        if not env.get(ep.client_key_password_env):
            variable = ep.client_key_password_env
            raise SpecError(where, "endpoint.client_key_password_env", f"environment variable {variable} is not set")
        password = SecretStr(env[ep.client_key_password_env])
    if (ep.client_key or password) and not ep.client_cert:
        raise SpecError(where, "endpoint.client_cert", "client_key needs client_cert (the certificate it goes with)")
    return Network(
        ca_file=ca_file,
        ca_dir=ca_dir,
        ca_source=source,
        verify=ep.verify,
        client_cert=str(path(ep.client_cert, "endpoint.client_cert")) if ep.client_cert else None,
        client_key=str(path(ep.client_key, "endpoint.client_key")) if ep.client_key else None,
        client_key_password=password,
        proxy=_proxy(ep.proxy, url, where, env),
    )


def _proxy(given: str | None, url: str, where: str, env: Any) -> SecretStr | None:
    """``[endpoint] proxy``, else the environment's proxy for the URL's scheme (``https_proxy`` /
    ``HTTPS_PROXY``, ``http_proxy`` / ``HTTP_PROXY``, then ``ALL_PROXY``; lower case first, as curl
    and urllib read them) unless ``NO_PROXY`` names the host (urllib's matching: suffixes, ports, ``*``)."""
    parsed = urllib.parse.urlsplit(url)

    def var(name: str) -> str | None:
        return env.get(name) or env.get(name.upper()) or None

    name = "endpoint.proxy"
    proxy = given
    if proxy is None:
        no_proxy = var("no_proxy")
        host = parsed.netloc.rpartition("@")[2]  # with its port: NO_PROXY may name one
        if host and no_proxy and proxy_bypass_environment(host, {"no": no_proxy}):
            return None
        for name in (f"{parsed.scheme}_proxy", "all_proxy"):
            if proxy := var(name):
                name = name.upper()
                break
    if not proxy:
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"  # curl's reading of a bare host:port
    scheme = proxy.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise SpecError(where, name, f"a {scheme} proxy is not supported: give an http:// proxy")
    return SecretStr(proxy)
