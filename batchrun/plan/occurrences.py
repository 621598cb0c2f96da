"""How many identical requests came before each one: the occurrence number of the request key,
exact for any number of rows, in memory that does not grow with the input.

A request is known by its 64-bit content digest. Three places hold what was seen:

- a blocked Bloom filter (12 bits a request, in 64-bit words, at most 8 MiB): nearly every request
  is new, and the filter says "never seen" at once for all but ~2 % of those;
- ``_recent``, a dict of the counts since the last spill;
- ``seen``, an SQLite table on disk (in a scratch folder), which holds every count older than that.

Only a "maybe" from the filter (a repeat, or a false positive) asks the dict, then the table.
``flush`` upserts the dict into the table; the owner calls it at batch boundaries, off the event
loop, when ``flush_due``, and ``count`` itself when long overdue. A resume ``seed``s the counts of
the requests an earlier run planned, into the filter and the table, before anything is counted.
A job of fewer than ``spill_after`` requests never touches the disk.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

BITS_PER_ITEM = 12
MAX_WORDS = 1 << 20  # 8 MiB: past ~5M requests the filter says "maybe" more often (5 % at 10M), not bigger
_SIGN = 1 << 63  # SQLite integers are signed: a digest is stored less 2**63, which keeps the order
_UPSERT = "INSERT INTO seen VALUES (?, ?) ON CONFLICT (short) DO UPDATE SET n = excluded.n"


class Occurrences:
    def __init__(self, expected: int = 1_000_000, *, folder: Path | None = None, spill_after: int = 65_536) -> None:
        words = min(MAX_WORDS, max(1024, expected * BITS_PER_ITEM // 64))
        self._size = words
        self._words = array("Q", bytes(8 * words))
        self._recent: dict[int, int] = {}  # digest -> occurrences so far, since the last spill
        self.spill_after = spill_after
        self._overdue = 4 * spill_after
        self._folder = folder
        self._tmp: Path | None = None
        self._db: sqlite3.Connection | None = None
        self.lookups = 0  # "maybe" answers that went to the table: for tests and benchmarks

    def count(self, short: int) -> int:
        """How many identical requests came before this one; and count this one."""
        # one word of the filter (low bits of the digest), six bits in it (high bits)
        index = short % self._size
        bits = (
            1 << (short >> 28 & 63)
            | 1 << (short >> 34 & 63)
            | 1 << (short >> 40 & 63)
            | 1 << (short >> 46 & 63)
            | 1 << (short >> 52 & 63)
            | 1 << (short >> 58 & 63)
        )
        word = self._words[index]
        recent = self._recent
        if word & bits != bits:
            self._words[index] = word | bits
            recent[short] = 1
            if len(recent) >= self._overdue:
                self.flush()  # an owner that does not flush between batches
            return 0
        seen = recent.get(short)
        if seen is None:
            seen = self._stored(short)
        recent[short] = seen + 1
        return seen

    def seed(self, shorts: np.ndarray | Iterable[int]) -> None:
        """Count, before anything else, the requests an earlier run planned (a resume)."""
        if self._recent or self._db is not None:
            raise RuntimeError("seed() comes first, and once")
        import numpy as np  # only a resume needs it: ~0.1 s off every other start

        if not isinstance(shorts, np.ndarray):
            shorts = np.fromiter(shorts, dtype=np.uint64)
        values, counts = _counted(shorts.astype(np.uint64, copy=False))
        bits = np.zeros(len(values), dtype=np.uint64)
        for shift in range(28, 64, 6):
            bits |= np.uint64(1) << ((values >> np.uint64(shift)) & np.uint64(63))
        words = np.frombuffer(self._words, dtype=np.uint64)
        np.bitwise_or.at(words, (values % np.uint64(self._size)).astype(np.intp), bits)
        if len(values) < self.spill_after:
            self._recent = dict(zip(values.tolist(), counts.tolist(), strict=True))
            return
        db = self._table()
        signed = (values ^ np.uint64(_SIGN)).view(np.int64)  # in order, as the table's keys
        db.execute("BEGIN")
        for at in range(0, len(values), self.spill_after):
            end = at + self.spill_after
            db.executemany(
                "INSERT INTO seen VALUES (?, ?)", zip(signed[at:end].tolist(), counts[at:end].tolist(), strict=True)
            )
        db.execute("COMMIT")

    @property
    def flush_due(self) -> bool:
        return len(self._recent) >= self.spill_after

    def flush(self) -> None:
        """Move the recent counts to the table on disk (blocking: call it in a worker thread)."""
        if not self._recent:
            return
        db = self._table()
        recent = self._recent
        db.execute("BEGIN")  # rows from a generator, in key order: no second copy of the dict
        db.executemany(_UPSERT, ((s - _SIGN, recent[s]) for s in sorted(recent)))
        db.execute("COMMIT")
        self._recent = {}

    def _stored(self, short: int) -> int:
        self.lookups += 1
        if self._db is None:
            return 0
        row = self._db.execute("SELECT n FROM seen WHERE short = ?", (short - _SIGN,)).fetchone()
        return 0 if row is None else int(row[0])

    def _table(self) -> sqlite3.Connection:
        if self._db is None:
            self._tmp = Path(tempfile.mkdtemp(prefix=".tmp-occurrences-", dir=self._folder))
            # used by one thread at a time, but not always the same: flushes run in worker threads
            db = sqlite3.connect(self._tmp / "seen.sqlite", check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode = OFF")  # scratch: a crash only loses the folder
            db.execute("PRAGMA synchronous = OFF")
            db.execute("PRAGMA cache_size = -2048")  # KiB: memory stays flat, the OS caches the rest
            db.execute("CREATE TABLE seen (short INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            self._db = db
        return self._db

    def close(self) -> None:
        """Drop the scratch folder."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._tmp)
            self._tmp = None

    def __enter__(self) -> Occurrences:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _counted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values, sorted, and how often each occurs (by sorting: see ``sorted_unique``)."""
    import numpy as np

    ordered = np.sort(values)
    if not len(ordered):
        return ordered, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.diff(np.append(starts, len(ordered)))
