"""One run per output folder: an ``flock`` that the kernel releases when the holder dies,
so a killed run never leaves a stale lock behind.

Shards (``--shard K/N``) share the folder: each holds ``.lock-s<K>of<N>`` exclusively (one process
a shard) and the folder's lock shared, so an unsharded run and the shards exclude each other. A
shard that finds nobody else there holds the folder's lock exclusively for ``while_alone`` (the
removal of a killed run's temp files, which would pull files from under a running shard).

Shards of different N at once would send some requests twice (a key that is 1 mod 2 may be 2 mod
3), so each shard also holds ``.lock-of<N>`` shared, and before it sends anything it probes every
other ``.lock-of<M>`` with an exclusive lock: one that is held means live shards of M, and this
shard is refused (exit 5). Each shard takes its own count's lock before it probes the others, so of
two shards of different N starting together at least one sees the other: never both run. Then the
greater N gives way at once and the smaller looks again a moment later, so one of them runs. One
N after another is safe: done keys are global."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
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
YIELD_S = 0.5  # > PROBE_TRIES x 0.01 s: the greater N's shard has seen us, given way and let go by then
PROBE_TRIES = 20  # x 0.01 s: another N's probe holds a count's lock for microseconds; a live shard for its run
_COUNT_LOCK = re.compile(r"^\.lock-of(\d+)$")


def shard_lock_name(shard: Shard) -> str:
    return f".lock-{shard.name}"


def count_lock_name(count: int) -> str:
    """Held shared by every running shard of ``count``."""
    return f".lock-of{count}"


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
        self._count_fd: int | None = None
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
            self._join_count(shared_tries)
            self._refuse_other_counts()
        except BaseException:
            self.release()
            raise
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

    def _join_count(self, tries: int) -> None:
        self._count_fd = self._open(self.path.parent / count_lock_name(self.shard.count))
        for _ in range(tries):
            try:
                fcntl.flock(self._count_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:  # another N's probe, for an instant
                time.sleep(0.05)
        name = count_lock_name(self.shard.count)
        raise OutputLockedError(f"{self.path.parent}: {name} stays locked (holder unknown)")

    def _refuse_other_counts(self) -> None:
        """Exit 5 if shards of another N are running in this folder. Two shards of different N
        that start together see each other: the one of the greater N gives way at once, the other
        looks again after ``YIELD_S`` (it keeps its own count's lock meanwhile), so one of them runs."""
        others = self._live_counts()
        if others and min(others) > self.shard.count:
            time.sleep(YIELD_S)
            others = self._live_counts()
        if others:
            other = min(others)
            raise OutputLockedError(
                f"{self.path.parent} is in use by shards of N={other} ({_shards(self.path.parent, other)}): "
                f"--shard {self.shard.index}/{self.shard.count} beside them could send their requests again; "
                f"wait for them, or run shard K/{other}"
            )

    def _live_counts(self) -> list[int]:
        """The other N whose count lock someone holds: shards of that N are running."""
        live = []
        for path in sorted(self.path.parent.glob(".lock-of*")):
            match = _COUNT_LOCK.match(path.name)
            if match is not None and int(match[1]) != self.shard.count and _in_use(self._open(path)):
                live.append(int(match[1]))
        return live

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
        for fd in (self._shard_fd, self._count_fd, self._fd):
            if fd is not None:
                if fd == self._shard_fd or (fd == self._fd and not self.shard.sharded):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        self._fd = self._shard_fd = self._count_fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _in_use(fd: int) -> bool:
    """Whether someone holds the lock on ``fd`` (closed here): only a live process does."""
    try:
        for _ in range(PROBE_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


def _shards(folder: Path, count: int | None = None) -> str:
    """Who holds the folder's lock shared: the shards (of ``count``) whose own lock names a holder."""
    pattern = ".lock-s*of*" if count is None else f".lock-s*of{count}"
    running = sorted(p.name.removeprefix(".lock-") for p in folder.glob(pattern) if p.stat().st_size)
    return f"shards {', '.join(running)}" if running else "holder unknown"


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, run {info['run_id']}, since {since}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
