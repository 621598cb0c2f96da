"""The lock of an output on object storage: an object created only if absent, held by a lease.

``flock`` (``sink/lock.py``) cannot reach a bucket, and a killed holder cannot delete its lock, so
the lock object holds its holder and an expiry: ``<prefix>/.batchrun.lock`` for a run,
``<prefix>/.lock-s<K>of<N>`` for a shard. It is created with ``If-None-Match: *`` (obstore's
``mode="create"``), renewed by its holder every ``RENEW_S`` with ``If-Match`` on the e-tag it last
wrote, and released by a conditional write that marks it released. A newcomer that finds it released
or expired (or left by a dead process of this same host and staging folder) takes it over with
``If-Match`` on the e-tag it read, so of two newcomers only one wins; the other sees a live lease.

``If-Match`` carries the e-tag and obstore's version (GCS matches on the generation). A holder that
cannot renew for a lease less one renewal (40 s: a newcomer's clock may run ahead by the rest), or
finds its e-tag changed, has lost the lock: ``lost()`` says why, and the mirror stops sending
results up. moto's S3 server answers both preconditions as S3 does (412), which the tests rely on.

As on a local folder, an unsharded run and the shards exclude each other, and so do shards of
different counts (shard 0 of 2 and shard 0 of 4 would send the same requests): each takes its own
object first, then looks at the others' (of two that start together, at least one sees the other).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import JobError, OutputLockedError
from ..owner import JOB_POINTER
from ..shard import Shard
from .lock import LOCK_NAME, shard_lock_name
from .remote import Mirror

if TYPE_CHECKING:
    from obstore import UpdateVersion

_SHARD_LOCK = re.compile(r"^\.lock-s\d+of(\d+)$")  # lock.shard_lock_name's
LEASE_S = 60.0  # a dead holder on another machine keeps the output this long at most
RENEW_S = 20.0  # three renewals a lease: one slow request does not lose it


class Lease:
    def __init__(
        self,
        mirror: Mirror,
        run_id: str,
        shard: Shard | None = None,
        *,
        lease_s: float = LEASE_S,
        renew_s: float = RENEW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mirror = mirror
        self.run_id = run_id
        self.shard = shard or Shard()
        self.name = shard_lock_name(self.shard) if self.shard.sharded else LOCK_NAME
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.clock = clock
        self._etag: UpdateVersion | None = None  # e-tag and version of what we last wrote
        self._renewed = 0.0  # clock() of the last write that held
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Lease({self.mirror.remote.where(self.name)!r}, held={self._etag is not None})"

    # -- taking it -------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lock object, or raise ``OutputLockedError`` naming its holder (blocking)."""
        self._take()
        try:
            self._check_others()
        except BaseException:
            self.release()
            raise
        self._thread = threading.Thread(target=self._renew_loop, name="batchrun-lease", daemon=True)
        self._thread.start()

    def _take(self) -> None:
        import obstore
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        where = self.mirror.remote.where(self.name)
        handled = (AlreadyExistsError, NotFoundError, PreconditionError)
        for _ in range(5):  # each turn lost means another run changed the object meanwhile
            try:
                with self.mirror.errors("create", self.name, JobError, handled):
                    self._wrote(obstore.put(self.mirror.store, self.name, self._body(), mode="create"))
                return
            except AlreadyExistsError:
                pass
            try:
                with self.mirror.errors("read", self.name, JobError, handled):
                    got = obstore.get(self.mirror.store, self.name)
                    info, seen = _parse(bytes(got.bytes())), _version(got.meta)
            except NotFoundError:
                continue  # released and removed by hand between our two calls
            if self._live(info):
                holder = _describe(info)
                raise OutputLockedError(f"{self.mirror.remote.url} is in use by another {self._which()} ({holder})")
            try:
                with self.mirror.errors("take over", self.name, JobError, handled):
                    self._wrote(obstore.put(self.mirror.store, self.name, self._body(), mode=seen))
                return
            except PreconditionError:
                continue
        raise OutputLockedError(f"{where} changes hands too often to take (another run is starting)")

    def _which(self) -> str:
        return f"run of shard {self.shard.name}" if self.shard.sharded else "run"

    def _check_others(self) -> None:
        """An unsharded run refuses live shards; a shard refuses a live unsharded run and live
        shards of another count."""
        for key in sorted(self.mirror.top_names()):
            shard = _SHARD_LOCK.match(key)
            if key == self.name or (key != LOCK_NAME and shard is None):
                continue
            if self.shard.sharded and shard is not None and int(shard[1]) == self.shard.count:
                continue  # a sibling shard: that is the point of shards
            data = self.mirror.read(key)
            info = _parse(data) if data is not None else {}
            if self._live(info):
                what = "an unsharded run" if key == LOCK_NAME else f"shard {key.removeprefix('.lock-')}"
                raise OutputLockedError(f"{self.mirror.remote.url} is in use by {what} ({_describe(info)})")

    def _live(self, info: dict[str, Any]) -> bool:
        return live(info, self.mirror, self.clock())

    def _body(self, *, released: bool = False) -> bytes:
        now = self.clock()
        info: dict[str, Any] = {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "staging": str(self.mirror.staging),
            "since": now,
            "expires": 0 if released else now + self.lease_s,
        }
        if self.shard.sharded:
            info["shard"] = self.shard.name
        if released:
            info["released"] = True
        return json.dumps(info).encode()

    def _wrote(self, result: Any) -> None:
        self._etag = _version(result)
        self._renewed = self.clock()

    # -- holding it ----------------------------------------------------------------------------

    def lost(self) -> str | None:
        """Why the lock is no longer ours, or None while it is."""
        # given up one renewal before the lease runs out, by this machine's clock: a newcomer's clock
        # may run up to that much ahead (20 s) before the two could both write
        give_up = self.lease_s - self.renew_s
        if self._lost is None and self._etag is not None and self.clock() - self._renewed >= give_up:
            self._lost = f"the lock {self.mirror.remote.where(self.name)} could not be renewed for {give_up:g} s"
        return self._lost

    def renew(self) -> None:
        """One renewal (the timer thread's; callable directly)."""
        import obstore
        from obstore.exceptions import PreconditionError

        if self._etag is None or self.lost() is not None:
            return
        try:
            self._wrote(obstore.put(self.mirror.store, self.name, self._body(), mode=self._etag))
        except PreconditionError:
            self._lost = f"the lock {self.mirror.remote.where(self.name)} was taken over by another run"
            self._etag = None
        except Exception:  # a network error: try again next time; lost() tells when the lease ran out
            pass

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            self.renew()

    def release(self) -> None:
        """Mark the lease released (with ``If-Match``: a lease already taken over is left alone)."""
        import obstore

        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._etag is not None and self._lost is None:
            # taken over, or unreachable: either way the lease expires on its own
            with contextlib.suppress(Exception):
                obstore.put(self.mirror.store, self.name, self._body(released=True), mode=self._etag)
        self._etag = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def live(info: dict[str, Any], mirror: Mirror, now: float) -> bool:
    """Whether the lease in ``info`` still holds: not released, not expired, and not left by a
    process of this host and staging folder that is gone (a killed run, resumed at once)."""
    if info.get("released") or not isinstance(info.get("expires"), int | float):
        return False
    if info["expires"] <= now:
        return False
    same_place = info.get("host") == socket.gethostname() and info.get("staging") == str(mirror.staging)
    return not (same_place and isinstance(info.get("pid"), int) and not _alive(info["pid"]))


