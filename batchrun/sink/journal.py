"""The crash journal: every result is appended to a file in ``journal/`` the moment it is final,
so a ``kill -9`` loses only the requests in flight, not the results waiting for the next part.
(Beside ``manifest/``, not in it: that folder holds Parquet parts only, so any tool reads it whole.)

One JSON line per result (``orjson``: the ``Result`` dataclass as it is, bytes as latin-1 text),
after a header line naming the run and the endpoint; on the event loop the results of one turn go
out in one ``write()``, from image-saving threads one each. A ``write()`` that has returned survives
the death of the process in the page cache; no fsync per result (each segment is fsynced at the flush
that seals it, so power loss keeps the journal up to the last flush, as it keeps the parts). The
rows are made by ``manifest_frame``, the same function that makes the parts, when the journal is
read, so a journal row is a part row by construction.

The file is cut into segments, one per manifest part: ``journal-<run id>-<shard>-<seq>.jsonl``. A
sealed segment is removed once every result in it is in a part that is on disk; a segment that a
killed run left behind is folded into a part by the next run (``sink/fold.py``). Readers drop a last
line cut short by the kill (no newline, or not JSON), and any line they cannot read, silently.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import SinkError
from ..models import Parsed, Request, Result
from .files import create_new, fsync_dir, make_folder

JOURNAL_DIR = "journal"
JOURNAL_GLOB = "journal-*.jsonl"
_NAME = re.compile(r"^journal-(?P<run_id>.+)-(?P<shard>s\d+of\d+)-(?P<seq>\d{5,})\.jsonl$")
_FORMAT = 1


def journal_name(run_id: str, shard: str, seq: int) -> str:
    return f"journal-{run_id}-{shard}-{seq:05d}.jsonl"


@dataclass(frozen=True, slots=True)
class Segment:
    """A journal file found on disk, and whose run and shard it holds."""

    path: Path
    run_id: str
    shard: str
    seq: int


def segments(output_dir: Path) -> list[Segment]:
    """The journal files in an output folder, in the order they were written."""
    found = []
    for path in (output_dir / JOURNAL_DIR).glob(JOURNAL_GLOB):
        match = _NAME.match(path.name)
        if match:
            found.append(Segment(path, match["run_id"], match["shard"], int(match["seq"])))
    return sorted(found, key=lambda s: (s.run_id, s.shard, s.seq))


def _bytes_as_text(value: object) -> str:
    """``Request.body``: latin-1 maps every byte to one character and back, whatever the bytes."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"cannot journal a {type(value).__name__}")


def encode(result: Result) -> bytes:
    return orjson.dumps(result, default=_bytes_as_text, option=orjson.OPT_APPEND_NEWLINE)


def _build(cls: Any, fields: dict[str, Any]) -> Any:
    """A dataclass from its journaled fields; fields this version does not know are left out."""
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in fields.items() if k in names})


def decode(line: bytes) -> Result:
    """One journal line back to its ``Result``; raises ``ValueError`` (or ``TypeError``) if it is not one."""
    fields = orjson.loads(line)
    request = fields["request"]
    request["body"] = request["body"].encode("latin-1")
    fields["request"] = _build(Request, request)
    if fields.get("parsed") is not None:
        parsed = fields["parsed"]
        if parsed.get("image") is not None:
            parsed["image"] = parsed["image"].encode("latin-1")
        fields["parsed"] = _build(Parsed, parsed)
    result: Result = _build(Result, fields)
    return result


@dataclass(frozen=True, slots=True)
class Records:
    """What one journal file holds: its run's endpoint, and the results that were read whole."""

    run_id: str
    endpoint: str
    results: list[Result]


