"""The requests left to send among the rows a plan index covers (``Feed``): row, sample and key in
three flat arrays, 44 bytes a request, where a dict of lists of ``(sample, key)`` tuples took
~300. A shard's first pass keys every row before it sends, so it holds 1/N of the job's
requests here: 2.5M for a shard of a 10M-row job (110 MB, against ~750)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    import numpy as np

_SCHEMA = {"row_index": pl.Int64, "sample": pl.Int32, "key": pl.String}
Wanted = list[tuple[int, list[tuple[int, str]]]]  # rows, each with its (sample, key)s


class Todo:
    """Filled a part at a time (``add``, in row order), then ``finish``ed and read by row ranges."""

    def __init__(self) -> None:
        self._parts: list[pl.DataFrame] = []
        self.requests = 0
        self._rows: np.ndarray | None = None  # of each request, ascending
        self._samples: np.ndarray | None = None
        self._keys: np.ndarray | None = None  # S32: the hex keys as bytes
        self._distinct: np.ndarray | None = None  # the rows, each once

    def add(self, entries: pl.DataFrame) -> None:
        """Entries with the columns row_index, sample and key, after those added before."""
        self._parts.append(entries.select("row_index", "sample", "key"))
        self.requests += entries.height

    def finish(self) -> Todo:
        import numpy as np

        whole = (
            pl.concat(self._parts)
            if self._parts
            else pl.DataFrame(schema={"row_index": pl.Int64, "sample": pl.Int32, "key": pl.String})
        )
        self._parts = []
        self._rows = whole.get_column("row_index").to_numpy()
        self._samples = whole.get_column("sample").to_numpy()
        self._keys = whole.get_column("key").cast(pl.Binary).to_numpy().astype("S32")
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
        for row, sample, key in zip(rows, samples, keys, strict=True):
            if not wanted or wanted[-1][0] != row:
                wanted.append((row, []))
            wanted[-1][1].append((sample, key.decode()))
        return wanted
