"""Reading labelled data: ImageFolder trees, CSV, JSONL and JSON tables; unreadable items kept as errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forwardpass.errors import InputError, NotFoundError
from forwardpass.measure import Example, ItemError, open_dataset


def test_image_folder_labels_come_from_subfolders(tmp_path: Path) -> None:
    for relative in ("cat/b.png", "cat/a.JPG", "dog/nested/c.png", "dog/readme.txt", ".hidden/d.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    dataset = open_dataset(tmp_path)
    assert dataset.label_column is None
    assert [(e.source, e.label) for e in dataset.examples] == [
        ("cat/a.JPG", "cat"),
        ("cat/b.png", "cat"),
        ("dog/nested/c.png", "dog"),
    ]
    assert dataset.examples[0].raw == tmp_path / "cat" / "a.JPG"


def test_a_folder_of_sound_files_is_labelled_by_subfolder_too(tmp_path: Path) -> None:
    for relative in ("yes/a.wav", "yes/b.FLAC", "no/c.ogg", "no/notes.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    dataset = open_dataset(tmp_path)
    assert [(e.source, e.label) for e in dataset.examples] == [
        ("no/c.ogg", "no"),
        ("yes/a.wav", "yes"),
        ("yes/b.FLAC", "yes"),
    ]


def test_an_image_folder_without_class_folders_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="<label>/<image>"):
        open_dataset(tmp_path)


def test_csv_label_column_defaults_to_label_then_target(tmp_path: Path) -> None:
    (tmp_path / "both.csv").write_text("x,target,label\n1,2,a\n", encoding="utf-8")
    (tmp_path / "target.csv").write_text("x,target\n1,2.5\n", encoding="utf-8")
    both = open_dataset(tmp_path / "both.csv")
    assert both.label_column == "label"
    assert both.items == [Example("row 1", {"x": "1", "target": "2"}, "a")]
    assert open_dataset(tmp_path / "target.csv").examples[0].label == "2.5"
    assert open_dataset(tmp_path / "both.csv", "x").examples[0] == Example("row 1", {"target": "2", "label": "a"}, "1")


def test_csv_without_the_label_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("x,y\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError, match="no 'label' or 'target' column"):
        open_dataset(tmp_path / "data.csv")
    with pytest.raises(InputError, match="no column 'species'; columns: x, y"):
        open_dataset(tmp_path / "data.csv", "species")


def test_csv_rows_that_cannot_be_items_are_errors_in_file_order(tmp_path: Path) -> None:
    """Rows count records from 1, as batch's and predict's #rowN and Parquet's rows do: they were the file's line
    number at the record's end (the header counted, a quoted newline too), one more than batch's for the same row."""
    (tmp_path / "data.csv").write_text('x,label\n"1\n1",a\n2,b,extra\n3,\n4,c\n', encoding="utf-8")
    items = open_dataset(tmp_path / "data.csv").items
    assert [type(item).__name__ for item in items] == ["Example", "ItemError", "ItemError", "Example"]
    assert items[0] == Example("row 1", {"x": "1\n1"}, "a")
    assert items[1] == ItemError("row 2", "more cells than the header's 2 columns")
    assert items[2] == ItemError("row 3", "empty 'label'")


def test_jsonl_and_json_records(tmp_path: Path) -> None:
    records = [{"x": 1, "label": 3}, {"x": 2}, [1, 2], {"x": 3, "label": "b"}]
    (tmp_path / "data.jsonl").write_text(
        "\n".join([*(json.dumps(r) for r in records), "{broken", ""]), encoding="utf-8"
    )
    (tmp_path / "data.json").write_text(json.dumps(records), encoding="utf-8")
    lines = open_dataset(tmp_path / "data.jsonl").items
    assert lines[0] == Example("line 1", {"x": 1}, "3")
    assert lines[1] == ItemError("line 2", "no 'label' field")
    assert lines[2] == ItemError("line 3", "expected a record (a JSON object), got list")
    assert lines[3] == Example("line 4", {"x": 3}, "b")
    assert lines[4].source == "line 5" and "not valid JSON" in lines[4].error  # type: ignore[union-attr]
    assert [item.source for item in open_dataset(tmp_path / "data.json").items] == [f"record {i}" for i in range(1, 5)]


@pytest.mark.parametrize(
    ("name", "text"), [("data.jsonl", '{"x": 1, "label": "a"}\n'), ("data.json", '[{"x": 1, "label": "a"}]')]
)
def test_a_byte_order_mark_before_json_is_not_data(tmp_path: Path, name: str, text: str) -> None:
    """Windows tools write one: a JSONL's first record was a bad item, a JSON file was refused whole."""
    (tmp_path / name).write_text(text, encoding="utf-8-sig")
    (item,) = open_dataset(tmp_path / name).items
    assert isinstance(item, Example) and item.raw == {"x": 1} and item.label == "a"


def test_missing_and_unsupported_paths(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no data set at"):
        open_dataset(tmp_path / "nothing.csv")
    (tmp_path / "data.xlsx").write_bytes(b"")
    with pytest.raises(InputError, match="unsupported data set"):
        open_dataset(tmp_path / "data.xlsx")
    (tmp_path / "data.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        open_dataset(tmp_path / "data.parquet")
    (tmp_path / "list.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(InputError, match="JSON list of records"):
        open_dataset(tmp_path / "list.json")


def test_an_int_label_column_with_gaps_stored_as_floats_keeps_its_class_names(tmp_path: Path) -> None:
    """pandas stores an int column with a missing value as float64: the labels read '0.0' and 'nan', and eval
    refused every item of a model with classes 0, 1, 2 ("'0.0', '1.0', 'nan' are not in the label set")."""
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pandas.DataFrame({"x": [0.5, 1.5, 2.5], "label": [0, None, 2], "site": [1.0, 2.0, 1.0]})
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    (tmp_path / "rows.jsonl").write_text(
        "\n".join(json.dumps(row) for row in frame.to_dict("records")).replace("NaN", "null"), encoding="utf-8"
    )
    for name, row in (("rows.parquet", "row"), ("rows.jsonl", "line")):
        dataset = open_dataset(tmp_path / name, group_by="site")
        assert [(e.source, e.label, e.group) for e in dataset.examples] == [
            (f"{row} 1", "0", "1"),
            (f"{row} 3", "2", "1"),
        ]
        assert dataset.items[1] == ItemError(f"{row} 2", "empty 'label'")
