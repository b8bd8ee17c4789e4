"""Batch inputs, read as a stream of records in a fixed order: every read of the same input gives the same records
under the same ids, so a job can number them, split them into parts, skip the parts already done and resume.

    image models      a folder of images (recursive, sorted; hidden files skipped), or one image file
    text models       .jsonl (a JSON string, or an object with a "text" field, per line), .csv / .parquet with a
                      "text" column, .txt (one text per line)
    tabular models    .csv, .parquet, .jsonl (one object per line)
    no preprocessing  .npy (one item per row, memory-mapped)
    any model         a folder of the files above (recursive, sorted)

A record's id is its file's path relative to INPUT (the file's name when INPUT is one file; a byte that is not UTF-8
as \\xNN), plus `#rowN` (`#lineN` for JSONL) for one row of a table; rows count from 1. A record that cannot be read
carries its error instead of a value, so it lands in the errors file and the job goes on.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from forwardpass.config import ModelConfig
from forwardpass.errors import DecodeError, ForwardpassError, InputError, NotFoundError
from forwardpass.pipeline.kinds import kind_of
from forwardpass.pipeline.records import data_columns

__all__ = [
    "Item",
    "Source",
    "csv_header",
    "csv_items",
    "csv_reader",
    "files_fingerprint",
    "is_utf8",
    "jsonl_items",
    "named_twice",
    "open_source",
    "parquet_items",
    "parse_json",
    "parse_json_line",
    "utf8_text",
]

TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson", ".txt", ".npy")
TEXT_FIELD = "text"
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time: memory stays bounded whatever the file's size
NPY_CHUNK_BYTES = 16 * 2**20  # .npy bytes read at a time
EMPTY_CSV = "is empty: expected a header row with the column names"
NOT_UTF8 = "is not UTF-8 text"
MAX_FIELD_CHARS = 8 << 20  # a CSV field: far beyond any record's, short of a quote that is never closed
OPEN_QUOTE = "unexpected end of data"  # what a strict csv reader says of input that ends inside a quoted field


@dataclass(frozen=True, slots=True)
class Item:
    """One input for one prediction: its name for the output (`file.csv#row2`) and the raw value, or an error."""

    name: str
    raw: object = None
    error: ForwardpassError | None = None


class Source(Protocol):
    def items(self) -> Iterator[Item]:
        """Every record, in the same order on every call."""
        ...

    def count(self) -> int:
        """How many records `items` gives (for progress and ETA); cheaper than reading them where it can be."""
        ...

    def fingerprint(self) -> str:
        """What changes when a file of the input is added, removed, replaced or edited (names, sizes, times)."""
        ...


def parse_json(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"is not valid JSON ({exc})") from None


def parse_json_line(line: str) -> Any:
    """One JSONL line's value; a failure says where in the line, as the record's id (or answer) names the line: the
    parser's own 'line 2 column 1' counts from the line it was given, the newline ending it starting a second."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        where = "at the end of the line" if exc.lineno > 1 else f"at column {exc.colno}"
        raise DecodeError(f"is not valid JSON ({exc.msg} {where})") from None