def read_segment(path: Path) -> Records | None:
    """The whole records of a journal file; None if it is gone or has no readable header. A line
    without its newline (cut by the kill) or that does not parse is dropped, never an error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # removed by a live run since it was listed: its rows are in a part
        return None
    lines = data.split(b"\n")
    lines.pop()  # what follows the last newline: empty, or a record cut short
    if not lines:
        return None
    try:
        header = orjson.loads(lines[0])
        run_id, endpoint = str(header["run_id"]), str(header["endpoint"])
    except (ValueError, TypeError, KeyError):
        return None
    results = []
    for line in lines[1:]:
        try:
            results.append(decode(line))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return Records(run_id, endpoint, results)


def read_records(output_dir: Path, found: Iterable[Segment] | None = None) -> Iterator[Records]:
    for segment in segments(output_dir) if found is None else found:
        records = read_segment(segment.path)
        if records is not None and records.results:
            yield records


class Journal:
    """The writing side, for one run and shard. Whoever finishes a result journals it before the
    result goes anywhere else: ``add`` from a thread, ``note`` then ``write_noted`` on the event loop.
    The manifest writer calls ``seal`` when it writes a part and ``recorded`` once the part is on disk."""

    def __init__(self, output_dir: Path, *, run_id: str, shard: str, endpoint: str) -> None:
        self.folder = output_dir / JOURNAL_DIR
        self.run_id = run_id
        self.shard = shard
        self.endpoint = endpoint
        self.seq = 0  # the segment being written
        self.written = 0
        self._fd: int | None = None
        self._segment_of: dict[str, tuple[int, Result]] = {}  # request key -> segment, until in a part
        self._unrecorded: Counter[int] = Counter()  # results of each segment not yet in a part
        self._sealed: set[int] = set()  # segments written to no more, still on disk
        self._lock = threading.Lock()
        self._made_durable = False  # the folder's own entry in the output folder
        self._pending: list[Result] = []  # noted on the event loop, written at the end of its turn
        self.error: SinkError | None = None

    def path(self, seq: int) -> Path:
        return self.folder / journal_name(self.run_id, self.shard, seq)

    def note(self, result: Result) -> bool:
        """Queue ``result`` for ``write_noted``; True if it is the first since the last write (the
        caller then arranges that write before its worker sends anything: see ``sink/recording.py``)."""
        self._pending.append(result)
        return len(self._pending) == 1

    def write_noted(self) -> None:
        """Append every noted result in one ``write()``."""
        pending, self._pending = self._pending, []
        if pending:
            try:
                self._append(b"".join([encode(r) for r in pending]), pending)
            except SinkError as exc:  # a loop callback: the workers waiting for it raise it
                self.error = exc

    def add(self, result: Result) -> None:
        """Append ``result``; once this returns, it survives the death of the process."""
        self._append(encode(result), [result])

    def _append(self, line: bytes, results: list[Result]) -> None:
        with self._lock:
            try:
                fd = self._fd if self._fd is not None else self._open()
                _write_all(fd, line)
            except OSError as exc:
                reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
                raise SinkError(f"cannot write the journal in {self.folder}: {reason}") from None
            for result in results:
                self._segment_of[result.request.key] = (self.seq, result)
            self._unrecorded[self.seq] += len(results)
            self.written += len(results)

    def _open(self) -> int:
        make_folder(self.folder)
        fd = create_new(self.path(self.seq), os.O_APPEND)  # a new segment: never a planted link
        try:
            header = {"format": _FORMAT, "run_id": self.run_id, "shard": self.shard, "endpoint": self.endpoint}
            _write_all(fd, orjson.dumps(header, option=orjson.OPT_APPEND_NEWLINE))
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    def seal(self) -> None:
        """Start a new segment for what comes next, and fsync the one written so far (blocking: the
        flush thread calls it before the part, so what power loss keeps of the journal is at least
        what the last flush saw)."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            self._sealed.add(self.seq)
            self.seq += 1
        try:
            os.fsync(fd)
            fsync_dir(self.folder)  # the segment's name
            if not self._made_durable:
                fsync_dir(self.folder.parent)
                self._made_durable = True
        except OSError as exc:
            raise SinkError(f"cannot sync the journal in {self.folder}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def recorded(self, results: Iterable[Result]) -> int:
        """``results`` are in a part on disk: remove every sealed segment whose results all are."""
        with self._lock:
            for result in results:
                entry = self._segment_of.pop(result.request.key, None)
                if entry is not None:
                    self._unrecorded[entry[0]] -= 1
            done = [seq for seq in self._sealed if self._unrecorded[seq] <= 0]
            for seq in done:
                self._sealed.discard(seq)
                del self._unrecorded[seq]
        for seq in done:
            with contextlib.suppress(OSError):  # its rows are in a part: a leftover is folded away next run
                self.path(seq).unlink()
        return len(done)

    def unrecorded(self) -> list[Result]:
        """The results journaled and not yet in a part (the writer takes those whose worker was
        cancelled before handing them over, so that a run that ends leaves no journal behind)."""
        with self._lock:
            return [result for _, result in self._segment_of.values()]

    def close(self) -> None:
        """Close the open files (the run is over); what is still on disk is folded next run."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                self.seq += 1  # a late add opens a segment of its own
        if fd is not None:
            os.close(fd)

    def on_disk(self) -> list[int]:
        """The segments still on disk (sealed and the open one), for tests and ``repr``."""
        with self._lock:
            return sorted({*self._sealed, *([self.seq] if self._fd is not None else [])})

    def __repr__(self) -> str:
        return f"Journal(segment={self.seq}, written={self.written}, unrecorded={len(self._segment_of)})"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
