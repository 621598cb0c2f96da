"""The text reader: CSV, TSV and NDJSON read in small byte blocks give exactly the table polars reads
from the whole file (same rows; CSV/TSV cells as text, NDJSON with its types), plain or compressed,
and bad input still fails in ``inspect``, naming the file and the line."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from batchrun.errors import InputError
from batchrun.plan.reader import Table, blocks, first_record_end, last_record_end, rechunk
from batchrun.spec import InputOptions

TRICKY = st.text(alphabet=st.sampled_from(['"', ",", "\n", "\r", "\t", " ", "a", "1", "é", "€", ";"]), max_size=12)
NAMES = st.sampled_from(["q", "a,b", 'say "hi"', "two\nlines", "tab\there", "x y"])


@st.composite
def tables(draw: st.DrawFn) -> pl.DataFrame:
    rows = draw(st.integers(1, 40))
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    columns: dict[str, pl.Series] = {"id": pl.Series(range(rows), dtype=pl.Int64)}
    for name in names:
        values = draw(st.lists(st.none() | TRICKY, min_size=rows, max_size=rows))
        columns[name] = pl.Series(values, dtype=pl.String)
    return pl.DataFrame(columns)


def read_blocks(path: Path, block_bytes: int, size: int, options: InputOptions | None = None) -> pl.DataFrame:
    frames = list(Table(str(path), options, block_bytes=block_bytes).frames(size))
    assert all(f.height == size for f in frames[:-1])
    return pl.concat(frames)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    table=tables(),
    separator=st.sampled_from([",", "\t", ";"]),
    terminator=st.sampled_from(["\n", "\r\n"]),
    quote_style=st.sampled_from(["necessary", "always"]),
    block_bytes=st.integers(1, 64),
    size=st.integers(1, 7),
)
def test_csv_blocks_read_as_the_whole_file(
    tmp_path: Path,
    table: pl.DataFrame,
    separator: str,
    terminator: str,
    quote_style: Literal["necessary", "always"],
    block_bytes: int,
    size: int,
) -> None:
    path = tmp_path / ("t.tsv" if separator == "\t" else "t.csv")
    options = InputOptions(separator=";") if separator == ";" else None
    table.write_csv(path, separator=separator, line_terminator=terminator, quote_style=quote_style)
    whole = pl.scan_csv(path, separator=separator, infer_schema=False).collect()
    assert_frame_equal(read_blocks(path, block_bytes, size, options), whole)
    stats = Table(str(path), options, block_bytes=block_bytes).inspect([table.columns[-1]])
    assert stats.rows == whole.height


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=tables(), block_bytes=st.integers(1, 64), size=st.integers(1, 7))
def test_ndjson_blocks_read_as_the_whole_file(tmp_path: Path, table: pl.DataFrame, block_bytes: int, size: int) -> None:
    path = tmp_path / "t.jsonl"
    table.write_ndjson(path)
    whole = [json.loads(line) for line in path.read_text().splitlines()]
    assert read_blocks(path, block_bytes, size).to_dicts() == whole


@given(data=st.binary(max_size=200) | TRICKY.map(str.encode), size=st.integers(1, 16))
def test_blocks_are_whole_records_in_order(data: bytes, size: int) -> None:
    pieces = list(blocks(io.BytesIO(data), size, quoted=True))
    assert b"".join(pieces) == data
    for piece in pieces[:-1]:
        assert piece.endswith(b"\n") and piece.count(b'"') % 2 == 0
        assert last_record_end(piece, quoted=True) == len(piece)


def test_record_ends() -> None:
    data = b'a,"x\ny"\nb,"say ""hi"""\r\nc,"open\n'
    assert first_record_end(data) == len(b'a,"x\ny"\n')
    assert last_record_end(data, quoted=True) == len(b'a,"x\ny"\nb,"say ""hi"""\r\n')
    assert last_record_end(data, quoted=False) == len(data)
    assert last_record_end(b'"no end\n', quoted=True) == 0
    assert first_record_end(b"header only") == len(b"header only")


def test_rechunk() -> None:
    frames = [pl.DataFrame({"a": list(range(n))}) for n in (3, 0, 5, 1)]
    assert [f.height for f in rechunk(frames, 4)] == [4, 4, 1]
    assert pl.concat(list(rechunk(frames, 4)))["a"].to_list() == [0, 1, 2, 0, 1, 2, 3, 4, 0]


