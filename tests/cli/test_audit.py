"""`forwardpass predict` shows the action and audits it; `forwardpass audit` filters and exports; a schema
violation is one line on stderr and exit 2; --explain adds attributions."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
COLUMNS = ["radius", "texture"]
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """`risk`: LogisticRegression on two breast-cancer columns, with decision rules, a schema and a profile."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    from forwardpass.quality import build_profile

    root = tmp_path_factory.mktemp("audit-repo")
    data = load_breast_cancer()
    x = data.data[:, :2]
    mean, std = x.mean(axis=0), x.std(axis=0)
    classifier = LogisticRegression().fit((x - mean) / std, data.target)
    (root / "risk" / "1").mkdir(parents=True)
    onx = convert_sklearn(
        classifier,
        initial_types=[("input", FloatTensorType([None, 2]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(classifier): {"zipmap": False}},
    )
    onnx.save(onx, root / "risk" / "1" / "model.onnx")
    build_profile({c: x[:, i] for i, c in enumerate(COLUMNS)}).save(root / "risk" / "profile.json")
    config = {
        "preprocess": {
            "kind": "tabular",
            "columns": [
                {"name": c, "transform": "standard", "mean": float(m), "std": float(s)}
                for c, m, s in zip(COLUMNS, mean, std, strict=True)
            ],
        },
        "postprocess": {
            "kind": "classification",
            "output": "probabilities",
            "activation": "none",
            "labels": ["malignant", "benign"],
        },
        "decision": {"rules": [{"label": "malignant", "at_least": 0.5, "action": "review"}], "default": "routine"},
        "input_schema": {"fields": {"radius": {"min": 0, "max": 40}, "texture": {"min": 0, "max": 50}}},
        "profile": "profile.json",
    }
    (root / "risk" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    rows = "\n".join(f"{a},{b}" for a, b in x[:6])
    (root / "records.csv").write_text(f"radius,texture\n{rows}\n", encoding="utf-8")
    shifted = "\n".join(f"{a},{b + 6}" for a, b in x[100:400])
    (root / "shifted.csv").write_text(f"radius,texture\n{shifted}\n", encoding="utf-8")
    return root


def run(repository: Path, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FORWARDPASS_REPOSITORY": str(repository),
        "FORWARDPASS_AUDIT_LOG": str(log),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    return subprocess.run([FORWARDPASS, *args], cwd=repository, env=env, capture_output=True, text=True, timeout=180)


def test_predict_shows_actions_and_audit_lists_them(repository, tmp_path):
    log = tmp_path / "audit.sqlite"
    done = run(repository, log, "predict", "risk", "records.csv", "--json")
    assert done.returncode == 0, done.stderr
    predictions = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(predictions) == 6
    actions = [p["action"] for p in predictions]
    assert set(actions) == {"review", "routine"}
    human = run(repository, log, "predict", "risk", '{"radius": 25, "texture": 30}')
    assert "action: review  (rule: P(malignant) >= 0.5 -> review)" in human.stdout

    table = run(repository, log, "audit")
    assert table.returncode == 0, table.stderr
    assert "7 decisions" in table.stdout
    exported = run(repository, log, "audit", "--csv", "-", "--action", "review")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == actions.count("review") + 1
    assert {row["model"] for row in rows} == {"risk"} and {row["action"] for row in rows} == {"review"}
    assert json.loads(rows[-1]["scores"])["label"] == "malignant"
    assert run(repository, log, "audit", "--csv", "-", "--since", "2999").stdout.count("\n") == 1  # header only
    assert run(repository, log, "audit", "--model", "other", "--csv", "-").stdout.count("\n") == 1


def test_audit_without_a_log_is_one_line_and_exit_2(repository, tmp_path):
    done = run(repository, tmp_path / "none.sqlite", "audit")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: no audit log at") and done.stderr.count("\n") == 1


def test_a_file_that_is_not_an_audit_log_is_refused_and_left_as_it_was(repository, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    done = run(repository, text, "audit")
    assert (done.returncode, done.stderr) == (2, f"error: {text} is not an audit log (file is not a database)\n")
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
    connection.close()
    before = other.read_bytes()
    done = run(repository, other, "audit")
    assert done.returncode == 2
    assert done.stderr == f"error: {other} is not an audit log: an SQLite database without a decisions table\n"
    assert other.read_bytes() == before  # no decisions table written into another program's database
    assert not (tmp_path / "app.db.pending").exists()


def test_a_log_that_cannot_be_opened_refuses_the_decision_in_one_line(repository, tmp_path):
    """Refused before any decision is made (never answered unaudited), exit 2; closing the model added a second
    error line about journals it never had, and its own exit code."""
    done = run(repository, tmp_path, "predict", "risk", '{"radius": 18, "texture": 22}')
    assert done.returncode == 2
    assert done.stderr.endswith(
        f"audit log {tmp_path} cannot be written (unable to open database file): set FORWARDPASS_AUDIT_LOG to a "
        "writable path\n"
    )
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_csv_export_never_overwrites_the_log_it_reads(repository, tmp_path):
    log = tmp_path / "audit.sqlite"
    assert run(repository, log, "predict", "risk", "records.csv", "--json").returncode == 0
    (tmp_path / "link.csv").symlink_to(log)
    owned = [log, tmp_path / "audit.sqlite-wal", tmp_path / "link.csv", tmp_path / "audit.sqlite.pending" / "a.csv"]
    for target in owned:
        done = run(repository, log, "audit", "--csv", str(target))
        assert done.returncode == 2, target
        assert done.stderr.startswith(f"error: --csv {target} would overwrite the audit log's own ")
    exported = run(repository, log, "audit", "--csv", "-")
    assert exported.returncode == 0 and exported.stdout.count("\n") == 7  # header and the 6 decisions


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_a_time_that_is_not_iso_8601_is_one_line_and_exit_2(repository, tmp_path, option):
    done = run(repository, tmp_path / "none.sqlite", "audit", option, "yesterday")
    assert done.returncode == 2
    assert (
        done.stderr
        == f"error: {option} 'yesterday' is not a UTC time: give ISO 8601 such as 2026-11-26 or 2026-11-26T14:30\n"
    )


def test_schema_violation_is_one_line_and_exit_2(repository, tmp_path):
    log = tmp_path / "audit.sqlite"
    done = run(repository, log, "predict", "risk", '{"radius": 45, "texture": 10}')
    assert done.returncode == 2
    assert "field 'radius': 45 is above the maximum 40 (rule: max)" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not log.exists() or run(repository, log, "audit", "--csv", "-").stdout.count("\n") == 1


def test_predict_explain_adds_attributions(repository, tmp_path):
    done = run(
        repository, tmp_path / "a.sqlite", "predict", "risk", '{"radius": 18, "texture": 22}', "--json", "--explain"
    )
    assert done.returncode == 0, done.stderr
    prediction = json.loads(done.stdout)
    explanation = prediction["explanation"]
    assert set(explanation["attributions"]) == set(COLUMNS)
    total = sum(explanation["attributions"].values())
    assert np.isclose(total, prediction["score"] - explanation["base_value"], atol=1e-5)


def test_audit_times_with_a_space_or_the_tables_z_are_compared_as_times(repository, tmp_path):
    """'2026-01-02 12:00' (ISO 8601's space) once compared as text with '2026-01-02T...' rows: a space sorts before
    'T', so --since took the whole day and --until none of it. The table's own times (…Z) were refused; a month 13
    matched nothing, exit 0. Each is now read as the time it names, or refused."""
    from forwardpass.decisions import AuditLog, AuditRecord

    log = tmp_path / "audit.sqlite"
    store = AuditLog(log)
    store.write(
        [
            AuditRecord(f"2026-01-02T{hour}:00:00.000000Z", "m", "1", f"h{hour}", {}, "allow", "default -> allow")
            for hour in ("06", "18")
        ]
    )
    store.close()
    for options, hashes in (
        (["--since", "2026-01-02 12:00"], ["h18"]),
        (["--until", "2026-01-02 12:00"], ["h06"]),
        (["--since", "2026-01-02T18:00:00.000000Z"], ["h18"]),
        (["--until", "2026-01-02T18:00:00.000000Z"], ["h06"]),
    ):
        done = run(repository, log, "audit", "--csv", "-", *options)
        assert done.returncode == 0, done.stderr
        assert [row["input_hash"] for row in csv.DictReader(io.StringIO(done.stdout))] == hashes, options
    for wrong in ("2026-13-01", "2026-02-30", "2026-01-02T25:00"):
        done = run(repository, log, "audit", "--since", wrong)
        assert done.returncode == 2 and done.stderr.startswith(f"error: --since '{wrong}' is not a UTC time"), wrong


def test_the_audit_table_shows_actions_and_rules_as_written(repository, tmp_path):
    """Text in brackets is no markup there: a rule on class '[UNK]' showed as 'P() >= 0.5', and an action ending
    in '[/]' ended `forwardpass audit` in rich's MarkupError traceback."""
    from forwardpass.decisions import AuditLog, AuditRecord

    log = tmp_path / "audit.sqlite"
    store = AuditLog(log)
    rules = [("review", "P([UNK]) >= 0.5 -> review"), ("hold[/]", "P([b]x) >= 0.9 -> hold[/]")]
    stamp = "2026-01-02T06:00:00.000000Z"
    store.write([AuditRecord(stamp, "m", "1", "h", {}, action, rule) for action, rule in rules])
    store.close()
    done = run(repository, log, "audit")
    assert done.returncode == 0, done.stderr
    for action, rule in rules:
        assert action in done.stdout and rule in done.stdout
