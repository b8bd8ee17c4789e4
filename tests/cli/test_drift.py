"""`forwardpass drift MODEL DATA`: the shifted column is flagged (exit 1), steady data is not (exit 0)."""

from __future__ import annotations

import json
import os
import shutil
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


def test_a_profile_outside_the_model_folder_is_not_read(folder, tmp_path):
    """A handed-over model whose config named `profile: ../../<file>` made drift read a file outside its folder."""
    (tmp_path / "escape" / "1").mkdir(parents=True)
    (tmp_path / "escape" / "1" / "model.onnx").write_bytes(b"")
    shutil.copy(folder / "m" / "profile.json", tmp_path / "outside.json")
    config = yaml.safe_dump({"profile": "../outside.json"})
    (tmp_path / "escape" / "config.yaml").write_text(config, encoding="utf-8")
    done = run(folder, str(tmp_path / "escape"), "steady.csv")
    assert done.returncode == 2, done.stdout
    assert "profile: '../outside.json' points outside the model folder" in done.stderr
    assert done.stderr.count("\n") == 1


def test_jsonl_records_after_a_byte_order_mark_and_a_bad_line_named_by_number(folder, tmp_path):
    """A BOM made the first line unreadable, and a bad line was reported as 'line 1 column 1' whatever its number."""
    records = [{"a": float(i % 3), "b": 1.0 + i % 5, "c": float(i % 10)} for i in range(200)]
    lines = [json.dumps(record) for record in records]
    (tmp_path / "bom.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    read = run(folder, "m", str(tmp_path / "bom.jsonl"), "--json")
    assert read.returncode == 1, read.stderr  # read, and far from the training data
    assert [json.loads(line)["count"] for line in read.stdout.splitlines()] == [200, 200, 200]
    (tmp_path / "bad.jsonl").write_text("\n".join([*lines[:2], "not json", "[1, 2]"]) + "\n", encoding="utf-8")
    done = run(folder, "m", str(tmp_path / "bad.jsonl"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "bad.jsonl#line3: is not valid JSON" in done.stderr
