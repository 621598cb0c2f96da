"""batchrun: prompt tables in; answers, images and Parquet manifests out. Resumable, rate-limited."""

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

__version__ = "0.1.0"

__all__ = [
    "BatchrunError",
    "ExitCode",
    "FatalError",
    "InputError",
    "JobError",
    "OutputLockedError",
    "PermanentError",
    "RequestError",
    "RetryableError",
    "SinkError",
    "SpecError",
    "TemplateError",
    "__version__",
]
