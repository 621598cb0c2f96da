"""The input table, read in bounded pieces so that memory stays flat in input size.

Parquet is read slice by slice through a lazy scan. CSV, TSV and NDJSON are read in 1 MiB blocks,
each cut at the end of a record and parsed by polars with the schema it inferred from the first
10,000 rows. Polars' own streaming CSV source reads ahead of use by an amount that grows with the
file (RssAnon 350 MiB at 10M short rows, against 50 MiB by blocks; no option of ``scan_csv``,
``collect_batches`` or ``pl.Config`` bounds it), and its NDJSON source maps the whole file (RSS 933 MiB).

Polars errors are translated here, once, into ``InputError`` naming the file.
"""

from __future__ import annotations

import contextlib
import glob
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import polars as pl

from ..errors import InputError, TemplateError

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "ndjson",
    ".ndjson": "ndjson",
}

BLOCK_BYTES = 1 << 20
"""Bytes read and parsed at a time from a text table (about 16,000 short prompts). Larger blocks
read no faster and hold more: peak RssAnon at 10M short rows is 50 MiB with 1 MiB blocks, 64 with 2,
88 with 4 (bench/reader.py --block-bytes)."""


def last_record_end(data: bytes, *, quoted: bool) -> int:
    """Where the last complete record of ``data`` ends (just past its newline), or 0 if none does.

    ``data`` starts at the start of a record. With ``quoted`` (CSV, RFC 4180) a newline ends a record
    only outside quotes: every ``"`` opens or closes a quoted field (a doubled ``""`` inside one
    closes and reopens it), so a newline is outside quotes when the count of ``"`` before it is even.
    The count is taken once for the block and walked back from the end: linear in ``len(data)``."""
    end = data.rfind(b"\n")
    if not quoted or b'"' not in data:  # a fast test (memchr), where counting runs at ~1 GB/s
        return end + 1
    before = data.count(b'"', 0, end) if end >= 0 else 0
    while end >= 0 and before % 2:
        previous = data.rfind(b"\n", 0, end)
        before -= data.count(b'"', previous + 1, end)
        end = previous
    return end + 1


def first_record_end(data: bytes) -> int:
    """Where the first record of CSV ``data`` ends (just past its newline), or ``len(data)``."""
    start, quotes = 0, 0
    while (newline := data.find(b"\n", start)) >= 0:
        quotes += data.count(b'"', start, newline)
        if quotes % 2 == 0:
            return newline + 1
        start = newline + 1
    return len(data)


def blocks(file: BinaryIO, size: int, *, quoted: bool) -> Iterator[bytes]:
    """``file`` in pieces of about ``size`` bytes, each made of whole records (see ``last_record_end``).
    A record longer than ``size`` is read on, in reads that double, until it ends."""
    rest = b""
    while chunk := file.read(max(size, len(rest))):
        data = rest + chunk
        end = last_record_end(data, quoted=quoted)
        if end:
            yield data[:end]
        rest = data[end:]
    if rest:
        yield rest


def rechunk(frames: Iterable[pl.DataFrame], size: int) -> Iterator[pl.DataFrame]:
    """``frames`` again, as frames of exactly ``size`` rows (the last one excepted)."""
    held: list[pl.DataFrame] = []
    rows = 0
    for frame in frames:
        held.append(frame)
        rows += frame.height
        while rows >= size:
            whole = pl.concat(held)
            yield whole.slice(0, size)
            held, rows = [whole.slice(size)], rows - size
    if rows:
        yield pl.concat(held)


@contextlib.contextmanager
def input_errors(source: str) -> Iterator[None]:
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "utf-8" in reason or "utf8" in reason:
            reason += " (is the file saved as UTF-8?)"
        raise InputError(f"cannot read input {source}: {reason}") from None
    except OSError as exc:
        raise InputError(f"cannot read input {source}: {exc.strerror or exc}") from None


def is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


