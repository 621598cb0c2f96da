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

    def count_many(self, shorts: np.ndarray) -> np.ndarray:
        """``count`` of each digest of ``shorts`` in order, at once (a block of a sharded first
        pass, ``plan.digests``): the same numbers and the same state after, at ~1/10 of the time,
        since only a filter "maybe" costs a step in Python."""
        import numpy as np

        shorts = shorts.astype(np.uint64, copy=False)
        order = np.argsort(shorts, kind="stable")  # equal digests together, in plan order
        ordered = shorts[order]
        starts = np.ones(len(ordered), dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
        firsts = np.flatnonzero(starts)
        group = np.cumsum(starts) - 1
        values = ordered[firsts]
        before = self._before(values)
        out = np.empty(len(shorts), dtype=np.int64)
        out[order] = before[group] + np.arange(len(ordered)) - firsts[group]
        sizes = np.diff(np.append(firsts, len(ordered)))
        self._recent.update(zip(values.tolist(), (before + sizes).tolist(), strict=True))
        if len(self._recent) >= self._overdue:
            self.flush()
        return out

    def repeats(self, blocks: Iterable[np.ndarray]) -> np.ndarray:
        """The digests that may occur more than once in ``blocks`` (each the digests of some
        requests, in plan order), sorted: every one that does, and the filter's false "maybe"s
        (~2 %). A digest not among them occurs once, so its count is 0 without counting it: a
        sharded first pass, whose blocks are on disk, counts only these (``plan.digests``)."""
        import numpy as np

        words = np.zeros(self._size, dtype=np.uint64)  # a filter of its own: this one is not touched
        found: list[np.ndarray] = []
        for shorts in blocks:
            values, counts = np.unique(shorts.astype(np.uint64, copy=False), return_counts=True)
            at, bits = self._places(values)
            found.append(values[((words[at] & bits) == bits) | (counts > 1)])
            np.bitwise_or.at(words, at, bits)
        return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.uint64)

    def _before(self, values: np.ndarray) -> np.ndarray:
        """How many of each of the distinct digests ``values`` were counted so far; sets their
        bits in the filter."""
        import numpy as np

        at, bits = self._places(values)
        words = np.frombuffer(self._words, dtype=np.uint64)
        maybe = np.flatnonzero((words[at] & bits) == bits)
        np.bitwise_or.at(words, at, bits)
        before = np.zeros(len(values), dtype=np.int64)
        recent = self._recent
        for i, short in zip(maybe.tolist(), values[maybe].tolist(), strict=True):
            seen = recent.get(short)
            before[i] = self._stored(short) if seen is None else seen
        return before

    def seed(self, shorts: np.ndarray | Iterable[int]) -> None:
        """Count, before anything else, the requests an earlier run planned (a resume)."""
        if self._recent or self._db is not None or self._seed is not None:
            raise RuntimeError("seed() comes first, and once")
        import numpy as np  # only a resume needs it: ~0.1 s off every other start

        if not isinstance(shorts, np.ndarray):
            shorts = np.fromiter(shorts, dtype=np.uint64)
        values, counts = np.unique(shorts.astype(np.uint64, copy=False), return_counts=True)
        at, bits = self._places(values)
        np.bitwise_or.at(np.frombuffer(self._words, dtype=np.uint64), at, bits)
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

    def _places(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The filter's word and bits of each digest, as ``count`` finds them one at a time."""
        import numpy as np

        bits = np.zeros(len(values), dtype=np.uint64)
        for shift in range(28, 64, 6):
            bits |= np.uint64(1) << ((values >> np.uint64(shift)) & np.uint64(63))
        return (values % np.uint64(self._size)).astype(np.intp), bits

    @property
    def flush_due(self) -> bool:
        return len(self._recent) >= self.spill_after

    def flush(self) -> None:
        """Move the recent counts to the table on disk (blocking: call it in a worker thread)."""
        if not self._recent:
            return
        import numpy as np  # sorting and the sign flip here: half the time of a generator over the dict

        db = self._table()
        recent = self._recent
        shorts = np.fromiter(recent.keys(), dtype=np.uint64, count=len(recent))
        counts = np.fromiter(recent.values(), dtype=np.int64, count=len(recent))
        order = np.argsort(shorts)  # in key order: the table's B-tree appends
        signed = (shorts[order] ^ np.uint64(_SIGN)).view(np.int64)  # less 2**63
        db.execute("BEGIN")
        db.executemany(_UPSERT, zip(signed.tolist(), counts[order].tolist(), strict=True))
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