def csv_reader(lines: Iterable[str]) -> Iterator[list[str]]:
    """The rows of CSV text, strict (not strict, a quote left open gives a value cut short, or eats the rows after
    it), and with fields up to MAX_FIELD_CHARS (csv's default, 128 Ki characters, refused a long text, and with it
    every row after it in the file)."""
    csv.field_size_limit(MAX_FIELD_CHARS)
    return csv.reader(lines, strict=True)


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file (its first row)."""
    with _open_text(path) as file:
        try:
            header = next(csv_reader(file), None)
        except csv.Error as exc:
            raise DecodeError(_csv_problem(exc)) from None
    if not header:
        raise DecodeError(EMPTY_CSV)
    if not is_utf8(*header):
        raise DecodeError(NOT_UTF8)
    return header


def csv_items(path: Path, name: str) -> Iterator[Item]:
    """One record (a {column: text} dict) per row, streamed; a row with more or fewer fields than the header is an
    error (fewer: a file cut short mid-line; an empty field is a missing value). A file that stops parsing part-way
    gives one error item for the rest, after the rows read before it."""
    with _open_text(path) as file:
        reader = csv_reader(file)
        row_number = 0
        try:
            header = next(reader, None)
            if header is None:  # a file without a line
                yield Item(name, error=DecodeError(EMPTY_CSV))
                return
            if problem := named_twice(header) or (None if is_utf8(*header) else NOT_UTF8):
                yield Item(name, error=DecodeError(problem))
                return
            for fields in reader:
                if not fields:  # a blank line: no record (as csv.DictReader reads it)
                    continue
                row_number += 1
                if not is_utf8(*fields):
                    yield Item(f"{name}#row{row_number}", error=DecodeError(NOT_UTF8))
                elif len(fields) != len(header):
                    message = f"has {len(fields)} fields, the header has {len(header)}"
                    yield Item(f"{name}#row{row_number}", error=DecodeError(message))
                else:
                    yield Item(f"{name}#row{row_number}", dict(zip(header, fields, strict=True)))
        except csv.Error as exc:
            yield Item(f"{name}#row{row_number + 1}", error=DecodeError(_csv_problem(exc)))


def jsonl_items(path: Path, name: str) -> Iterator[Item]:
    """One parsed JSON value per non-blank line, streamed; a line that is not JSON is an error item."""
    with _open_text(path) as file:
        for line_number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                if not is_utf8(line):
                    raise DecodeError(NOT_UTF8)
                yield Item(f"{name}#line{line_number}", parse_json_line(line))
            except DecodeError as exc:
                yield Item(f"{name}#line{line_number}", error=exc)


def open_source(path: Path, config: ModelConfig, drop: Collection[str] = ()) -> Source:
    """The records of INPUT for a model with this config (what each kind of file holds depends on it), without the
    table columns in `drop` (a label, an id: fields the model would refuse as none of its columns)."""
    if not path.exists():
        raise NotFoundError(f"input '{path}': no such file or folder")
    kind = kind_of(config)
    if drop and kind.name != "tabular":
        raise InputError(f"--drop leaves out table columns, and this model takes no records of columns ({kind.name})")
    if kind.file_items:
        return _Images(path)
    read = _READERS.get(kind.name, _arrays)
    return _Tables(path, _without(read, frozenset(drop)) if drop else read)


def _without(read: _RecordReader, drop: frozenset[str]) -> _RecordReader:
    def records(path: Path, name: str) -> Iterator[Item]:
        for item in read(path, name):
            if isinstance(item.raw, dict):
                yield Item(item.name, {field: value for field, value in item.raw.items() if field not in drop})
            else:
                yield item

    return records


# --- images --------------------------------------------------------------------------------------------------------


class _Images:
    """Image (or sound) files, passed on as their paths: decoding happens in the pipeline, in the job's decoding
    threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files = _files(root, suffixes=None)
        if not self._files:
            raise InputError(f"input '{root}' holds no files")

    def items(self) -> Iterator[Item]:
        for path in self._files:
            name = _relative_name(path, self.root)
            problem = _no_file(path)
            yield Item(name, error=DecodeError(problem)) if problem else Item(name, str(path))

    def count(self) -> int:
        return len(self._files)

    def fingerprint(self) -> str:
        return files_fingerprint(self._files, self.root)


# --- tables --------------------------------------------------------------------------------------------------------


class _RecordReader(Protocol):
    def __call__(self, path: Path, name: str) -> Iterator[Item]: ...


class _Tables:
    def __init__(self, root: Path, read: _RecordReader) -> None:
        self.root = root
        self._read = read
        self._files = _files(root, suffixes=TABLE_SUFFIXES)
        if not self._files:
            raise InputError(f"input '{root}' holds no {', '.join(TABLE_SUFFIXES)} files")

    def items(self) -> Iterator[Item]:
        for path in self._files:
            yield from self._file_items(path)

    def count(self) -> int:
        total = 0
        for path in self._files:
            known = _count_rows(path)
            total += known if known is not None else sum(1 for _ in self._file_items(path))
        return total

    def fingerprint(self) -> str:
        return files_fingerprint(self._files, self.root)

    def _file_items(self, path: Path) -> Iterator[Item]:
        name = _relative_name(path, self.root)
        if problem := _no_file(path):
            yield Item(name, error=DecodeError(problem))
            return
        try:
            yield from self._read(path, name)
        except InputError as exc:  # a file that cannot be opened is one bad record, not the end of the job
            yield Item(name, error=exc)
        except OSError as exc:  # nor one that fails part-way (a disk or network error): the rest of it is one
            yield Item(name, error=DecodeError(f"cannot be read ({exc.strerror or exc})"))


