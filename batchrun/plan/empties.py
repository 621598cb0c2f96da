"""Which rows may have an empty prompt: a value that may make a prompt render empty (null, blank text,
false, zero, an empty list), so that only those rows are rendered to find out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import TemplateError

if TYPE_CHECKING:
    from polars._typing import PolarsDataType


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


def renders_empty_at(renders_empty: Callable[[dict[str, Any]], bool], row: dict[str, Any], index: int) -> bool:
    """``renders_empty(row)``, a template error naming the row at ``index``."""
    try:
        return renders_empty(row)
    except TemplateError as exc:
        raise TemplateError(f"{exc} (row {index})") from None
