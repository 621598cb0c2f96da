"""A sharded first pass, planned together (issue 19): the shards of one job share the costly half
of keying through the output folder.

A request key has two stages. The first, the content digest of each request (rendering, the
canonical body, a hash: ~3/4 of planning), depends on its row alone; the second, the occurrence
number (identical requests in earlier rows) and the key made from both, is cheap but sequential
over the whole job. So the first stage is cut into blocks of ``BLOCK_ROWS`` rows, each written once
to ``plan-index/[<endpoint>/]digests/<job and input>/block-<first row>`` by whichever shard got
there first: ``(row, sample, content digest)`` per request, fixed bytes for a job and input, so
two shards writing one block write the same file (atomically: renamed into place).

Shard K computes its blocks first (K, K+N, K+2N, ...), then goes through the table in row order,
reading each block a shard wrote and computing any that is not there yet itself: it never waits,
so shards started one after another, or fewer at once than N (a Slurm array with fewer slots),
still finish, and a shard alone does the work of one process, as before. With the blocks, the
requests rendered for them are kept (``plan.kept``), so a shard builds its own requests from them:
with N shards started together, each renders ~1/N of the rows, once.

The second stage runs over every block in row order, so occurrence numbers are the whole job's,
exactly those of an unsharded run. Once every block is on disk, one pass through them finds the
digests that may repeat (``Occurrences.repeats``: those that do and ~2 % that do not); only those
are counted, every other is the only one of its kind (occurrence 0). The keys become the shard's
plan index (a run's), read against the done keys as a resumed shard reads its own.

Only a first pass is planned so: when the shard's plan index already covers rows (a resumed shard)
or ``--limit`` is given, rows are keyed as they are planned. The blocks are a cache: a missing or
cut one is computed again. Output on object storage stages in a folder of each machine's own,
so shards share blocks only when they share the output folder (one machine, or a shared file
system).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import polars as pl

from ..sink.files import make_folder, write_atomic
from ..spec import Job
from .kept import Bodies
from .keyindex import INDEX_DIR, PART_ENTRIES, SCHEMA, PlanIndex, Resumed, Resumer
from .planner import Kept, Planner

if TYPE_CHECKING:
    import numpy as np

    from .reader import Table

BLOCK_ROWS = 16_384  # 61 blocks a million rows: enough to share among N shards evenly, few files
_EMPTY = bytes(16)  # the content of a skipped row's entry (sample -1)


def _dtype() -> np.dtype:
    import numpy as np

    return np.dtype([("row", "<i8"), ("sample", "<i4"), ("content", "V16")])


class Blocks:
    """The digest blocks of one job and input in one output folder."""

    def __init__(self, folder: Path, *, write: bool, within: Path, bodies: Bodies | None = None) -> None:
        self.folder = folder
        self.write = write
        self.within = within  # the output folder: no link below it is followed to write
        self.bodies = bodies if write else None  # the rendered requests are kept too (``plan.kept``)

    def path(self, first: int) -> Path:
        return self.folder / f"block-{first:012d}"

    def has(self, block: int) -> bool:
        return self.path(block * BLOCK_ROWS).is_file()

    def compute(self, planner: Planner, first: int, frame: pl.DataFrame) -> np.ndarray:
        """The block of the rows of ``frame`` (from row ``first``), written for the other shards."""
        import numpy as np

        kept: list[Kept | None] | None = [] if self.bodies is not None else None
        contents = planner.contents(frame.to_dicts(), first, kept)
        block = np.array([(row, sample, content or _EMPTY) for row, sample, content in contents], dtype=_dtype())
        if self.write:
            with contextlib.suppress(OSError):  # a cache: not written, it is computed again
                make_folder(self.folder, within=self.within)
                if self.bodies is not None and kept is not None:
                    self.bodies.write(first, block, kept)
                write_atomic(self.path(first), lambda tmp: tmp.write_bytes(block.tobytes()))
        return block

    def read(self, first: int, rows: int) -> np.ndarray | None:
        """The block of rows ``first..first+rows-1`` if a shard wrote it whole, else None."""
        import numpy as np

        dtype = _dtype()
        try:
            data = self.path(first).read_bytes()
        except OSError:
            return None
        if not data or len(data) % dtype.itemsize:
            return None
        block = np.frombuffer(data, dtype=dtype)
        if int(block["row"][0]) != first or int(block["row"][-1]) != first + rows - 1:
            return None
        return block


def _stop_if_cancelled() -> None:
    """Stop between blocks when the run that waits for this worker thread is stopped (a signal):
    the parts written so far are the plan index's usable prefix. Called elsewhere: nothing."""
    with contextlib.suppress(RuntimeError):  # not in a worker thread of anyio's
        anyio.from_thread.check_cancelled()


def blocks_folder(job: Job, index: PlanIndex, planner: Planner) -> Path:
    """Where the blocks of this job and input are: named by the plan index's fingerprint, the
    allowed origins (a refused request's key names them) and the block size."""
    folder = job.output_dir / INDEX_DIR
    if job.several:
        folder = folder / job.endpoint.name
    origins = planner.origins.fingerprint() if planner.origins is not None else ""
    name = hashlib.blake2b(f"{index.fingerprint} {origins} {BLOCK_ROWS}".encode(), digest_size=16).hexdigest()
    return folder / "digests" / name


