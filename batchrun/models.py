"""Plain values that flow between the stages: planned requests and their results."""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

Status = Literal["ok", "failed"]


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request to send, already rendered and keyed; never holds credentials."""

    key: str
    row_id: str | None
    row_index: int
    sample: int
    method: str
    url: str
    body: bytes
    model: str | None  # as sent: the body's own model, or the job's rendered for this row
    seed: int | None = None
    # why it is not sent, found while planning (mid-run): the row fails for good, with this message
    refused: str | None = None
    endpoint: str | None = None  # its endpoint's name, when the job has several


def estimated_tokens(body: bytes, completion_cap: int) -> float:
    """What one request is charged against ``tokens_per_minute``: its body's bytes / 4 (about four
    bytes a token in English text) plus the most tokens the answer may take."""
    return len(body) / 4 + completion_cap


@dataclass(frozen=True, slots=True)
class Parsed:
    """What an adapter read out of a successful response."""

    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    raw: str | None = None
    ttft_ms: float | None = None
    image: bytes | None = None  # dropped once the image is on disk
    mime_type: str | None = None
    width: int | None = None
    height: int | None = None
    image_path: str | None = None  # relative to the output folder
    image_sha256: str | None = None
    image_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """The final outcome of all attempts at one request."""

    request: Request
    status: Status
    attempts: int
    started_at: float  # unix seconds
    finished_at: float
    latency_ms: float | None = None
    parsed: Parsed | None = None
    error_kind: str | None = None
    http_status: int | None = None
    error: str | None = None
    cost_usd: float | None = None  # from the endpoint's price (batchrun/cost.py)
    cost_estimated: bool | None = None  # the server reported no usage: priced from an estimate


SHORT_KEY_HEX = 16  # hex digits of a request key in its short form: 64 bits


def short_key(key: str) -> int:
    """The first 64 bits of a request key: enough to tell a million done keys apart (a collision
    is about 1 in 10^7 at 10^6 keys), at a third of the memory of the hex strings."""
    return int(key[:SHORT_KEY_HEX], 16)


def short_keys(keys: pl.Expr) -> pl.Expr:
    """``short_key`` over a column of request keys (null stays null), as UInt64."""
    import polars as pl  # only the callers that read columns have it loaded

    return keys.str.slice(0, SHORT_KEY_HEX).str.to_integer(base=16, dtype=pl.UInt64)


@dataclass(slots=True)
class DoneKeys:
    """Keys not to send again (as ``short_key``s): ``ok`` ones, and permanent failures unless
    retried on purpose. The ok keys read from a manifest are kept apart, as one sorted array of
    64-bit ints (8 bytes a key; a set of ints costs ~60), searched by bisection."""

    ok: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    read: array[int] = field(default_factory=lambda: array("Q"))

    @classmethod
    def of(cls, ok: Iterable[str] = (), failed: Iterable[str] = ()) -> DoneKeys:
        return cls({short_key(k) for k in ok}, {short_key(k) for k in failed})

    def add_read(self, shorts: pl.Series) -> None:
        """Add many ok keys at once: a UInt64 column, as read from the manifest (may repeat)."""
        import numpy as np  # sorts, without polars' hash table: less memory at a million keys

        values = shorts.to_numpy()
        if self.read:
            values = np.concatenate([values, np.frombuffer(self.read, dtype=np.uint64)])
        merged = array("Q")
        merged.frombytes(sorted_unique(values).tobytes())
        self.read = merged

    def __contains__(self, key: object) -> bool:
        if key in self.ok or key in self.failed:
            return True
        read = self.read
        if not read or not isinstance(key, int):
            return False
        at = bisect.bisect_left(read, key)
        return at < len(read) and read[at] == key

    def __len__(self) -> int:
        return len(self.ok) + len(self.failed) + len(self.read)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by a sort and a mask: 0.6 s for 9M keys, where ``np.unique`` took 9.8 s."""
    import numpy as np

    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]
