"""The input table, read in bounded pieces so that memory stays flat in input size.

Parquet is read slice by slice through a lazy scan. CSV, TSV and NDJSON are read in 1 MiB blocks
(``records.blocks``, decompressed on the way for gzip and zstd), each cut at the end of a record and
parsed by polars. Polars' own streaming CSV source reads ahead of use by an amount that grows with the
file (RssAnon 350 MiB at 10M short rows, against 50 MiB by blocks; no option of ``scan_csv``,
``collect_batches`` or ``pl.Config`` bounds it), and its NDJSON source maps the whole file (RSS 933 MiB).

CSV and TSV cells are text exactly as written unless ``[input] schema`` gives a column a type
(``csvtext``); NDJSON keeps each value's own JSON type (``jsonl``); Parquet keeps its own types. Which
files an input names (a file, a folder, a glob) is ``sources``; compression and record ends ``records``.

Polars errors are translated into ``InputError`` naming the file (and the line, for a bad record of
a text table): ``inputerrors``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import InputError
from .csvtext import TYPES, CsvText, csv_header
from .empties import maybe_empty, renders_empty_at, value_maybe_empty
from .inputerrors import input_errors
from .jsonl import file_records, ndjson_schema, object_frame
from .records import blocks, first_record_end, last_record_end
from .sources import FORMATS, input_files, is_glob, table_kind

if TYPE_CHECKING:  # the reader is also used without a job (bench/reader.py): no pydantic for it
    from ..spec.job import InputOptions

__all__ = [
    "BLOCK_BYTES",
    "FORMATS",
    "Table",
    "blocks",
    "first_record_end",
    "input_files",
    "last_record_end",
    "rechunk",
]

BLOCK_BYTES = 1 << 20
"""Bytes read and parsed at a time from a text table (about 16,000 short prompts). Larger blocks
read no faster and hold more: peak RssAnon at 10M short rows is 50 MiB with 1 MiB blocks, 64 with 2,
88 with 4 (bench/reader.py --block-bytes)."""


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


@dataclass(frozen=True, slots=True)
class TableStats:
    rows: int
    empty_prompts: int = 0
    first_empty: int | None = None


class Table:
    """An input table whose schema is known; nothing is loaded until batches are asked for."""

    def __init__(self, source: str, options: InputOptions | None = None, *, block_bytes: int = BLOCK_BYTES) -> None:
        fmt, separator, schema = (
            (None, None, {}) if options is None else (options.format, options.separator, options.schema)
        )
        self.source, self.block_bytes = source, block_bytes
        self.paths = input_files(source)
        if not self.paths:
            where = "the folder has no files" if Path(source).is_dir() else "no file matches"
            raise InputError(f"input {source}: {where}")
        if not (is_glob(source) or Path(source).is_dir() or Path(source).is_file()):
            raise InputError(f"input {source}: file not found")
        self.kind = kind = table_kind(source, self.paths, fmt)
        text = kind in ("csv", "tsv")
        if (separator or schema) and not text:
            option = "separator" if separator else "schema"
            raise InputError(f"input {source}: [input] {option} is for CSV and TSV tables (this one is {kind})")
        self.separator = separator or ("\t" if kind == "tsv" else ",")
        with input_errors(source):
            if kind == "parquet":
                self.frame = pl.scan_parquet(self.paths)
                read = self._same_columns({path: pl.Schema(pl.read_parquet_schema(path)) for path in self.paths})
            elif kind == "ndjson":
                read = ndjson_schema(self.paths[0], block_bytes)
            else:
                read = self._same_columns({path: csv_header(path, self.separator)[1] for path in self.paths})
        unknown = sorted(set(schema) - set(read))
        if unknown:
            raise InputError(
                f"input {source}: [input] schema names column {unknown[0]!r}, which the table does not have "
                f"(columns: {', '.join(read)})"
            )
        self.read_schema = read  # as parsed: CSV/TSV all text
        self.casts = {name: TYPES[type_name] for name, type_name in schema.items() if type_name != "str"}
        self.csv = CsvText(self.separator, read, self.casts)
        self.schema = pl.Schema({name: self.casts[name][0] if name in self.casts else t for name, t in read.items()})
        self.columns: list[str] = self.schema.names()

    def _same_columns(self, schemas: dict[str, pl.Schema]) -> pl.Schema:
        """The schema every file shares; a file whose columns differ from most others' is named."""
        counts = Counter(tuple(schema.items()) for schema in schemas.values())
        common = pl.Schema(counts.most_common(1)[0][0])
        for path, schema in schemas.items():
            if schema != common:
                raise InputError(
                    f"input {self.source}: {path} has columns ({_listing(schema)}), "
                    f"unlike the other files ({_listing(common)})"
                )
        return common

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
        if self.kind == "ndjson":
            return self._inspect_records(columns, renders_empty)
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
                    if renders_empty is None or renders_empty_at(renders_empty, row, rows + at):
                        empties += 1
                        first = rows + at if first is None else first
                rows += int(stats["__rows"])
        if rows == 0:
            raise InputError(f"input {self.source}: the table has no rows")
        return TableStats(rows=rows, empty_prompts=empties, first_empty=first)

    def _inspect_records(
        self, columns: list[str], renders_empty: Callable[[dict[str, Any]], bool] | None
    ) -> TableStats:
        """``inspect`` for NDJSON, on the values as parsed (they have no one polars type)."""
        rows, empties, first = 0, 0, None
        for records in file_records(self.paths, self.block_bytes):
            for at, record in enumerate(records):
                if not any(value_maybe_empty(record.get(c)) for c in columns):
                    continue
                row = {c: record.get(c) for c in columns}
                if renders_empty is None or renders_empty_at(renders_empty, row, rows + at):
                    empties += 1
                    first = rows + at if first is None else first
            rows += len(records)
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

    def count_rows(self) -> int | None:
        """The row count, when the files' metadata says it (Parquet); a text table: None."""
        if self.kind != "parquet":
            return None
        with input_errors(self.source):
            return int(self.frame.select(pl.len()).collect().item())

    def read(self, first: int, rows: int) -> pl.DataFrame:
        """Rows ``first..first+rows-1`` of a Parquet table."""
        with input_errors(self.source):
            return self.frame.slice(first, rows).collect()

    def _text_frames(self) -> Iterator[pl.DataFrame]:
        """A text table block by block (see ``blocks``): NDJSON record by record (``jsonl``), CSV/TSV
        parsed as text, then given the types ``[input] schema`` asks for (``csvtext``)."""
        if self.kind == "ndjson":
            for records in file_records(self.paths, self.block_bytes):
                yield object_frame(records, self.columns)
            return
        for path in self.paths:
            yield from self.csv.frames(path, self.block_bytes)

    def batches(self, size: int) -> Iterator[list[dict[str, Any]]]:
        """Rows as dicts, ``size`` at a time, in input order."""
        for frame in self.frames(size):
            yield frame.to_dicts()


def _listing(schema: pl.Schema) -> str:
    names = schema.names()
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
