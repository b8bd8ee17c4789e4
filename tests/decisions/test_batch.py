"""`forwardpass batch` (modes/batch.py, through Model.forward_each): every record's row carries its action, and
the job writes exactly one audit row per record it scored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from forwardpass.decisions import AuditLog
from forwardpass.modes.batch import BatchOptions
from forwardpass.modes.ray_data import PartScorer, _actor_arguments, _job, part_scored
from forwardpass.modes.sinks import saved_job

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
COLUMNS = ["mean radius", "mean texture", "mean smoothness", "mean concavity"]


def write_records(path: Path, x: np.ndarray, *more: str) -> Path:
    """Triage's records as a CSV table, then the `more` lines as they are."""
    lines = [",".join(f'"{c}"' for c in COLUMNS), *(",".join(map(str, row)) for row in x), *more]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_batch_rows_carry_actions_and_each_is_audited(tasks, audit_log, tmp_path):
    x = tasks.data["triage"][np.random.default_rng(5).choice(len(tasks.data["triage"]), 40, replace=False)]
    # the last row breaks the schema: an error row, no decision
    table = write_records(tmp_path / "records.csv", x, "80,20,0.1,0.1")
    env = {**os.environ, "FORWARDPASS_AUDIT_LOG": str(audit_log), "NO_COLOR": "1"}
    done = subprocess.run(
        [
            FORWARDPASS,
            "batch",
            "triage",
            str(table),
            "-o",
            str(tmp_path / "out"),
            "--format",
            "jsonl",
            "-r",
            str(tasks.root),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 2), done.stderr
    rows = [
        json.loads(line)
        for part in sorted((tmp_path / "out").glob("*.jsonl"))
        if not part.name.startswith("_")
        for line in part.read_text().splitlines()
    ]
    assert len(rows) == 40
    assert all(row["action"] in ("refer", "review", "routine") for row in rows)
    errors = (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and "(rule: max)" in errors[0]
    audited = list(AuditLog(audit_log).query())
    assert len(audited) == 40
    assert sorted(row.action for row in audited) == sorted(row["action"] for row in rows)


def audited(log: Path) -> list[tuple[str, str, str, str, str, str]]:
    """An audit log's decisions without their times, sorted: what two runs of one job must both hold."""
    return sorted(
        (row.model, row.version, row.input_hash, json.dumps(row.scores, sort_keys=True), row.action, row.rule)
        for row in AuditLog(log).query()
    )


def test_a_batch_job_killed_and_resumed_audits_each_record_once(tasks, audit_log, tmp_path):
    """SIGKILL a real job mid-part several times, resume it each time: the audit equals an uninterrupted run's (a
    killed part is scored again on resume, and its first decisions must not stay in the log beside the second)."""
    rng = np.random.default_rng(7)
    x = tasks.data["triage"][rng.choice(len(tasks.data["triage"]), 4_000)]
    table = write_records(tmp_path / "records.csv", x)
    reference_log = tmp_path / "reference.sqlite"
    command = [FORWARDPASS, "batch", "triage", str(table), "--format", "jsonl", "--part-size", "50", "-r"]
    command.append(str(tasks.root))

    def job(output: Path, log: Path, *more: str) -> subprocess.Popen[str]:
        env = {**os.environ, "FORWARDPASS_AUDIT_LOG": str(log), "NO_COLOR": "1"}
        return subprocess.Popen([*command, "-o", str(output), *more], env=env, stderr=subprocess.PIPE, text=True)

    with job(tmp_path / "reference", reference_log) as reference:
        assert reference.wait(timeout=120) == 0, reference.stderr.read() if reference.stderr else ""
    killed = tmp_path / "killed"
    kills = 0
    for target in (250, 1_250, 2_500):  # records saved before the kill
        with job(killed, audit_log, *(["--resume"] if kills else [])) as process:
            deadline = time.monotonic() + 120
            while (saved_job(killed) or ({}, 0))[1] < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)  # the manifest is the only event the job shows
            time.sleep(float(rng.uniform(0, 0.02)))  # into the next part's scoring or writes
            process.send_signal(signal.SIGKILL)
            kills += process.wait(timeout=60) == -signal.SIGKILL
    assert kills == 3, "the job finished before it was killed: make the input larger"
    with job(killed, audit_log, "--resume") as finished:
        assert finished.wait(timeout=120) == 0, finished.stderr.read() if finished.stderr else ""

    rows = [
        json.loads(line)
        for part in sorted(killed.glob("part-*.jsonl"))
        for line in part.read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(row["id"] for row in rows) == sorted(f"records.csv#row{i}" for i in range(1, len(x) + 1))
    assert len(audited(audit_log)) == len(x)
    assert audited(audit_log) == audited(reference_log)


def test_a_ray_actor_sends_its_decisions_with_its_part_for_the_driver_to_audit(tasks, audit_log, tmp_path):
    """Ray's actors score parts as the local job does (their decisions held for the part), and the driver audits a
    part's decisions as it records the part: an actor that audited them itself would audit a part again whenever Ray
    or a resume scores it again."""
    x = tasks.data["triage"][:30]
    table = write_records(tmp_path / "records.csv", x)
    arguments = _actor_arguments("triage", 1, table, BatchOptions(), tasks.root, 0.5, trust_pickle=False)
    actor = PartScorer(**arguments)
    result = actor({"part": np.array([0]), "start": np.array([0]), "stop": np.array([30])})["result"][0]
    actor.model.close()
    assert not list(AuditLog(audit_log).query())
    job, _ = _job("triage", table, tmp_path / "out", BatchOptions(), tasks.root, None, trust_pickle=False)
    assert job.audit is not None
    scored = part_scored(result, job.identity)
    job.commit(0, 0, 30, scored)
    job.finish(30)
    job.audit.close()
    assert sorted(row.action for row in AuditLog(audit_log).query()) == sorted(row["action"] for row in scored.rows)
    assert len(scored.rows) == 30


def test_an_audit_log_that_cannot_be_written_is_refused_before_any_record_is_scored(tasks, tmp_path):
    """A log that is no SQLite database (or under a file): predict and batch refuse it at start in one line, exit 2,
    and batch leaves no part of unaudited decisions in its output; before, batch scored and wrote a part, then
    failed (exit 1), and predict failed every record alone."""
    table = write_records(tmp_path / "records.csv", tasks.data["triage"][:3])
    (tmp_path / "notes.txt").write_text("not a database " * 100)
    for log in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "audit.sqlite"):
        env = {**os.environ, "FORWARDPASS_AUDIT_LOG": str(log), "NO_COLOR": "1"}
        for command in (
            ["predict", "triage", str(table)],
            ["batch", "triage", str(table), "-o", str(tmp_path / "out")],
        ):
            done = subprocess.run(
                [FORWARDPASS, *command, "--repository", str(tasks.root)], env=env, capture_output=True, text=True
            )
            assert done.returncode == 2, (command, done.stderr)
            assert done.stdout == ""
            assert done.stderr.count("\n") == 1 and f"audit log {log} cannot be written" in done.stderr
            assert not list(tmp_path.glob("out/part-*"))
