"""The producer: what a run sends, in input order, using the plan index where it can. Rows an
earlier run keyed (the index covers them) are read and rendered only if they still have work to
do; the rest of the input is planned as usual and noted in the index for the next run.

``Feed`` holds the state, owned by the one producer that drives it, one step at a time (the
blocking steps run in a worker thread while the producer awaits them, never beside it):

- ``planner``: renders and keys rows; its ``counts`` are the plan's counts, which the progress
  line reads, and its ``journal`` the entries of rows planned anew, not yet in the index;
- ``index``: the plan index, read when the feed is opened, written at ``checkpoint``s;
- ``covered``, ``todo``: rows ``0..covered-1`` were keyed by an earlier run; of those, the rows
  with work left and their ``(sample, key)``s;
- ``unseeded``: how many requests the covered rows make, until the occurrence index is seeded
  with their digests (``restore``, just before the first row past the index: a finished job
  never needs it);
- ``asked``: ok keys that covered rows ask for, counted as done and never held (for ``stale``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

import anyio
import polars as pl

from ..log import event
from ..models import Request
from ..shard import Shard
from ..spec import Job
from .digests import plan_together
from .kept import Bodies
from .keyindex import PART_ENTRIES, PlanIndex, Resumed
from .planner import Planner
from .todo import Todo

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from .reader import Table

BATCH_ROWS = 2048  # input rows read, planned and checkpointed at a time


class Feed:
    def __init__(self, planner: Planner, index: PlanIndex) -> None:
        self.planner = planner
        self.index = index
        self.covered = 0
        self.todo = Todo().finish()
        self.unseeded = 0
        self.asked = 0
        # the rows past it are not this run's: ``--limit`` (only the first rows, keyed as in the
        # whole job), or a shard's first pass (it keyed the input as it was when it opened)
        self.limit: int | None = None
        self.shard = Shard()  # ``--shard K/N``: every row is keyed, only this shard's keys are sent
        self.kept: Bodies | None = None  # a shard's first pass: requests rendered with the blocks
        planner.journal = [] if index.noting else None

    @classmethod
    def open(
        cls, job: Job, planner: Planner, ok: pl.Series | None = None, *, note: bool = True, limit: int | None = None
    ) -> Feed:
        """The feed of ``planner``, with the plan index if it matches this job and input. With
        ``note`` (a run, holding the lock) the rows planned anew are added to the index. ``ok``:
        ok keys read as a column and not in the planner's done keys; those that no covered row
        asks for join them. A shard's first pass keys every row first, sharing the work with the
        other shards (``plan.digests``). Blocking: call it in a thread."""
        feed = cls(planner, PlanIndex.open(job, note=note))
        feed.shard, feed.limit = job.shard, limit
        if not feed.index.covered:
            if job.shard.sharded and limit is None and feed.index.fingerprint:
                resumed, feed.kept = plan_together(job, planner, feed.index, ok)
                feed._resume(resumed, seeded=True)
                feed.limit = feed.covered  # rows appended meanwhile: the next run's (they change the input)
                return feed
            if ok is not None:
                planner.done_keys.add_read(ok)
            return feed
        feed._resume(feed.index.resume(planner.done_keys, ok, job.shard), seeded=False)
        return feed

    def _resume(self, resumed: Resumed, *, seeded: bool) -> None:
        """Take what the index says of the rows it covers; ``seeded``: the planner's occurrence
        index counted them already."""
        planner, feed = self.planner, self
        if resumed.unasked is not None and len(resumed.unasked):
            planner.done_keys.add_read(pl.Series(resumed.unasked, dtype=pl.UInt64))
        counts, n = planner.counts, resumed.counts
        counts.rows = n.rows
        counts.requests += n.requests
        counts.shared += n.shared
        counts.skipped += n.skipped
        counts.done += n.done
        counts.done_failed += n.done_failed
        counts.todo += n.todo
        counts.other_shards += n.other_shards
        feed.covered, feed.unseeded, feed.asked = n.rows, 0 if seeded else n.requests, resumed.asked
        feed.todo = resumed.todo

    @property
    def stale(self) -> int:
        """Done keys this plan no longer asks for (as ``Planner.stale``, with ``asked``)."""
        return max(0, len(self.planner.done_keys) + self.asked - self.planner.counts.done)

    def slices(self, table: Table, size: int) -> Iterator[tuple[int, pl.DataFrame | Deferred]]:
        """``(first row, frame)`` of the input rows with work in them, cut where the index ends
        (blocking: call ``next`` in a thread). A shard's first pass over a Parquet input, with
        the requests its blocks kept, reads a slice only if some row of it was not kept."""
        if self.kept is not None and table.count_rows() == self.covered:
            row = self._next_row(0)
            while row < self.covered:
                height = min(size, self.covered - row)
                yield row, Deferred(table, row, height)
                row = self._next_row(row + height)
            return
        for start, frame in table.slices(size, self._next_row):
            if self.limit is not None:
                if start >= self.limit:
                    return
                frame = frame.slice(0, self.limit - start)
            if start < self.covered < start + frame.height:
                yield start, frame.slice(0, self.covered - start)
                start, frame = self.covered, frame.slice(self.covered - start)
            yield start, frame

    def _next_row(self, row: int) -> int:
        """The first row from ``row`` on that has to be read: of the rows the index covers, only
        those with work left (so a resumed run does not read the done part of its input at all)."""
        if row >= self.covered:
            return row
        found = self.todo.next_row(row)
        return self.covered if found is None else min(found, self.covered)

    def restore(self) -> None:
        """Seed the occurrence index with the covered rows' requests, so that occurrence numbers
        go on exactly as before; once, before the first row past the index (blocking)."""
        if self.unseeded:
            self.planner.restore(self.covered, self.index.digests(self.unseeded))
            self.unseeded = 0

    def requests(self, start: int, frame: pl.DataFrame | Deferred) -> Iterator[Request]:
        """The requests for the ``frame`` of input rows that begins at row ``start`` (this shard's)."""
        if not self.shard.sharded:
            yield from self._requests(start, frame)
            return
        counts = self.planner.counts
        for request in self._requests(start, frame):
            if self.shard.owns(request.key):
                yield request
            else:
                counts.todo -= 1
                counts.other_shards += 1

    def _requests(self, start: int, rows: pl.DataFrame | Deferred) -> Iterator[Request]:
        end = start + rows.height
        if start < self.covered:
            wanted = self.todo.between(start, min(end, self.covered))
            if self.kept is not None:
                yield from self.kept.requests(self.planner, wanted, lambda i: _read(rows).row(i - start, named=True))
            else:
                frame = _read(rows)
                yield from self.planner.replan([(i, frame.row(i - start, named=True), keys) for i, keys in wanted])
        if end > self.covered:
            self.restore()
            yield from self.planner.plan(_read(rows).slice(max(0, self.covered - start)).to_dicts())

    @property
    def checkpoint_due(self) -> bool:
        journal = self.planner.journal
        return (journal is not None and len(journal) >= PART_ENTRIES) or self.planner.occurrences.flush_due

    def checkpoint(self, *, final: bool = False, stopped: bool = False) -> None:
        """At a batch boundary: write the noted entries as an index part if enough wait (``final``:
        whatever waits; ``stopped``: the run stopped while planning), and spill the recent
        occurrence counts if due (not when ``final``: nothing is counted after). Blocking."""
        journal = self.planner.journal
        if journal and (final or len(journal) >= PART_ENTRIES):
            self.index.write(journal, self.planner.counts.rows, whole=not stopped)
            self.planner.journal = [] if self.index.noting else None
        if not final and self.planner.occurrences.flush_due:
            self.planner.occurrences.flush()


class Deferred:
    """Rows of a Parquet input, read when first asked for: a shard builds most of its requests
    from what its blocks kept (``plan.kept``), without them."""

    def __init__(self, table: Table, start: int, height: int) -> None:
        self.table, self.start, self.height = table, start, height
        self._frame: pl.DataFrame | None = None

    def read(self) -> pl.DataFrame:
        if self._frame is None:
            self._frame = self.table.read(self.start, self.height)
        return self._frame


def _read(rows: pl.DataFrame | Deferred) -> pl.DataFrame:
    return rows.read() if isinstance(rows, Deferred) else rows


async def produce(feed: Feed, table: Table, send: MemoryObjectSendStream[list[Request]], handoff: int) -> None:
    """Send the requests of ``feed`` in lists of ``handoff``: read each slice of rows in a worker
    thread, plan it here, lazily (a list at a time, as the workers take them), checkpoint in a
    worker thread. Stopped anywhere (a signal, the deadline, a fatal answer), the rows keyed so
    far still go into the plan index, so the next run does not render them again."""
    planner, slices, whole = feed.planner, feed.slices(table, BATCH_ROWS), False
    try:
        while (pair := await anyio.to_thread.run_sync(next, slices, None)) is not None:
            start, frame = pair
            if start >= feed.covered and feed.unseeded:  # in a thread: the requests before it are sent meanwhile
                await anyio.to_thread.run_sync(feed.restore)
            requests = feed.requests(start, frame)
            while batch := list(itertools.islice(requests, handoff)):
                await send.send(batch)
            for index, row_id in planner.skipped_rows:
                event(f"row {index} skipped: empty prompt", row=index, row_id=row_id)
            planner.skipped_rows.clear()
            if feed.checkpoint_due:
                await anyio.to_thread.run_sync(feed.checkpoint)
        whole = True
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial(feed.checkpoint, final=True, stopped=not whole))
