"""Which files an input names (a file, a glob or a folder) and what kind of table they hold. No polars
here: the plan index fingerprints the same list of files that the reader reads."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "ndjson",
    ".ndjson": "ndjson",
}
#: what ``[input] format`` may say, and the kind each means
FORMAT_NAMES = {
    "csv": "csv",
    "tsv": "tsv",
    "parquet": "parquet",
    "jsonl": "ndjson",
    "ndjson": "ndjson",
    "openai-batch": "ndjson",  # JSON Lines whose lines are Batch API requests (plan/batchfile.py)
}
#: text tables may be compressed (the reader goes by the file's magic number, not its name)
COMPRESSED = (".gz", ".zst", ".zstd")


def is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


def input_files(source: str) -> list[str]:
    """The files an input names, in the order they are read: a glob as the shell expands it, with
    ``**`` for any depth (polars' own expansion also takes hidden files); a folder's own files, less
    those whose names start with ``.`` or ``_`` (``.DS_Store``, Spark's ``_SUCCESS``), not its
    subfolders; one path as it is."""
    if is_glob(source):
        return sorted(glob.glob(source, recursive=True))
    folder = Path(source)
    if folder.is_dir():
        return sorted(str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    return [source]


def suffix_of(name: str) -> str:
    """The suffix that tells a table's kind, with its compression: ``.csv``, ``.jsonl.zst``."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSED:
        return suffixes[-2] + suffixes[-1]
    return suffixes[-1] if suffixes else ""


def kind_of(name: str) -> str | None:
    """The kind of table a file name says, or None (Parquet is never compressed as a whole file)."""
    suffix = suffix_of(name)
    base, _, compressed = suffix.partition(".")[2].partition(".")
    kind = FORMATS.get("." + base)
    return None if kind == "parquet" and compressed else kind


def table_kind(source: str, paths: Sequence[str], format: str | None) -> str:
    """The kind of table an input holds: ``[input] format`` if given, else the name's suffix, else
    (a folder, or a glob such as ``data/*``) the one kind all its files share."""
    if format is not None:
        return FORMAT_NAMES[format]
    named = kind_of(source)
    if named is not None:
        return named
    known = ", ".join(sorted(FORMATS)) + ", also .gz/.zst; or set [input] format"
    suffixes = sorted({suffix_of(p) or "(none)" for p in paths})
    if not (Path(source).is_dir() or is_glob(source)):
        raise InputError(f"input {source}: unknown file type {suffixes[0]!r} (known: {known})")
    kinds = {kind_of(p) for p in paths}
    if kinds == {None}:
        raise InputError(f"input {source}: unknown file type {', '.join(suffixes)} (known: {known})")
    if len(kinds) == 1:
        return kinds.pop()  # type: ignore[return-value]
    what = "is a directory with files" if Path(source).is_dir() else "matches files"
    first = next(s for s in suffixes if kind_of("x" + s))
    hint = str(Path(source) / f"*{first}") if Path(source).is_dir() else f"a pattern that ends in {first}"
    raise InputError(f"input {source} {what} of several kinds ({', '.join(suffixes)}): use {hint}")
