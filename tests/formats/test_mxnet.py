"""MXNet: a real Gluon CNN, built and exported by mxnet itself in the isolated environment forwardpass creates, then
run through forwardpass natively (mxnet in the worker process) and converted (ONNX Runtime), both against mxnet's own
outputs on held-out inputs."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import forwardpass
from forwardpass.backends.base import Session
from forwardpass.backends.ort import OrtSession
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, ForwardpassError, InputError
from forwardpass.formats import convert_model
from forwardpass.formats.base import ConvertOptions, LoadOptions
from forwardpass.formats.mxnet import MXNET, environment_dir, isolated_python, model_files
from forwardpass.formats.mxnet_worker import onnx_output_name, read_message, write_message

log = logging.getLogger(__name__)

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
HELD_OUT = 40
SHAPES = LoadOptions(input_shapes={"data": [-1, 1, 8, 8]})
ENGINE = EngineConfig(warmup=0)

# Runs in the isolated environment: a small CNN with every kind of parameter a CNN has (conv weights and biases,
# batch-norm scale, shift and running statistics, dense weights), exported the way Gluon users export.
BUILD_GLUON_CNN = """
import sys
import mxnet as mx
import numpy as np
from mxnet.gluon import nn

folder = sys.argv[1]
mx.random.seed(7)
net = nn.HybridSequential()
net.add(
    nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(),
    nn.Conv2D(16, 3, padding=1), nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Flatten(), nn.Dense(10),
)
net.initialize(mx.init.Xavier())
rng = np.random.default_rng(7)
batchnorm = net[1]
batchnorm.running_mean.set_data(mx.nd.array(rng.normal(0, 0.2, 8)))
batchnorm.running_var.set_data(mx.nd.array(rng.uniform(0.5, 2.0, 8)))
batchnorm.gamma.set_data(mx.nd.array(rng.uniform(0.5, 1.5, 8)))
net.hybridize()
inputs = rng.standard_normal((int(sys.argv[2]), 1, 8, 8)).astype(np.float32)
outputs = net(mx.nd.array(inputs)).asnumpy()
net.export(folder + "/cnn", epoch=3)
np.save(folder + "/inputs.npy", inputs)
np.save(folder + "/outputs.npy", outputs)
"""


@pytest.fixture(scope="session")
def mxnet_python() -> Path:
    """The isolated environment, created once (the first time on a machine it downloads ~70 MB)."""
    start = time.perf_counter()
    python = isolated_python()
    log.warning("MXNet isolated environment ready in %.1f s (%s)", time.perf_counter() - start, environment_dir())
    return python


@pytest.fixture(scope="session")
def gluon_cnn(mxnet_python: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """(export folder, held-out inputs, mxnet's own outputs for them)."""
    work = tmp_path_factory.mktemp("mxnet")
    folder = work / "1"
    folder.mkdir()
    subprocess.run(
        [str(mxnet_python), "-I", "-c", BUILD_GLUON_CNN, str(folder), str(HELD_OUT)],
        check=True,
        env={**os.environ, "MXNET_HOME": str(work / "mxnet-home")},
        timeout=300,
    )
    inputs, outputs = np.load(folder / "inputs.npy"), np.load(folder / "outputs.npy")
    for extra in ("inputs.npy", "outputs.npy"):
        (folder / extra).rename(work / extra)
    return folder, inputs, outputs


def _assert_matches(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert got.dtype == np.float32
    assert float(np.abs(got - expected).max()) <= 1e-4
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))


def _batches(inputs: np.ndarray) -> list[np.ndarray]:
    """Every held-out input once at batch size 1 and once within larger batches."""
    return [inputs[i : i + 1] for i in range(len(inputs))] + [inputs[:7], inputs[7:]]


def _run_all(session: Session, inputs: np.ndarray) -> list[np.ndarray]:
    return [session.run({"data": batch})["dense0_fwd"] for batch in _batches(inputs)]


def _copy(gluon_cnn: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> Path:
    folder = tmp_path / "1"
    shutil.copytree(gluon_cnn[0], folder)
    return folder


def test_gluon_export_is_detected_as_a_folder_or_by_its_symbol_file(gluon_cnn, tmp_path):
    folder = gluon_cnn[0]
    assert MXNET.detect(folder)
    assert MXNET.detect(folder / "cnn-symbol.json")
    assert model_files(folder) == [(folder / "cnn-symbol.json", folder / "cnn-0003.params")]
    assert not MXNET.detect(folder / "cnn-0003.params")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "cnn-symbol.json", lone)
    assert not MXNET.detect(lone)  # a symbol without its params is not a model


