"""Every documented data form through every command that reads data: the same rows as CSV, Parquet, JSONL, JSON and
NPZ give `eval`, `optimize --eval` and `batch` the same answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.parquet as pq
import pytest
import yaml

from tests.user_models import onnx_softmax

FP = str(Path(sys.executable).parent / "forwardpass")
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [FP, *map(str, args)], capture_output=True, text=True, timeout=300, check=False, env={**os.environ}
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], list[str]]:
    """A Softmax ONNX classifier with a config naming its four columns, and its held-out rows in every form."""
    folder = tmp_path_factory.mktemp("forms")
    user = onnx_softmax(folder)
    model = folder / "model"
    model.mkdir()
    shutil.copy(user.artefact, model / "model.onnx")
    columns = [{"name": name} for name in COLUMNS]
    (model / "config.yaml").write_text(yaml.safe_dump({"preprocess": {"kind": "tabular", "columns": columns}}))
    assert user.arrays is not None
    rows = [dict(zip(COLUMNS, map(float, row), strict=True)) for row in user.arrays]
    labelled = [{**row, "label": label} for row, label in zip(rows, user.labels, strict=True)]
    forms = {
        "csv": folder / "rows.csv",
        "parquet": folder / "rows.parquet",
        "jsonl": folder / "rows.jsonl",
        "json": folder / "rows.json",
    }
    forms["csv"].write_text(
        ",".join([*COLUMNS, "label"]) + "\n" + "".join(",".join(map(str, r.values())) + "\n" for r in labelled)
    )
    pq.write_table(pyarrow.Table.from_pylist(labelled), forms["parquet"])
    forms["jsonl"].write_text("".join(json.dumps(row) + "\n" for row in labelled))
    forms["json"].write_text(json.dumps(labelled))
    assert 0.5 < np.mean(np.array(user.predicted) == np.array(user.labels)) < 1  # a real classifier, not a perfect one
    return model, forms, user.predicted


@pytest.mark.parametrize("form", ["csv", "parquet", "jsonl", "json"])
def test_eval_reads_each_form(form: str, tabular: tuple[Path, dict[str, Path], list[str]]) -> None:
    model, forms, predicted = tabular
    report = json.loads(run("eval", model, forms[form], "--json").stdout)
    assert report["n"] == 12 and report["bad"] == 0
    labels = [json.loads(line)["label"] for line in forms["jsonl"].read_text().splitlines()]
    accuracy = np.mean(np.array(predicted) == np.array(labels))
    assert report["top_k_accuracy"]["1"] == pytest.approx(accuracy)


@pytest.mark.parametrize("form", ["csv", "parquet", "jsonl"])
def test_batch_reads_each_form(form: str, tabular: tuple[Path, dict[str, Path], list[str]], tmp_path: Path) -> None:
    model, forms, predicted = tabular
    unlabelled = tmp_path / f"rows.{form}"
    if form == "parquet":
        table = pq.read_table(forms[form])
        pq.write_table(table.drop(["label"]), unlabelled)
    elif form == "csv":
        lines = forms[form].read_text().splitlines()
        unlabelled.write_text("".join(line.rpartition(",")[0] + "\n" for line in lines))
    else:
        rows = [json.loads(line) for line in forms[form].read_text().splitlines()]
        unlabelled.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in rows))
    run("batch", model, unlabelled, "-o", tmp_path / "out", "-f", "jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out" / "part-000000.jsonl").read_text().splitlines()]
    assert [row["label"] for row in rows] == predicted


@pytest.mark.parametrize("form", ["csv", "parquet", "jsonl", "npz"])
def test_optimize_eval_reads_each_form(
    form: str, tabular: tuple[Path, dict[str, Path], list[str]], tmp_path: Path
) -> None:
    model, forms, _ = tabular
    data = forms.get(form)
    if form == "npz":  # the same rows, preprocessed, with their labels
        table = pq.read_table(forms["parquet"]).to_pylist()
        data = tmp_path / "rows.npz"
        arrays = np.array([[row[c] for c in COLUMNS] for row in table], np.float32)
        np.savez(data, features=arrays, label=np.array([row["label"] for row in table]))
        config = model / "config.yaml"
        bare = tmp_path / "bare"  # npz holds tensors: the model without its tabular preprocessing
        shutil.copytree(model, bare)
        (bare / config.name).unlink()
        model = bare
    assert data is not None
    run("optimize", model, "--precision", "fp16", "--eval", data, "-o", tmp_path / "fp16")
    evaluation = json.loads((tmp_path / "fp16" / "precision.json").read_text())["evaluation"]
    assert evaluation["metric_key"] == "top1_accuracy" and evaluation["items"] == 12  # the labels were read


@pytest.mark.parametrize("form", ["csv", "parquet", "jsonl", "json"])
def test_bench_eval_reads_each_form(form: str, tabular: tuple[Path, dict[str, Path], list[str]]) -> None:
    model, forms, predicted = tabular
    report = json.loads(run("bench", model, "-b", "1", "--duration", "0.1", "--eval", forms[form], "--json").stdout)
    labels = [json.loads(line)["label"] for line in forms["jsonl"].read_text().splitlines()]
    accuracy = float(np.mean(np.array(predicted) == np.array(labels)))
    assert accuracy in _numbers(report)  # the top-1 accuracy on the labels stands beside the speed


def _numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [number for item in value.values() for number in _numbers(item)]
    if isinstance(value, list):
        return [number for item in value for number in _numbers(item)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


@pytest.mark.parametrize("form", ["csv", "parquet", "jsonl", "json"])
def test_predict_reads_each_form(form: str, tabular: tuple[Path, dict[str, Path], list[str]], tmp_path: Path) -> None:
    model, forms, predicted = tabular
    rows = [
        {k: v for k, v in json.loads(line).items() if k != "label"} for line in forms["jsonl"].read_text().splitlines()
    ]
    path = tmp_path / f"rows.{form}"
    if form == "csv":
        path.write_text(",".join(COLUMNS) + "\n" + "".join(",".join(str(r[c]) for c in COLUMNS) + "\n" for r in rows))
    elif form == "parquet":
        pq.write_table(pyarrow.Table.from_pylist(rows), path)
    elif form == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows))
    answers = [json.loads(line) for line in run("predict", model, path, "--json").stdout.splitlines()]
    assert [answer["label"] for answer in answers] == predicted
