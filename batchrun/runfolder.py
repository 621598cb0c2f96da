"""The output folder a run works in: created, locked against other runs (a shard: against its own
shard), tidied and its dead runs' journals folded while alone, the job named in it, and an output on
object storage leased and mirrored."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import TYPE_CHECKING

import anyio

from .errors import JobError
from .export import remember_job
from .owner import JOB_POINTER
from .plan.keyindex import INDEX_DIR
from .sink.files import make_folder, refuse_links, remove_temp_files
from .sink.fold import fold_journals
from .sink.journal import JOURNAL_DIR
from .sink.layout import IMAGES_DIR
from .sink.lock import OutputLock
from .sink.manifest import MANIFEST_DIR
from .spec import Job

if TYPE_CHECKING:
    from .sink.remote import Mirror


def folder_lock(job: Job, run_id: str) -> OutputLock:
    """The output folder, created, and the lock the run holds on it (taken on entering it)."""
    try:
        make_folder(job.output_dir)
    except OSError as exc:
        raise JobError(f"cannot create the output folder {job.output_dir}: {exc.strerror}") from None
    return OutputLock(job.output_dir, run_id, job.shard, while_alone=partial(_tidy, job))


async def settle_folder(job: Job, run_id: str, lock: OutputLock, stack: contextlib.ExitStack) -> Mirror | None:
    """Under the lock: a shard's own dead journals folded, the bucket leased and mirrored (the lease
    released by ``stack``), the job named in the folder; the mirror of an output on object storage."""
    refuse_links(job.output_dir, (MANIFEST_DIR, JOURNAL_DIR, IMAGES_DIR, INDEX_DIR, JOB_POINTER))
    if not lock.alone:  # other shards run: only this shard's journals are known to be dead
        await anyio.to_thread.run_sync(partial(fold_journals, job.output_dir, shard=job.shard.name))
    mirror = await anyio.to_thread.run_sync(_open_remote, job, run_id, stack) if job.remote else None
    await anyio.to_thread.run_sync(remember_job, job)
    if mirror is not None:
        await anyio.to_thread.run_sync(mirror.push_file, JOB_POINTER)
    return mirror


def _open_remote(job: Job, run_id: str, stack: contextlib.ExitStack) -> Mirror:
    """An output on object storage: its lease (released when the run ends), then the parts the
    bucket has come down and those it lacks go up (blocking)."""
    from .sink.lease import open_remote
    from .sink.remote import Mirror

    assert job.remote is not None
    mirror = Mirror(job.remote)
    stack.callback(open_remote(mirror, run_id, job.shard).release)
    return mirror


def _tidy(job: Job) -> None:
    """While no other run (or shard) holds the folder: a killed run's temp files, and every shard's
    journals (a killed run's last results), whatever N it ran with."""
    refuse_links(job.output_dir, (MANIFEST_DIR, JOURNAL_DIR, IMAGES_DIR, INDEX_DIR, JOB_POINTER))
    remove_temp_files(job.output_dir)
    fold_journals(job.output_dir, shard=None)