def test_the_latest_epoch_is_the_model(gluon_cnn, tmp_path):
    folder = _copy(gluon_cnn, tmp_path)
    (folder / "cnn-0011.params").write_bytes((folder / "cnn-0003.params").read_bytes())
    (folder / "cnn-0002.params").write_bytes(b"an older checkpoint")
    assert model_files(folder) == [(folder / "cnn-symbol.json", folder / "cnn-0011.params")]


def test_native_matches_mxnet_at_batch_one_and_larger_and_a_bad_input_fails_alone(gluon_cnn):
    folder, inputs, outputs = gluon_cnn
    session = MXNET.open_native(folder, ENGINE, SHAPES)
    try:
        assert [(s.name, s.shape) for s in session.inputs] == [("data", (-1, 1, 8, 8))]
        assert [(s.name, s.shape) for s in session.outputs] == [("dense0_fwd", (-1, 10))]
        assert session.providers == ["mxnet:cpu"]
        for got, expected in zip(_run_all(session, inputs), _batches(outputs), strict=True):
            _assert_matches(got, expected)
        with pytest.raises(InputError, match="MXNet refused the input"):
            session.run({"data": np.zeros((2, 3, 8, 8), np.float32)})
        _assert_matches(session.run({"data": inputs})["dense0_fwd"], outputs)  # the worker still serves
    finally:
        session.close()
    with pytest.raises(ForwardpassError, match="closed"):
        session.run({"data": inputs})


def test_converted_matches_mxnet_with_a_dynamic_batch(gluon_cnn, tmp_path):
    folder, inputs, outputs = gluon_cnn
    provenance = MXNET.convert(folder, tmp_path / "model.onnx", SHAPES, ConvertOptions(opset=17))
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert model.opset_import[0].version == 17
    assert [value.name for value in model.graph.input] == ["data"]  # the weights are initializers, not inputs
    assert provenance["tool_versions"]["mxnet (isolated)"] == "1.9.1"
    assert provenance["exporter_opset"] == 13
    session = OrtSession(tmp_path / "model.onnx", ENGINE)
    assert [(s.name, s.shape) for s in session.inputs] == [("data", (-1, 1, 8, 8))]
    assert [s.name for s in session.outputs] == ["dense0_fwd"]  # the native session's name: parity pairs them
    for got, expected in zip(_run_all(session, inputs), _batches(outputs), strict=True):
        _assert_matches(got, expected)


def test_forwardpass_convert_proves_parity_and_writes_provenance(gluon_cnn, tmp_path):
    provenance = convert_model(gluon_cnn[0], tmp_path / "cnn.onnx", SHAPES)
    written = json.loads((tmp_path / "cnn.json").read_text())
    assert written["source"]["format"] == "mxnet"
    assert written["tool_versions"]["mxnet (isolated)"] == "1.9.1"
    assert written["parity"]["max_abs_diff"] <= 1e-4
    assert written["parity"]["top1_agreement"] == 1.0
    assert written["parity"]["reference"] == ["mxnet:cpu"]
    assert provenance["opset"] == 17


def test_forwardpass_load_takes_the_input_shapes_from_the_config(gluon_cnn, tmp_path):
    _, inputs, outputs = gluon_cnn
    model_folder = tmp_path / "repository" / "gluon_cnn"
    shutil.copytree(gluon_cnn[0], model_folder / "1")
    (model_folder / "config.yaml").write_text(
        "source:\n  inputs: [{name: data, shape: [-1, 1, 8, 8]}]\npostprocess: {kind: classification, top_k: 3}\n"
    )
    chosen = forwardpass.load("gluon_cnn", repository=tmp_path / "repository", warmup=0)  # auto: the faster engine
    try:
        assert chosen.serving.format == "mxnet"
        assert chosen.serving.reason.startswith("auto:")
        assert chosen.serving.parity is not None and chosen.serving.parity["max_abs_diff"] <= 1e-4
        _assert_matches(chosen.infer({"data": inputs})["dense0_fwd"], outputs)
    finally:
        chosen.close()
    native = forwardpass.load(model_folder, serve="native", warmup=0)
    try:
        assert native.session.providers == ["mxnet:cpu"]
        best = native.predict(inputs[0])
        assert best["top_k"][0]["index"] == int(outputs[0].argmax())
    finally:
        native.close()


