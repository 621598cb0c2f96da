"""Where a job's results go: a local folder, or object storage (``s3://...``) worked on in a local
staging folder and mirrored there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import JobError, SpecError
from ..owner import moved_default
from ..sink.remote import RemoteOutput, remote_output


def output_folder(
    name: str, base: Path, output: str | None, given: str | None, env: Any, where: str
) -> tuple[Path, RemoteOutput | None]:
    """The job's output folder and its object-storage output, if any: ``--output`` (``output``, relative
    to the current folder) over the job file's ``output`` (``given``, relative to its folder ``base``),
    by default ``outputs/<name>`` beside the job file."""
    remote = job_remote(output if output is not None else given, env, where)
    if remote is not None:  # the run works in a local staging folder, mirrored to the bucket
        return remote.staging, remote
    if output is not None:
        return Path(os.path.abspath(output)), None
    if given is not None:
        return Path(os.path.normpath(base / given)), None
    out = base / "outputs" / name
    if moved := moved_default(name, out, Path("outputs") / name):
        raise SpecError(where, "output", moved)
    return out, None


def job_remote(text: str | None, env: Any, where: str) -> RemoteOutput | None:
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
