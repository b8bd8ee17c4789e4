"""Users' own models with no config, through every command and the server: answers equal to the framework's own, or a
refusal naming the fix. The corpus (tests/user_models.py) is built with the real frameworks on scikit-learn's data.

A command that exits 0 with values that differ from the framework's fails here.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

import forwardpass
from forwardpass.errors import ConfigError
from tests.user_models import BUILDERS, UserModel

FP = str(Path(sys.executable).parent / "forwardpass")
PROBABILITY_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, UserModel]:
    folder = tmp_path_factory.mktemp("own_models")
    return {name: build(folder) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def data(corpus: dict[str, UserModel], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per model, its held-out rows in the forms a user has them: a records file, a labelled table or .npz, .npy."""
    folder = tmp_path_factory.mktemp("own_data")
    forms: dict[str, dict[str, Path]] = {}
    for name, user in corpus.items():
        files: dict[str, Path] = {}
        if user.records:
            files["predict"] = folder / f"{name}.json"
            files["predict"].write_text(json.dumps(user.records))
            files["batch"] = files["eval"] = folder / f"{name}.csv"
            _write_csv(
                files["eval"],
                [{**record, "label": label} for record, label in zip(user.records, user.labels, strict=True)],
            )
        else:
            assert user.arrays is not None
            files["predict"] = files["batch"] = folder / f"{name}.npy"
            np.save(files["predict"], user.arrays)
            files["eval"] = folder / f"{name}.npz"
            np.savez(files["eval"], input=user.arrays, label=np.asarray(user.labels))
        forms[name] = files
    return forms


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run(*args: str | Path, trust: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [FP, *map(str, args), *(["--trust-pickle"] if trust else [])]
    wide = {**os.environ, "COLUMNS": "400"}  # tables unfolded: messages are checked whole
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=wide)
    if check:
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
    return done


