"""Batch inputs read as records (modes/sources.py): what a table's header means is never a guess."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import forwardpass
from forwardpass.modes.sources import csv_items, jsonl_items, open_source, parquet_items


def test_a_table_naming_a_column_twice_is_one_bad_record_not_its_last_column_read(repository: Path, tmp_path: Path):
    """csv.DictReader and pyarrow's to_pylist keep the last of two same-named columns: a row scored on it, exit 0,
    while a reader of the file may well mean the first."""
    table = tmp_path / "twice.csv"
    table.write_text("a,b,a\n1,2,3\n4,5,6\n", encoding="utf-8")
    items = list(csv_items(table, "twice.csv"))
    assert [(item.name, item.raw) for item in items] == [("twice.csv", None)]
    assert items[0].error is not None and "names column 'a' twice" in str(items[0].error)

    columns = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0]), pa.array([3.0])], names=["a", "b", "a"])
    pq.write_table(columns, tmp_path / "twice.parquet")
    items = list(parquet_items(tmp_path / "twice.parquet", "twice.parquet"))
    assert [(item.name, item.raw) for item in items] == [("twice.parquet", None)]
    assert items[0].error is not None and "names column 'a' twice" in str(items[0].error)
    config = forwardpass.load("tab_cls", repository=repository).config
    assert open_source(tmp_path / "twice.parquet", config).count() == 1  # as many records as it gives


def test_a_parquet_row_group_that_cannot_be_read_is_one_bad_record_per_row_and_the_others_are_read(
    repository: Path, tmp_path: Path
):
    """A damaged row group ended the job in pyarrow's OSError traceback, with nothing written."""
    path = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"a": [float(i) for i in range(30)]}), path, row_group_size=10, compression="snappy")
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    data[middle - 8 : middle + 8] = b"\xff" * 16  # the second group's compressed values
    path.write_bytes(bytes(data))

    items = list(parquet_items(path, "damaged.parquet"))
    assert [item.name for item in items] == [f"damaged.parquet#row{n}" for n in range(1, 31)]
    assert [item.raw for item in items[:10] + items[20:]] == [{"a": float(i)} for i in [*range(10), *range(20, 30)]]
    assert all(
        item.error is not None and "row group 2 of 3, which cannot be read" in str(item.error) for item in items[10:20]
    )
    config = forwardpass.load("tab_cls", repository=repository).config
    assert open_source(path, config).count() == 30


def test_a_csv_row_with_fewer_fields_than_the_header_is_a_bad_record(tmp_path: Path):
    """A CSV cut short (its writer killed mid-line) ends in a row of fewer fields: DictReader filled the missing ones
    with None, which a config that imputes takes for missing values, and the row was scored (its last number cut
    too) with no error. An empty field stays a missing value."""
    table = tmp_path / "cut.csv"
    table.write_text("a,b,c\n1,2,3\n4,,6\n7,8", encoding="utf-8")
    items = list(csv_items(table, "cut.csv"))
    assert [(item.name, item.raw) for item in items[:2]] == [
        ("cut.csv#row1", {"a": "1", "b": "2", "c": "3"}),
        ("cut.csv#row2", {"a": "4", "b": "", "c": "6"}),
    ]
    assert items[2].name == "cut.csv#row3" and items[2].raw is None
    assert "has 2 fields, the header has 3" in str(items[2].error)


