"""The audit journal's mover: how answered decisions get from journal files into the SQLite audit log.

A process that writes decisions appends each request's rows, one JSON line each, to a journal file of its own beside
the log (`<log>.pending/<pid>-<token>.jsonl`, see audit.py), holding a `flock` on it while it writes there. The mover
copies complete lines into the `decisions` table and deletes a journal file whose lock it can take (its writer is
done with it, or died). Unwritten bytes are zeros: a line is complete once its newline comes before any zero.

Exactly once: the `journal_progress` table, updated in the transaction that moves a file's lines, counts how many of
them the log holds, so moving lines again is a no-op. Its rows outlive their files: a mover that read a file just
before another deleted it must still find the count.

Run as a script (`python -I journal.py LOG INTERVAL_MS`), this is the child process a writing process starts: it
moves every journal of LOG each interval, and once more when its standard input closes (its parent died, SIGKILL
included), then exits; a parent that closes the log stops it (SIGTERM) and makes that last move itself. A process
rather than a thread, so that SQLite's work never takes the writer's GIL: the request path pays for the append
alone. It imports nothing from forwardpass (the standard library and orjson), so it starts in milliseconds. Lines
are parsed by orjson and inserted with `executemany`: 6 µs a row, where SQLite's own json_each (3.40 re-parses a
row for each field it extracts) took 8.5.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import select
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from math import inf
from pathlib import Path

import orjson

__all__ = ["Mover", "connect", "journal_folder", "make_spare", "remove_spares", "take_spare"]

JOURNAL_SUFFIX = ".pending"  # <log>.pending/: the journal files not yet moved into the log
JOURNAL_BYTES = 8 << 20  # a journal file's size: once full, it is moved, deleted and followed by a new one
# A spare: a journal-sized file of zeros the mover wrote out ahead of time. A writer that takes it appends without
# page faults that allocate disk blocks (~2 µs a request in the predict loop with a fresh file's).
SPARE_PREFIX, MAKING_PREFIX = ".spare-", ".making-"
READ_BYTES = 1 << 16  # what one read of a journal takes: the lines of a few milliseconds, not the zeros beyond them

_log = logging.getLogger("forwardpass.decisions.audit")

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS written_once (key TEXT PRIMARY KEY);
"""
INSERT = "INSERT INTO decisions (time, model, version, input_hash, scores, action, rule) VALUES (?, ?, ?, ?, ?, ?, ?)"
CLAIM = "INSERT INTO written_once (key) VALUES (?) ON CONFLICT (key) DO NOTHING"  # rowcount 0: written already
_PROGRESS = """
INSERT INTO journal_progress (name, lines) VALUES (?1, ?2)
ON CONFLICT (name) DO UPDATE SET lines = max(lines, excluded.lines)
"""
_last_second: tuple[int, str] = (-1, "")  # a whole second and its text: formatting costs more than a row


def utc_text(micros: int) -> str:
    """ISO 8601 in UTC with microseconds: text that sorts in time order, so time filters compare strings."""
    global _last_second
    second, fraction = divmod(micros, 1_000_000)
    cached = _last_second  # one tuple, swapped whole: threads never see one second with another's text
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{fraction:06d}Z"


def journal_folder(log: Path) -> Path:
    return log.with_name(log.name + JOURNAL_SUFFIX)