def input_files(source: str) -> list[str]:
    """The files an input names, in the order they are read: a glob as the shell expands it, with
    ``**`` for any depth (polars' own expansion also takes hidden files); one path as it is."""
    return sorted(glob.glob(source, recursive=True)) if is_glob(source) else [source]


def maybe_empty(column: pl.Expr, dtype: PolarsDataType) -> pl.Expr:
    """Whether a value may make a prompt render empty: null, blank text, false, zero (Jinja's
    ``{% if %}`` takes those as false), an empty list, a list or struct holding such a value."""
    maybe = column.is_null()
    if dtype == pl.String:
        return maybe | (column.str.strip_chars() == "")
    if dtype == pl.Boolean:
        return maybe | ~column
    if dtype.is_numeric():
        return maybe | (column == 0)
    if isinstance(dtype, pl.List):
        inner = maybe_empty(pl.element(), dtype.inner)
        return maybe | (column.list.len() == 0) | column.list.eval(inner).list.any()
    if isinstance(dtype, pl.Struct):
        return pl.any_horizontal(maybe, *(maybe_empty(column.struct.field(f.name), f.dtype) for f in dtype.fields))
    return maybe


def _renders_empty(renders_empty: Callable[[dict[str, Any]], bool], row: dict[str, Any], index: int) -> bool:
    try:
        return renders_empty(row)
    except TemplateError as exc:
        raise TemplateError(f"{exc} (row {index})") from None


@dataclass(frozen=True, slots=True)
class TableStats:
    rows: int
    empty_prompts: int = 0
    first_empty: int | None = None


