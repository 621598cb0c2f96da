"""What the producer sends, using the plan index where it can: rows an earlier run already keyed
are rendered only if they still have work to do; the rest of the input is planned as usual and
noted in the index for the next run."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from ..models import DoneKeys, Request, sorted_unique
from ..spec import Job
from .keyindex import Entry, KeyIndex, fingerprint
from .planner import PlanCounts, Planner

if TYPE_CHECKING:
    import numpy as np

    from .reader import Table

JOURNAL_ROWS = 65_536  # entries per index part


class Feed:
    def __init__(self, planner: Planner, index: KeyIndex | None, covered: int = 0) -> None:
        self.planner = planner
        self.index = index
        self.covered = covered  # rows 0..covered-1 were keyed by an earlier run
        self.todo: dict[int, list[tuple[int, str]]] = {}
        self.todo_rows: list[int] = []
        self._parts: list[Path] | None = None  # the index's parts, until their digests are restored
        self._planned = 0  # how many requests the index's rows make
        self._ok: pl.Series | None = None  # ok keys not yet in the planner's done keys, until restored
        self._ok_covered = 0  # ok keys that rows of the index ask for: counted, never held
        self._journal_from = covered
        planner.journal = [] if index is not None else None

    @classmethod
    def open(
        cls, job: Job, planner: Planner, done: DoneKeys, ok: pl.Series | None = None, *, note: bool = True
    ) -> Feed:
        """Load the index if it matches this job and input (blocking: call it in a thread). With
        ``note`` (a run, holding the lock) the rows planned anew are added to it. ``ok``: ok keys
        read as a column and not yet in ``done``; they are added to it when the first row past the
        index is planned, so the rows the index says are to do need not wait for that set."""
        feed = cls._open(job, planner, done, ok, note)
        if not feed.covered:  # with an index, ``_take`` keeps only the ok keys it does not account for
            feed._ok = ok
        return feed

    @classmethod
    def _open(cls, job: Job, planner: Planner, done: DoneKeys, ok: pl.Series | None, note: bool) -> Feed:
        index: KeyIndex | None = None
        try:
            index = KeyIndex(job.output_dir, fingerprint(job))
            loaded = index.load()
            if loaded is not None:
                covered, parts = loaded
                feed = cls(planner, index if note else None, covered)
                feed._take(parts, done, ok)
                return feed
            if not note:
                return cls(planner, None)
            index.start()
            return cls(planner, index)
        except (OSError, pl.exceptions.PolarsError):
            if note and index is not None:  # a damaged index: begin a new one
                with contextlib.suppress(OSError):
                    index.start()
                    return cls(planner, index)
            return cls(planner, None)  # a cache: without it, every row is planned as before

    def _take(self, parts: list[Path], done: DoneKeys, ok: pl.Series | None) -> None:
        """Counts and the rows with work left, read one index part at a time against the sorted
        done keys, so that no column of the whole index is held (the digests are read by
        ``restore``, if ever). Of the ``ok`` keys only those that no row of the index asks for are
        kept: a request past the index has a key of its own (its occurrence number goes on from
        the index's)."""
        import numpy as np  # only a resume needs it

        keys = sorted_unique(ok.to_numpy() if ok is not None else np.fromiter([*done.ok, *done.read], np.uint64))
        failed = sorted_unique(np.fromiter(done.failed, np.uint64, len(done.failed)))
        asked = np.zeros(len(keys), dtype=bool)
        n = PlanCounts()  # added to the planner's only once every part was read
        todo: dict[int, list[tuple[int, str]]] = {}
        for part in parts:
            frame = pl.read_parquet(part, columns=["sample", "shared", "short"])
            planned = frame.get_column("sample").to_numpy() >= 0
            active = planned & ~frame.get_column("shared").to_numpy()
            n_planned = int(planned.sum())
            short = frame.get_column("short").fill_null(0).to_numpy()
            at, is_ok = _find(keys, short)
            is_ok &= active
            is_failed = _find(failed, short)[1] & active
            asked[at[is_ok]] = True
            left = active & ~is_ok & ~is_failed
            n.requests += n_planned
            n.shared += n_planned - int(active.sum())
            n.skipped += frame.height - n_planned
            n.done += int((is_ok | is_failed).sum())
            n.done_failed += int(is_failed.sum())
            if left.any():
                rows = pl.read_parquet(part, columns=["row_index", "sample", "key"]).filter(pl.Series(left))
                for index, sample, key in rows.iter_rows():
                    todo.setdefault(index, []).append((sample, key))
                n.todo += rows.height
        if ok is not None:
            self._ok = pl.Series(keys[~asked], dtype=pl.UInt64)
            self._ok_covered = int(asked.sum())
        counts = self.planner.counts
        counts.rows = self.covered
        counts.requests += n.requests
        counts.shared += n.shared
        counts.skipped += n.skipped
        counts.done += n.done
        counts.done_failed += n.done_failed
        counts.todo += n.todo
        self._planned, self._parts = n.requests, parts
        self.todo, self.todo_rows = todo, sorted(todo)

    def _digests(self, parts: list[Path]) -> np.ndarray:
        """The short digests of the index's requests, in plan order, read a part at a time into
        one array (8 bytes a request; handed over to the occurrence index, which sorts it)."""
        import numpy as np

        out = np.empty(self._planned, dtype=np.uint64)
        at = 0
        for part in parts:
            frame = pl.read_parquet(part, columns=["sample", "content"]).filter(pl.col("sample") >= 0)
            out[at : at + frame.height] = frame.get_column("content").to_numpy()
            at += frame.height
        return out[:at]

    def restore(self) -> None:
        """Ready the planner for rows past the index: its occurrence index seeded with the requests
        the index covers, its done keys complete. Only then: a finished job needs neither."""
        if self._parts is not None:
            self.planner.restore(self.covered, self._digests(self._parts))
            self._parts = None
        if self._ok is not None:
            self.planner.done_keys.add_read(self._ok)
            self._ok = None

    @property
    def stale(self) -> int:
        """Done keys this plan no longer asks for (as ``Planner.stale``, counting the ok keys
        that are still waiting in ``_ok`` and those the index accounts for)."""
        done = len(self.planner.done_keys) + self._ok_covered
        if self._ok is not None:
            done += self._ok.n_unique()
        return max(0, done - self.planner.counts.done)

    def slices(self, table: Table, size: int) -> Iterator[tuple[int, pl.DataFrame]]:
        """``(first row, frame)`` of the input rows with work in them (blocking: call ``next`` in a
        thread). A frame is cut where the index ends, so the rows before that are sent before the
        planner is readied (``restore``) for the rows after it."""
        for start, frame in table.slices(size, self.next_row):
            if start < self.covered < start + frame.height:
                yield start, frame.slice(0, self.covered - start)
                start, frame = self.covered, frame.slice(self.covered - start)
            if start + frame.height > self.covered:
                self.restore()
            yield start, frame

    def next_row(self, row: int) -> int:
        """The first row from ``row`` on that has to be read: of the rows the index covers, only
        those with work left (so a resumed run does not read the done part of its input at all)."""
        if row >= self.covered:
            return row
        at = bisect.bisect_left(self.todo_rows, row)
        return self.todo_rows[at] if at < len(self.todo_rows) else self.covered

    def requests(self, start: int, frame: pl.DataFrame) -> Iterator[Request]:
        """The requests for the ``frame`` of input rows that begins at row ``start``."""
        end = start + frame.height
        if start < self.covered:
            first = bisect.bisect_left(self.todo_rows, start)
            last = bisect.bisect_left(self.todo_rows, min(end, self.covered))
            rows = [(i, frame.row(i - start, named=True), self.todo[i]) for i in self.todo_rows[first:last]]
            yield from self.planner.replan(rows)
            if end > self.covered:
                self.restore()
                yield from self.planner.plan(frame.slice(self.covered - start).to_dicts())
        else:
            self.restore()
            yield from self.planner.plan(frame.to_dicts())

    def journal_part(self, final: bool = False, *, stopped: bool = False) -> tuple[int, int, list[Entry]] | None:
        """Entries to write as the next index part, taken at a batch boundary; or, ``stopped``
        anywhere, those of the rows planned whole (the last row begun may lack a sample)."""
        journal = self.planner.journal
        if journal is None or not journal or (len(journal) < JOURNAL_ROWS and not final and not stopped):
            return None
        end = self.planner.counts.rows - 1 if stopped else self.planner.counts.rows
        self.planner.journal = []
        if stopped:
            journal = [entry for entry in journal if entry[0] < end]
            if not journal:
                return None
        first, self._journal_from = self._journal_from, end
        return first, end, journal

    def write(self, part: tuple[int, int, list[Entry]]) -> None:
        if self.index is None:
            return
        try:
            self.index.write(*part)
        except OSError:
            self.planner.journal = None  # stop noting: the index is only a cache
            with contextlib.suppress(OSError):
                self.index.start()


def _find(ordered: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each value is in the sorted unique array ``ordered``, and whether it is there at all."""
    import numpy as np

    if not len(ordered):
        return np.zeros(len(values), dtype=np.intp), np.zeros(len(values), dtype=bool)
    order = np.argsort(values)  # sorted, the searches walk the array one way: 16 against 78 ms for 65,536 in 9M
    at = np.empty(len(values), dtype=np.intp)
    at[order] = np.searchsorted(ordered, values[order])
    np.minimum(at, len(ordered) - 1, out=at)
    return at, ordered[at] == values
