"""The requests left to send among the rows a plan index covers (``Feed``): row, sample and key in
flat arrays, 28 bytes a request, where a dict of lists of ``(sample, key)`` tuples took ~300. A
shard's first pass keys every row before it sends, so it holds 1/N of the job's requests here:
2.5M for a shard of a 10M-row job (70 MB, against ~750)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    import numpy as np

Wanted = list[tuple[int, list[tuple[int, str]]]]  # rows, each with its (sample, key)s


class Todo:
    """Filled a part at a time (``add``, in row order), then ``finish``ed and read by row ranges."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, ...]] = []
        self.requests = 0
        self._rows: np.ndarray | None = None  # of each request, ascending
        self._samples: np.ndarray | None = None
        self._keys: np.ndarray | None = None  # each key's 32 hex digits as two 64-bit halves
        self._distinct: np.ndarray | None = None  # the rows, each once

    def add(self, entries: pl.DataFrame) -> None:
        """Entries with the columns row_index, sample and key, after those added before."""
        halves = entries.select(
            pl.col("key").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("high"),
            pl.col("key").str.slice(16, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("low"),
        )
        self._parts.append(
            (
                entries.get_column("row_index").to_numpy(),
                entries.get_column("sample").to_numpy(),
                halves.to_numpy(order="c"),
            )
        )
        self.requests += entries.height

    def finish(self) -> Todo:
        import numpy as np

        parts, self._parts = self._parts, []
        self._rows = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, dtype=np.int64)
        self._samples = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, dtype=np.int32)
        self._keys = np.concatenate([p[2] for p in parts]) if parts else np.empty((0, 2), dtype=np.uint64)
        keep = np.ones(len(self._rows), dtype=bool)
        np.not_equal(self._rows[1:], self._rows[:-1], out=keep[1:])
        self._distinct = self._rows[keep]
        return self

    @property
    def rows(self) -> int:
        """How many rows have work left."""
        return 0 if self._distinct is None else len(self._distinct)

    def next_row(self, row: int) -> int | None:
        """The first row from ``row`` on with work left, if any."""
        import numpy as np

        if self._distinct is None:
            return None
        at = int(np.searchsorted(self._distinct, row))
        return int(self._distinct[at]) if at < len(self._distinct) else None

    def between(self, start: int, end: int) -> Wanted:
        """The rows from ``start`` to ``end - 1`` with work left, each with its ``(sample, key)``s."""
        import numpy as np

        if self._rows is None or self._samples is None or self._keys is None:
            return []
        first, last = np.searchsorted(self._rows, [start, end])
        wanted: Wanted = []
        rows, samples, keys = (a[first:last].tolist() for a in (self._rows, self._samples, self._keys))
        for row, sample, (high, low) in zip(rows, samples, keys, strict=True):
            if not wanted or wanted[-1][0] != row:
                wanted.append((row, []))
            wanted[-1][1].append((sample, f"{high:016x}{low:016x}"))
        return wanted
