"""CSV and TSV tables as text: a file's header, a block parsed with every cell as text and then given
the types ``[input] schema`` asks for, and the line of the first bad record of a block that fails.

Cells are text exactly as written (``007`` stays ``007``, ``1.10`` stays ``1.10``) unless ``[input]
schema`` gives a column a type: a type inferred from the first rows would change how every earlier row
is sent when a later row does not fit it. An empty unquoted cell is null (missing), a quoted ``""``
the empty string.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl

from ..errors import InputError
from .inputerrors import BadValue, input_errors, reason_of
from .records import blocks, first_record_end, open_records, record_ends

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


def csv_header(path: str, separator: str) -> tuple[bytes, pl.Schema]:
    """A CSV/TSV file's header line, and its columns as text."""
    with contextlib.closing(open_records(path)) as file:
        first = next(blocks(file, 1 << 16, quoted=True), b"")
    header = first[: first_record_end(first)]
    if not header.strip():
        raise InputError(f"cannot read input {path}: the file is empty (a CSV table starts with its header line)")
    columns = pl.read_csv(header, separator=separator, infer_schema=False, n_rows=0).columns
    return header, pl.Schema(dict.fromkeys(columns, pl.String()))


@dataclass(frozen=True, slots=True)
class CsvText:
    """How the blocks of a CSV/TSV table are parsed: its ``separator``, its columns as text
    (``read_schema``) and the ``casts`` of the columns ``[input] schema`` types."""

    separator: str
    read_schema: pl.Schema
    casts: dict[str, tuple[pl.DataType, Callable[[pl.Expr], pl.Expr]]]

    def frames(self, path: str, block_bytes: int) -> Iterator[pl.DataFrame]:
        """The file at ``path`` block by block (see ``records.blocks``). A block is parsed behind its
        file's header line, so that polars reads it as it reads a whole file (a first line with fewer
        fields, say, means the same to it). A block that fails is parsed again a part at a time to
        find the line of the first bad record."""
        with input_errors(path), contextlib.closing(open_records(path)) as file:
            header, line = b"", 1
            for block in blocks(file, block_bytes, quoted=True):
                body = block
                if not header:
                    header = block[: first_record_end(block)]
                    body, line = block[len(header) :], 1 + header.count(b"\n")
                try:
                    yield self.parse(header + body)
                except (pl.exceptions.PolarsError, BadValue) as exc:
                    raise self.locate(path, header, body, line, exc) from None
                line += body.count(b"\n")

    def parse(self, data: bytes) -> pl.DataFrame:
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

    def locate(
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
                self.parse(header + body[: ends[middle]])
            except (pl.exceptions.PolarsError, BadValue) as failed:
                high, error = middle, failed
            else:
                low = middle + 1
        if low == len(ends):  # no part fails alone (it should not happen): name the file only
            return InputError(f"cannot read input {path}: {reason_of(exc)}")
        bad_line = line + body.count(b"\n", 0, ends[low - 1] if low else 0)
        return InputError(f"cannot read input {path}, line {bad_line}: {reason_of(error)}")


def _type_name(dtype: pl.DataType) -> str:
    return next(name for name, (known, _) in TYPES.items() if known == dtype)