def plan_together(job: Job, planner: Planner, index: PlanIndex, ok: pl.Series | None) -> tuple[Resumed, Bodies | None]:
    """Key every row of the input as ``planner.plan`` would (counting in ``planner.occurrences``),
    sharing the first stage with the other shards; write the keys as the plan index if it is
    noting (a run), and read them against the done keys as ``PlanIndex.resume`` does. Also the
    requests kept as the blocks were rendered, if any could be written. Blocking."""
    from .reader import Table

    shard = job.shard
    folder = blocks_folder(job, index, planner)
    write = index.noting or job.output_dir.is_dir()  # ``plan``: no output folder made
    bodies = Bodies(folder, job.id_column, BLOCK_ROWS)
    blocks = Blocks(folder, write=write, within=job.output_dir, bodies=bodies)
    if index.noting:  # blocks of an earlier input or job: no shard of this one reads them
        for other in folder.parent.glob("*") if folder.parent.is_dir() else ():
            if other.name != folder.name:
                shutil.rmtree(other, ignore_errors=True)
    table = Table(job.input, job.input_options)

    def own(row: int) -> int:
        """The first row of this shard's next block from ``row`` on that no shard has written."""
        block = -(-row // BLOCK_ROWS)
        block += (shard.index - block) % shard.count
        while blocks.has(block):
            block += shard.count
        return block * BLOCK_ROWS

    for first, frame in table.slices(BLOCK_ROWS, own):
        _stop_if_cancelled()
        blocks.compute(planner, first, frame)
    resumer = Resumer(planner.done_keys, ok, shard)
    frames: list[pl.DataFrame] = []
    rows = 0

    def part() -> None:
        frame = pl.concat(frames)
        index.write_frame(frame, rows)
        resumer.add(frame, lambda: frame)
        frames.clear()

    repeats = None
    if write:  # every block is on disk after one pass through them: count only what may repeat
        repeats = planner.occurrences.repeats(_shorts(block) for _, block in _in_order(table, blocks, planner))
    for end, block in _in_order(table, blocks, planner):
        _stop_if_cancelled()
        frames.append(_keyed(planner, block, repeats))
        rows = end
        if sum(frame.height for frame in frames) >= PART_ENTRIES:
            part()
        if planner.occurrences.flush_due:
            planner.occurrences.flush()
    if frames:
        part()
    planner.counts.rows = rows
    return resumer.finish(rows), bodies if write else None


def _in_order(table: Table, blocks: Blocks, planner: Planner) -> Iterator[tuple[int, np.ndarray]]:
    """Every block in row order, with the row it ends at: read where a shard wrote it, else
    computed. Of a Parquet input only the blocks missing are read (its row count is in its
    metadata); a text input is read through, as its rows cannot be reached otherwise."""
    rows = table.count_rows()
    if rows is None:
        for first, frame in table.slices(BLOCK_ROWS, lambda row: row):
            block = blocks.read(first, frame.height)
            yield first + frame.height, block if block is not None else blocks.compute(planner, first, frame)
        return
    for first in range(0, rows, BLOCK_ROWS):
        size = min(BLOCK_ROWS, rows - first)
        block = blocks.read(first, size)
        yield first + size, block if block is not None else blocks.compute(planner, first, table.read(first, size))


def _shorts(block: np.ndarray) -> np.ndarray:
    """The short digests of a block's requests (what the occurrence index counts)."""
    _stop_if_cancelled()
    import numpy as np

    return np.ascontiguousarray(block["content"][block["sample"] >= 0]).view("<u8")[::2]


def _keyed(planner: Planner, block: np.ndarray, repeats: np.ndarray | None) -> pl.DataFrame:
    """The plan index's entries of a block (as ``part_frame`` makes them): the second stage of
    its keys, counted in ``planner.occurrences`` in row order."""
    import numpy as np

    planned = block["sample"] >= 0
    contents = np.ascontiguousarray(block["content"][planned])
    keys, shared = planner.keying.keyed_many(contents, repeats)
    frame = pl.DataFrame(
        {
            "row_index": block["row"][planned],
            "sample": block["sample"][planned],
            "key": pl.Series(keys, dtype=pl.Binary).bin.encode("hex"),
            "content": contents.view("<u8")[::2],
            "shared": shared,
            "short": np.frombuffer(b"".join(keys), dtype=">u8")[::2].astype(np.uint64),  # ``short_key``
        },
        schema=SCHEMA,
    )
    if planned.all():
        return frame
    skipped = pl.DataFrame({"row_index": block["row"][~planned]}, schema={"row_index": pl.Int64}).with_columns(
        sample=pl.lit(-1, pl.Int32),
        key=pl.lit(""),
        content=pl.lit(0, pl.UInt64),
        shared=pl.lit(False),
        short=pl.lit(None, pl.UInt64),
    )
    return pl.concat([frame, skipped]).sort("row_index", "sample", maintain_order=True)
