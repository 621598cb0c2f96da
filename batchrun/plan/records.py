"""A text table's bytes as blocks of whole records, decompressed on the way when the file is gzip
or zstd, so that a compressed table is read in the same flat memory as a plain one. No polars here."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class _Decompressing:
    """A decompressing stream over ``file`` whose errors (a truncated or damaged file) read as
    ``OSError``, as a plain file's do, so they are reported like any other unreadable input."""

    def __init__(self, stream: Any, file: BinaryIO, errors: tuple[type[BaseException], ...]) -> None:
        self.stream, self.file, self.errors = stream, file, errors

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self.stream.read(size)
        except self.errors as exc:
            raise OSError(f"damaged compressed data ({exc})") from None
        return data

    def close(self) -> None:
        self.stream.close()
        self.file.close()  # GzipFile(fileobj=) leaves it open


def open_records(path: str | Path) -> Readable:
    """``path`` opened for reading its bytes: decompressed as they are read when the file starts
    with gzip's or zstd's magic number (whatever its name says), as they are otherwise."""
    file = open(path, "rb")  # noqa: SIM115 (returned open; the caller closes it)
    magic = file.read(4)
    file.seek(0)
    if magic.startswith(GZIP_MAGIC):
        return _Decompressing(gzip.GzipFile(fileobj=file), file, (EOFError, zlib.error, gzip.BadGzipFile))
    if magic == ZSTD_MAGIC:
        import zstandard  # only for zstd inputs

        # read_across_frames: a file may hold several frames (``pzstd`` writes one per block)
        stream = zstandard.ZstdDecompressor().stream_reader(file, read_across_frames=True)
        return _Decompressing(stream, file, (zstandard.ZstdError, EOFError))
    return file


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


def first_record_end(data: bytes, start: int = 0) -> int:
    """Where the first record of CSV ``data`` from ``start`` ends (just past its newline), or ``len(data)``."""
    quotes = 0
    while (newline := data.find(b"\n", start)) >= 0:
        quotes += data.count(b'"', start, newline)
        if quotes % 2 == 0:
            return newline + 1
        start = newline + 1
    return len(data)


def record_ends(data: bytes, *, quoted: bool) -> list[int]:
    """The end of every record of ``data``, in order (for finding the line of a bad record)."""
    ends: list[int] = []
    start = 0
    while start < len(data):
        if quoted:
            start = first_record_end(data, start)
        else:
            newline = data.find(b"\n", start)
            start = len(data) if newline < 0 else newline + 1
        ends.append(start)
    return ends


def blocks(file: Readable, size: int, *, quoted: bool) -> Iterator[bytes]:
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


class BadRecord(ValueError):
    """A line of a JSON Lines table that is not one JSON object; ``line`` counts from 0 in its block."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) < len(pairs):
        names = [key for key, _ in pairs]
        twice = next(key for at, key in enumerate(names) if key in names[:at])
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return record


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is beyond the range of a float")
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# Python's own decoder: integers of any size stay exact (orjson makes a float of one beyond 64 bits),
# and its hooks refuse a duplicate key, NaN/Infinity and a float that overflows, which would
# otherwise be sent changed (the last key wins) or as invalid JSON.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=_finite, parse_constant=_not_json)
_BLANK = " \t\r"  # JSON's whitespace, besides the newline that ends a record


def json_records(data: bytes) -> list[dict[str, Any]]:
    """The records of a block of JSON Lines, each a dict of values exactly as JSON gives them (int,
    float, str, bool, None, list, dict), independent of every other record. Blank lines are
    skipped; a line that is not one JSON object raises ``BadRecord`` naming it."""
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        at = data.count(b"\n", 0, exc.start)
        raise BadRecord(at, "bytes that are not UTF-8 (is the file saved as UTF-8?)") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.split("\n")):
        start = 0
        if not line.startswith("{"):
            start = len(line) - len(line.lstrip(_BLANK))
            if start == len(line):
                continue
        try:
            value, end = _DECODER.raw_decode(line, start)
        except json.JSONDecodeError as exc:
            raise BadRecord(number, f"not JSON: {exc.msg} (column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:
            raise BadRecord(number, str(exc)) from None
        if end < len(line) and (rest := line[end:].lstrip(_BLANK)).rstrip(_BLANK):
            column = len(line) - len(rest) + 1
            raise BadRecord(number, f"more after the record at column {column}: {_excerpt(rest)}")
        if type(value) is not dict:
            raise BadRecord(number, f"a record is a JSON object, not {_KINDS.get(type(value), 'a number')}")
        records.append(value)
    return records


_KINDS = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}


def _excerpt(text: str, width: int = 20) -> str:
    text = text.strip()
    return repr(text if len(text) <= width else text[:width] + "...")