class Table:
    """An input table whose schema is known; nothing is loaded until batches are asked for."""

    def __init__(self, source: str, *, block_bytes: int = BLOCK_BYTES) -> None:
        self.source, self.block_bytes = source, block_bytes
        suffix = Path(source).suffix.lower()
        kind = FORMATS.get(suffix)
        if kind is None:
            known = ", ".join(sorted(FORMATS))
            raise InputError(f"input {source}: unknown file type {suffix or '(none)'!r} (known: {known})")
        self.paths = input_files(source)
        if not (self.paths if is_glob(source) else Path(source).is_file()):
            raise InputError(f"input {source}: {'no file matches' if is_glob(source) else 'file not found'}")
        self.kind = kind
        paths = self.paths  # the same files for polars' scans as for the block reader
        with input_errors(source):
            if kind in ("csv", "tsv"):
                self.frame = pl.scan_csv(paths, separator="\t" if kind == "tsv" else ",", infer_schema_length=10_000)
            elif kind == "parquet":
                self.frame = pl.scan_parquet(paths)
            else:
                self.frame = pl.scan_ndjson(paths, infer_schema_length=10_000)
            self.schema = self.frame.collect_schema()
            self.columns: list[str] = self.schema.names()

    def inspect(
        self, prompt_columns: Iterable[str] = (), renders_empty: Callable[[dict[str, Any]], bool] | None = None
    ) -> TableStats:
        """One pass over the whole table before anything is sent: it parses every field (a ragged
        row, a broken quote or bytes that are not UTF-8 fail here, not mid-run), counts the rows
        and finds rows whose prompt is empty. Rendering every row would cost a second planning
        pass, so only the rows where a prompt column is null, blank or false (``maybe_empty``)
        are rendered, by ``renders_empty`` (given those columns of the row); without it, each such
        row counts as empty."""
        columns = [c for c in prompt_columns if c in self.columns]
        exprs = [pl.len().alias("__rows"), pl.all().null_count()]
        if columns:
            maybe = pl.any_horizontal([maybe_empty(pl.col(c), self.schema[c]) for c in columns])
            exprs += [
                pl.int_range(pl.len()).filter(maybe).implode().alias("__maybe_at"),
                pl.struct(columns).filter(maybe).implode().alias("__maybe_rows"),
            ]
        with input_errors(self.source):
            rows, empties, first = 0, 0, None
            for stats in self._stats(exprs):
                for at, row in zip(stats.get("__maybe_at") or (), stats.get("__maybe_rows") or (), strict=True):
                    if renders_empty is None or _renders_empty(renders_empty, row, rows + at):
                        empties += 1
                        first = rows + at if first is None else first
                rows += int(stats["__rows"])
        if rows == 0:
            raise InputError(f"input {self.source}: the table has no rows")
        return TableStats(rows=rows, empty_prompts=empties, first_empty=first)

    def _stats(self, exprs: list[pl.Expr], slice_rows: int = 32_768) -> Iterator[dict[str, Any]]:
        """The statistics of each piece of the table in turn: text blocks, or Parquet slices (the
        streaming engine decodes many row groups at once: 188 MiB at 10M short rows, against 88 MiB
        by slices of 250,000 rows). Small slices: polars' allocator keeps what a slice freed for a
        second or so (jemalloc's decay), which the planning that follows then stacks on (peak RSS
        of the pass at 10M rows: 140 MiB by 250,000 rows, 113 by 65,536, 92-102 by 32,768, at
        0.5, 1.3 and 1.5 s)."""
        if self.kind != "parquet":
            for frame in self._text_frames():
                yield frame.select(exprs).row(0, named=True)
            return
        offset = 0
        while True:
            stats = self.frame.slice(offset, slice_rows).select(exprs).collect().row(0, named=True)
            if not stats["__rows"]:
                return
            yield stats
            offset += int(stats["__rows"])

    def frames(self, size: int) -> Iterator[pl.DataFrame]:
        """The table, ``size`` rows at a time, in input order. Parquet is read slice by
        slice (``collect_batches`` decodes far ahead of use: +55 MiB at 1M rows), text formats
        block by block."""
        with input_errors(self.source):
            if self.kind != "parquet":
                yield from rechunk(self._text_frames(), size)
                return
            offset = 0
            while (frame := self.frame.slice(offset, size).collect()).height:
                yield frame
                offset += frame.height

    def slices(self, size: int, next_row: Callable[[int], int]) -> Iterator[tuple[int, pl.DataFrame]]:
        """``(first row, frame)`` pairs of at most ``size`` rows, in input order, leaving out what
        ``next_row`` says need not be read: given the row reached, it returns the next row wanted.
        Parquet jumps straight there; text formats read through and drop the rows passed over."""
        with input_errors(self.source):
            if self.kind != "parquet":
                start = 0
                for frame in rechunk(self._text_frames(), size):
                    wanted, end = next_row(start), start + frame.height
                    if wanted < end:
                        yield wanted, frame.slice(wanted - start)
                    start = end
                return
            offset = next_row(0)
            while (frame := self.frame.slice(offset, size).collect()).height:
                yield offset, frame
                offset = next_row(offset + frame.height)

    def _text_frames(self) -> Iterator[pl.DataFrame]:
        """A text table block by block (see ``blocks``), each block parsed with the schema inferred
        at open. A CSV block is parsed behind its file's header line, so that polars reads it as it
        reads a whole file (a first line with fewer fields, say, means the same to it)."""
        separator = "\t" if self.kind == "tsv" else ","
        for path in self.paths:
            with open(path, "rb") as file:
                header = None
                for block in blocks(file, self.block_bytes, quoted=self.kind != "ndjson"):
                    if self.kind == "ndjson":
                        yield pl.read_ndjson(block, schema=self.schema)
                    elif header is None:
                        header = block[: first_record_end(block)]
                        yield pl.read_csv(block, separator=separator, schema=self.schema)
                    else:
                        yield pl.read_csv(header + block, separator=separator, schema=self.schema)

    def batches(self, size: int) -> Iterator[list[dict[str, Any]]]:
        """Rows as dicts, ``size`` at a time, in input order."""
        for frame in self.frames(size):
            yield frame.to_dicts()
