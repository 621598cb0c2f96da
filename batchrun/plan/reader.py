"""The input table, read in bounded pieces so that memory stays flat in input size.

Parquet is read slice by slice through a lazy scan. CSV, TSV and NDJSON are read in 1 MiB blocks
(``records.blocks``, decompressed on the way for gzip and zstd), each cut at the end of a record and
parsed by polars. Polars' own streaming CSV source reads ahead of use by an amount that grows with the
file (RssAnon 350 MiB at 10M short rows, against 50 MiB by blocks; no option of ``scan_csv``,
``collect_batches`` or ``pl.Config`` bounds it), and its NDJSON source maps the whole file (RSS 933 MiB).

CSV and TSV cells are text exactly as written (``007`` stays ``007``, ``1.10`` stays ``1.10``) unless
``[input] schema`` gives a column a type: a type inferred from the first rows would change how every
earlier row is sent when a later row does not fit it. An empty unquoted cell is null (missing), a
quoted ``""`` the empty string. Parquet keeps its own types.

NDJSON keeps each value's own JSON type, record by record (``records.json_records``): ``1`` stays an
int, ``1.0`` a float, nested objects and arrays Python dicts and lists, whatever the other records
hold, so that no record changes how another is sent. Its frames have ``pl.Object`` columns holding
those values. The columns are the keys of the first ``INFER_ROWS`` records of the first file, in the
order first seen (the template columns are checked against them before the whole table is read); a
key that a record lacks is null, and a key that first appears later is not a column.

Polars errors are translated here, once, into ``InputError`` naming the file (and the line, for a
bad record of a text table).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import InputError, TemplateError
from .records import (
    BadRecord,
    Readable,
    blocks,
    first_record_end,
    json_records,
    last_record_end,
    open_records,
    record_ends,
)
from .sources import FORMATS, input_files, is_glob, table_kind

if TYPE_CHECKING:  # the reader is also used without a job (bench/reader.py): no pydantic for it
    from polars._typing import PolarsDataType

    from ..spec.job import InputOptions

__all__ = ["FORMATS", "Table", "blocks", "first_record_end", "input_files", "last_record_end", "rechunk"]

BLOCK_BYTES = 1 << 20
"""Bytes read and parsed at a time from a text table (about 16,000 short prompts). Larger blocks
read no faster and hold more: peak RssAnon at 10M short rows is 50 MiB with 1 MiB blocks, 64 with 2,
88 with 4 (bench/reader.py --block-bytes)."""

INFER_ROWS = 10_000  # NDJSON: the records of the first file its columns are taken from

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some editors write first


#: ``[input] schema`` types, and how a text cell becomes one (a cell that does not fit is an error)
TYPES: dict[str, tuple[pl.DataType, Callable[[pl.Expr], pl.Expr]]] = {
    "str": (pl.String(), lambda e: e),
    "int": (pl.Int64(), lambda e: e.cast(pl.Int64, strict=False)),
    "float": (pl.Float64(), lambda e: e.cast(pl.Float64, strict=False)),
    "bool": (
        pl.Boolean(),
        lambda e: e.str.to_lowercase().replace_strict(
            {"true": True, "false": False}, default=None, return_dtype=pl.Boolean
        ),
    ),
    "date": (pl.Date(), lambda e: e.str.to_date("%Y-%m-%d", strict=False)),
}


class BadValue(ValueError):
    """A cell that does not fit the type ``[input] schema`` gives its column."""


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


def reason_of(exc: BaseException) -> str:
    """The first line of an error from polars or the file system, as the one line a user sees."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    if "utf-8" in reason or "utf8" in reason:
        reason += " (is the file saved as UTF-8?)"
    return reason


@contextlib.contextmanager
def input_errors(source: str) -> Iterator[None]:
    try:
        yield
    except (pl.exceptions.PolarsError, OSError, BadValue, BadRecord) as exc:
        raise InputError(f"cannot read input {source}: {reason_of(exc)}") from None


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