def test_csv_cells_are_text_as_written_unless_the_schema_gives_a_type(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,x,q,flag,day\n" + b"007,1.10,a b ,TRUE,2024-01-02\n" * 30_000 + b'x8,1e3,,false,""\n')
    table = Table(str(path), block_bytes=4096)
    assert table.schema == pl.Schema(dict.fromkeys(["id", "x", "q", "flag", "day"], pl.String))
    assert next(table.batches(1)) == [{"id": "007", "x": "1.10", "q": "a b ", "flag": "TRUE", "day": "2024-01-02"}]
    last = pl.concat(list(table.frames(2048))).row(-1, named=True)
    assert last == {"id": "x8", "x": "1e3", "q": None, "flag": "false", "day": ""}  # empty: null; "": empty text

    schema = {"id": "str", "x": "float", "flag": "bool"}
    typed = Table(str(path), InputOptions(schema=schema), block_bytes=4096)
    assert typed.schema == pl.Schema(
        {"id": pl.String, "x": pl.Float64, "q": pl.String, "flag": pl.Boolean, "day": pl.String}
    )
    rows = pl.concat(list(typed.frames(2048)))
    assert rows.row(0) == ("007", 1.1, "a b ", True, "2024-01-02") and rows.row(-1)[:4] == ("x8", 1000.0, None, False)
    assert rows.height == 30_001
    days = Table(str(path), InputOptions(schema={"day": "date"}), block_bytes=4096)
    with pytest.raises(InputError, match=rf"{path}, line 30002: column 'day' is declared date .*: '' is not"):
        days.inspect()


def test_inspect_counts_and_finds_the_first_empty_prompt_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    questions = [f"question {i}" if i not in (1234, 5000) else None for i in range(6000)]
    pl.DataFrame({"id": range(6000), "q": questions}).write_csv(path)
    stats = Table(str(path), block_bytes=1000).inspect(["q"])
    assert (stats.rows, stats.empty_prompts, stats.first_empty) == (6000, 2, 1234)


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b"7,a,extra\n", "found more fields than defined"),
        (b'7,"unclosed\n8,b\n', "could not parse"),
        ("7,caf\xe9\n".encode("latin-1"), "is the file saved as UTF-8?"),
        (b'7,ab"c\n8,"x\ny"\n', "could not parse"),  # a stray quote: polars refuses the whole file too
    ],
)
def test_bad_rows_far_from_the_start_fail_naming_the_line(tmp_path: Path, tail: bytes, expected: str) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,q\n" + b"".join(b"%d,question %d\n" % (i, i) for i in range(20_000)) + tail)
    table = Table(str(path), block_bytes=4096)
    with pytest.raises(InputError, match=f"cannot read input {path}, line 20002: ") as info:
        table.inspect(["q"])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_cell_that_does_not_fit_its_declared_type_names_file_line_and_value(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,q\n" + b"".join(b"%d,question %d\n" % (i, i) for i in range(20_000)) + b"seven,a\n")
    table = Table(str(path), InputOptions(schema={"id": "int"}), block_bytes=4096)
    with pytest.raises(InputError) as info:
        table.inspect(["q"])
    assert str(info.value) == (
        f"cannot read input {path}, line 20002: column 'id' is declared int in [input] schema: 'seven' is not"
    )


def test_a_broken_jsonl_record_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [b'{"id": %d, "q": "question %d"}' % (i, i) for i in range(20_000)]
    lines[15_000] = b'{"id": 15000, "q": "unterminated}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError, match=f"cannot read input {path}, line 15001: "):
        Table(str(path), block_bytes=4096).inspect(["q"])


def test_glob_of_several_files_reads_each_after_its_header(tmp_path: Path) -> None:
    for name, ids in (("b.csv", range(100, 150)), ("a.csv", range(50))):
        pl.DataFrame({"id": ids, "q": [f'"{i}", more' for i in ids]}).write_csv(tmp_path / name)
    source = str(tmp_path / "*.csv")
    got = pl.concat(list(Table(source, block_bytes=64).frames(16)))
    assert_frame_equal(got, pl.scan_csv(source, infer_schema=False).collect())
    assert got["id"].to_list() == [str(i) for i in [*range(50), *range(100, 150)]]


def test_a_byte_order_mark_is_read_as_polars_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfid,q\n" + b"".join(b"%d,x\n" % i for i in range(100)))
    got = pl.concat(list(Table(str(path), block_bytes=16).frames(10)))
    assert_frame_equal(got, pl.read_csv(path, infer_schema=False))
    assert got.columns == ["id", "q"]


@pytest.mark.parametrize("block_bytes", [1, 3, 8, 1 << 20])
def test_short_rows_and_blank_lines_read_as_polars_reads_them(tmp_path: Path, block_bytes: int) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,q,r\n1,a,b\n2\n\n3,c\n4,d,e\n\n5\n")
    got = pl.concat(list(Table(str(path), block_bytes=block_bytes).frames(2)))
    assert_frame_equal(got, pl.scan_csv(path, infer_schema=False).collect())
    assert got.height == 7


def test_a_double_star_glob_reads_every_depth_and_the_index_sees_each_file(tmp_path: Path) -> None:
    from batchrun.plan.reader import input_files

    for folder, ids in (("", [1]), ("x", [2]), ("x/y", [3])):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"id": ids}).write_csv(tmp_path / folder / f"t{ids[0]}.csv")
    source = str(tmp_path / "**" / "*.csv")
    table = Table(source)
    assert table.inspect().rows == 3
    assert sorted(pl.concat(list(table.frames(10)))["id"].to_list()) == ["1", "2", "3"]
    assert len(input_files(source)) == 3  # the files the plan index fingerprints, too
