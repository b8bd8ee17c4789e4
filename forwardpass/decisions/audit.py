"""The audit log: one SQLite row per decision (time, model, version, input hash, scores, action, rule that fired).

Two ways to record a request's decisions before it is answered (`decision.audit_group_ms`):

- > 0 (the default, 100): journal. The rows are copied into a memory-mapped journal file beside the log
  (`<log>.pending/<pid>-<token>.jsonl`): a few microseconds, no system call, where a commit costs tens to hundreds.
  The page cache holds them the moment the copy is done, so an answered decision survives kill -9 exactly as a
  committed row does (and, like it, not a power cut). A mover process (journal.py), one per log per process, moves
  them into SQLite every that many milliseconds; `close` moves the rest and deletes the journal, and any `query` (so
  `forwardpass audit`) or the next mover moves whatever a live or a killed process left there. Until moved, a row is
  invisible to SQL readers other than forwardpass (at most one interval while its process lives). A kill loses only
  a line being copied at that instant, whose request was not answered.
- 0: commit. One SQLite transaction per request (or batch of items), committed before the answer: every answered
  decision is in the table itself.

A batch job holds its decisions instead (`held`) and commits each part's with the part (`write_once`, under a key
of the job and part): a part scored again after a kill is audited once, as its records are written once.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from forwardpass.decisions import journal
from forwardpass.decisions.journal import Mover, journal_folder
from forwardpass.errors import AuditError, ConfigError, InputError, NotFoundError

__all__ = [
    "AUDIT_LOG_ENV",
    "COLUMNS",
    "AuditLog",
    "AuditRecord",
    "default_audit_path",
    "input_hash",
    "open_existing",
    "owned_by",
    "utc_now",
    "utc_prefix",
]

AUDIT_LOG_ENV = "FORWARDPASS_AUDIT_LOG"
DEFAULT_AUDIT_LOG = Path(".forwardpass") / "audit.sqlite"
COLUMNS = ("id", "time", "model", "version", "input_hash", "scores", "action", "rule")

_log = logging.getLogger(__name__)


def default_audit_path() -> Path:
    """$FORWARDPASS_AUDIT_LOG, else .forwardpass/audit.sqlite in the working directory."""
    return Path(os.environ.get(AUDIT_LOG_ENV) or DEFAULT_AUDIT_LOG)


def open_existing(path: Path) -> AuditLog:
    """The audit log at `path`, to read: refused unless it is one (an SQLite file with a decisions table), since
    opening a log creates its tables, and a mistyped path must not get them written into another file."""
    if not path.is_file():
        raise NotFoundError(f"no audit log at {path}; predict with a model that has a decision rule, or pass --log")
    try:
        reader = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = reader.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'").fetchone()
        finally:
            reader.close()
    except sqlite3.Error as exc:
        raise InputError(f"{path} is not an audit log ({exc})") from None
    if found is None:
        raise InputError(f"{path} is not an audit log: an SQLite database without a decisions table")
    return AuditLog(path)


def owned_by(log: Path) -> list[Path]:
    """The files and folder a log keeps its decisions in: SQLite's own beside it, and the journals."""
    return [log, *(log.with_name(log.name + suffix) for suffix in ("-wal", "-shm", "-journal")), journal_folder(log)]


