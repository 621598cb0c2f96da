"""Requests rendered for the digest blocks, kept beside them, so that a shard builds its own
requests from them instead of rendering its rows a second time (issue 19): with N shards started
together, each renders ~1/N of the rows once, not ~2/N.

Beside ``block-<first>`` (``plan.digests``), ``bodies-<first>-<tag>.arrow`` holds an entry per
request of the block, in the same order: its row and sample and what ``Planner.build`` makes a
request of (URL, body before the streaming fields, seed, model, row id, refusal), or a null body
for a request not sent as rendered (a row that does not render, a URL off limits), which is
rendered again. ``tag`` names the id column, the one thing kept here that the keys (and so the
folder's name) do not depend on. A cache like the blocks: a file missing or not matching, the
rows are rendered again. Arrow IPC with LZ4: the bodies of a template repeat.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ..models import Request
from ..sink.files import write_atomic
from .planner import Kept, Planner

if TYPE_CHECKING:
    import numpy as np

SCHEMA = {
    "row_index": pl.Int64,
    "sample": pl.Int32,
    "url": pl.String,
    "body": pl.Binary,
    "seed": pl.Int64,
    "model": pl.String,
    "row_id": pl.String,
    "refused": pl.String,
}
_NOTHING = (None,) * 6
Row = Mapping[str, Any]


class Bodies:
    """The kept requests of the digest blocks in one folder, for one id column."""

    def __init__(self, folder: Path, id_column: str | None, block_rows: int) -> None:
        self.folder = folder
        self.tag = hashlib.blake2b(repr(id_column).encode(), digest_size=4).hexdigest()
        self.block_rows = block_rows
        self._loaded: tuple[int, pl.DataFrame, dict[int, int]] | None = None

    def path(self, first: int) -> Path:
        return self.folder / f"bodies-{first:012d}-{self.tag}.arrow"

    def write(self, first: int, block: np.ndarray, kept: list[Kept | None]) -> None:
        """Keep what ``Planner.contents`` kept of the block from row ``first`` (blocking)."""
        rows = zip(block["row"].tolist(), block["sample"].tolist(), kept, strict=True)
        entries = [(row, sample, *(one or _NOTHING)) for row, sample, one in rows]
        frame = pl.DataFrame(entries, schema=SCHEMA, orient="row")
        write_atomic(self.path(first), lambda tmp: frame.write_ipc(tmp, compression="lz4"))

    def requests(
        self, planner: Planner, wanted: list[tuple[int, list[tuple[int, str]]]], row_of: Callable[[int], Row]
    ) -> Iterator[Request]:
        """The requests of ``wanted`` rows (row, its (sample, key)s), in order: built from what was
        kept, or rendered again from ``row_of(row)`` where nothing was."""
        for _, group in itertools.groupby(wanted, key=lambda one: one[0] // self.block_rows):
            rows = list(group)
            frame, firsts = self._load(rows[0][0] // self.block_rows * self.block_rows)
            at = [firsts[index] + sample for index, keys in rows if index in firsts for sample, _ in keys]
            taken = frame[at].iter_rows() if at else iter(())
            for index, keys in rows:
                got = [next(taken) for _ in keys] if index in firsts else []
                where = [(index, sample) for sample, _ in keys]
                if not got or [(one[0], one[1]) for one in got] != where:
                    yield from planner.replan([(index, row_of(index), keys)])  # nothing kept, or not this row's
                    continue
                for (_, sample, url, body, seed, model, row_id, refused), (_, key) in zip(got, keys, strict=True):
                    yield planner.build(key, index, sample, (url, body, seed, model, row_id, refused))

    def _load(self, first: int) -> tuple[pl.DataFrame, dict[int, int]]:
        """The kept requests of the block from row ``first``, and where each row's first sample is
        (rows with nothing kept are not there)."""
        if self._loaded is not None and self._loaded[0] == first:
            return self._loaded[1], self._loaded[2]
        frame, firsts = pl.DataFrame(schema=SCHEMA), {}
        with contextlib.suppress(OSError, pl.exceptions.PolarsError):
            frame = pl.read_ipc(self.path(first))
            if frame.schema != pl.Schema(SCHEMA):
                frame = pl.DataFrame(schema=SCHEMA)
            starts = frame.with_row_index("at").filter(pl.col("body").is_not_null() & (pl.col("sample") == 0))
            firsts = dict(zip(starts["row_index"].to_list(), starts["at"].to_list(), strict=True))
        self._loaded = (first, frame, firsts)
        return frame, firsts