def _records(path: Path, name: str) -> Iterator[Item]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return csv_items(path, name)
    if suffix == ".parquet":
        return parquet_items(path, name)
    if suffix in (".jsonl", ".ndjson"):
        return jsonl_items(path, name)
    return _unreadable(name, f"expected records (.csv, .parquet or .jsonl), got a '{suffix}' file")


def _texts(path: Path, name: str) -> Iterator[Item]:
    if path.suffix.lower() == ".txt":
        return _text_lines(path, name)
    return (_text_of(item) for item in _records(path, name))


def _text_of(item: Item) -> Item:
    if item.error is not None or isinstance(item.raw, str):
        return item
    if isinstance(item.raw, dict) and isinstance(item.raw.get(TEXT_FIELD), str):
        return Item(item.name, item.raw[TEXT_FIELD])
    return Item(item.name, error=DecodeError(f"expected a text, or a record with a '{TEXT_FIELD}' text field"))


def _text_lines(path: Path, name: str) -> Iterator[Item]:
    with _open_text(path) as file:
        for line_number, line in enumerate(file, 1):
            if not line.strip():
                continue
            if is_utf8(line):
                yield Item(f"{name}#line{line_number}", line.rstrip("\r\n"))
            else:
                yield Item(f"{name}#line{line_number}", error=DecodeError(NOT_UTF8))


def _arrays(path: Path, name: str) -> Iterator[Item]:
    if path.suffix.lower() != ".npy":
        return _unreadable(name, f"expected a .npy array (this model declares no preprocessing), got '{path.suffix}'")
    try:
        file = path.open("rb")
    except OSError as exc:
        raise InputError(f"'{path}': cannot read ({exc.strerror})") from None
    try:
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(file)
    except (ValueError, OSError, EOFError) as exc:
        file.close()
        return _unreadable(name, f"is not a readable .npy array of numbers ({exc})")
    if not shape or fortran_order or dtype.hasobject:
        file.close()
        return _unreadable(name, "expected a C-ordered .npy array of numbers with one row per item")
    return _npy_rows(file, name, shape, dtype)


