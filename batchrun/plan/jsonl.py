"""NDJSON (JSON Lines) tables: records read a block at a time, each value keeping its own JSON type.

``1`` stays an int, ``1.0`` a float, nested objects and arrays Python dicts and lists, whatever the other
records hold, so that no record changes how another is sent (``records.json_records``). Frames have
``pl.Object`` columns holding those values. The columns are the keys of the first ``INFER_ROWS``
records of the first file, in the order first seen; a key that a record lacks is null, and a key that
first appears later is not a column. ``plain`` gives such columns one polars type for writing out.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import polars as pl

from ..errors import InputError
from .inputerrors import input_errors
from .records import BadRecord, Readable, blocks, json_records, open_records

INFER_ROWS = 10_000  # NDJSON: the records of the first file its columns are taken from

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some editors write first


def json_blocks(path: str, file: Readable, block_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """The records of ``path`` (open as ``file``) a block at a time; a bad one is named by its line."""
    line = 1
    for block in blocks(file, block_bytes, quoted=False):
        try:
            yield json_records(block[len(BOM) :] if line == 1 and block.startswith(BOM) else block)
        except BadRecord as exc:
            raise InputError(f"cannot read input {path}, line {line + exc.line}: {exc}") from None
        line += block.count(b"\n")


def ndjson_schema(path: str, block_bytes: int) -> pl.Schema:
    """The keys of the first ``INFER_ROWS`` records of the file at ``path``, each an object column."""
    names, seen = dict[str, None](), 0
    with input_errors(path), contextlib.closing(open_records(path)) as file:
        for records in json_blocks(path, file, block_bytes):
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


def file_records(paths: Sequence[str], block_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """An NDJSON table's records, a block at a time, file after file."""
    for path in paths:
        with input_errors(path), contextlib.closing(open_records(path)) as file:
            yield from json_blocks(path, file, block_bytes)


def object_frame(records: list[dict[str, Any]], columns: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        [pl.Series(name, [record.get(name) for record in records], dtype=pl.Object) for name in columns]
    )


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
