"""Polars and file-system errors translated, once, into the one-line ``InputError`` a user sees."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import polars as pl

from ..errors import InputError
from .records import BadRecord


class BadValue(ValueError):
    """A cell that does not fit the type ``[input] schema`` gives its column."""


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
