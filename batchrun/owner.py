"""Which job an output folder belongs to: ``.batchrun-job`` in the folder names it.

The job's ``name`` is its identity: an edited job (new template, new model) or a copy of the job
file elsewhere under the same name is the same job and keeps its folder (its older results are
reported as stale, never mixed in); a job of another name is refused, so two jobs never mix their
results in one manifest. The file also keeps the path of the job file last run, so that
``export OUTPUT`` finds the input table.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import JobError
from .sink.files import write_atomic

if TYPE_CHECKING:
    from .spec.job import Job

JOB_POINTER = ".batchrun-job"


@dataclass(frozen=True, slots=True)
class Owner:
    name: str | None  # None: an older pointer whose job file is gone
    job_file: Path


def read_owner(folder: Path) -> Owner | None:
    """The job that last ran in ``folder``, or None when no run has written it."""
    try:
        text = (folder / JOB_POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JobError(f"cannot read {folder / JOB_POINTER}: {exc.strerror}") from None
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return Owner(str(data["job"]), Path(data["job_file"]))
        except (ValueError, KeyError, TypeError):
            raise JobError(f"{folder / JOB_POINTER} is damaged; remove it if the folder is this job's") from None
    # written before the name was kept: the path of the job file alone
    return Owner(_name_in(Path(text)), Path(text))


def _name_in(job_file: Path) -> str | None:
    try:
        name = tomllib.loads(job_file.read_text(encoding="utf-8")).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return name if isinstance(name, str) else None


def check_owner(job: Job) -> None:
    """Refuse (exit 2) an output folder that another job's runs wrote."""
    owner = read_owner(job.output_dir)
    if owner is not None and owner.name is not None and owner.name != job.name:
        raise JobError(
            f"the output folder {job.output_dir} belongs to the job {owner.name!r} ({owner.job_file}); "
            f"give the job {job.name!r} a folder of its own (output = ... in the job file, or --output)"
        )


def claim(job: Job) -> None:
    """Check the folder is this job's, then note this job (and its job file) as the owner."""
    check_owner(job)
    text = json.dumps({"job": job.name, "job_file": str(job.path.resolve())}, ensure_ascii=False) + "\n"
    write_atomic(job.output_dir / JOB_POINTER, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def moved_default(name: str, default: Path, legacy: Path) -> str | None:
    """Where this job's results are when they sit in ``legacy`` (``outputs/<name>`` under the
    current folder, the default before it became relative to the job file) and the new default
    ``default`` does not exist yet: a reason to stop rather than send everything again."""
    if default.exists() or legacy.resolve() == default.resolve():
        return None
    owner = read_owner(legacy) if legacy.is_dir() else None
    if owner is None or owner.name != name:
        return None
    return (
        f"the results of the job {name!r} are in {legacy}, but its default output folder is now "
        f"{default} (outputs/<name> next to the job file, from any current folder): move the folder "
        f"there, or set output = {str(legacy.resolve())!r} in the job file"
    )