def test_the_cli_refuses_a_damaged_params_file_in_one_line_with_exit_code_2(gluon_cnn, tmp_path):
    folder = _copy(gluon_cnn, tmp_path)
    params = folder / "cnn-0003.params"
    params.write_bytes(params.read_bytes()[:100])
    command = [FORWARDPASS, "convert", str(folder), "-o", str(tmp_path / "out"), "--input", "data=-1,1,8,8"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {params}: corrupt or truncated MXNet params file (Invalid NDArray file format)"
    ]
    assert not (tmp_path / "out.onnx").exists()


def test_convert_refuses_an_opset_below_the_exporters(gluon_cnn, tmp_path):
    with pytest.raises(ConfigError, match="opset 12 or newer"):
        MXNET.convert(gluon_cnn[0], tmp_path / "model.onnx", SHAPES, ConvertOptions(opset=11))


def test_missing_input_shapes_name_the_input_and_the_option(gluon_cnn):
    with pytest.raises(ConfigError, match=r"no input shapes; give input_shapes for \['data'\]"):
        MXNET.open_native(gluon_cnn[0], ENGINE, LoadOptions())


def test_input_shapes_that_do_not_fit_the_symbol_are_a_config_error(gluon_cnn):
    with pytest.raises(ConfigError, match="input_shapes do not fit the MXNet symbol"):
        MXNET.open_native(gluon_cnn[0], ENGINE, LoadOptions(input_shapes={"data": [-1, 3, 8, 8]}))


@pytest.mark.parametrize(
    ("damage", "file", "message"),
    [
        ("truncate", "cnn-0003.params", "corrupt or truncated MXNet params file"),
        ("garble", "cnn-0003.params", "corrupt or truncated MXNet params file"),
        ("truncate", "cnn-symbol.json", "not a readable MXNet symbol file"),
        ("garble", "cnn-symbol.json", "not a readable MXNet symbol file"),
    ],
)
def test_a_damaged_file_is_a_one_line_error_naming_it_and_the_format(gluon_cnn, tmp_path, damage, file, message):
    folder = _copy(gluon_cnn, tmp_path)
    damaged = folder / file
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 64)
    with pytest.raises(ConfigError) as caught:
        MXNET.open_native(folder, ENGINE, SHAPES)  # convert reads the files the same way (the CLI test below)
    assert str(caught.value).startswith(f"{damaged}: {message}")
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_params_of_another_model_are_named_as_not_matching(gluon_cnn, tmp_path):
    folder = _copy(gluon_cnn, tmp_path)
    symbol = folder / "cnn-symbol.json"
    symbol.write_text(symbol.read_text().replace("dense0_weight", "dense9_weight"))
    with pytest.raises(ConfigError, match=r"cnn-0003\.params: MXNet params do not match the symbol file"):
        MXNET.open_native(folder, ENGINE, SHAPES)


def test_messages_frame_arrays_of_every_numeric_kind_without_pickle():
    arrays: dict[str, np.ndarray] = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "i64": np.array([[-1, 2**40]], dtype=np.int64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "strided": np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2],
    }
    stream = io.BytesIO()
    write_message(stream, {"op": "run"}, arrays)
    write_message(stream, {"op": "second"}, {})
    stream.seek(0)
    header, got = read_message(stream)
    assert header == {"op": "run"}
    for name, array in arrays.items():
        np.testing.assert_array_equal(got[name], array)
        assert got[name].dtype == array.dtype
    assert got["f32"].flags.writeable
    assert read_message(stream) == ({"op": "second"}, {})
    with pytest.raises(EOFError):
        read_message(stream)
    with pytest.raises(ValueError, match="object arrays"):
        read_message(io.BytesIO(b'{"arrays": [{"name": "x", "dtype": "|O", "shape": [1]}]}\n'))


@pytest.mark.parametrize(
    ("mxnet_name", "onnx_name"),
    [("dense0_fwd_output", "dense0_fwd"), ("split0_output1", "split01"), ("plain", "plain")],
)
def test_output_names_follow_mxnets_onnx_exporter(mxnet_name, onnx_name):
    assert onnx_output_name(mxnet_name) == onnx_name
