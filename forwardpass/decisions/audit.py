"""The audit log: one SQLite row per decision (time, model, version, input hash, scores, action, rule that fired).

SQLite in WAL mode, `synchronous=NORMAL`: a committed row survives the process being killed at any moment (kill -9;
it is in the OS's hands, without an fsync per decision), not a power cut. Two ways to record a request's decisions
before it is answered (`decision.audit_group_ms`):

- > 0 (the default, 20): journal. The rows are copied into a memory-mapped journal file beside the log
  (`<log>.pending/<pid>-<token>.jsonl`): a few microseconds, no system call, where a commit costs tens to hundreds.
  The page cache holds them the moment the copy is done, so an answered decision survives kill -9 exactly as a
  committed row does (and, like it, not a power cut). A writer thread moves them into SQLite every that many
  milliseconds, `close` moves the rest and deletes the journal, and any `query` (so `forwardpass audit`) or the next
  process to write the log moves whatever a live or a killed process left there. Until moved, a row is invisible to
  SQL readers other than forwardpass (at most one interval while its process lives). A kill loses only a line
  being copied at that instant, whose request was not answered.
- 0: commit. One SQLite transaction per request (or batch of items), committed before the answer: every answered
  decision is in the table itself.

Moving is exactly-once: the `journal_progress` table, updated in the transaction that moves a file's lines, counts
how many of them the log holds. A journal file is held by its writer with `flock`: one whose lock can be taken
belongs to a process that died, and is moved and deleted; one still held is moved and left to its writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from forwardpass.errors import AuditError

__all__ = [
    "AUDIT_LOG_ENV",
    "COLUMNS",
    "AuditLog",
    "AuditRecord",
    "default_audit_path",
    "input_hash",
    "utc_now",
    "utc_text",
]

AUDIT_LOG_ENV = "FORWARDPASS_AUDIT_LOG"
DEFAULT_AUDIT_LOG = Path(".forwardpass") / "audit.sqlite"
COLUMNS = ("id", "time", "model", "version", "input_hash", "scores", "action", "rule")
JOURNAL_SUFFIX = ".pending"  # <log>.pending/: the journal files not yet moved into the log
JOURNAL_BYTES = 8 << 20  # a journal file's size: once full, it is moved, deleted and followed by a new one

_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    scores TEXT NOT NULL,
    action TEXT NOT NULL,
    rule TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time);
CREATE INDEX IF NOT EXISTS decisions_model_action ON decisions (model, action);
CREATE TABLE IF NOT EXISTS journal_progress (name TEXT PRIMARY KEY, lines INTEGER NOT NULL);
"""
_INSERT = "INSERT INTO decisions (time, model, version, input_hash, scores, action, rule) VALUES (?, ?, ?, ?, ?, ?, ?)"
# A journal line: [time in µs since the epoch, model, version, input hash, scores, action, rule] (`->` gives the
# scores' JSON text with every number as written).
# Parameters: the journal file's name, the line number of the first line, the lines as one JSON array, how many.
# Moving the same lines twice is a no-op: journal_progress, updated in the same transaction, says how many of a
# file's lines are in the log already. SQLite parses the lines itself: no per-row Python holding the GIL.
_MOVE = """
INSERT INTO decisions (time, model, version, input_hash, scores, action, rule)
SELECT strftime('%Y-%m-%dT%H:%M:%S', (value ->> 0) / 1000000, 'unixepoch')
       || printf('.%06dZ', (value ->> 0) % 1000000),
       value ->> 1, value ->> 2, value ->> 3, value -> 4, value ->> 5, value ->> 6
FROM json_each(?3)
WHERE ?2 + key >= coalesce((SELECT lines FROM journal_progress WHERE name = ?1), 0) AND ?4 > 0
"""
_PROGRESS = """
INSERT INTO journal_progress (name, lines) VALUES (?1, ?2 + ?4)
ON CONFLICT (name) DO UPDATE SET lines = max(lines, excluded.lines)
"""