def connect(log: Path) -> sqlite3.Connection:
    """The log, created if new. WAL with `synchronous=NORMAL`: a committed row survives the process being killed
    (kill -9), not a power cut, without an fsync per commit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(log, timeout=10.0, isolation_level="IMMEDIATE", check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(SCHEMA)
    return connection


@dataclass(slots=True)
class _Reading:
    """A journal file being moved: where the last move stopped."""

    fd: int
    offset: int = 0  # bytes moved
    lines: int = 0  # lines moved


class Mover:
    """Moves the journal files of one log into it, each from where the last move stopped. Not thread-safe: its
    owner serializes calls (and its connection's use)."""

    def __init__(self, connection: sqlite3.Connection, folder: Path) -> None:
        self.connection = connection
        self.folder = folder
        self._reading: dict[str, _Reading] = {}

    def move(self) -> None:
        """Every journal file's complete lines not yet moved; files whose writer is done are deleted. Raises
        sqlite3.Error (what was not moved stays for the next call) or OSError."""
        present = set()
        for path in sorted(self.folder.glob("*.jsonl")) if self.folder.is_dir() else []:
            present.add(path.name)
            reading = self._reading.get(path.name)
            if reading is None:
                try:
                    reading = self._reading[path.name] = _Reading(os.open(path, os.O_RDONLY))
                except FileNotFoundError:  # deleted by another mover meanwhile
                    continue
            try:
                fcntl.flock(reading.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer is still at it: move what it wrote so far, leave it the file
                self._move_new(path.name, reading)
                continue
            try:
                self._move_new(path.name, reading)
            except BaseException:
                fcntl.flock(reading.fd, fcntl.LOCK_UN)  # moved next time, by whichever mover gets to it
                raise
            path.unlink(missing_ok=True)
            self._forget(path.name)
        for name in self._reading.keys() - present:  # deleted by another mover
            self._forget(name)

    def close(self) -> None:
        for name in list(self._reading):
            self._forget(name)

    def _forget(self, name: str) -> None:
        os.close(self._reading.pop(name).fd)

    def _move_new(self, name: str, reading: _Reading) -> None:
        size = READ_BYTES
        while True:
            data = os.pread(reading.fd, size, reading.offset)
            unwritten = data.find(b"\0")  # where its writer had not reached when read
            written = data if unwritten < 0 else data[:unwritten]
            # a line cut short (by the read, the writer or a kill) waits for the rest, or was never answered
            complete = written[: written.rfind(b"\n") + 1]
            if complete:
                reading.lines += self._move_lines(name, complete, reading.lines)
                reading.offset += len(complete)
            if unwritten >= 0 or len(data) < size:
                return
            if not complete:  # one line longer than a read
                size *= 2

    def _move_lines(self, name: str, lines: bytes, first_line: int) -> int:
        """Complete lines, from line `first_line` of journal file `name`, into the log in one transaction; lines
        the log holds already are skipped, unreadable ones too (with a warning). Returns how many lines there were.
        A journal line: [time in µs since the epoch, model, version, input hash, scores, action, rule]."""
        rows: list[tuple[str, ...] | None] = []
        for number, line in enumerate(lines.splitlines(), first_line):
            try:
                micros, model, version, digest, scores, action, rule = orjson.loads(line)
                rows.append((utc_text(micros), model, version, digest, orjson.dumps(scores).decode(), action, rule))
            except (orjson.JSONDecodeError, TypeError, ValueError):  # damaged, or not the seven fields
                _log.warning("audit journal %s: unreadable line %d skipped", name, number)
                rows.append(None)
        with self.connection:  # BEGIN IMMEDIATE … COMMIT: no other mover between reading and moving progress
            done = self.connection.execute("SELECT lines FROM journal_progress WHERE name = ?", (name,)).fetchone()
            fresh = rows[max((done[0] if done else 0) - first_line, 0) :]
            self.connection.executemany(INSERT, [row for row in fresh if row is not None])
            self.connection.execute(_PROGRESS, (name, first_line + len(rows)))
        return len(rows)


def take_spare(folder: Path, target: Path) -> bool:
    """Rename a spare (if any is left) to `target`, a name no mover looks at; False if there is none."""
    for spare in folder.glob(f"{SPARE_PREFIX}*"):
        try:
            spare.rename(target)
        except FileNotFoundError:  # another writer took it first
            continue
        return True
    return False


def make_spare(folder: Path) -> None:
    """A spare for the next writer that needs a journal: zeros written out (blocks allocated, pages clean)."""
    token = secrets.token_hex(6)
    folder.mkdir(parents=True, exist_ok=True)
    making = folder / f"{MAKING_PREFIX}{token}"
    fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if os.pwrite(fd, bytes(JOURNAL_BYTES), 0) != JOURNAL_BYTES:
            raise OSError(f"short write to {making}")
        os.fsync(fd)
    except OSError:
        making.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    making.rename(folder / f"{SPARE_PREFIX}{token}")


def remove_spares(folder: Path) -> None:
    """Spares, and spares half made (by a mover that was stopped): when the last writer is gone."""
    for spare in [*folder.glob(f"{SPARE_PREFIX}*"), *folder.glob(f"{MAKING_PREFIX}*")]:
        spare.unlink(missing_ok=True)


def run(log: Path, interval_s: float) -> None:
    """The mover process: a move every interval (and a spare kept ready), a last one when standard input closes."""
    folder = journal_folder(log)
    mover = Mover(connect(log), folder)
    stdin = sys.stdin.fileno()
    warn = _Warnings()
    next_spare = 0.0  # after a failure to make one, the next try waits a minute (writers make their own meanwhile)
    while True:
        ready, _, _ = select.select([stdin], [], [], interval_s)
        closing = bool(ready) and not os.read(stdin, 4096)
        try:
            mover.move()
        except (sqlite3.Error, OSError) as exc:  # the lines stay in their journal for the next move
            warn(f"audit log {log}: {exc}; the journals stay for the next move")
        if not closing and time.monotonic() >= next_spare and not any(folder.glob(f"{SPARE_PREFIX}*")):
            try:
                make_spare(folder)
            except OSError as exc:
                warn(f"audit journal {folder}: no spare made ({exc}); writers make their own")
                next_spare = time.monotonic() + 60
        if closing:
            remove_spares(folder)
            mover.close()
            mover.connection.close()
            return


class _Warnings:
    """A warning once, then again only after a minute or when it changes: a full disk would otherwise be logged at
    every interval."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(message, -inf) >= 60:
            self._last[message] = now
            _log.warning("%s", message)


if __name__ == "__main__":
    logging.basicConfig(format="forwardpass audit mover: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    run(Path(sys.argv[1]), float(sys.argv[2]) / 1000.0)
