"""The audit journal (the default, `audit_group_ms > 0`): an answered decision is in a journal file before the
answer, survives its process being killed with SIGKILL, reaches the SQLite table by the interval, on close, or on
the next query, and is moved exactly once however many readers move it. `audit_group_ms: 0` commits before answering."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import yaml

import forwardpass
from forwardpass.decisions import AuditLog
from forwardpass.decisions.journal import JOURNAL_BYTES, JOURNAL_SUFFIX

RECORD = {"mean radius": 14.0, "mean texture": 19.0, "mean smoothness": 0.1, "mean concavity": 0.09}
NEVER_MS = 600_000.0  # an interval no test outlives: rows move only on close or query


def decided(index: int) -> tuple[dict[str, np.ndarray], dict[str, object], str, str]:
    return {"input": np.array([index, 0.5], dtype=np.float32)}, {"score": index / 100}, "allow", "default -> allow"


def table_count(path: Path) -> int:
    """Rows in the SQLite table as any SQL reader sees them (no journal moved by reading)."""
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM decisions").fetchone()[0])


def journals(path: Path) -> list[Path]:
    folder = path.with_name(path.name + JOURNAL_SUFFIX)
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def test_journal_rows_reach_the_table_by_the_interval_and_on_close(tmp_path):
    path = tmp_path / "a.sqlite"
    log = AuditLog(path, group_ms=20)
    log.write_decisions("m", "1", [decided(i) for i in range(3)])
    deadline = time.monotonic() + 10
    while table_count(path) < 3:  # the writer thread moves them within its interval
        assert time.monotonic() < deadline, "the journal rows never reached the table"
        time.sleep(0.01)
    log.write_decisions("m", "1", [decided(3)])
    log.close()
    assert table_count(path) == 4
    assert journals(path) == []
    rows = list(AuditLog(path).query())
    assert [row.scores for row in rows] == [{"score": i / 100} for i in range(4)]
    assert rows[0].time.endswith("Z") and len(rows[0].time) == len("2026-01-01T00:00:00.000000Z")


def test_a_writer_takes_the_spare_its_mover_wrote_ahead(tmp_path):
    path = tmp_path / "a.sqlite"
    log = AuditLog(path, group_ms=10)
    log.write_decisions("m", "1", [decided(0)])
    folder = path.with_name(path.name + JOURNAL_SUFFIX)
    deadline = time.monotonic() + 30
    while not list(folder.glob(".spare-*")):
        assert time.monotonic() < deadline, "the mover made no spare"
        time.sleep(0.01)
    spare = next(folder.glob(".spare-*"))
    assert spare.stat().st_size == JOURNAL_BYTES and spare.read_bytes().count(0) == JOURNAL_BYTES
    with log._journal_lock:  # as when the journal is full: the next append takes the spare
        assert log._journal is not None
        log._journal.size = log._journal.capacity
    log.write_decisions("m", "1", [decided(1)])
    assert not spare.exists()
    log.close()
    assert [row.scores["score"] for row in AuditLog(path).query()] == [0.0, 0.01]
    assert not list(folder.iterdir())  # journals moved and deleted, spares deleted by the exiting mover


def test_queries_move_a_live_journal_exactly_once(tmp_path):
    path = tmp_path / "a.sqlite"
    log = AuditLog(path, group_ms=NEVER_MS)
    log.write_decisions("m", "1", [decided(i) for i in range(5)])
    reader = AuditLog(path)
    assert len(list(reader.query())) == 5
    log.write_decisions("m", "1", [decided(5), decided(6)])
    assert len(list(reader.query())) == 7
    assert len(journals(path)) == 1  # its writer lives: the file stays
    log.close()
    assert [row.scores["score"] for row in reader.query()] == [i / 100 for i in range(7)]
    assert journals(path) == []
    reader.close()


WRITER = """
import sys
import numpy as np
from forwardpass.decisions import AuditLog
log = AuditLog(sys.argv[1], group_ms=600_000)
for i in range(50):
    log.write_decisions("m", "1", [({"input": np.array([i], dtype=np.float32)}, {"score": i}, "allow", "r")])
