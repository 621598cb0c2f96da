"""Atomic writes: a temp file in the same folder, fsync, rename, fsync the folder.

A crash at any instant leaves either the old state or the whole new file under its final name;
temp files carry the ``.tmp-`` prefix so readers never glob them and the next run removes them.

Output folders may be shared, so what batchrun creates there is never world-writable (the user's
umask applies on top of ``FILE_MODE`` / ``FOLDER_MODE``), and a file it creates is created new
(``O_EXCL | O_NOFOLLOW``): a symbolic link planted under the name is refused, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import JobError

TMP_PREFIX = ".tmp-"
FILE_MODE = 0o664  # less the umask: 0o644 under the usual 022, group-writable under 002
FOLDER_MODE = 0o775
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def make_folder(path: Path, within: Path | None = None) -> None:
    """``mkdir -p`` whose new folders are never world-writable (``Path.mkdir`` gives 0o777 less the
    umask: with a umask of 0, anyone could add a link to a folder of results). With ``within``, no
    folder below it on the way to ``path`` may be a symbolic link (``ELOOP``)."""
    if within is not None:
        for folder in (path, *path.parents):
            if folder == within:
                break
            if folder.is_symlink():
                raise OSError(errno.ELOOP, "a symbolic link in the output folder: refused, not followed")
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise


def refuse_links(folder: Path, names: tuple[str, ...]) -> None:
    """Refuse (exit 2) a symbolic link planted in the output folder under a name batchrun writes
    into: following it would put results, or the journal, wherever the link points."""

    for name in names:
        if (folder / name).is_symlink():
            raise JobError(
                f"{folder / name} is a symbolic link: refused (batchrun does not follow links in its output folder)"
            )


def create_new(path: Path, flags: int = 0) -> int:
    """Open a file that must not exist yet (``FileExistsError`` if anything, a link too, is there)."""
    return os.open(path, NEW_FILE | flags, FILE_MODE)


def write_failure(exc: OSError) -> str:
    """Why a write failed, for the one line a run ends with: a full disk says so."""
    return "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_beside(final: Path) -> Iterator[Path]:
    """A temp path next to ``final`` (so the rename stays on one file system), removed on error."""
    tmp = final.with_name(f"{TMP_PREFIX}{os.getpid()}-{final.name}")
    try:
        fd = create_new(tmp)
    except FileExistsError:  # a leftover of this pid's, or a planted link: removed (not followed)
        tmp.unlink()
        fd = create_new(tmp)
    os.close(fd)  # the writer opens it again: a regular file of ours, mode FILE_MODE
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it becomes ``final``, on error it is removed."""
    with _temp_beside(final) as tmp:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    fsync_dir(final.parent)


def write_atomic(final: Path, write: Callable[[Path], object]) -> None:
    with atomic_path(final) as tmp:
        write(tmp)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """Like ``write_atomic`` for bytes in hand (one open for both write and fsync), but the folder
    is not synced: the rename is durable only after the caller's ``fsync_dir(final.parent)``.
    For many files in few folders, whose folders can be synced once for a batch."""
    with _temp_beside(final) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)


def remove_temp_files(folder: Path) -> int:
    """Remove what a killed run left half-written; call only while holding the output lock."""
    removed = 0
    if folder.is_dir():
        for path in folder.rglob(f"{TMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    shutil.rmtree(path)  # a planner's scratch folder
                else:
                    path.unlink()
                removed += 1
    return removed
