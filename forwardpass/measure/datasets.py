"""Labelled data sets for evaluation: an ImageFolder tree (of images, or of sound files for an audio model), a CSV /
Parquet / JSONL / JSON table with a label column, or a `.npz` of input arrays and labels.

    data/digits/test/             one subfolder per class; its name is the label
      0/1002.png
      1/1049.png                  (or 1/take3.wav: WAV, FLAC, OGG)
    data/diabetes/test.csv        a record per row; the label column holds a class name or a number
    data/rows.parquet             the same, as a Parquet file (needs pyarrow: pip install 'forwardpass[measure]')
    data/arrays.npz               arrays of one row per item: the label array ('label' or 'target'), the group array
                                  (--group-by), and the inputs: one array (any name) or one per model input name

Each example keeps its raw form (an image or sound file's path, a record, an array) so it goes through the model's
own pipeline. A group column (`group_by`) tags each example for per-group metrics; the record keeps it, since it may
be a feature.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from forwardpass.errors import InputError, MissingExtraError, NotFoundError
from forwardpass.pipeline.arrays import read_npz
from forwardpass.pipeline.records import data_columns, is_missing

__all__ = ["DEFAULT_LABEL_COLUMNS", "IMAGE_SUFFIXES", "Dataset", "Example", "ItemError", "open_dataset"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga"})
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson", ".json", ".npz")
DEFAULT_LABEL_COLUMNS = ("label", "target")


@dataclass(frozen=True, slots=True)
class Example:
    source: str  # where it came from, for error reports: "cat/001.png", "row 3" (the third record)
    raw: object  # what Model.preprocess takes: an image or sound file's path, a record or an array
    label: str
    group: str | None = None  # the value of the group-by column


@dataclass(frozen=True, slots=True)
class ItemError:
    source: str
    error: str


@dataclass(slots=True)
class Dataset:
    path: Path
    label_column: str | None  # None for an ImageFolder: labels are folder names
    items: list[Example | ItemError] = field(default_factory=list)  # in file order; ItemError: could not be read
    group_by: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def examples(self) -> list[Example]:
        return [item for item in self.items if isinstance(item, Example)]


def open_dataset(path: Path, label_column: str | None = None, group_by: str | None = None) -> Dataset:
    """The labelled items of `path`; `group_by` names the column (or `.npz` array) that splits them into groups."""
    suffix = path.suffix.lower()
    if path.is_dir():
        if group_by is not None:
            raise InputError(
                f"--group-by needs a table or .npz with a '{group_by}' column; '{path}' is an image folder"
            )
        dataset = _image_folder(path)
    elif not path.is_file():
        raise NotFoundError(f"no data set at '{path}'; give an ImageFolder tree, a table or a .npz file")
    elif suffix == ".csv":
        dataset = _csv(path, label_column, group_by)
    elif suffix == ".parquet":
        dataset = _records(path, _parquet_rows(path), label_column, group_by)
    elif suffix == ".npz":
        dataset = _npz(path, label_column, group_by)
    elif suffix in TABLE_SUFFIXES:
        dataset = _records(path, _json_rows(path), label_column, group_by)
    else:
        raise InputError(
            f"'{path}': unsupported data set; give an ImageFolder tree or a {' / '.join(TABLE_SUFFIXES)} file"
        )
    if not dataset.items:
        raise InputError(f"'{path}' holds no items")
    return dataset


def _image_folder(root: Path) -> Dataset:
    dataset = Dataset(root, None)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | AUDIO_SUFFIXES and p.is_file())
        for file in sorted(files):
            dataset.items.append(Example(str(file.relative_to(root)), file, folder.name))
    if not dataset.items:
        raise InputError(
            f"'{root}' holds no images or sound files in class subfolders; expected {root}/<label>/<image> "
            "(or <label>/<sound file>)"
        )
    return dataset


def _pick_label(path: Path, columns: list[str], requested: str | None) -> str:
    if requested is not None:
        if requested not in columns:
            raise InputError(f"'{path}' has no column '{requested}'; columns: {', '.join(columns)}")
        return requested
    for candidate in DEFAULT_LABEL_COLUMNS:
        if candidate in columns:
            return candidate
    raise InputError(f"'{path}' has no 'label' or 'target' column; name it with --label-column (columns: {columns})")


def _pick_group(path: Path, columns: Iterable[str], group_by: str | None) -> str | None:
    if group_by is not None and group_by not in columns:
        raise InputError(f"'{path}' has no column '{group_by}' to group by; columns: {', '.join(columns)}")
    return group_by


def _csv(path: Path, label_column: str | None, group_by: str | None) -> Dataset:
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = list(reader.fieldnames or [])
        label = _pick_label(path, columns, label_column)
        dataset = Dataset(path, label, group_by=_pick_group(path, columns, group_by))
        for number, row in enumerate(reader, 1):
            source = f"row {number}"  # records, as batch's #rowN: a line number would count the header
            if None in row:  # more cells than header columns
                dataset.items.append(ItemError(source, f"more cells than the header's {len(row) - 1} columns"))
                continue
            value = row.pop(label)
            _add_record(dataset, source, row, value)
    return dataset


def _parquet_rows(path: Path) -> list[tuple[str, object]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError("pyarrow", "measure") from None
    try:
        table = pq.read_table(path)
        rows = table.select(data_columns(table.column_names)).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"'{path}' is not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return [(f"row {i}", row) for i, row in enumerate(rows, 1)]


def _json_rows(path: Path) -> list[tuple[str, object]]:
    text = path.read_text(encoding="utf-8-sig")  # a byte order mark (Windows tools write one) is no data
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"'{path}' is not valid JSON ({exc})") from None
        if not isinstance(records, list):
            raise InputError(f"'{path}': expected a JSON list of records")
        lines: list[tuple[str, object]] = [(f"record {i}", record) for i, record in enumerate(records, 1)]
    else:
        lines = [(f"line {i}", line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    parsed: list[tuple[str, object]] = []
    for source, item in lines:
        try:
            parsed.append((source, json.loads(item) if isinstance(item, str) else item))
        except json.JSONDecodeError as exc:
            parsed.append((source, ItemError(source, f"not valid JSON ({exc.msg})")))
    return parsed


def _records(path: Path, parsed: list[tuple[str, object]], label_column: str | None, group_by: str | None) -> Dataset:
    first = next((record for _, record in parsed if isinstance(record, dict)), None)
    if first is None:
        raise InputError(f"'{path}' holds no records")
    label = _pick_label(path, list(first), label_column)
    dataset = Dataset(path, label, group_by=_pick_group(path, list(first), group_by))
    for source, record in parsed:
        if isinstance(record, ItemError):
            dataset.items.append(record)
        elif not isinstance(record, dict):
            dataset.items.append(ItemError(source, f"expected a record (a JSON object), got {type(record).__name__}"))
        elif label not in record:
            dataset.items.append(ItemError(source, f"no '{label}' field"))
        else:
            rest = dict(record)
            _add_record(dataset, source, rest, rest.pop(label))
    return dataset


def _npz(path: Path, label_column: str | None, group_by: str | None) -> Dataset:
    try:
        arrays = read_npz(path)
    except InputError as exc:
        raise type(exc)(f"'{path}' {exc}") from None
    label = _pick_label(path, list(arrays), label_column)
    group = _pick_group(path, list(arrays), group_by)
    inputs = {name: array for name, array in arrays.items() if name not in (label, group)}
    if not inputs:
        raise InputError(f"'{path}' holds labels but no input arrays")
    count = len(arrays[label])
    wrong = {name: len(array) for name, array in arrays.items() if array.ndim == 0 or len(array) != count}
    if wrong:
        raise InputError(f"'{path}': every array needs one row per item ({count} labels); rows: {wrong}")
    dataset = Dataset(path, label, group_by=group)
    for i in range(count):
        raw = next(iter(inputs.values()))[i] if len(inputs) == 1 else {name: a[i] for name, a in inputs.items()}
        group_value = None if group is None else _text(arrays[group][i])
        dataset.items.append(Example(f"item {i}", raw, _text(arrays[label][i]), group_value))
    return dataset


def _text(value: object) -> str:
    """A label or group as text: 3.0 (a float array's integer; Parquet and JSON store a pandas int column with gaps
    as floats) → '3', as a table would spell it."""
    number = value.item() if isinstance(value, np.generic) else value
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    return str(number)


def _add_record(dataset: Dataset, source: str, record: dict[str, object], label: object) -> None:
    group = None if dataset.group_by is None else record.get(dataset.group_by)
    if dataset.group_by == dataset.label_column:  # grouped by the label itself, which the record no longer holds
        group = label
    if is_missing(label):
        dataset.items.append(ItemError(source, f"empty '{dataset.label_column}'"))
    elif dataset.group_by is not None and is_missing(group):
        dataset.items.append(ItemError(source, f"empty '{dataset.group_by}' (the group-by column)"))
    else:
        dataset.items.append(Example(source, record, _text(label), None if group is None else _text(group)))