def running_shards(mirror: Mirror) -> set[str]:
    """The shards whose lease is live (``status`` on another machine than theirs)."""
    found = set()
    for key in mirror.top_names():
        if (
            key.startswith(".lock-s")
            and (data := mirror.read(key)) is not None
            and live(_parse(data), mirror, time.time())
        ):
            found.add(key.removeprefix(".lock-"))
    return found


def open_remote(mirror: Mirror, run_id: str, shard: Shard | None = None) -> Lease:
    """Take the lease of ``mirror``'s output, then make the staging folder and the bucket agree:
    parts come down, local parts go up. The lease guards every later upload."""
    lease = Lease(mirror, run_id, shard)
    lease.acquire()
    mirror.guard = lease.lost
    try:
        mirror.pull((JOB_POINTER,))
        mirror.push_pending()
    except BaseException:
        lease.release()
        raise
    return lease


def _version(meta: Any) -> UpdateVersion:
    """What ``If-Match`` needs: S3 and Azure use the e-tag, GCS the generation (obstore's
    ``version``); obstore asks to keep both."""
    found: UpdateVersion = {}
    if meta.get("e_tag") is not None:
        found["e_tag"] = meta["e_tag"]
    if meta.get("version") is not None:  # obstore refuses a None
        found["version"] = meta["version"]
    return found


def _parse(data: bytes) -> dict[str, Any]:
    try:
        info = json.loads(data)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("since", 0))))
    left = max(0.0, float(info.get("expires", 0)) - time.time())
    who = f"pid {info.get('pid')} on {info.get('host')}, run {info.get('run_id')}"
    return f"{who}, since {since}; lease {left:.0f} s left"
