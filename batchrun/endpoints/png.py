"""A whole-PNG check without the pixels: what a full decode would find wrong, at a fraction of its cost.

Pillow's ``load()`` inflates the image data, then unfilters and converts every pixel; the last two
cannot fail on data that inflated whole. ``check_png`` walks every chunk and checks its CRC, inflates
the whole zlib stream (its Adler-32 included, output discarded as it comes), checks that it holds
exactly the rows the header promises, each starting with a valid filter type, and that ``IEND``
closes the file. The rows of an interlaced image come in seven passes: for those it checks all but
the rows, and says so, and the caller decodes them too. (A full decode alone is not enough: Pillow
stops reading at the last pixel, so it accepts a file cut after that, without its IEND.)
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
MAX_FILTER = 4  # None, Sub, Up, Average, Paeth
OUTPUT_STEP = 1 << 20  # inflate at most this much at a time: memory stays bounded whatever the claim
_CHUNK_HEAD = struct.Struct(">I4s")


class PngError(ValueError):
    """The bytes are not a whole, valid PNG."""


def check_png(data: bytes) -> bool:
    """Raise ``PngError`` unless ``data`` is a whole PNG; return whether its rows were checked
    (not for an interlaced image: decode that one too)."""
    if not data.startswith(SIGNATURE):
        raise PngError("no PNG signature")
    view, end_of_data = memoryview(data), len(data)
    pos, colour, seen_palette = len(SIGNATURE), None, False
    rows = Rows()
    while True:
        if pos + 12 > end_of_data:
            raise PngError("truncated PNG file (no IEND)")
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        body_end = pos + 8 + length
        if body_end + 4 > end_of_data:
            raise PngError(f"truncated PNG file (in a {kind!r} chunk)")
        if zlib.crc32(view[pos + 4 : body_end]) != int.from_bytes(view[body_end : body_end + 4], "big"):
            raise PngError(f"broken PNG file (bad checksum in a {kind!r} chunk)")
        body = view[pos + 8 : body_end]
        if colour is None:
            if kind != b"IHDR":
                raise PngError("the first chunk is not IHDR")
            colour = rows.start(body)
        elif kind == b"PLTE":
            seen_palette = True
        elif kind == b"IDAT":
            if colour == 3 and not seen_palette:
                raise PngError("a palette image without PLTE before its data")
            rows.feed(body)
        elif kind == b"IEND":
            rows.finish()
            return rows.stride > 0
        pos = body_end + 4


class Rows:
    """Inflates IDAT data as it comes and checks each row's filter byte; keeps no pixels."""

    def __init__(self) -> None:
        self.inflate = zlib.decompressobj()
        self.expected = self.got = 0
        self.stride = 0  # 0: the layout of the rows is not checked (interlaced)

    def start(self, ihdr: memoryview) -> int:
        """Read the header; return the colour type."""
        if len(ihdr) != 13:
            raise PngError("bad IHDR length")
        width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", ihdr)
        if not (width and height) or depth not in BIT_DEPTHS.get(colour, ()) or compression or filtering:
            raise PngError(f"bad IHDR: {width}x{height}, depth {depth}, colour type {colour}")
        if interlace > 1:
            raise PngError(f"unknown interlace method {interlace}")
        if not interlace:
            self.stride = 1 + (width * CHANNELS[colour] * depth + 7) // 8
            self.expected = height * self.stride
        return int(colour)

    def feed(self, data: memoryview | bytes) -> None:
        while True:
            try:
                out = self.inflate.decompress(data, OUTPUT_STEP)
            except zlib.error as exc:
                raise PngError(f"broken image data ({exc})") from None
            if self.stride:
                self.rows(out)
            data = self.inflate.unconsumed_tail
            if not data and len(out) < OUTPUT_STEP:  # all in, and nothing held back
                break
        if self.inflate.unused_data:
            raise PngError("data after the end of the zlib stream")

    def rows(self, out: bytes) -> None:
        first = -self.got % self.stride  # where the next row's filter byte falls in ``out``
        self.got += len(out)
        if self.got > self.expected:
            raise PngError("more image data than the header promises")
        filters = out[first :: self.stride]
        if filters and max(filters) > MAX_FILTER:
            raise PngError("a row with an unknown filter type")

    def finish(self) -> None:
        if not self.inflate.eof:
            raise PngError("the image data ends before its zlib stream does")
        if self.stride and self.got != self.expected:
            raise PngError(f"image data for {self.got} bytes of rows, not {self.expected}")
