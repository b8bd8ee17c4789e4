"""Batch outputs: part files written atomically, and a manifest of the parts done, so that a job killed at any
moment resumes with every input record exactly once in the output (or in the errors file).

    OUTPUT/part-000000.parquet   predictions of input records [0, part_size), one row each (also .csv, .jsonl)
    OUTPUT/_errors/part-000000.jsonl   that part's bad records: {"id", "error", "type"}
    OUTPUT/_errors.jsonl         every bad record, gathered when the job ends ("_": readers of the parts skip it)
    OUTPUT/_lock                 locked by the run writing the folder: a second one at the same time is refused
    OUTPUT/_manifest.json        the job's identity and token, and the parts done; rewritten atomically after each
                                 part

A part's files are complete before the manifest names it (temp file, fsync, rename); on resume, part files the
manifest does not name are leftovers of a killed run, deleted and computed again.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from forwardpass.errors import ForwardpassError, InputError

__all__ = ["ERRORS_FILE", "FORMATS", "LOCK_FILE", "MANIFEST_FILE", "Output", "PartDone", "atomic_write", "saved_job"]

FORMATS = ("parquet", "csv", "jsonl")
MANIFEST_FILE = "_manifest.json"
LOCK_FILE = "_lock"  # flock-ed by the run writing the folder
ERRORS_FILE = "_errors.jsonl"  # "_": Parquet and Arrow readers of the folder skip it
PART_ERRORS_DIR = "_errors"
Row = dict[str, Any]
# job keys whose values mean nothing to a reader: what a difference in them says instead
FINGERPRINTS = {
    "input_fingerprint": "INPUT's files were added, removed, replaced or edited since the job started",
    "model_fingerprint": "the model's config or file changed since the job started",
}


@dataclass(frozen=True)
class PartDone:
    index: int
    start: int  # input records [start, stop)
    stop: int
    rows: int
    errors: int


@dataclass
class _Manifest:
    job: dict[str, Any]
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    parts: list[PartDone] = field(default_factory=list)
    finished: bool = False


def saved_job(directory: Path) -> tuple[dict[str, Any], int] | None:
    """The job `directory` holds and how many of its records are done; None when it holds no readable manifest
    (opening it as an `Output` then says why)."""
    try:
        data = orjson.loads((directory / MANIFEST_FILE).read_bytes())
        return dict(data["job"]), sum(part["stop"] - part["start"] for part in data["parts"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temp)` then rename onto `path`: readers (and a resumed job) see the whole file or none of it."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        write(temp)
        with temp.open("rb") as file:
            os.fsync(file.fileno())  # the data is on disk before the name points to it
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # and the rename itself
    finally:
        os.close(directory)


class Output:
    """The output folder of one job. `job` identifies it (model, input, options that change the results): resuming
    with a different one is refused instead of mixing two jobs' results."""

    def __init__(self, directory: Path, output_format: str, job: dict[str, Any], *, resume: bool) -> None:
        if output_format not in FORMATS:
            raise InputError(f"output format '{output_format}' is not one of {', '.join(FORMATS)}")
        self.directory = directory
        self.format = output_format
        self._manifest_path = directory / MANIFEST_FILE
        if directory.exists() and not directory.is_dir():
            raise InputError(f"OUTPUT '{directory}' is a file; give a folder (it will hold the part files)")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock: int | None = _lock(directory)
        except OSError as exc:
            raise _unwritable(directory, exc) from None
        try:
            self._manifest = self._open(job, resume)
            self._done = {part.index: part for part in self._manifest.parts}
            self._remove_leftovers()
        except BaseException:
            self.close()
            raise

    def _open(self, job: dict[str, Any], resume: bool) -> _Manifest:
        """The manifest of the job this folder holds (resumed), or of a new one in an empty folder."""
        if self._manifest_path.is_file():
            if not resume:
                raise InputError(
                    f"OUTPUT '{self.directory}' holds a job already: pass --resume to finish it, or choose a new folder"
                )
            return self._load(job)
        # a run killed before its first manifest write leaves only its lock and that write's temp file
        if any(p.name != LOCK_FILE and not p.name.startswith(f".{MANIFEST_FILE}") for p in self.directory.iterdir()):
            raise InputError(
                f"OUTPUT '{self.directory}' is not empty and holds no forwardpass job; choose a new folder"
            )
        self._manifest = _Manifest(job)
        try:
            self._save()
        except OSError as exc:
            raise _unwritable(self.directory, exc) from None
        return self._manifest

    def close(self) -> None:
        """Let another run have the folder (a run that ends any other way lets it go with its process)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @property
    def finished(self) -> bool:
        return self._manifest.finished

    @property
    def records(self) -> int:
        """Input records of the parts done."""
        return sum(part.stop - part.start for part in self._done.values())

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self._done.values())

    @property
    def errors(self) -> int:
        return sum(part.errors for part in self._done.values())

    def is_done(self, index: int) -> bool:
        return index in self._done

    def part_path(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.{self.format}"

    @property
    def token(self) -> str:
        """The job's own name, random, kept by its resumed runs: what the audit log knows its parts by."""
        return self._manifest.token

    def write(self, index: int, rows: Sequence[Row], errors: Sequence[Row]) -> None:
        """One part's rows and errors, each file whole or not at all; a part not `recorded` after it is a
        leftover, deleted on resume and computed again."""
        with self._resumable(f"part {index}"):
            if rows:
                atomic_write(self.part_path(index), lambda temp: _WRITERS[self.format](temp, rows))
            if errors:
                (self.directory / PART_ERRORS_DIR).mkdir(exist_ok=True)
                atomic_write(self._errors_path(index), lambda temp: _write_jsonl(temp, errors))

    def record(self, part: PartDone) -> None:
        """A `written` part recorded as done: from here on it is never computed again."""
        self._manifest.parts.append(part)
        try:
            with self._resumable(f"the manifest recording part {part.index}"):
                self._save()
        except ForwardpassError:
            self._manifest.parts.pop()  # not done: as on disk
            raise
        self._done[part.index] = part

    def gather_errors(self) -> Path:
        """Every part's bad records, in input order, as one _errors.jsonl (rewritten whole, atomically)."""
        path = self.directory / ERRORS_FILE
        with self._resumable(ERRORS_FILE):
            atomic_write(path, self._gathered_errors)
        return path

    def finish(self) -> None:
        if self.format == "parquet":
            with self._resumable("a part, typed again"):
                _unify_parquet([self.part_path(index) for index in sorted(self._done) if self._done[index].rows])
        self.gather_errors()
        self._manifest.finished = True
        with self._resumable("the manifest recording the job finished"):
            self._save()

    @contextmanager
    def _resumable(self, what: str) -> Iterator[None]:
        """A write that failed (a full disk, a folder made read-only) ends the job in one line: the parts recorded
        before it stay done, and --resume goes on from there."""
        try:
            yield
        except OSError as exc:
            raise ForwardpassError(
                f"cannot write {what} to OUTPUT '{self.directory}' ({exc.strerror or exc}); the parts saved before it "
                "stay: make room (or make the folder writable), then finish the job with --resume"
            ) from None

    def _gathered_errors(self, temp: Path) -> None:
        with temp.open("wb") as out:
            for index in sorted(self._done):
                if self._done[index].errors:
                    out.write(self._errors_path(index).read_bytes())

    def _errors_path(self, index: int) -> Path:
        return self.directory / PART_ERRORS_DIR / f"part-{index:06d}.jsonl"

    def _save(self) -> None:
        data = {
            "job": self._manifest.job,
            "token": self._manifest.token,
            "finished": self._manifest.finished,
            "parts": [asdict(part) for part in sorted(self._manifest.parts, key=lambda p: p.index)],
        }

        def write(temp: Path) -> None:
            temp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))

        atomic_write(self._manifest_path, write)

    def _load(self, job: dict[str, Any]) -> _Manifest:
        try:
            data = orjson.loads(self._manifest_path.read_bytes())
            parts = [PartDone(**part) for part in data["parts"]]
            saved, finished = dict(data["job"]), bool(data["finished"])
            token = str(data.get("token") or secrets.token_hex(8))  # none in a manifest older than tokens
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"'{self._manifest_path}' is not a forwardpass batch manifest ({exc})") from None
        # a key the saved job lacks is newer than its manifest: not compared
        changed = sorted(key for key in saved if saved[key] != job.get(key))
        if changed:
            reasons = [FINGERPRINTS[key] for key in changed if key in FINGERPRINTS]
            if shown := [key for key in changed if key not in FINGERPRINTS]:
                was = ", ".join(f"{key}={saved.get(key)!r}" for key in shown)
                now = ", ".join(f"{key}={job.get(key)!r}" for key in shown)
                reasons.insert(0, f"{was}; now {now}")
            raise InputError(
                f"--resume: OUTPUT '{self.directory}' holds a different job ({'; '.join(reasons)}); its parts would "
                "disagree with the rest: finish it with the input and model it started with, or choose a new folder"
            )
        return _Manifest(saved, token, parts, finished)

    def _remove_leftovers(self) -> None:
        """Part files of parts the manifest does not name, and temp files: what a killed run left half-done."""
        keep = {self.part_path(index).name for index, part in self._done.items() if part.rows}
        keep_errors = {self._errors_path(index).name for index, part in self._done.items() if part.errors}
        for path in self.directory.iterdir():
            if (
                path.is_file()
                and path.name.startswith((".part-", "part-", f".{ERRORS_FILE}", f".{MANIFEST_FILE}"))
                and path.name not in keep
            ):
                path.unlink()
        errors_dir = self.directory / PART_ERRORS_DIR
        if errors_dir.is_dir():
            for path in errors_dir.iterdir():
                if path.name not in keep_errors:
                    path.unlink()