def test_a_quoted_csv_field_left_open_is_a_bad_record_not_a_value_or_the_rows_after_it(tmp_path: Path):
    """A CSV cut short inside a quoted last field was scored with that field cut (no error), and a stray opening
    quote made every row after it part of one field: rows 2 and 3 here were neither scored nor reported."""
    cut = tmp_path / "cut.csv"
    cut.write_text('id,text\n1,"whole"\n2,"cut sho', encoding="utf-8")
    items = list(csv_items(cut, "cut.csv"))
    assert [(item.name, item.raw) for item in items[:1]] == [("cut.csv#row1", {"id": "1", "text": "whole"})]
    assert [item.name for item in items[1:]] == ["cut.csv#row2"]
    assert "a quote opened in this row is never closed" in str(items[1].error)

    stray = tmp_path / "stray.csv"
    stray.write_text('id,text\n1,"oops\n2,two\n3,three\n', encoding="utf-8")
    (item,) = csv_items(stray, "stray.csv")
    assert item.name == "stray.csv#row1" and "a quote opened in this row is never closed" in str(item.error)

    quoted = tmp_path / "quoted.csv"  # what CSV writers write: quoted commas, quotes and line breaks
    quoted.write_text('id,text\r\n1,"a, ""b""\r\nc"\r\n2,plain\r\n', encoding="utf-8")
    assert [item.raw for item in csv_items(quoted, "quoted.csv")] == [
        {"id": "1", "text": 'a, "b"\r\nc'},
        {"id": "2", "text": "plain"},
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_a_byte_that_is_not_utf8_spoils_its_own_record_only(repository: Path, tmp_path: Path, suffix: str):
    """One Latin-1 'é' on line 2 made the whole file one bad record, 'x.jsonl#line?: is not UTF-8 text': the lines
    before it (read in the same block) and every line after it were neither scored nor named."""
    lines = {
        ".jsonl": [b'{"text": "hello"}', b'{"text": "caf\xe9"}', b'{"text": "world"}', b'{"text": "cats"}'],
        ".csv": [b"text", b"hello", b'"caf\xe9"', b"world", b"cats"],
        ".txt": [b"hello", b"caf\xe9", b"world", b"cats"],
    }[suffix]
    (tmp_path / f"x{suffix}").write_bytes(b"\n".join(lines) + b"\n")
    model = forwardpass.load("text_emb", repository=repository)
    items = list(open_source(tmp_path / f"x{suffix}", model.config).items())
    row = "row" if suffix == ".csv" else "line"
    assert [(item.name, item.raw) for item in items] == [
        (f"x{suffix}#{row}1", "hello"),
        (f"x{suffix}#{row}2", None),
        (f"x{suffix}#{row}3", "world"),
        (f"x{suffix}#{row}4", "cats"),
    ]
    assert str(items[1].error) == "is not UTF-8 text"


def test_a_bad_jsonl_line_is_named_by_its_own_number_not_by_the_json_parsers(tmp_path: Path):
    """Line 3's error said 'line 2 column 1' (the parser counts lines within the one it was given, the newline
    starting a second), contradicting the record's id."""
    table = tmp_path / "x.jsonl"
    table.write_text('{"a": 1}\n\n{"a": 1,\n{"a" 2}\n{"a": 3}\n', encoding="utf-8")
    items = list(jsonl_items(table, "x.jsonl"))
    assert [item.name for item in items] == ["x.jsonl#line1", "x.jsonl#line3", "x.jsonl#line4", "x.jsonl#line5"]
    assert [str(item.error) for item in items[1:3]] == [
        "is not valid JSON (unexpected end of data at the end of the line)",
        "is not valid JSON (unexpected character, expected ':' after key at column 6)",
    ]
    assert items[3].raw == {"a": 3}


def test_a_csv_field_longer_than_the_csv_modules_default_limit_is_read_with_the_rows_after_it(tmp_path: Path):
    """A 200,000-character text (csv's default limit: 131,072) made it and every row after it one bad record, 'field
    larger than field limit', where the same text in a JSONL file was scored."""
    long = "cats " * 40_000
    table = tmp_path / "texts.csv"
    table.write_text(f'text\nhello\n"{long}"\nworld\n', encoding="utf-8")
    read = [item.raw for item in csv_items(table, "texts.csv")]
    assert read == [{"text": "hello"}, {"text": long}, {"text": "world"}]


def test_the_index_pandas_stores_in_parquet_is_no_field(tmp_path: Path) -> None:
    """A filtered or sampled frame's to_parquet adds '__index_level_0__': every record failed on that unknown field."""
    pandas = pytest.importorskip("pandas")
    pandas.DataFrame({"a": [1.0, 2.0, 3.0]}).iloc[[2, 0, 1]].to_parquet(tmp_path / "rows.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "rows.parquet").names
    items = list(parquet_items(tmp_path / "rows.parquet", "rows.parquet"))
    assert [item.raw for item in items] == [{"a": 3.0}, {"a": 1.0}, {"a": 2.0}]
