"""How many identical requests came before each one: the occurrence number of the request key,
exact for any number of rows, in memory that does not grow with the input.

A request is known by its 64-bit content digest. What was seen is held in:

- a blocked Bloom filter (12 bits a request, in 64-bit words, at most 8 MiB): nearly every request
  is new, and the filter says "never seen" at once for all but ~2 % of those;
- ``_recent``, a dict of the counts since the last spill;
- ``seen``, an SQLite table in a scratch folder: every count older than that;
- on a resume, ``_seed``: the sorted digests and counts of the requests an earlier run planned,
  memory-mapped from the scratch folder (inserting them into the table instead costs ~1 µs a
  request, 1.1 s more per million before the first row past the plan index).

Only a "maybe" from the filter (a repeat, or a false positive) asks the dict, then the table, then
the seed. ``flush`` upserts the dict into the table; the owner calls it at batch boundaries, off
the event loop, when ``flush_due``, and ``count`` itself does when long overdue. A job of fewer
than ``spill_after`` requests never touches the disk.
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
        self._seed: tuple[np.ndarray, np.ndarray] | None = None  # sorted digests, their counts
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
        if self._recent or self._db is not None or self._seed is not None:
            raise RuntimeError("seed() comes first, and once")
        import numpy as np  # only a resume needs it: ~0.1 s off every other start

        if not isinstance(shorts, np.ndarray):
            shorts = np.fromiter(shorts, dtype=np.uint64)
        values, counts = np.unique(shorts.astype(np.uint64, copy=False), return_counts=True)
        bits = np.zeros(len(values), dtype=np.uint64)
        for shift in range(28, 64, 6):
            bits |= np.uint64(1) << ((values >> np.uint64(shift)) & np.uint64(63))
        words = np.frombuffer(self._words, dtype=np.uint64)
        np.bitwise_or.at(words, (values % np.uint64(self._size)).astype(np.intp), bits)
        if len(values) < self.spill_after:
            self._recent = dict(zip(values.tolist(), counts.tolist(), strict=True))
            return
        folder = self._scratch()
        np.save(folder / "seed-shorts.npy", values)
        np.save(folder / "seed-counts.npy", counts.astype(np.uint32))
        self._seed = (
            np.load(folder / "seed-shorts.npy", mmap_mode="r"),
            np.load(folder / "seed-counts.npy", mmap_mode="r"),
        )

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
        """The count on disk: the table's (this run's, which includes any seed's), or the seed's."""
        self.lookups += 1
        if self._db is not None:
            row = self._db.execute("SELECT n FROM seen WHERE short = ?", (short - _SIGN,)).fetchone()
            if row is not None:
                return int(row[0])
        if self._seed is not None:
            import numpy as np  # imported already, by seed()

            values, counts = self._seed
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
        self._seed = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._tmp)
            self._tmp = None

    def __enter__(self) -> Occurrences:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