def value_maybe_empty(value: Any) -> bool:
    """``maybe_empty`` for one value as JSON gives it."""
    if value is None or value is False or value == 0:  # 0.0 too; True == 1 is not 0
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return not value or any(value_maybe_empty(v) for v in value)
    if isinstance(value, dict):
        return not value or any(value_maybe_empty(v) for v in value.values())
    return False


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
                read = self._ndjson_schema()
            else:
                read = self._same_columns({path: self._csv_header(path)[1] for path in self.paths})
        unknown = sorted(set(schema) - set(read))
        if unknown:
            raise InputError(
                f"input {source}: [input] schema names column {unknown[0]!r}, which the table does not have "
                f"(columns: {', '.join(read)})"
            )
        self.read_schema = read  # as parsed: CSV/TSV all text
        self.casts = {name: TYPES[type_name] for name, type_name in schema.items() if type_name != "str"}
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

    def _csv_header(self, path: str) -> tuple[bytes, pl.Schema]:
        """A CSV/TSV file's header line, and its columns as text."""
        with contextlib.closing(open_records(path)) as file:
            first = next(blocks(file, 1 << 16, quoted=True), b"")
        header = first[: first_record_end(first)]
        if not header.strip():
            raise InputError(f"cannot read input {path}: the file is empty (a CSV table starts with its header line)")
        columns = pl.read_csv(header, separator=self.separator, infer_schema=False, n_rows=0).columns
        return header, pl.Schema(dict.fromkeys(columns, pl.String()))

    def _ndjson_schema(self) -> pl.Schema:
        """The keys of the first ``INFER_ROWS`` records of the first file, each an object column."""
        path, names, seen = self.paths[0], dict[str, None](), 0
        with input_errors(path), contextlib.closing(open_records(path)) as file:
            for records in self._json_blocks(path, file):
                for record in records[: INFER_ROWS - seen]:
                    names.update(dict.fromkeys(record))
                seen += len(records)
                if seen >= INFER_ROWS:
                    break
        if not seen:
            raise InputError(f"cannot read input {path}: the file is empty")
        if not names:
            raise InputError(f"cannot read input {path}: its first records have no keys (no columns)")
        return pl.Schema(dict.fromkeys(names, pl.Object()))

    def _json_blocks(self, path: str, file: Readable) -> Iterator[list[dict[str, Any]]]:
        """The records of ``path`` (open as ``file``) a block at a time; a bad one is named by its line."""
        line = 1
        for block in blocks(file, self.block_bytes, quoted=False):
            try:
                yield json_records(block[len(BOM) :] if line == 1 and block.startswith(BOM) else block)
            except BadRecord as exc:
                raise InputError(f"cannot read input {path}, line {line + exc.line}: {exc}") from None
            line += block.count(b"\n")

    def _records(self) -> Iterator[list[dict[str, Any]]]:
        """An NDJSON table's records, a block at a time, file after file."""
        for path in self.paths:
            with input_errors(path), contextlib.closing(open_records(path)) as file:
                yield from self._json_blocks(path, file)

    def _object_frame(self, records: list[dict[str, Any]]) -> pl.DataFrame:
        return pl.DataFrame(
            [pl.Series(name, [record.get(name) for record in records], dtype=pl.Object) for name in self.columns]
        )

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
                    if renders_empty is None or _renders_empty(renders_empty, row, rows + at):
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
        for records in self._records():
            for at, record in enumerate(records):
                if not any(value_maybe_empty(record.get(c)) for c in columns):
                    continue
                row = {c: record.get(c) for c in columns}
                if renders_empty is None or _renders_empty(renders_empty, row, rows + at):
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

    def _text_frames(self) -> Iterator[pl.DataFrame]:
        """A text table block by block (see ``blocks``): NDJSON record by record, CSV/TSV parsed as
        text, then given the types ``[input] schema`` asks for. A CSV
        block is parsed behind its file's header line, so that polars reads it as it reads a whole
        file (a first line with fewer fields, say, means the same to it). A block that fails is
        parsed again a part at a time to find the line of the first bad record."""
        if self.kind == "ndjson":
            for records in self._records():
                yield self._object_frame(records)
            return
        for path in self.paths:
            with input_errors(path), contextlib.closing(open_records(path)) as file:
                header, line = b"", 1
                for block in blocks(file, self.block_bytes, quoted=True):
                    body = block
                    if not header:
                        header = block[: first_record_end(block)]
                        body, line = block[len(header) :], 1 + header.count(b"\n")
                    try:
                        yield self._parse(header + body)
                    except (pl.exceptions.PolarsError, BadValue) as exc:
                        raise self._locate(path, header, body, line, exc) from None
                    line += body.count(b"\n")

    def _parse(self, data: bytes) -> pl.DataFrame:
        frame = pl.read_csv(data, separator=self.separator, schema=self.read_schema)
        if not self.casts:
            return frame
        typed = frame.with_columns(convert(pl.col(name)).alias(name) for name, (_, convert) in self.casts.items())
        for name, (dtype, _) in self.casts.items():
            bad = frame[name].is_not_null() & typed[name].is_null()
            if bad.any():
                value = frame[name].filter(bad)[0]
                raise BadValue(f"column {name!r} is declared {_type_name(dtype)} in [input] schema: {value!r} is not")
        return typed

    def _locate(
        self,
        path: str,
        header: bytes,
        body: bytes,
        line: int,
        exc: Exception,
    ) -> InputError:
        """The error for a block of ``path`` that failed to parse, naming the line (``body`` starts on
        line ``line``) of its first bad record: the shortest run of records from the block's start
        that fails ends with it (bisection: ~14 parses of a 1 MiB block, only when a block fails)."""
        ends = record_ends(body, quoted=True)
        low, high, error = 0, len(ends), exc
        while low < high:
            middle = (low + high) // 2
            try:
                self._parse(header + body[: ends[middle]])
            except (pl.exceptions.PolarsError, BadValue) as failed:
                high, error = middle, failed
            else:
                low = middle + 1
        if low == len(ends):  # no part fails alone (it should not happen): name the file only
            return InputError(f"cannot read input {path}: {reason_of(exc)}")
        bad_line = line + body.count(b"\n", 0, ends[low - 1] if low else 0)
        return InputError(f"cannot read input {path}, line {bad_line}: {reason_of(error)}")

    def batches(self, size: int) -> Iterator[list[dict[str, Any]]]:
        """Rows as dicts, ``size`` at a time, in input order."""
        for frame in self.frames(size):
            yield frame.to_dicts()


def plain(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its object columns (NDJSON values) given one polars type each, for writing
    out: the type polars gives the values if it holds each of them as it is (ints and floats
    make floats), or else JSON text (strings as they are)."""
    objects = [name for name, dtype in frame.schema.items() if dtype == pl.Object]
    return frame.with_columns(_typed(frame[name]) for name in objects) if objects else frame


def _typed(column: pl.Series) -> pl.Series:
    values = column.to_list()
    with contextlib.suppress(pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
        typed = pl.Series(column.name, values, strict=False)
        if all(_same(a, b) for a, b in zip(values, typed.to_list(), strict=True)):
            return typed
    text = [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values]
    return pl.Series(column.name, text, dtype=pl.String)


def _same(value: Any, held: Any) -> bool:
    return bool(value == held) and (type(value) is bool) == (type(held) is bool)  # True == 1 in Python


def _listing(schema: pl.Schema) -> str:
    names = schema.names()
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")


def _type_name(dtype: pl.DataType) -> str:
    return next(name for name, (known, _) in TYPES.items() if known == dtype)
