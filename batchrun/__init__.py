"""batchrun: prompt tables in; answers, images and Parquet manifests out. Resumable, rate-limited.

``run``, ``arun``, ``Job`` and ``Summary`` are imported on first use: they bring the runner (httpx,
polars, ...), which every ``import batchrun.x`` (the simulator's process, the error classes) would
otherwise pay for.
"""

import typing as _typing

from .errors import (
    BatchrunError,
    ExitCode,
    FatalError,
    InputError,
    JobError,
    OutputLockedError,
    PermanentError,
    RequestError,
    RetryableError,
    SinkError,
    SpecError,
    TemplateError,
)

if _typing.TYPE_CHECKING:
    from .api import Summary, arun, run
    from .spec import Job

__version__ = "0.1.0"

__all__ = [
    "BatchrunError",
    "ExitCode",
    "FatalError",
    "InputError",
    "Job",
    "JobError",
    "OutputLockedError",
    "PermanentError",
    "RequestError",
    "RetryableError",
    "SinkError",
    "SpecError",
    "Summary",
    "TemplateError",
    "__version__",
    "arun",
    "run",
]

_LAZY = {"Job": "spec", "Summary": "api", "arun": "api", "run": "api"}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchrun' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
