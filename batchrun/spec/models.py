"""The job file as written: its tables as pydantic models, strict (an unknown field is a typo) and frozen.

Only the shape and the bounds of each field are checked here; what the fields mean together (a preset,
an endpoint's URL, a secret in the environment) is resolved by the other modules of ``spec``.
"""

from __future__ import annotations

from argparse import ArgumentTypeError
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..durations import parse_duration
from ..presets import Auth


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
