"""Decode `forwardpass predict` arguments into raw items for `Model.preprocess`, the way the model's config asks.

    image models    an image file, passed on as its path (the pipeline decodes it)
    audio models    a sound file (.wav, .flac, .ogg), passed on as its path (the pipeline decodes it)
    text models     a text string, or a .txt file whose whole content is one input
    tabular models  a .csv or .parquet file (one record per row), a .json file (an object, or a list of objects),
                    a .jsonl file (one object per line) or an inline JSON object
    no preprocessing  a .npy array (or .npz / .json for several inputs): with the model's rank it is a batch, one
                    item per row; with one dimension less it is one item

One argument may give many items (`file.csv#row2`, `file.jsonl#line3`, `batch.npy#row1`; rows count from 1). An
argument that cannot be read at all becomes a single item carrying its error, so the other arguments still run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.config import ModelConfig, TabularConfig
from forwardpass.errors import DecodeError, ForwardpassError, InputError, NotFoundError, ShapeError
from forwardpass.modes.sources import Item, csv_header, csv_items, jsonl_items, parquet_items, parse_json
from forwardpass.pipeline import text_item_shape
from forwardpass.pipeline.arrays import read_npy, read_npz
from forwardpass.pipeline.kinds import kind_of
from forwardpass.pipeline.records import check_fields
from forwardpass.tensor import TensorSpec

__all__ = ["Item", "decode_inputs"]

RECORD_SUFFIXES = (".csv", ".json", ".jsonl", ".ndjson", ".parquet")
ARRAY_SUFFIXES = (".npy", ".npz", ".json")
# Files that are certainly not images; anything else goes to the image decoder, which names what is wrong with it.
NOT_IMAGE_SUFFIXES = (*RECORD_SUFFIXES, ".txt", ".tsv", ".yaml", ".yml", ".md", ".npy", ".npz")
_FILE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")


Decoder = Callable[[str], list[Item]]


def decode_inputs(
    args: Sequence[str], config: ModelConfig, inputs: Sequence[TensorSpec], *, whole_items: bool = False
) -> list[Item]:
    """Every argument's items, in order; an argument that cannot be decoded gives one item with its error.
    `whole_items`: the model's first axis is no batch (`Model.whole_items`): an array file is one item, as it is."""
    decode = _decoder(config, inputs, whole_items)
    items: list[Item] = []
    for arg in args:
        try:
            items.extend(decode(arg))
        except ForwardpassError as exc:
            items.append(Item(arg, error=exc))
    return items


def _decoder(config: ModelConfig, inputs: Sequence[TensorSpec], whole_items: bool) -> Decoder:
    """The reader of the model's input kind (`forwardpass.pipeline.kinds`)."""
    kind = kind_of(config).name
    declared = config.preprocess
    if kind == "tabular":
        assert isinstance(declared, TabularConfig)
        return lambda arg: _records(arg, declared)
    if kind == "tensor" and text_item_shape(inputs) is not None:  # a text, or an array file of them
        return lambda arg: _arrays(arg, inputs, whole_items) if arg.lower().endswith(ARRAY_SUFFIXES) else _text(arg)
    if kind == "tensor":
        return lambda arg: _arrays(arg, inputs, whole_items)
    return _READERS[kind]


# --- files ---------------------------------------------------------------------------------------------------------


def _existing_file(arg: str) -> Path:
    path = Path(arg)
    if path.is_dir():
        raise InputError(f"is a folder, not a file; give the files in it (e.g. {path / '*'})")
    if not path.is_file():
        raise NotFoundError("no such file")
    return path


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})") from None


def _read_text(path: Path) -> str:
    try:
        return _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DecodeError("is not UTF-8 text") from None


def _suffix(path: Path) -> str:
    return path.suffix.lower() or "(no suffix)"


# --- images, sounds and text -----------------------------------------------------------------------------------------


def _image(arg: str) -> list[Item]:
    if not _on_disk(Path(arg), Path.exists) and not _looks_like_path(arg):
        raise DecodeError(f"expected an image file, got the text {_shorten(arg)!r}")
    path = _existing_file(arg)
    if path.suffix.lower() in NOT_IMAGE_SUFFIXES:
        raise DecodeError(f"expected an image file (.jpg, .png, ...), got a '{path.suffix.lower()}' file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})") from None
    # The original string, not the Path: the image decoder's messages then name the file as the user typed it.
    return [Item(arg, arg)]


def _audio(arg: str) -> list[Item]:
    _existing_file(arg)
    return [Item(arg, arg)]  # as typed: the audio decoder's messages name the file so


def _text(arg: str) -> list[Item]:
    path = Path(arg)
    if path.suffix.lower() == ".txt":
        return [Item(arg, _read_text(_existing_file(arg)).strip())]
    if _on_disk(path, Path.is_file):
        raise DecodeError(f"expected text or a .txt file, got a '{_suffix(path)}' file")
    return [Item(_shorten(arg), arg)]


def _on_disk(path: Path, test: Callable[[Path], bool]) -> bool:
    """`test(path)` (Path.exists, Path.is_file); False for a text longer than a file name can be (ENAMETOOLONG)."""
    try:
        return test(path)
    except OSError:
        return False


