"""Through the real server: the pipeline endpoint carries the action and writes one audit row per prediction, a
schema violation is a 400 naming the field and the rule, explanations on request, drift as metrics, and the audit
log keeps every answered decision when the server is killed with SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from forwardpass.decisions import AuditLog
from tests.running_server import serve

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
RECORD = {"mean radius": 14.0, "mean texture": 19.0, "mean smoothness": 0.1, "mean concavity": 0.09}


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-audit") / "audit.sqlite"


@pytest.fixture(scope="module")
def url(tasks, server_log) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FORWARDPASS_AUDIT_LOG", str(server_log))  # read when the server loads its models
        running = serve(tasks.root, explain=True)
        yield running.url
        running.stop()


def test_pipeline_endpoint_carries_the_action_and_audits_it(url, server_log):
    before = len(list(AuditLog(server_log).query()))
    answers = [httpx.post(f"{url}/v2/models/triage/predict", json=dict(RECORD, **{"mean radius": r})) for r in (9, 25)]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["action"] for a in answers] == ["routine", "refer"]
    rows = list(AuditLog(server_log).query())
    assert len(rows) == before + 2
    assert [row.action for row in rows[-2:]] == ["routine", "refer"]


def test_schema_violation_is_a_400_naming_field_and_rule(url, server_log):
    before = len(list(AuditLog(server_log).query()))
    answer = httpx.post(f"{url}/v2/models/triage/predict", json=dict(RECORD, **{"mean texture": -1}))
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert message == "field 'mean texture': -1 is below the minimum 0 (rule: min)"
    missing = httpx.post(f"{url}/v2/models/triage/predict", json={"mean radius": 10})
    assert missing.status_code == 400
    assert "field 'mean texture': missing (rule: required)" in missing.json()["error"]
    assert "\n" not in missing.json()["error"]
    assert len(list(AuditLog(server_log).query())) == before


def test_explanation_on_request(url):
    plain = httpx.post(f"{url}/v2/models/triage/predict", json=RECORD).json()
    assert "explanation" not in plain
    answer = httpx.post(f"{url}/v2/models/triage/predict?explain=true", json=RECORD, timeout=120)  # imports shap
    assert answer.status_code == 200, answer.text
    explanation = answer.json()["explanation"]
    assert explanation["output"] == f"P({plain['label']})"
    total = sum(explanation["attributions"].values())
    assert total == pytest.approx(plain["score"] - explanation["base_value"], abs=1e-5)
    assert httpx.post(f"{url}/v2/models/triage/predict?explain=maybe", json=RECORD).status_code == 400


def test_drift_metrics_flag_the_shifted_feature(url, tasks):
    x = tasks.data["triage"]
    names = list(RECORD)
    rng = np.random.default_rng(3)
    for row in x[rng.choice(len(x), 200, replace=False)]:
        record = dict(zip(names, map(float, row), strict=True))
        record["mean texture"] += 8.0  # about two standard deviations
        assert httpx.post(f"{url}/v2/models/triage/predict", json=record).status_code == 200
    text = httpx.get(f"{url}/metrics").text
    flags = dict(re.findall(r'forwardpass_drift_detected\{feature="([^"]+)",model="triage",version="1"\} (\S+)', text))
    assert flags == {"mean radius": "0.0", "mean texture": "1.0", "mean smoothness": "0.0", "mean concavity": "0.0"}
    assert 'forwardpass_drift_psi{feature="mean texture",model="triage",version="1"}' in text


def test_audit_survives_kill_9(tasks, tmp_path):
    log = tmp_path / "killed.sqlite"
    env = {**os.environ, "FORWARDPASS_AUDIT_LOG": str(log), "NO_COLOR": "1"}
    with subprocess.Popen(
        [FORWARDPASS, "serve", "--repository", str(tasks.root), "--http-port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    ) as process:
        try:
            assert process.stdout is not None
            port = None
            for line in process.stdout:  # the server prints its address once every model is ready
                if found := re.search(r"HTTP\s+http://[^:]+:(\d+)", line):
                    port = found.group(1)
                    break
            assert port is not None, "the server did not start"
            answered = 0
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                for radius in np.linspace(8, 25, 40):
                    reply = client.post(
                        "/v2/models/triage/predict", json=dict(RECORD, **{"mean radius": float(radius)})
                    )
                    assert reply.status_code == 200
                    answered += 1
            os.killpg(process.pid, signal.SIGKILL)  # the server and its audit mover at once
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    rows = list(AuditLog(log).query())
    assert len(rows) == answered
    assert {row.model for row in rows} == {"triage"}


def test_a_server_whose_audit_log_is_no_database_does_not_serve_the_decision_model(tasks, tmp_path):
    """The log's folder is writable but the log is not SQLite: the model's load fails (not ready, naming the log)
    rather than the model answering every request with a failure to record it."""
    log = tmp_path / "audit.sqlite"
    log.write_text("not a database " * 100)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FORWARDPASS_AUDIT_LOG", str(log))
        running = serve(tasks.root)
    try:
        assert httpx.get(f"{running.url}/v2/models/triage/ready").status_code != 200
        assert httpx.post(f"{running.url}/v2/models/triage/predict", json=RECORD).status_code == 404  # not loaded
        index = {entry["name"]: entry for entry in httpx.post(f"{running.url}/v2/repository/index").json()}
        assert index["triage"]["state"] == "UNAVAILABLE"
        assert f"audit log {log} cannot be written (file is not a database)" in index["triage"]["reason"]
    finally:
        running.stop()
