"""How many identical requests came before each one: the occurrence number of the request key,
exact for any number of rows, in memory that does not grow with the input.

Nearly every request is new, so a blocked Bloom filter (12 bits a request, in 64-bit words, at
most 8 MiB) answers "never seen" at once. Only when it says "maybe" (a repeated request, or ~2 % of new
ones) are the exact counts asked: a dict of the requests since the last spill, then an SQLite
table on disk, then the sorted arrays of the requests an earlier run planned (``extend``, on
resume), memory-mapped. The dict is spilled at batch boundaries (``flush``, called by the owner
off the event loop, or by ``count`` itself when long overdue). A job of fewer than
``spill_after`` requests never touches the disk.

A request is known by its 64-bit short digest; the table keeps it less 2**63, since SQLite
integers are signed.
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
_OFFSET = 1 << 63


class Occurrences:
    def __init__(self, expected: int = 1_000_000, *, folder: Path | None = None, spill_after: int = 65_536) -> None:
        words = min(MAX_WORDS, max(1024, expected * BITS_PER_ITEM // 64))
        self._size = words
        self._words = array("Q", bytes(8 * words))
        self._pending: dict[int, int] = {}  # short -> occurrences so far, since the last spill
        self._in_table: set[int] = set()  # pending shorts that the table already holds
        self.spill_after = spill_after
        self._overdue = 4 * spill_after
        self._folder = folder
        self._tmp: Path | None = None
        self._db: sqlite3.Connection | None = None
        self._earlier: tuple[np.ndarray, np.ndarray] | None = None  # sorted shorts, their counts
        self.lookups = 0  # "maybe" answers that went past the dict: for tests and benchmarks

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
        pending = self._pending
        if word & bits != bits:
            self._words[index] = word | bits
            pending[short] = 1
            if len(pending) >= self._overdue:
                self.flush()  # an owner that does not flush between batches
            return 0
        seen = pending.get(short)
        if seen is None:
            seen = self._stored(short)
        pending[short] = seen + 1
        return seen

    def extend(self, shorts: np.ndarray | Iterable[int]) -> None:
        """Count, before anything else, the requests an earlier run planned (a resume)."""
        if self._pending or self._db is not None or self._earlier is not None:
            raise RuntimeError("extend() comes first, and once")
        import numpy as np  # only a resume needs it: ~0.1 s off every other start

        if not isinstance(shorts, np.ndarray):
            shorts = np.fromiter(shorts, dtype=np.uint64)
        values, counts = np.unique(shorts.astype(np.uint64, copy=False), return_counts=True)
        if not len(values):
            return
        bits = np.zeros(len(values), dtype=np.uint64)
        for shift in range(28, 64, 6):
            bits |= np.uint64(1) << ((values >> np.uint64(shift)) & np.uint64(63))
        words = np.frombuffer(self._words, dtype=np.uint64)
        np.bitwise_or.at(words, (values % np.uint64(self._size)).astype(np.intp), bits)
        if len(values) < self.spill_after:
            self._pending = dict(zip(values.tolist(), counts.tolist(), strict=True))
            return
        folder = self._scratch()
        np.save(folder / "earlier-shorts.npy", values)
        np.save(folder / "earlier-counts.npy", counts.astype(np.uint32))
        self._earlier = (
            np.load(folder / "earlier-shorts.npy", mmap_mode="r"),
            np.load(folder / "earlier-counts.npy", mmap_mode="r"),
        )

    @property
    def flush_due(self) -> bool:
        return len(self._pending) >= self.spill_after

    def flush(self) -> None:
        """Move the recent counts to the table on disk (blocking: call it in a worker thread)."""
        if not self._pending:
            return
        db = self._table()
        pending, in_table = self._pending, self._in_table
        db.execute("BEGIN")  # rows from generators, in key order: no second copy of the dict
        db.executemany(
            "INSERT INTO seen VALUES (?, ?)", ((s - _OFFSET, pending[s]) for s in sorted(pending) if s not in in_table)
        )
        db.executemany("UPDATE seen SET n = ? WHERE short = ?", ((pending[s], s - _OFFSET) for s in in_table))
        db.execute("COMMIT")
        self._pending, self._in_table = {}, set()

    def _stored(self, short: int) -> int:
        """The count on disk: the table's (this run's, which includes any earlier one), or else
        the earlier run's."""
        self.lookups += 1
        if self._db is not None:
            row = self._db.execute("SELECT n FROM seen WHERE short = ?", (short - _OFFSET,)).fetchone()
            if row is not None:
                self._in_table.add(short)
                return int(row[0])
        if self._earlier is not None:
            import numpy as np  # imported already, by extend()

            values, counts = self._earlier
            at = int(np.searchsorted(values, np.uint64(short)))
            if at < len(values) and int(values[at]) == short:
                return int(counts[at])
        return 0

    def _scratch(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix=".tmp-occurrences-", dir=self._folder))
        return self._tmp

    def _table(self) -> sqlite3.Connection:
        if self._db is None:
            # used by one thread at a time, but not always the same: flushes run in worker threads
            db = sqlite3.connect(self._scratch() / "seen.sqlite", check_same_thread=False, isolation_level=None)
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
        self._earlier = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._tmp)
            self._tmp = None

    def __enter__(self) -> Occurrences:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
