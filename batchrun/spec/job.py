"""Job file -> validated, preset-filled ``Job``. The ``spec`` package is the only place that reads ``os.environ``.

A bad job file fails here, before any input is read or request sent, with the file, the field
and the reason on one line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import SpecError
from ..shard import Shard
from ..sink.remote import RemoteOutput
from .batch import BATCH_FORMAT, batch_job, detected_batch
from .endpoint import Endpoint
from .endpoints import resolve_endpoints
from .models import JobFile, LimitsSection, OutputSection, RequestSection
from .output import output_folder

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DICT_JOB = "<job dict>"  # names a job given as a dict where a job file's path would be


@dataclass(frozen=True, slots=True)
class InputOptions:
    """How to read the input table: ``format`` (None: from the file names), the CSV/TSV
    ``separator`` (None: ``,`` or tab) and the types of CSV/TSV columns read as other than text."""

    format: str | None = None
    separator: str | None = None
    schema: dict[str, str] = field(default_factory=dict)


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
    out, remote = output_folder(jf.name, base, output, jf.output, env, where)
    if jf.input.format is None and detected_batch(jf, input_path):
        jf = jf.model_copy(update={"input": jf.input.model_copy(update={"format": BATCH_FORMAT})})
    if jf.input.format == BATCH_FORMAT:
        jf = batch_job(jf, where)
    endpoints = resolve_endpoints(jf, where, env, needs_key)
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