print("answered", flush=True)
sys.stdin.read()
"""


def test_a_killed_writer_loses_no_answered_decision(tmp_path):
    path = tmp_path / "killed.sqlite"
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "answered"
            # the writer and its mover at once, as when a machine's processes die
            os.killpg(process.pid, signal.SIGKILL)
            assert process.wait(30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    assert table_count(path) == 0  # nothing had moved: the journal alone kept them
    rows = list(AuditLog(path).query())
    assert sorted(row.scores["score"] for row in rows) == list(range(50))
    assert len({row.input_hash for row in rows}) == 50
    assert journals(path) == []  # its writer is gone: moved and deleted
    assert len(list(AuditLog(path).query())) == 50


def test_the_mover_of_a_killed_writer_moves_its_rows_and_exits(tmp_path):
    path = tmp_path / "orphan.sqlite"
    script = WRITER.replace('print("answered"', 'print(log._mover_process.process.pid)\nprint("answered"')
    with subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            mover = int(process.stdout.readline())
            assert process.stdout.readline().strip() == "answered"
            process.send_signal(signal.SIGKILL)  # the writer alone: its mover sees its standard input close
            assert process.wait(30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{mover}").exists() and Path(f"/proc/{mover}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the mover outlived its writer"
        time.sleep(0.01)
    assert table_count(path) == 50  # moved by the mover itself, not by a query
    assert journals(path) == []


def test_a_killed_mover_loses_nothing(tmp_path):
    path = tmp_path / "a.sqlite"
    log = AuditLog(path, group_ms=NEVER_MS)
    log.write_decisions("m", "1", [decided(0)])
    mover = log._mover_process
    assert mover is not None
    mover.process.kill()
    mover.process.wait(30)
    log.write_decisions("m", "1", [decided(1)])
    log.close()
    assert [row.scores["score"] for row in AuditLog(path).query()] == [0.0, 0.01]
    assert journals(path) == []


def test_damaged_and_unfinished_lines_are_skipped(tmp_path):
    path = tmp_path / "a.sqlite"
    folder = path.with_name(path.name + JOURNAL_SUFFIX)
    folder.mkdir()
    good = [orjson.dumps([1_700_000_000_000_000 + i, "m", "1", f"h{i}", {"s": i}, "a", "r"]) for i in range(3)]
    damaged = b"{not json\n" + b'["a line", "of the wrong shape"]\n'
    (folder / "123-dead.jsonl").write_bytes(good[0] + b"\n" + damaged + good[1] + b"\n" + good[2][:9])
    rows = list(AuditLog(path).query())
    assert [row.input_hash for row in rows] == ["h0", "h1"]
    assert rows[0].time == "2023-11-14T22:13:20.000000Z"


def test_commit_mode_rows_are_in_the_table_before_the_answer(tasks, audit_log, tmp_path):
    folder = Path(shutil.copytree(tasks.root / "triage", tmp_path / "repo" / "triage"))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["decision"]["audit_group_ms"] = 0
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    model = forwardpass.load("triage", repository=tmp_path / "repo")
    model.predict([RECORD, RECORD])
    assert table_count(audit_log) == 2
    model.predict(RECORD)
    assert table_count(audit_log) == 3
    assert journals(audit_log) == []
    model.close()


def test_the_input_hash_covers_name_dtype_shape_and_values_and_not_the_memory_layout():
    from forwardpass.decisions.audit import input_hash

    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    column = grid[:, 1]  # strided
    assert input_hash({"x": column}) == input_hash({"x": np.ascontiguousarray(column)})
    assert input_hash({"x": grid[0]}) != input_hash({"y": grid[0]})
    assert input_hash({"x": grid[0]}) != input_hash({"x": grid[0].astype(np.float64)})
    assert input_hash({"x": grid}) != input_hash({"x": grid.reshape(4, 3)})
    assert input_hash({"a": grid[0], "b": grid[1]}) == input_hash({"b": grid[1], "a": grid[0]})
    assert input_hash({"a": grid[0], "b": grid[1]}) != input_hash({"a": grid[1], "b": grid[0]})


def test_a_forked_child_keeps_its_own_journal(tmp_path):
    path = tmp_path / "a.sqlite"
    log = AuditLog(path, group_ms=NEVER_MS)
    log.write_decisions("m", "1", [decided(0)])
    child = os.fork()
    if child == 0:  # the child: its own journal, closed (moved) before it exits
        try:
            log.write_decisions("m", "1", [decided(1)])
            log.close()
        finally:
            os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    log.write_decisions("m", "1", [decided(2)])
    log.close()
    assert sorted(row.scores["score"] for row in AuditLog(path).query()) == [0.0, 0.01, 0.02]
    assert journals(path) == []


def test_the_movers_warnings_are_not_repeated_every_interval(caplog):
    from forwardpass.decisions.journal import _Warnings

    warn = _Warnings()
    with caplog.at_level("WARNING", logger="forwardpass.decisions.audit"):
        for _ in range(3):
            warn("audit log x: disk I/O error")
        warn("audit log x: database is locked")
    assert [record.getMessage() for record in caplog.records] == [
        "audit log x: disk I/O error",
        "audit log x: database is locked",
    ]