def assert_answers(user: UserModel, predictions: list[dict[str, Any]]) -> None:
    """Each prediction equals the framework's: the same class and every class's probability within 1e-5, or the
    same value; for a model with no task recorded, its raw outputs."""
    assert len(predictions) == len(user.predicted or user.values)  # type: ignore[arg-type]
    if user.task == "classification":
        assert user.probabilities is not None and user.classes is not None
        assert [p["label"] for p in predictions] == user.predicted
        for prediction, expected in zip(predictions, user.probabilities, strict=True):
            scores = {entry["label"]: entry["score"] for entry in prediction["top_k"]}
            listed = [c for c in user.classes if c in scores]
            np.testing.assert_allclose(
                [scores[c] for c in listed],
                expected[[user.classes.index(c) for c in listed]],
                atol=PROBABILITY_TOLERANCE,
            )
    elif user.task == "regression":
        assert user.values is not None
        np.testing.assert_allclose([p["value"] for p in predictions], user.values, rtol=1e-5, atol=1e-4)
    else:
        assert user.values is not None
        got = np.array([next(iter(p["outputs"].values())) for p in predictions])
        np.testing.assert_allclose(got, user.values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_predict_with_no_config_equals_the_framework(
    name: str, corpus: dict[str, UserModel], data: dict[str, dict[str, Path]]
) -> None:
    user = corpus[name]
    done = run("predict", user.artefact, data[name]["predict"], "--json", "--top-k", "5", trust=user.trust_pickle)
    assert "UserWarning" not in done.stderr  # scikit-learn's per-call warnings stay out of the user's terminal
    assert_answers(user, [json.loads(line) for line in done.stdout.splitlines()])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_eval_with_no_config_scores_the_frameworks_answers(
    name: str, corpus: dict[str, UserModel], data: dict[str, dict[str, Path]]
) -> None:
    user = corpus[name]
    done = run("eval", user.artefact, data[name]["eval"], "--json", trust=user.trust_pickle)
    report = json.loads(done.stdout)
    assert report["n"] == len(user.labels) and report["bad"] == 0
    if user.task == "regression":
        truth = np.array([float(label) for label in user.labels])
        assert report["mae"] == pytest.approx(float(np.mean(np.abs(truth - user.values))), rel=1e-5)
    else:  # the TorchScript MLP included: its labels (class indices) settle the task
        accuracy = float(np.mean(np.array(user.predicted) == np.array(user.labels)))
        assert report["task"] == "classification"
        assert report["top_k_accuracy"]["1"] == pytest.approx(accuracy)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_batch_with_no_config_writes_the_frameworks_answers(
    name: str, corpus: dict[str, UserModel], data: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    user = corpus[name]
    source = data[name]["batch"]
    if source.suffix == ".csv":  # the held-out table without its label column
        source = tmp_path / "rows.csv"
        _write_csv(source, user.records)
    run("batch", user.artefact, source, "-o", tmp_path / "out", "-f", "jsonl", "--top-k", "5", trust=user.trust_pickle)
    rows = [
        json.loads(line)
        for part in sorted((tmp_path / "out").glob("part-*.jsonl"))
        for line in part.read_text().splitlines()
    ]
    rows.sort(key=lambda row: int(row["id"].rpartition("#row")[2]))
    assert_answers(user, [{k: v for k, v in row.items() if k not in ("id", "model", "version")} for row in rows])


@pytest.fixture(scope="module")
def server(corpus: dict[str, UserModel], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`forwardpass serve` over a repository of the corpus, each model as the user saved it, no config."""
    root = tmp_path_factory.mktemp("own_repository")
    for name, user in corpus.items():
        (root / name / "1").mkdir(parents=True)
        shutil.copy(user.artefact, root / name / "1" / user.artefact.name)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [FP, "serve", "-r", str(root), "--http-port", str(port), "--grpc-port", "0", "--trust-pickle"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FORWARDPASS_POLL_INTERVAL_S": "0"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the server did not become ready")
    yield url
    process.terminate()
    process.communicate(timeout=30)  # reads its stderr to the end and closes the pipe


@pytest.mark.parametrize("name", list(BUILDERS))
def test_server_predict_with_no_config_equals_the_framework(
    name: str, corpus: dict[str, UserModel], server: str
) -> None:
    user = corpus[name]
    items: list[Any] = user.records or [row.tolist() for row in user.arrays]  # type: ignore[union-attr]
    response = httpx.post(f"{server}/v2/models/{name}/predict?top_k=5", json=items, timeout=60)
    assert response.status_code == 200, response.text
    assert_answers(user, response.json())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_init_writes_a_config_that_gives_the_same_answers(
    name: str, corpus: dict[str, UserModel], data: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    user = corpus[name]
    folder = tmp_path / name
    labelled: list[str | Path] = ["--data", data[name]["eval"]] if user.task == "raw" else []
    run("init", user.artefact, "-o", folder, *labelled, trust=user.trust_pickle)
    shutil.copy(user.artefact, folder / user.artefact.name)
    written = yaml.safe_load((folder / "config.yaml").read_text())
    model = forwardpass.load(folder, trust_pickle=user.trust_pickle, warmup=0)
    assert not {key for key in model.inferred if key.split(".")[0] in written}  # everything it said is now declared
    raws = user.records or list(user.arrays)  # type: ignore[arg-type]
    predictions = model.predict(raws, top_k=5)
    model.close()
    if user.task == "raw":  # the labels settled it: a classifier over the logits, softmax applied
        assert written["postprocess"]["kind"] == "classification"
        assert [p["label"] for p in predictions] == user.predicted
    else:
        assert_answers(user, predictions)


# --- mistakes in a config are refused at load, with the fix ---------------------------------------------------------

CLASSIFIERS = [
    name
    for name in BUILDERS
    if name not in ("hist_gradient_boosting", "xgboost_regression", "lightgbm_regression", "torchscript_mlp")
]


def load_with(user: UserModel, folder: Path, config: dict[str, Any]) -> None:
    folder.mkdir()
    shutil.copy(user.artefact, folder / user.artefact.name)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    forwardpass.load(folder, trust_pickle=user.trust_pickle, warmup=0).close()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_mistakes_in_a_classifiers_config_are_refused_with_the_fix(
    name: str, corpus: dict[str, UserModel], tmp_path: Path
) -> None:
    user = corpus[name]
    assert user.classes is not None
    model = forwardpass.load(user.artefact, trust_pickle=user.trust_pickle, warmup=0)
    scores = model.config.postprocess.output  # type: ignore[union-attr]
    integer_outputs = [spec.name for spec in model.outputs if spec.dtype.name in ("INT64", "BYTES")]
    model.close()
    wrong_labels = {"postprocess": {"kind": "classification", "labels": [*user.classes, "extra"]}}
    with pytest.raises(
        ConfigError,
        match=rf"{len(user.classes) + 1} labels, but output .* scores {len(user.classes)} classes",
    ):
        load_with(user, tmp_path / "labels", wrong_labels)
    softmax = {"postprocess": {"kind": "classification", "output": scores, "activation": "softmax"}}
    with pytest.raises(
        ConfigError, match=r"field 'postprocess.activation': softmax over .* already holds probabilities"
    ):
        load_with(user, tmp_path / "softmax", softmax)
    if integer_outputs:
        label_output = {"postprocess": {"kind": "classification", "output": integer_outputs[0]}}
        with pytest.raises(
            ConfigError, match=r"field 'postprocess.output': .* is (INT64|BYTES) .*the predicted class itself; fix"
        ):
            load_with(user, tmp_path / "label_output", label_output)


@pytest.mark.parametrize("name", ["random_forest", "xgboost_regression", "lightgbm_multiclass"])
def test_columns_that_do_not_fit_the_input_are_refused(name: str, corpus: dict[str, UserModel], tmp_path: Path) -> None:
    user = corpus[name]
    columns = [{"name": column} for column in list(user.records[0])[:-1]]
    with pytest.raises(
        ConfigError,
        match=rf"'preprocess.columns': {len(columns)} columns make {len(columns)} features, but input .* takes",
    ):
        load_with(user, tmp_path / "columns", {"preprocess": {"kind": "tabular", "columns": columns}})


def test_a_misspelled_or_absent_column_is_an_error_naming_it(corpus: dict[str, UserModel]) -> None:
    user = corpus["xgboost_regression"]
    record = dict(user.records[0])
    record["BMI"] = record.pop("bmi")
    done = run("predict", user.artefact, json.dumps(record), check=False)
    assert done.returncode == 2
    assert "unknown field 'BMI' (did you mean 'bmi'?)" in done.stderr and "Traceback" not in done.stderr
    done = run("predict", user.artefact, "{}", check=False)
    assert done.returncode == 2 and "missing column 'age'" in done.stderr


def test_a_model_that_cannot_load_is_listed_unavailable_and_hides_no_other(
    corpus: dict[str, UserModel], tmp_path: Path
) -> None:
    for name in ("random_forest", "onnx_softmax"):
        user = corpus[name]
        (tmp_path / name / "1").mkdir(parents=True)
        shutil.copy(user.artefact, tmp_path / name / "1" / user.artefact.name)
    listing = run("models", "-r", tmp_path).stdout
    assert "random_forest" in listing and "UNAVAILABLE" in listing and "--trust-pickle" in listing
    assert "onnx_softmax" in listing and "classification" in listing


def test_the_table_forms_give_the_same_answers(corpus: dict[str, UserModel], tmp_path: Path) -> None:
    """The same rows as CSV, Parquet and JSONL through predict, eval and batch."""
    user = corpus["lightgbm_multiclass"]
    rows = [{**record, "label": label} for record, label in zip(user.records, user.labels, strict=True)]
    import pyarrow

    pq.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "rows.parquet")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    _write_csv(tmp_path / "rows.csv", rows)
    for form in ("rows.csv", "rows.parquet", "rows.jsonl"):
        report = json.loads(run("eval", user.artefact, tmp_path / form, "--json").stdout)
        assert report["n"] == len(rows), form
    (tmp_path / "features.jsonl").write_text("".join(json.dumps(record) + "\n" for record in user.records))
    done = run("predict", user.artefact, tmp_path / "features.jsonl", "--json", "--top-k", "5")
    assert_answers(user, [json.loads(line) for line in done.stdout.splitlines()])


def test_a_rank0_input_and_a_declared_constant_with_silero_vads_own_file(tmp_path: Path) -> None:
    """Silero VAD's ONNX file as its package ships it: `sr` is rank 0 and `state` is [2, batch, 128], so the model
    takes each request whole; `constants: {sr: 16000}` feeds the rate so callers send only audio and state."""
    import onnxruntime
    import silero_vad

    source = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
    shutil.copy(source, tmp_path / "silero_vad.onnx")
    audio = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32) * 0.1
    state = np.zeros((2, 1, 128), np.float32)
    reference = onnxruntime.InferenceSession(str(source)).run(
        None, {"input": audio, "state": state, "sr": np.array(16000)}
    )
    np.savez(tmp_path / "with_rate.npz", input=audio, state=state, sr=np.array(16000, np.int64))
    done = run("predict", tmp_path / "silero_vad.onnx", tmp_path / "with_rate.npz", "--json")
    outputs = json.loads(done.stdout)["outputs"]
    np.testing.assert_allclose(outputs["output"], reference[0], atol=1e-6)
    np.testing.assert_allclose(outputs["stateN"], reference[1], atol=1e-6)

    (tmp_path / "config.yaml").write_text("constants:\n  sr: 16000\n")
    np.savez(tmp_path / "audio_only.npz", input=audio, state=state)
    model = forwardpass.load(tmp_path / "silero_vad.onnx", warmup=0)
    assert [spec.name for spec in model.inputs] == ["input", "state"]  # sr is the config's, never the caller's
    np.testing.assert_allclose(model.infer({"input": audio, "state": state})["output"], reference[0], atol=1e-6)
    model.close()
    done = run("predict", tmp_path / "silero_vad.onnx", tmp_path / "audio_only.npz", "--json")
    np.testing.assert_allclose(json.loads(done.stdout)["outputs"]["output"], reference[0], atol=1e-6)
    (tmp_path / "config.yaml").write_text("constants:\n  rate: 16000\n")
    with pytest.raises(ConfigError, match=r"field 'constants\.rate': the model has no input 'rate'"):
        forwardpass.load(tmp_path / "silero_vad.onnx", warmup=0)