def _looks_like_path(arg: str) -> bool:
    return "/" in arg or "\\" in arg or _FILE_SUFFIX.fullmatch(Path(arg).suffix) is not None


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- records -------------------------------------------------------------------------------------------------------


def _records(arg: str, config: TabularConfig) -> list[Item]:
    if arg.lstrip().startswith("{"):
        return [Item(_shorten(arg), parse_json(arg))]
    path = _existing_file(arg)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        items = _csv_rows(arg, path, config)
    elif suffix == ".json":
        items = _json_records(arg, parse_json(_read_bytes(path)))
    elif suffix in (".jsonl", ".ndjson"):
        items = list(jsonl_items(path, arg))
    elif suffix == ".parquet":
        items = list(parquet_items(path, arg))
    else:
        expected = "records (.csv, .json, .jsonl, .parquet or an inline JSON object)"
        raise DecodeError(f"expected {expected}, got a '{_suffix(path)}' file")
    if not items:
        raise DecodeError("holds no records")
    return items


def _histories(arg: str) -> list[Item]:
    """Recommendation models: an inline JSON object ({"seen": [...]}), or a .json / .jsonl file of them."""
    if arg.lstrip().startswith("{"):
        return [Item(_shorten(arg), parse_json(arg))]
    path = _existing_file(arg)
    if path.suffix.lower() == ".json":
        return _json_records(arg, parse_json(_read_bytes(path)))
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return list(jsonl_items(path, arg))
    raise DecodeError(f"expected histories (.json, .jsonl or an inline JSON object), got a '{_suffix(path)}' file")


def _csv_rows(arg: str, path: Path, config: TabularConfig) -> list[Item]:
    header = csv_header(path)
    # Checked once for the file: otherwise every row would report the same absent or unknown column.
    try:
        check_fields(
            dict.fromkeys(header),
            [column.name for column in config.columns],
            absent_ok=config.impute_absent,
            unknown_ok=config.unknown_fields == "ignore",
        )
    except ForwardpassError as exc:
        raise type(exc)(f"the header: {exc}") from None
    return list(csv_items(path, arg))


def _json_records(arg: str, data: Any) -> list[Item]:
    if isinstance(data, dict):
        return [Item(arg, data)]
    if isinstance(data, list):
        return [Item(f"{arg}#row{n}", record) for n, record in enumerate(data, 1)]
    raise DecodeError(f"expected a JSON object (one record) or a list of objects, got {type(data).__name__}")


_READERS: dict[str, Decoder] = {"image": _image, "audio": _audio, "text": _text, "interactions": _histories}


# --- arrays --------------------------------------------------------------------------------------------------------


def _arrays(arg: str, specs: Sequence[TensorSpec], whole_items: bool) -> list[Item]:
    path = _existing_file(arg)
    names = [spec.name for spec in specs]
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = read_npz(path)
    elif suffix not in ARRAY_SUFFIXES:
        raise DecodeError(f"expected an array file (.npy, .npz or .json), got a '{_suffix(path)}' file")
    elif len(names) != 1:
        raise InputError(f"this model takes {len(names)} inputs {names}: give an .npz file with arrays of those names")
    elif suffix == ".npy":
        arrays = {names[0]: read_npy(path)}
    else:
        arrays = {names[0]: _json_array(parse_json(_read_bytes(path)))}
    if sorted(arrays) != sorted(names):
        raise InputError(f"holds arrays {sorted(arrays)}; the model takes {names}")
    return [Item(arg, arrays)] if whole_items else _split(arg, arrays, specs)


def _json_array(data: Any) -> np.ndarray:
    try:
        return np.asarray(data)
    except ValueError:
        raise ShapeError("is not a rectangular array (rows of different lengths?)") from None


def _split(arg: str, arrays: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> list[Item]:
    """One item if every array lacks the batch dimension, else one item per row."""
    if all(arrays[spec.name].ndim == len(spec.shape) - 1 for spec in specs):
        return [Item(arg, arrays)]
    for spec in specs:
        if arrays[spec.name].ndim != len(spec.shape):
            shape = list(spec.shape)
            raise ShapeError(
                f"input '{spec.name}': expected {len(shape)} dimensions (a batch, shape {shape}) or "
                f"{len(shape) - 1} (one item, shape {shape[1:]}), got shape {list(arrays[spec.name].shape)}"
            )
        # Shape and dtype are the same for every row: checked once so a bad file gives one error, not one per row.
        # NaN/inf are left to each row, so the finite rows still run.
        TensorSpec(spec.name, spec.dtype, (-1, *spec.shape[1:])).validate(arrays[spec.name])
    counts = {len(array) for array in arrays.values()}
    if len(counts) != 1:
        raise ShapeError(f"the arrays differ in their number of rows: {sorted(counts)}")
    count = counts.pop()
    if count == 0:
        raise ShapeError("holds no rows")
    return [Item(f"{arg}#row{i + 1}", {name: array[i] for name, array in arrays.items()}) for i in range(count)]
