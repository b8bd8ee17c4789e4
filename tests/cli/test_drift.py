"""`forwardpass drift MODEL DATA`: the shifted column is flagged (exit 1), steady data is not (exit 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from forwardpass.quality import build_profile

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A model folder whose config names a profile (drift reads only the config and the profile)."""
    root = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(0)
    training = {"a": rng.normal(0, 1, 3000), "b": rng.exponential(2.0, 3000), "c": rng.uniform(0, 10, 3000)}
    model = root / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(b"")  # drift never opens it
    build_profile(training).save(model / "profile.json")
    (model / "config.yaml").write_text(yaml.safe_dump({"profile": "profile.json"}), encoding="utf-8")
    fresh = np.random.default_rng(1)
    steady = np.column_stack([fresh.normal(0, 1, 500), fresh.exponential(2.0, 500), fresh.uniform(0, 10, 500)])
    shifted = steady.copy()
    shifted[:, 2] += 3.0
    for name, rows in (("steady.csv", steady), ("shifted.csv", shifted)):
        (root / name).write_text("a,b,c\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n", encoding="utf-8")
    return root


def run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [FORWARDPASS, "drift", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )


def test_shifted_column_is_flagged_alone(folder):
    done = run(folder, "m", "shifted.csv", "--json")
    assert done.returncode == 1, done.stderr
    report = {row["feature"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert [name for name, row in report.items() if row["drifted"]] == ["c"]
    assert report["c"]["psi"] > 0.25 and report["c"]["count"] == 500


def test_steady_data_passes_with_a_table(folder):
    done = run(folder, "m", "steady.csv")
    assert done.returncode == 0, done.stderr
    assert "DRIFT" not in done.stdout and "ok" in done.stdout


def test_a_model_without_profile_is_one_line_exit_2(folder, tmp_path):
    (tmp_path / "bare" / "1").mkdir(parents=True)
    (tmp_path / "bare" / "1" / "model.onnx").write_bytes(b"")
    done = run(folder, str(tmp_path / "bare"), "steady.csv")
    assert done.returncode == 2
    assert "has no reference profile" in done.stderr and done.stderr.count("\n") == 1