def _lock(directory: Path) -> int:
    """The folder's lock, held while this run writes there (released by the kernel when the process ends, however
    it ends): two runs writing one job's parts and manifest at once would lose parts or write them twice."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(
            f"OUTPUT '{directory}' is being written by another run of the job (it holds {directory / LOCK_FILE}); "
            "let that one finish, or choose another folder"
        ) from None
    return fd


def _unwritable(directory: Path, exc: OSError) -> InputError:
    return InputError(f"cannot write to OUTPUT '{directory}' ({exc.strerror}); choose a folder you can write to")


# --- formats -------------------------------------------------------------------------------------------------------


def _write_parquet(path: Path, rows: Sequence[Row]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(rows)), path)


def _unify_parquet(parts: list[Path]) -> None:
    """Each part's columns typed alike, as one dataset needs: pyarrow types a part from its own rows, so a part in
    which no image had a detection holds a list of nulls, and one whose records all lacked a field has no column for
    it; with such a part first, the folder could not be read ('Unsupported cast from struct to null'). Those parts
    are written again (atomically: a run killed meanwhile does this again) with the types the others agree on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = {path: pq.read_schema(path) for path in parts}
    try:
        unified = pa.unify_schemas(list(schemas.values()), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column of numbers in one part and of texts in another: as is
        return
    for path, schema in schemas.items():
        if not schema.equals(unified):
            table = pq.read_table(path)
            columns = [
                table[field.name] if field.name in schema.names else pa.nulls(table.num_rows, field.type)
                for field in unified
            ]
            typed = pa.Table.from_arrays(columns, names=unified.names).cast(unified)
            atomic_write(path, partial(pq.write_table, typed))


def _write_jsonl(path: Path, rows: Sequence[Row]) -> None:
    with path.open("wb") as out:
        for row in rows:
            out.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def _write_csv(path: Path, rows: Sequence[Row]) -> None:
    import csv

    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(_cell(row.get(column)) for column in columns)


def _cell(value: object) -> object:
    """Lists and records (top-K, embeddings, raw outputs) as JSON text: a CSV cell holds one value."""
    if isinstance(value, list | dict):
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return "" if value is None else value


_WRITERS: dict[str, Callable[[Path, Sequence[Row]], None]] = {
    "parquet": _write_parquet,
    "csv": _write_csv,
    "jsonl": _write_jsonl,
}
