"""Labelled data sets for evaluation: an ImageFolder tree, or a CSV / JSONL / JSON table with a label column.

    data/digits/test/             one subfolder per class; its name is the label
      0/1002.png
      1/1049.png
    data/diabetes/test.csv        a record per row; the label column holds a class name or a number

Each example keeps its raw form (an image path, a record) so it goes through the model's own pipeline.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from forwardpass.errors import InputError, NotFoundError

__all__ = ["DEFAULT_LABEL_COLUMNS", "IMAGE_SUFFIXES", "Dataset", "Example", "ItemError", "open_dataset"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")
DEFAULT_LABEL_COLUMNS = ("label", "target")


@dataclass(frozen=True, slots=True)
class Example:
    source: str  # where it came from, for error reports: "cat/001.png", "row 3"
    raw: object  # what Model.preprocess takes: an image path or a record
    label: str


@dataclass(frozen=True, slots=True)
class ItemError:
    source: str
    error: str


@dataclass(slots=True)
class Dataset:
    path: Path
    label_column: str | None  # None for an ImageFolder: labels are folder names
    items: list[Example | ItemError] = field(default_factory=list)  # in file order; ItemError: could not be read

    def __len__(self) -> int:
        return len(self.items)

    @property
    def examples(self) -> list[Example]:
        return [item for item in self.items if isinstance(item, Example)]


def open_dataset(path: Path, label_column: str | None = None) -> Dataset:
    if path.is_dir():
        return _image_folder(path)
    if not path.is_file():
        raise NotFoundError(f"no data set at '{path}'; give an ImageFolder tree or a CSV / JSONL file")
    if path.suffix.lower() == ".csv":
        return _csv(path, label_column)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _json_records(path, label_column)
    raise InputError(f"'{path}': unsupported data set; give an ImageFolder tree or a {' / '.join(TABLE_SUFFIXES)} file")


def _image_folder(root: Path) -> Dataset:
    dataset = Dataset(root, None)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            dataset.items.append(Example(str(image.relative_to(root)), image, folder.name))
    if not dataset.items:
        raise InputError(f"'{root}' holds no images in class subfolders; expected {root}/<label>/<image>")
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


def _csv(path: Path, label_column: str | None) -> Dataset:
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        label = _pick_label(path, list(reader.fieldnames or []), label_column)
        dataset = Dataset(path, label)
        for row in reader:
            source = f"row {reader.line_num}"
            if None in row:  # more cells than header columns
                dataset.items.append(ItemError(source, f"more cells than the header's {len(row) - 1} columns"))
                continue
            value = row.pop(label)
            _add_record(dataset, source, row, value)
    return dataset


def _json_records(path: Path, label_column: str | None) -> Dataset:
    text = path.read_text(encoding="utf-8")
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
    first = next((record for _, record in parsed if isinstance(record, dict)), None)
    if first is None:
        raise InputError(f"'{path}' holds no records (JSON objects)")
    label = _pick_label(path, list(first), label_column)
    dataset = Dataset(path, label)
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


def _add_record(dataset: Dataset, source: str, record: dict[str, object], label: object) -> None:
    if label is None or label == "":
        dataset.items.append(ItemError(source, f"empty '{dataset.label_column}'"))
    else:
        dataset.items.append(Example(source, record, str(label)))