def utc_now() -> str:
    return journal.utc_text(time.time_ns() // 1000)


_ISO_PREFIX = re.compile(r"\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,6})?)?)?)?)?)?Z?")
_EARLIEST = "0001-01-01T00:00:00"


def utc_prefix(option: str, value: str) -> str:
    """A time the log's rows are compared with as text ('2026-11-26T14:30:00.123456Z'), from an ISO 8601 prefix
    in UTC: a year, a date, a time to the minute, second or microsecond, with 'T' or a space, with or without the
    rows' own 'Z'. A space becomes 'T' (it sorts before 'T', so a day's every row would compare after its noon);
    InputError naming `option` for what is no such time, a month 13 or a 30 February included."""
    text = value.replace(" ", "T", 1).removesuffix("Z")
    try:
        valid = _ISO_PREFIX.fullmatch(value) is not None and bool(datetime.fromisoformat(text + _EARLIEST[len(text) :]))
    except ValueError:
        valid = False
    if not valid:
        raise InputError(f"{option} '{value}' is not a UTC time: give ISO 8601 such as 2026-11-26 or 2026-11-26T14:30")
    return text


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
    """A journal file this process appends to, locked while it does, mapped into memory: appending is a copy into
    the OS's page cache, no system call, and the page cache outlives a killed process. Unwritten bytes are zeros."""

    fd: int
    memory: mmap.mmap
    capacity: int
    size: int = 0  # bytes written

    def close(self) -> None:
        """Done with: unlocked, so the mover moves the rest and deletes it."""
        self.memory.close()
        os.close(self.fd)


class AuditLog:
    """Opened on first use; safe to share between threads."""

    def __init__(self, path: Path | str | None = None, group_ms: float = 0.0) -> None:
        self.path = Path(path) if path is not None else default_audit_path()
        self.journal_dir = journal.journal_folder(self.path)
        self.group_ms = group_ms
        self.held: list[Row] | None = None  # a list: decisions are kept there, not recorded (see write_once)
        self._start()
        _LOGS.add(self)

    def _start(self) -> None:
        """No connection, journal or mover yet: on creation, and in a forked child, which must not touch its
        parent's (the parent goes on appending to its journal, and its mover serves the parent)."""
        self._connection: sqlite3.Connection | None = None
        self._mover: Mover | None = None  # this process's own moves (query, close), with the connection
        self._db_lock = threading.Lock()  # the connection
        self._journal_lock = threading.Lock()  # the journal being appended to
        self._journal: _Journal | None = None
        self._mover_process: _MoverProcess | None = None

    def check_writable(self) -> None:
        """ConfigError unless the log and its journal folder can be written: opened as SQLite (created if new, its
        tables made) and the folder made. Run where a process starts deciding, so that a log it cannot write is
        refused once there, before anything is scored, rather than failing each decision."""
        try:
            with self._db_lock:
                self._connect()
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            problem = None if os.access(self.journal_dir, os.W_OK) else "permission denied"
        except sqlite3.Error as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"{exc.strerror or type(exc).__name__}: {exc.filename}" if exc.filename else str(exc)
        if problem is not None:
            raise ConfigError(
                f"audit log {self.path} cannot be written ({problem}): set {AUDIT_LOG_ENV} to a writable path"
            )

    def write_decisions(self, model: str, version: str, decisions: Iterable[Decided]) -> None:
        """One request's decisions, recorded before it is answered (journal or commit), or AuditError; kept in
        `held` instead while that is a list."""
        if self.group_ms > 0 and self.held is None:
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
        rows = [
            (stamp, model, version, input_hash(inputs), _scores_text(scores), action, rule)
            for inputs, scores, action, rule in decisions
        ]
        if self.held is not None:
            self.held.extend(rows)
        else:
            self._commit(rows)

    def write_once(self, key: str, rows: Iterable[Sequence[str]]) -> None:
        """`rows` (held ones) committed in one transaction with `key`, unless a transaction with that key was
        committed before: then they are there already (a batch job's part, scored again after its run was killed
        between this and recording the part done). AuditError if the log cannot take them."""
        with self._db_lock:
            try:
                connection = self._connect()
                with connection:  # BEGIN … COMMIT, ROLLBACK on error
                    if connection.execute(journal.CLAIM, (key,)).rowcount:
                        connection.executemany(journal.INSERT, rows)
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: {exc}; the decisions were not recorded") from None

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Records made elsewhere, with their own times (e.g. imported ones): committed in one transaction."""
        self._commit([record.row() for record in records])

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
        inclusive, until not; see `utc_prefix`)."""
        try:
            self._move_journals()
        except (AuditError, OSError) as exc:  # e.g. a reader without write access: the table is still worth reading
            _log.warning(
                "audit log %s: journals not moved (%s); decisions still in them are not listed", self.path, exc
            )
        clauses, values = [], []
        since = utc_prefix("since", since) if since is not None else None
        until = utc_prefix("until", until) if until is not None else None
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
        """Finish this process's journal, stop the mover unless another log of this process shares it, move what
        is left here (the mover's last move would make close wait for its start-up), close the connection.
        AuditError if the log cannot take the rows (they stay in the journal for the next move). A log this process
        never journaled to has nothing of its own to move: one that cannot be opened failed each decision already."""
        with self._journal_lock:
            current, self._journal = self._journal, None
            mover, self._mover_process = self._mover_process, None
        if current is not None:
            current.close()
        stopped = mover is not None and mover.release()
        try:
            if mover is not None:
                self._move_journals()
            if stopped:
                journal.remove_spares(self.journal_dir)
        finally:
            with self._db_lock:
                if self._mover is not None:
                    self._mover.close()
                    self._mover = None
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

    # journal -----------------------------------------------------------------------------------------------------

    def _append(self, payload: bytes) -> None:
        with self._journal_lock:
            current = self._journal
            try:
                if current is None or current.size + len(payload) > current.capacity:
                    if current is not None:  # full: the mover moves it and deletes it
                        current.close()
                    current = self._open_journal(len(payload))
            except OSError as exc:
                raise AuditError(f"audit journal {self.journal_dir}: {exc}; the decision was not recorded") from None
            current.size += current.memory.write(payload)  # at current.size: only this appends to it

    def _open_journal(self, least: int) -> _Journal:
        """A new journal file of at least `least` bytes, the mover's spare if one is ready (else one made now, its
        disk blocks allocated, so that a full disk fails here and not as a fault on a later write), locked before it
        gets the name movers look for. Called with _journal_lock held."""
        if self._mover_process is None:
            with self._db_lock:  # a log that cannot be opened fails the first decision, not the mover later
                try:
                    self._connect()
                except sqlite3.Error as exc:
                    raise AuditError(f"audit log {self.path}: {exc}; the decision was not recorded") from None
            self._mover_process = _MoverProcess.acquire(self.path, self.group_ms)
        else:
            self._mover_process.ensure_running()
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}.jsonl"
        unnamed = self.journal_dir / f".{name}.new"  # not *.jsonl: no mover sees it before it is locked
        spare = least <= journal.JOURNAL_BYTES and journal.take_spare(self.journal_dir, unnamed)
        fd = os.open(unnamed, os.O_RDWR if spare else os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = journal.JOURNAL_BYTES if spare else max(journal.JOURNAL_BYTES, least)
            if not spare and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            elif not spare:  # macOS has no posix_fallocate: the blocks come with the writes there
                os.ftruncate(fd, size)
            memory = mmap.mmap(fd, size)
            unnamed.rename(self.journal_dir / name)
        except OSError:
            os.close(fd)
            unnamed.unlink(missing_ok=True)
            raise
        self._journal = _Journal(fd, memory, size)
        return self._journal

    def _move_journals(self) -> None:
        """Every journal's lines into the log now, in this process; those whose writer is done deleted."""
        with self._db_lock:
            try:
                if self._mover is None:
                    self._mover = Mover(self._connect(), self.journal_dir)
                self._mover.move()
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: {exc}; the journals stay for the next move") from None

    # SQLite ------------------------------------------------------------------------------------------------------

    def _commit(self, rows: list[Row]) -> None:
        if not rows:
            return
        with self._db_lock:
            try:
                connection = self._connect()
                with connection:  # BEGIN … COMMIT, ROLLBACK on error
                    connection.executemany(journal.INSERT, rows)
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: {exc}; the decision was not recorded") from None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = journal.connect(self.path)
        return self._connection


class _MoverProcess:
    """The mover process (journal.py) of one log, shared by this process's AuditLogs of that log. It exits when
    its standard input closes: on the last `release`, or with this process, however it dies."""

    def __init__(self, log: Path, group_ms: float) -> None:
        self.log, self.group_ms = log, group_ms
        self.users = 0
        self.process = self._spawn()

    @classmethod
    def acquire(cls, log: Path, group_ms: float) -> _MoverProcess:
        key = os.path.abspath(log)
        with _movers_lock:
            mover = _movers.get(key)
            if mover is None:
                mover = _movers[key] = cls(log, group_ms)
            else:
                mover.ensure_running()
            mover.users += 1
            return mover

    def ensure_running(self) -> None:
        """Started again if it died (killed, say): checked whenever a journal file is opened."""
        if self.process.poll() is not None:
            _log.warning("audit mover of %s exited (%s); starting another", self.log, self.process.returncode)
            self.process = self._spawn()

    def release(self) -> bool:
        """One user fewer; the last one stops the mover (SIGTERM: a move it was making rolls back, and the caller
        moves what is left) and gets True."""
        with _movers_lock:
            self.users -= 1
            if self.users > 0:
                return False
            del _movers[os.path.abspath(self.log)]
        self.process.terminate()
        self.process.wait()
        assert self.process.stdin is not None
        self.process.stdin.close()
        return True

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-I", journal.__file__, str(self.log), str(self.group_ms)]
        try:
            return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        except OSError as exc:
            raise AuditError(
                f"audit log {self.log}: cannot start its mover ({exc}); the decision was not recorded"
            ) from None


_movers: dict[str, _MoverProcess] = {}  # by the log's absolute path
_movers_lock = threading.Lock()
_LOGS: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def _restart_in_child() -> None:
    global _movers_lock
    _movers.clear()  # the parent's, which serve the parent
    _movers_lock = threading.Lock()
    for log in list(_LOGS):
        log._start()


os.register_at_fork(after_in_child=_restart_in_child)


def _scores_text(scores: Mapping[str, Any]) -> str:
    return orjson.dumps(scores, option=orjson.OPT_SERIALIZE_NUMPY).decode()