def _npy_rows(file: Any, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Iterator[Item]:
    """Rows read a chunk at a time with plain reads (faster than faulting a memory map in page by page)."""
    row_size = int(np.prod(shape[1:], dtype=np.int64))
    chunk_rows = max(1, NPY_CHUNK_BYTES // max(1, row_size * dtype.itemsize))
    with file:
        for first in range(0, shape[0], chunk_rows):
            count = min(chunk_rows, shape[0] - first)
            chunk = np.fromfile(file, dtype=dtype, count=count * row_size)
            if chunk.size != count * row_size:
                yield Item(f"{name}#row{first + 1}", error=DecodeError("is truncated: fewer rows than its header says"))
                return
            for offset, row in enumerate(chunk.reshape(count, *shape[1:])):
                yield Item(f"{name}#row{first + offset + 1}", row)


def parquet_items(path: Path, name: str) -> Iterator[Item]:
    """One record per row, a batch of rows decoded at a time (memory stays bounded whatever the file's size); the
    rows of a row group that cannot be read are bad records, as many as its metadata counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        yield Item(name, error=DecodeError(f"is not a readable Parquet file ({exc})"))
        return
    if twice := named_twice(file.schema_arrow.names):
        file.close()
        yield Item(name, error=DecodeError(twice))
        return
    numbers = itertools.count(1)
    columns = data_columns(file.schema_arrow.names)
    with file:
        groups = file.num_row_groups
        for group in range(groups):
            left = file.metadata.row_group(group).num_rows
            try:
                for batch in file.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
                    for record in batch.to_pylist():
                        left -= 1
                        yield Item(f"{name}#row{next(numbers)}", record)
            except (OSError, pa.ArrowException) as exc:  # damaged: its rows are bad records, the next group is read
                problem = DecodeError(f"is in row group {group + 1} of {groups}, which cannot be read ({exc})")
                for _ in range(left):
                    yield Item(f"{name}#row{next(numbers)}", error=problem)


# Table readers by input kind (`forwardpass.pipeline.kinds`); other kinds read .npy rows
_READERS: dict[str, _RecordReader] = {"text": _texts, "tabular": _records}


def _count_rows(path: Path) -> int | None:
    """Rows known without reading them (Parquet metadata, the .npy header); None where they must be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as file:  # a file refused whole is one record, counted by reading it
                return None if named_twice(file.schema_arrow.names) else int(file.metadata.num_rows)
        if suffix == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return int(shape[0]) if shape else None
    except Exception:  # unreadable: reading it counts its one error item
        return None
    return None


def named_twice(columns: Sequence[str]) -> str | None:
    """Why a table whose header names a column twice is refused (its readers keep the last one), or None."""
    seen: set[str] = set()
    for column in columns:
        if column in seen and column:  # unnamed columns ("a,b,,") are no column a model reads
            return f"names column {column!r} twice: which of the two is meant would be a guess; rename one"
        seen.add(column)
    return None


def _unreadable(name: str, message: str) -> Iterator[Item]:
    yield Item(name, error=DecodeError(message))


# --- files ---------------------------------------------------------------------------------------------------------


def _files(root: Path, suffixes: tuple[str, ...] | None) -> list[Path]:
    """`root` itself if a file, else the files under it (recursive), sorted by relative path, hidden ones left out.
    Links to folders (not followed), broken links and pipes are listed too: each is a record that `_no_file` says
    is bad, so that none of them is left out without a word (a table folder's, where their names say tables or a
    link to a folder may hold some)."""
    if root.is_file():
        return [root]
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or (path.is_dir() and not path.is_symlink()):
            continue
        if suffixes is None or path.suffix.lower() in suffixes or path.is_dir():  # a linked folder may hold some
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _no_file(path: Path) -> str | None:
    """Why an entry of an input folder is no file to read, or None for a file (or a link to one)."""
    if path.is_file():
        return None
    if path.is_symlink():
        if path.is_dir():
            return "is a link to a folder, which is not followed (a link can loop): give that folder as INPUT"
        if not path.exists():
            return "is a broken link: what it points to does not exist"
    return "is not a regular file (a pipe, a socket or a device)"


def files_fingerprint(files: list[Path], root: Path) -> str:
    """A digest of the files' names (relative to `root`), sizes and modification times."""
    digest = hashlib.blake2s()
    for path in files:
        try:
            # a link to what is no file is a bad record whatever it points to: the link itself is what counts
            stat = path.stat() if path.is_file() else path.lstat()
            seen = f"{stat.st_size} {stat.st_mtime_ns}"
        except OSError as exc:  # gone since it was listed: the next run sees it gone
            seen = f"unreadable ({exc.strerror})"
        digest.update(f"{_relative_name(path, root)}\0{seen}\n".encode())
    return digest.hexdigest()


def _relative_name(path: Path, root: Path) -> str:
    return utf8_text(path.name if path == root else path.relative_to(root).as_posix())


def utf8_text(text: str) -> str:
    """`text` with the bytes of a file name that are not UTF-8 (Python holds them as lone surrogates) written as
    \\xNN: the output files are UTF-8, and no writer takes a surrogate."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _open_text(path: Path) -> Any:
    """Bytes that are not UTF-8 are read as lone surrogates: `is_utf8` finds them in their own record, where a strict
    decoder stopped the whole file at the block that held one (the records before it in that block with it)."""
    try:
        return path.open(newline="", encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise InputError(f"'{path}': cannot read ({exc.strerror})") from None


def is_utf8(*texts: str) -> bool:
    """No byte of these texts, read with errors="surrogateescape" (`_open_text`, streams), was other than UTF-8."""
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a byte that was not UTF-8
        return False
    return True


def _csv_problem(exc: csv.Error) -> str:
    if str(exc) == OPEN_QUOTE:
        return "is not valid CSV: a quote opened in this row is never closed (a file cut short, or a stray quote)"
    return f"is not valid CSV ({exc})"
