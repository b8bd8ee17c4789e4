"""`forwardpass batch` (modes/batch.py, through Model.forward_each): every record's row carries its action, and
the job writes exactly one audit row per record it scored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from forwardpass.decisions import AuditLog

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
COLUMNS = ["mean radius", "mean texture", "mean smoothness", "mean concavity"]


def test_batch_rows_carry_actions_and_each_is_audited(tasks, audit_log, tmp_path):
    x = tasks.data["triage"][np.random.default_rng(5).choice(len(tasks.data["triage"]), 40, replace=False)]
    table = tmp_path / "records.csv"
    lines = [",".join(f'"{c}"' if " " in c else c for c in COLUMNS)] + [",".join(map(str, row)) for row in x]
    lines.append("80,20,0.1,0.1")  # breaks the schema: an error row, no decision
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
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
