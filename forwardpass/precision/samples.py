"""Calibration and evaluation samples: raw items read from a path, run through the model's own preprocessing.

    a folder           every image file under it (an ImageFolder tree or a flat folder)
    a .txt file        one text per line (text models)
    .csv/.json/.jsonl/.parquet  one record per row; a `label`/`target` column is ignored (tabular models)
    a .npy file        already preprocessed: one item per row of the array (single-input models)
    a .npz file        arrays of one row per item, as `forwardpass eval` reads them; `label`/`target` ignored

Calibration is strict: one item that the model cannot take means the data does not match it, and nothing is made.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from forwardpass.errors import ForwardpassError, InputError, MissingExtraError, NotFoundError
from forwardpass.measure.datasets import DEFAULT_LABEL_COLUMNS, IMAGE_SUFFIXES
from forwardpass.model import Model
from forwardpass.pipeline import Arrays
from forwardpass.pipeline.arrays import read_npy, read_npz
from forwardpass.pipeline.records import data_columns

__all__ = ["Samples", "read_samples"]


@dataclass(frozen=True, slots=True)
class Samples:
    """Preprocessed items (no batch dimension) and where they came from."""

    path: Path
    items: list[Arrays]
    kind: str  # "images", "texts", "records", "arrays"

    def batches(self, size: int, collate_model: Model) -> list[Arrays]:
        """What the model's graph takes, a batch at a time (without a preprocessing's context, e.g. a letterbox's
        transform, which only the postprocessing reads)."""
        pipeline = collate_model.pipeline
        return [pipeline.feeds(pipeline.collate(self.items[i : i + size])) for i in range(0, len(self.items), size)]

    def summary(self) -> dict[str, object]:
        first = self.items[0]
        return {
            "path": str(self.path),
            "kind": self.kind,
            "items": len(self.items),
            "item_shapes": {name: list(array.shape) for name, array in first.items()},
        }


def read_samples(
    model: Model, path: Path, *, role: str, limit: int | None = None, model_name: str | None = None
) -> Samples:
    """Up to `limit` items of `path`, each through `model.preprocess`. `role` ("calibration", "eval") and
    `model_name` (default: the model's) name the data and the model in errors."""
    raws, kind = _raw_items(path, role)
    if limit is not None:
        raws = raws[:limit]
    if not raws:
        raise InputError(f"{role} data '{path}' holds no items; give at least one sample")
    items = []
    for source, raw in raws:
        try:
            items.append(model.preprocess(raw))
        except ForwardpassError as exc:
            raise InputError(
                f"{role} data '{path}' does not match model '{model_name or model.name}' (inputs "
                f"{[spec.to_dict() for spec in model.inputs]}): {source}: {exc}"
            ) from None
    return Samples(path, items, kind)


def _raw_items(path: Path, role: str) -> tuple[list[tuple[str, object]], str]:
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [(str(p.relative_to(path)), p) for p in images], "images"
    if not path.is_file():
        raise NotFoundError(f"no {role} data at '{path}'; give a folder of images or a .txt/.csv/.jsonl/.npy file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            return [(f"line {n}", line) for n, line in enumerate(lines, 1) if line.strip()], "texts"
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as file:
                rows = [_unlabelled(row) for row in csv.DictReader(file)]
            return [(f"row {n}", row) for n, row in enumerate(rows, 1)], "records"
        if suffix in (".jsonl", ".ndjson"):
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            return [(f"line {n}", _record(line)) for n, line in enumerate(lines, 1) if line.strip()], "records"
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            records = data if isinstance(data, list) else [data]
            return [(f"record {n}", _unlabelled(r)) for n, r in enumerate(records, 1)], "records"
        if suffix == ".npy":
            return [(f"row {n}", row) for n, row in enumerate(read_npy(path), 1)], "arrays"
        if suffix in (".npz", ".parquet"):
            return _table_items(path), "arrays" if suffix == ".npz" else "records"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{role} data '{path}' cannot be read: {exc}") from None
    except InputError as exc:  # the array and table readers' own, which say what is wrong with the file
        raise type(exc)(f"{role} data '{path}' {exc}") from None
    raise InputError(
        f"{role} data '{path}': unsupported file; give a folder of images or a .txt/.csv/.jsonl/.parquet/.npy/.npz"
    )


def _table_items(path: Path) -> list[tuple[str, object]]:
    """A .npz or .parquet file's items as `forwardpass eval` reads them, without their labels."""
    if path.suffix.lower() == ".parquet":
        return [(f"row {n}", _unlabelled(row)) for n, row in enumerate(_parquet_rows(path), 1)]
    inputs = {name: array for name, array in read_npz(path).items() if name not in DEFAULT_LABEL_COLUMNS}
    if not inputs:
        raise InputError("holds no input arrays")
    count = len(next(iter(inputs.values())))
    if len(inputs) == 1:
        rows = next(iter(inputs.values()))
        return [(f"item {i}", rows[i]) for i in range(count)]
    return [(f"item {i}", {name: array[i] for name, array in inputs.items()}) for i in range(count)]


def _parquet_rows(path: Path) -> list[object]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError("pyarrow", "measure") from None
    try:
        table = pq.read_table(path)
        return list(table.select(data_columns(table.column_names)).to_pylist())
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"is not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def _record(line: str) -> object:
    return _unlabelled(json.loads(line))


def _unlabelled(record: object) -> object:
    if isinstance(record, dict):
        return {key: value for key, value in record.items() if key not in DEFAULT_LABEL_COLUMNS}
    return record
