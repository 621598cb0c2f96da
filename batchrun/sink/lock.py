"""One run per output folder: an ``flock`` that the kernel releases when the holder dies,
so a killed run never leaves a stale lock behind.

Shards (``--shard K/N``) share the folder: each holds ``.lock-s<K>of<N>`` exclusively (one process
a shard) and the folder's lock shared, so an unsharded run and the shards exclude each other. A
shard that finds nobody else there holds the folder's lock exclusively for ``while_alone`` (the
removal of a killed run's temp files, which would pull files from under a running shard)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ..errors import JobError, OutputLockedError
from ..shard import Shard
from .files import FILE_MODE

LOCK_NAME = ".batchrun.lock"


SHARED_TRIES = 100  # x 0.05 s: a shard waits this long for another shard's start-up clean-up


def shard_lock_name(shard: Shard) -> str:
    return f".lock-{shard.name}"


class OutputLock:
    def __init__(
        self,
        folder: Path,
        run_id: str,
        shard: Shard | None = None,
        while_alone: Callable[[], object] | None = None,
    ) -> None:
        self.path = folder / LOCK_NAME
        self.run_id = run_id
        self.shard = shard or Shard()
        self.while_alone = while_alone
        self._fd: int | None = None
        self._shard_fd: int | None = None
        self.alone = False  # held the folder's lock exclusively at start: no other run was there

    def acquire(self, shared_tries: int = SHARED_TRIES) -> None:
        if not self.shard.sharded:
            self._fd = self._take(self.path)
            self._note(self._fd)
            self.alone = True
            if self.while_alone is not None:
                self.while_alone()
            return
        self._shard_fd = self._take(self.path.parent / shard_lock_name(self.shard))
        self._note(self._shard_fd)
        try:
            self._fd = self._take(self.path)
        except OutputLockedError:
            self._fd = self._open(self.path)
            for _ in range(shared_tries):
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    time.sleep(0.05)
            holder = _describe(os.pread(self._fd, 4096, 0))
            self.release()
            raise OutputLockedError(f"{self.path.parent} is in use by an unsharded run ({holder})") from None
        self.alone = True
        try:
            if self.while_alone is not None:
                self.while_alone()
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BaseException:
            self.release()
            raise

    def _open(self, path: Path) -> int:
        try:  # never through a link: a planted one would have us truncate and write its target
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise JobError(f"{path} is a symbolic link: refused (remove it; batchrun makes its own)") from None

    def _take(self, path: Path) -> int:
        fd = self._open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0)) if os.fstat(fd).st_size else _shards(path.parent)
            os.close(fd)
            which = f"run of shard {self.shard.name}" if path.name != LOCK_NAME else "run"
            raise OutputLockedError(f"{path.parent} is in use by another {which} ({holder})") from None
        return fd

    def _note(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": self.run_id, "since": time.time()}
        if self.shard.sharded:
            info["shard"] = self.shard.name
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        for fd in (self._shard_fd, self._fd):
            if fd is not None:
                if fd == self._shard_fd or not self.shard.sharded:
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        self._fd = self._shard_fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _shards(folder: Path) -> str:
    """Who holds the folder's lock shared: the shards whose own lock names a holder."""
    running = sorted(p.name.removeprefix(".lock-") for p in folder.glob(".lock-s*of*") if p.stat().st_size)
    return f"shards {', '.join(running)}" if running else "holder unknown"


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, run {info['run_id']}, since {since}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
