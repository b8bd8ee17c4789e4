"""Batch inputs read as records (modes/sources.py): what a table's header means is never a guess."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import forwardpass
from forwardpass.modes.sources import csv_items, open_source, parquet_items


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