def default_audit_path() -> Path:
    """$FORWARDPASS_AUDIT_LOG, else .forwardpass/audit.sqlite in the working directory."""
    return Path(os.environ.get(AUDIT_LOG_ENV) or DEFAULT_AUDIT_LOG)


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text: formatting is costlier than a decision


def utc_text(epoch: float) -> str:
    """ISO 8601 in UTC with microseconds: text that sorts in time order, so time filters compare strings."""
    second = int(epoch)
    if _second[0] != second:
        _second[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = second
    return f"{_second[1]}.{int((epoch - second) * 1e6):06d}Z"


def utc_now() -> str:
    return utc_text(time.time())


# A model's few (name, dtype, shape): encoded once, and a hash state already fed with the encoding to copy.
_HEADERS: dict[tuple[str, np.dtype, tuple[int, ...]], tuple[bytes, hashlib.blake2s]] = {}


def input_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """BLAKE2s (256 bits) of the preprocessed inputs (names, dtypes, shapes and bytes): equal inputs hash equal.
    Python's own BLAKE2 costs a third of OpenSSL's SHA-256 per call on a request's few hundred bytes."""
    digest: hashlib.blake2s | None = None
    for name in sorted(arrays) if len(arrays) > 1 else arrays:
        array = arrays[name]
        key = (name, array.dtype, array.shape)
        header = _HEADERS.get(key)
        if header is None:
            encoded = f"{name}|{array.dtype.str}|{array.shape}|".encode()
            header = _HEADERS[key] = (encoded, hashlib.blake2s(encoded))
        if digest is None:
            digest = header[1].copy()
        else:
            digest.update(header[0])
        if array.dtype.hasobject:
            digest.update(repr(array.tolist()).encode())
        else:
            digest.update(array.data if array.flags.c_contiguous else array.tobytes())
    return (digest or hashlib.blake2s()).hexdigest()


Row = tuple[str, str, str, str, str, str, str]
# A decision as `write_decisions` takes it: (preprocessed inputs, scores, action, rule).
Decided = tuple[Mapping[str, np.ndarray], Mapping[str, Any], str, str]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: str
    model: str
    version: str
    input_hash: str
    scores: dict[str, Any]
    action: str
    rule: str
    id: int | None = None

    def row(self) -> Row:
        scores = orjson.dumps(self.scores, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        return (self.time, self.model, self.version, self.input_hash, scores, self.action, self.rule)


@dataclass(slots=True)
class _Journal:
    """A journal file this process appends to, locked while it lives, mapped into memory: appending is a copy into
    the OS's page cache, no system call, and the page cache outlives a killed process. Unwritten bytes are zeros."""

    path: Path
    fd: int
    memory: mmap.mmap
    capacity: int
    size: int = 0  # bytes written
    moved: int = 0  # bytes moved into the log
    moved_lines: int = 0

    def close(self) -> None:
        self.memory.close()
        os.close(self.fd)


class AuditLog:
    """Opened on first use; safe to share between threads."""

    def __init__(self, path: Path | str | None = None, group_ms: float = 0.0) -> None:
        self.path = Path(path) if path is not None else default_audit_path()
        self.journal_dir = self.path.with_name(self.path.name + JOURNAL_SUFFIX)
        self.group_s = group_ms / 1000.0
        self._start()
        _LOGS.add(self)

    def _start(self) -> None:
        """No connection, journal or writer yet: on creation, and in a forked child, which must not touch its
        parent's (the parent goes on appending to its journal; its writer thread did not follow into the child)."""
        self._connection: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()  # the connection
        self._journal_lock = threading.Lock()  # the journal being appended to
        self._journal: _Journal | None = None
        self._full: list[_Journal] = []  # journals rotated out, not yet moved into the log
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._closing = False

    def write_decisions(self, model: str, version: str, decisions: Iterable[Decided]) -> None:
        """One request's decisions, recorded before it is answered (journal or commit), or AuditError."""
        if self.group_s > 0:
            micros = time.time_ns() // 1000
            line = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
            lines = [
                orjson.dumps((micros, model, version, input_hash(inputs), scores, action, rule), option=line)
                for inputs, scores, action, rule in decisions
            ]
            if lines:
                self._append(lines[0] if len(lines) == 1 else b"".join(lines))
            return
        stamp = utc_now()
        self._commit(
            [
                (stamp, model, version, input_hash(inputs), _scores_text(scores), action, rule)
                for inputs, scores, action, rule in decisions
            ]
        )

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Records made elsewhere, with their own times (e.g. imported ones): committed in one transaction."""
        self._commit([record.row() for record in records])

    def flush(self, *, finish: bool = False) -> None:
        """Move every journal line this process wrote into the log, now; `finish`: delete its journal too."""
        with self._journal_lock:
            current = self._journal
            size = current.size if current is not None else 0
            if current is not None and finish:
                self._full.append(current)
                self._journal = current = None
            full, self._full = self._full, []
        for index, journal in enumerate(full):
            try:
                self._move_new(journal, journal.size)
            except AuditError:
                with self._journal_lock:  # kept (still on disk, still locked) for the next try
                    self._full[:0] = full[index:]
                raise
            self._delete(journal.path)
            journal.close()
        if current is not None:
            self._move_new(current, size)

    def _move_new(self, journal: _Journal, size: int) -> None:
        """The lines written to one of this process's journals since the last move (up to `size`)."""
        if size > journal.moved:
            data = journal.memory[journal.moved : size]
            journal.moved_lines += self._move_lines(journal.path.name, data, journal.moved_lines)
            journal.moved = size

    def query(
        self,
        *,
        model: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Decisions in time order (journals moved in first); `since` / `until` are ISO 8601 prefixes in UTC (since
        inclusive, until not)."""
        try:
            self._move_journals()
        except (AuditError, OSError) as exc:  # e.g. a reader without write access: the table is still worth reading
            _log.warning(
                "audit log %s: journals not moved (%s); decisions still in them are not listed", self.path, exc
            )
        clauses, values = [], []
        for column, op, value in (("model", "=", model), ("action", "=", action), ("time", ">=", since)):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                values.append(value)
        if until is not None:
            clauses.append("time < ?")
            values.append(until)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        sql = f"SELECT {', '.join(COLUMNS)} FROM decisions{where} ORDER BY time, id{tail}"
        with self._db_lock:
            try:
                rows = self._connect().execute(sql, values).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: {exc}") from None
        for row in rows:
            yield AuditRecord(row[1], row[2], row[3], row[4], orjson.loads(row[5]), row[6], row[7], id=row[0])

    def close(self) -> None:
        """Stop the writer, move this process's journal lines into the log, close the connection."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        self._closing = False
        self._wake.clear()
        self.flush(finish=True)
        with self._db_lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # journal -----------------------------------------------------------------------------------------------------

    def _append(self, payload: bytes) -> None:
        with self._journal_lock:
            journal = self._journal
            try:
                if journal is None or journal.size + len(payload) > journal.capacity:
                    if journal is not None:  # full: the writer moves it and deletes it
                        self._full.append(journal)
                    journal = self._open_journal(len(payload))
            except OSError as exc:
                raise AuditError(f"audit journal {self.journal_dir}: {exc}; the decision was not recorded") from None
            journal.size += journal.memory.write(payload)  # at journal.size: only this appends to it

    def _open_journal(self, least: int) -> _Journal:
        """A new journal file of at least `least` bytes (its disk blocks allocated now, so that a full disk fails
        here and not as a fault on a later write), locked before it gets the name recovery looks for. Called with
        _journal_lock held."""
        if self._writer is None:
            self._connect_and_recover()
            self._writer = threading.Thread(target=self._write_groups, name="forwardpass-audit", daemon=True)
            self._writer.start()
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}.jsonl"
        hidden = self.journal_dir / f".{name}"
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = max(JOURNAL_BYTES, least)
            os.posix_fallocate(fd, 0, size)
            memory = mmap.mmap(fd, size)
            hidden.rename(self.journal_dir / name)
        except OSError:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            raise
        self._journal = _Journal(self.journal_dir / name, fd, memory, size)
        return self._journal

    def _connect_and_recover(self) -> None:
        with self._db_lock:
            try:
                self._connect()
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: {exc}; the decision was not recorded") from None
        self._move_journals()

    def _write_groups(self) -> None:
        while not self._closing:
            self._wake.wait(self.group_s)
            try:
                self.flush()
            except AuditError as exc:  # the lines stay in the journal; the next interval tries again
                _log.warning("%s", exc)

    def _move_journals(self) -> None:
        """Move every journal file's lines into the log; delete those whose writer is gone."""
        if not self.journal_dir.is_dir():
            return
        for path in sorted(self.journal_dir.glob("*.jsonl")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # moved and deleted by its writer meanwhile
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its writer lives: move what it holds so far, leave the file to it
                    self._move(path)
                    continue
                self._move(path)
                self._delete(path)
            finally:
                os.close(fd)

    def _delete(self, path: Path) -> None:
        """A journal file whose lines are all in the log, then its progress row (a crash between leaves a harmless
        row; the other order could move its lines twice)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with self._db_lock, contextlib.suppress(sqlite3.Error), self._connect() as connection:
            connection.execute("DELETE FROM journal_progress WHERE name = ?", (path.name,))

    def _move(self, path: Path) -> None:
        """A journal file's complete lines into the log; lines already there are skipped."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        written = data.find(b"\0")  # the zeros its writer had not reached
        self._move_lines(path.name, data if written < 0 else data[:written], 0)

    def _move_lines(self, name: str, data: bytes, first_line: int) -> int:
        """Journal lines (`data`, from line `first_line` of journal file `name`) into the log, in one transaction
        that SQLite parses itself (no per-row Python, so the writer thread barely holds the GIL). Returns how many
        complete lines `data` held."""
        complete = data[: data.rfind(b"\n") + 1]  # a line cut short by a kill mid-write was never answered
        count = complete.count(b"\n")
        if not count:
            return 0
        try:
            self._move_array(name, first_line, "[" + complete[:-1].replace(b"\n", b",").decode() + "]", count)
        except (AuditError, UnicodeDecodeError):
            # a damaged line spoils the whole array: move line by line, skipping the damaged ones
            for number, line in enumerate(complete.splitlines(), first_line):
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    _log.warning("audit journal %s: unreadable line %d skipped", name, number)
                    continue
                self._move_array(name, number, f"[{line.decode()}]", 1)
        return count

    def _move_array(self, name: str, first_line: int, lines: str, count: int) -> None:
        parameters = (name, first_line, lines, count)
        with self._db_lock:
            try:
                connection = self._connect()
                with connection:  # BEGIN IMMEDIATE … COMMIT: no other writer between reading and moving progress
                    connection.execute(_MOVE, parameters)
                    connection.execute(_PROGRESS, parameters)
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: {exc}; journal {name} stays for the next try") from None

    # SQLite ------------------------------------------------------------------------------------------------------

    def _commit(self, rows: list[Row]) -> None:
        if not rows:
            return
        with self._db_lock:
            try:
                connection = self._connect()
                with connection:  # BEGIN … COMMIT, ROLLBACK on error
                    connection.executemany(_INSERT, rows)
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: {exc}; the decision was not recorded") from None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=10.0, isolation_level="IMMEDIATE", check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            self._connection = connection
        return self._connection


_LOGS: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def _restart_in_child() -> None:
    for log in list(_LOGS):
        log._start()


os.register_at_fork(after_in_child=_restart_in_child)


def _scores_text(scores: Mapping[str, Any]) -> str:
    return orjson.dumps(scores, option=orjson.OPT_SERIALIZE_NUMPY).decode()
