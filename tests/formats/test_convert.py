"""`forwardpass convert` through the real command: ONNX and provenance written, parity misses refused with figures,
damaged files and bad options answered with one line and exit code 2."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")


def convert(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FORWARDPASS, "convert", *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )


def assert_one_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    example = torch.randn(2, 3, 16, 16)
    paths = {"traced": folder / "traced.pt", "scripted": folder / "scripted.pt", "program": folder / "program.pt2"}
    torch.jit.save(torch.jit.trace(cnn, example), paths["traced"])
    torch.jit.save(torch.jit.script(cnn), paths["scripted"])
    program = torch.export.export(cnn, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, paths["program"])
    rng = np.random.default_rng(0)
    features, labels = rng.standard_normal((60, 4)), rng.integers(0, 3, 60)
    paths["pickle"] = folder / "pipeline.pkl"
    paths["pickle"].write_bytes(
        pickle.dumps(make_pipeline(StandardScaler(), LogisticRegression()).fit(features, labels))
    )
    return paths


def test_convert_writes_onnx_and_provenance(models: dict[str, Path], tmp_path: Path):
    done = convert(models["traced"], "-o", tmp_path / "out" / "cnn")
    assert done.returncode == 0, done.stderr
    assert "parity on 32 inputs: max abs diff" in done.stdout and "top-1 agreement 100.00%" in done.stdout
    model = onnx.load(str(tmp_path / "out" / "cnn.onnx"))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")  # the batch dimension stayed dynamic
    provenance = json.loads((tmp_path / "out" / "cnn.json").read_text())
    assert provenance["source"]["format"] == "torchscript"
    assert provenance["opset"] == 17 and provenance["tool_versions"]["torch"]
    assert provenance["parity"]["max_abs_diff"] <= 1e-4 and provenance["parity"]["tolerance"] == 1e-4


def test_a_conversion_missing_the_tolerance_is_refused_with_its_figures(models: dict[str, Path], tmp_path: Path):
    done = convert(models["traced"], "-o", tmp_path / "cnn.onnx", "--tolerance", "1e-12")
    assert_one_error(done, str(models["traced"]), "misses parity", "max abs diff", "tolerance 1e-12", "--tolerance")
    assert list(tmp_path.iterdir()) == []  # nothing written, no staging folder left behind


def test_a_looser_tolerance_and_another_opset_are_honoured(models: dict[str, Path], tmp_path: Path):
    done = convert(models["traced"], "-o", tmp_path / "cnn", "--opset", "13", "--tolerance", "0.01")
    assert done.returncode == 0, done.stderr
    provenance = json.loads((tmp_path / "cnn.json").read_text())
    assert provenance["opset"] == 13 and provenance["parity"]["tolerance"] == 0.01


def test_an_onnx_model_is_converted_to_another_opset(tmp_path: Path, add_model):
    add_model(tmp_path / "add.onnx")
    done = convert(tmp_path / "add.onnx", "-o", tmp_path / "add18", "--opset", "18")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "add18.json").read_text())["opset"] == 18
    assert onnx.load(str(tmp_path / "add18.onnx")).opset_import[0].version == 18
    assert_one_error(convert(tmp_path / "add.onnx", "-o", tmp_path / "add9", "--opset", "9"), "add.onnx", "opset 9")


def test_input_shapes_given_on_the_command_line(models: dict[str, Path], tmp_path: Path):
    assert_one_error(convert(models["scripted"], "-o", tmp_path / "s"), "no shape for input", "--input")
    done = convert(models["scripted"], "-o", tmp_path / "s", "--input", "input=-1,3,16,16")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("input", ["--input 'input'", "NAME=VALUE"]),
        ("input=a,b", ["dimensions must be integers"]),
        ("input=-1,0,3", ["dimensions must be positive"]),
    ],
)
def test_bad_input_options_are_one_line(models: dict[str, Path], tmp_path: Path, option: str, words: list[str]):
    assert_one_error(convert(models["scripted"], "-o", tmp_path / "s", "--input", option), *words)


def test_pickles_need_the_trust_flag(models: dict[str, Path], tmp_path: Path):
    assert_one_error(convert(models["pickle"], "-o", tmp_path / "p"), str(models["pickle"]), "--trust-pickle")
    assert not (tmp_path / "p.onnx").exists()
    done = convert(models["pickle"], "-o", tmp_path / "p", "--trust-pickle")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "p.json").read_text())["options"]["load"] == {"trust_pickle": True}


@pytest.mark.parametrize(("name", "format_name"), [("traced", "TorchScript"), ("program", "torch.export")])
def test_truncated_files_are_one_line_naming_file_and_format(
    models: dict[str, Path], tmp_path: Path, name: str, format_name: str
):
    damaged = tmp_path / models[name].name
    damaged.write_bytes(models[name].read_bytes()[:1500])
    assert_one_error(convert(damaged, "-o", tmp_path / "out"), str(damaged), format_name)


def test_files_of_no_known_format_and_missing_files(tmp_path: Path):
    (tmp_path / "notes.md").write_text("# not a model")
    assert_one_error(
        convert(tmp_path / "notes.md", "-o", tmp_path / "out"), "notes.md", "not a model in any known format"
    )
    assert_one_error(convert(tmp_path / "absent.pt", "-o", tmp_path / "out"), "no model file or folder", "absent.pt")


def test_a_conversion_onnx_runtime_cannot_run_is_refused_naming_the_source(tmp_path: Path):
    """skl2onnx writes a double-precision Imputer, which ONNX Runtime does not implement: the refusal names the
    user's file, not the staging folder the converted model was checked in."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"amount": [1.0, np.nan, 3.0, 4.0], "colour": ["red", "blue", "red", "blue"]})
    columns = ColumnTransformer([("amount", SimpleImputer(), ["amount"]), ("colour", OneHotEncoder(), ["colour"])])
    source = tmp_path / "imputed.pkl"
    source.write_bytes(pickle.dumps(make_pipeline(columns, LogisticRegression()).fit(frame, [0, 1, 0, 1])))

    done = convert(source, "-o", tmp_path / "imputed.onnx", "--trust-pickle")
    assert_one_error(done, f"{source}: ONNX Runtime cannot run its sklearn conversion", "Imputer")
    assert ".converting-" not in done.stderr
