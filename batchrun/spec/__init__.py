"""Job file -> validated, preset-filled ``Job``: the only package that reads ``os.environ``.

``job`` reads and resolves a job file (``load_job``, ``Job.from_file``/``from_dict``); ``models`` is
the file as written (pydantic); ``endpoint`` and ``endpoints`` apply presets, ``network`` and ``wake``
resolve how an endpoint is reached and woken; ``output`` finds the output folder or bucket; ``batch``
sets up a job over an OpenAI batch file.
"""

from __future__ import annotations

from .batch import BATCH_FORMAT
from .endpoint import Endpoint, normalize_base_url
from .job import DICT_JOB, InputOptions, Job, load_job, resolve, validate
from .models import (
    EndpointEntry,
    EndpointLimits,
    EndpointSection,
    InputSection,
    JobFile,
    LimitsSection,
    OutputSection,
    PriceSection,
    RequestSection,
)
from .network import Network
from .output import remote_target
from .wake import Wake

__all__ = [
    "BATCH_FORMAT",
    "DICT_JOB",
    "Endpoint",
    "EndpointEntry",
    "EndpointLimits",
    "EndpointSection",
    "InputOptions",
    "InputSection",
    "Job",
    "JobFile",
    "LimitsSection",
    "Network",
    "OutputSection",
    "PriceSection",
    "RequestSection",
    "Wake",
    "load_job",
    "normalize_base_url",
    "remote_target",
    "resolve",
    "validate",
]
