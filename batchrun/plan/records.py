"""A text table's bytes as blocks of whole records, decompressed on the way when the file is gzip
or zstd, so that a compressed table is read in the same flat memory as a plain one. No polars here."""

from __future__ import annotations

import gzip
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
