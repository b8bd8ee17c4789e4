"""TensorFlow formats: one small Keras CNN, trained on real digits, saved as a SavedModel, a frozen GraphDef, a
`.keras` and a legacy `.h5` file; each is run natively and converted to ONNX, and compared with Keras' own output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import forwardpass
from forwardpass.backends.ort import OrtSession
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError
from forwardpass.formats import ServeMode, open_model_session
from forwardpass.formats.base import ConvertOptions, LoadOptions
from forwardpass.formats.convert import convert_with_parity, provenance_path
from forwardpass.formats.tensorflow import FROZEN_GRAPH, KERAS, SAVED_MODEL
from forwardpass.tensor import DataType

# Keras' fit converts its own tensors with a numpy-1 idiom; nothing here can act on that notice.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

FORMATS = (SAVED_MODEL, FROZEN_GRAPH, KERAS)
HELD_OUT = 40
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Trained:
    folder: Path
    held_out: np.ndarray  # float32 [N, 8, 8, 1], never seen in training
    expected: np.ndarray  # Keras' own probabilities for `held_out`


@dataclass(frozen=True)
class Case:
    artefact: str
    format: Any
    output: str  # the output's name, the same natively and converted

    def __str__(self) -> str:
        return self.artefact


CASES = [
    Case("saved_model", SAVED_MODEL, "output_0"),
    Case("frozen.pb", FROZEN_GRAPH, "Identity"),
    Case("model.keras", KERAS, "probs"),
    Case("model.h5", KERAS, "probs"),
]


@pytest.fixture(scope="module")
def trained(tf: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A digits CNN trained for a few epochs, written in every TensorFlow format."""
    import keras
    from sklearn.datasets import load_digits
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    hidden = keras.layers.Conv2D(8, 3, activation="relu")(image)
    hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = keras.layers.Flatten()(hidden)
    probs = keras.layers.Dense(10, activation="softmax", name="probs")(hidden)
    model = keras.Model(image, probs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images[:1200], digits.target[:1200], epochs=4, batch_size=64, verbose=0)

    folder = tmp_path_factory.mktemp("tensorflow")
    model.export(str(folder / "saved_model"), verbose=False)
    model.save(folder / "model.keras")
    model.save(folder / "model.h5")
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image"))
    graph_def = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    (folder / "frozen.pb").write_bytes(graph_def.SerializeToString())

    held_out = images[-HELD_OUT:]
    return Trained(folder, held_out, model(held_out, training=False).numpy())


def assert_matches(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_format_recognises_its_own_artefact_only(trained: Trained, case: Case):
    path = trained.folder / case.artefact
    assert [fmt.name for fmt in FORMATS if fmt.detect(path)] == [case.format.name]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_native_session_matches_keras_at_batch_1_and_40(trained: Trained, case: Case):
    session = case.format.open_native(trained.folder / case.artefact, EngineConfig(), LoadOptions())
    try:
        assert [(s.name, s.dtype, s.shape) for s in session.inputs] == [("image", DataType.FP32, (-1, 8, 8, 1))]
        assert [(s.name, s.dtype, s.shape) for s in session.outputs] == [(case.output, DataType.FP32, (-1, 10))]
        assert session.providers == ["tensorflow:cpu"]
        assert_matches(session.run({"image": trained.held_out})[case.output], trained.expected)
        assert_matches(session.run({"image": trained.held_out[:1]})[case.output], trained.expected[:1])
    finally:
        session.close()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_converted_onnx_matches_keras_with_a_dynamic_batch(trained: Trained, case: Case, tmp_path: Path):
    output = tmp_path / "model.onnx"
    convert_with_parity(case.format, trained.folder / case.artefact, output, LoadOptions(), ConvertOptions(opset=17))
    provenance = json.loads(provenance_path(output).read_text(encoding="utf-8"))
    assert provenance["source"]["format"] == case.format.name
    assert provenance["converter"] == "tf2onnx"
    assert provenance["opset"] == 17
    assert {"tensorflow", "tf2onnx"} <= set(provenance["tool_versions"])
    assert provenance["parity"]["max_abs_diff"] <= TOLERANCE
    session = OrtSession(output)
    assert [(s.name, s.shape) for s in session.inputs] == [("image", (-1, 8, 8, 1))]
    assert [(s.name, s.shape) for s in session.outputs] == [(case.output, (-1, 10))]
    assert_matches(session.run({"image": trained.held_out})[case.output], trained.expected)
    assert_matches(session.run({"image": trained.held_out[:1]})[case.output], trained.expected[:1])


def test_savedmodel_runs_the_signature_asked_for(trained: Trained):
    path = trained.folder / "saved_model"
    session = SAVED_MODEL.open_native(path, EngineConfig(warmup=0), LoadOptions(signature="serve"))
    assert_matches(session.run({"image": trained.held_out})["output_0"], trained.expected)
    with pytest.raises(ConfigError, match="no signature 'logits'; available: serve, serving_default"):
        SAVED_MODEL.open_native(path, EngineConfig(), LoadOptions(signature="logits"))


def test_frozen_graph_takes_tensor_names_from_the_options(tf: ModuleType, trained: Trained):
    path = trained.folder / "frozen.pb"
    graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
    softmax = next(node.name for node in graph_def.node if node.op == "Softmax")  # the node before the Identity
    options = LoadOptions(input_names=["image:0"], output_names=[f"{softmax}:0"])
    session = FROZEN_GRAPH.open_native(path, EngineConfig(warmup=0), options)
    assert [s.name for s in session.outputs] == [softmax]
    assert_matches(session.run({"image": trained.held_out})[softmax], trained.expected)
    with pytest.raises(ConfigError, match="no node 'logits'"):
        FROZEN_GRAPH.open_native(path, EngineConfig(), LoadOptions(output_names=["logits"]))


def test_a_frozen_graph_without_input_shapes_takes_them_from_the_options(tf: ModuleType, tmp_path: Path):
    graph = tf.Graph()
    with graph.as_default():
        value = tf.compat.v1.placeholder(tf.float32, shape=None, name="value")  # rank unknown to TensorFlow
        tf.identity(value * 2.0 + 1.0, name="result")
    path = tmp_path / "shapeless.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(ConfigError, match="input 'value' has no recorded shape; give it with input_shapes"):
        FROZEN_GRAPH.open_native(path, EngineConfig(), LoadOptions())
    options = LoadOptions(input_shapes={"value": [-1, 3]})
    session = FROZEN_GRAPH.open_native(path, EngineConfig(), options)
    assert [(s.name, s.shape) for s in session.inputs] == [("value", (-1, 3))]
    batch = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.run({"value": batch})["result"], batch * 2.0 + 1.0)
    output = tmp_path / "shapeless.onnx"
    convert_with_parity(FROZEN_GRAPH, path, output, options, ConvertOptions())
    assert [(s.name, s.shape) for s in OrtSession(output).inputs] == [("value", (-1, 3))]


@pytest.mark.parametrize("mode", ["native", "onnx", "auto"])
def test_a_repository_version_folder_serves_a_savedmodel_in_each_mode(
    trained: Trained, tmp_path: Path, mode: ServeMode
):
    version = tmp_path / "digits" / "1"
    shutil.copytree(trained.folder / "saved_model", version / "model.savedmodel")
    session, serving = open_model_session(version, EngineConfig(), serve_mode=mode)
    try:
        assert serving.format == "savedmodel"
        if mode == "auto":
            assert serving.reason.startswith("auto: ")  # it timed both engines and says which won by how much
        else:
            assert serving.engine == mode
        assert_matches(session.run({"image": trained.held_out})["output_0"], trained.expected)
    finally:
        session.close()


def test_forwardpass_load_serves_keras_natively_and_a_savedmodel_signature_converted(trained: Trained, tmp_path: Path):
    shutil.copy(trained.folder / "model.keras", tmp_path / "digits.keras")
    native = forwardpass.load(tmp_path / "digits.keras", serve="native", warmup=0)
    assert (native.serving.format, native.serving.engine) == ("keras", "native")
    assert_matches(native.infer({"image": trained.held_out})["probs"], trained.expected)

    shutil.copytree(trained.folder / "saved_model", tmp_path / "digits")
    converted = forwardpass.load(tmp_path / "digits", serve="onnx", signature="serve", warmup=0)
    assert (converted.serving.format, converted.serving.engine) == ("savedmodel", "onnx")
    assert converted.serving.parity is not None and converted.serving.parity["max_abs_diff"] <= TOLERANCE
    assert_matches(converted.infer({"image": trained.held_out})["output_0"], trained.expected)


def test_a_repository_config_names_a_frozen_graphs_tensors(tf: ModuleType, tmp_path: Path):
    graph = tf.Graph()
    with graph.as_default():
        value = tf.compat.v1.placeholder(tf.float32, shape=None, name="value")
        tf.identity(value * 3.0, name="tripled")
        tf.identity(value - 1.0, name="unwanted")
    version = tmp_path / "repository" / "scale" / "1"
    version.mkdir(parents=True)
    (version / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    (version.parent / "config.yaml").write_text(
        "source:\n  inputs: [{name: value, shape: [-1, 2]}]\n  outputs: [tripled]\n", encoding="utf-8"
    )
    model = forwardpass.load("scale", repository=tmp_path / "repository", serve="onnx", warmup=0)
    assert [(s.name, s.shape) for s in model.inputs] == [("value", (-1, 2))]
    assert [s.name for s in model.outputs] == ["tripled"]
    np.testing.assert_allclose(model.infer({"value": [[1.0, 2.0]]})["tripled"], [[3.0, 6.0]])


def test_a_wrong_shape_is_an_input_error(trained: Trained):
    session = KERAS.open_native(trained.folder / "model.keras", EngineConfig(warmup=0), LoadOptions())
    with pytest.raises(InputError, match=r"input 'image': expected shape \[-1, 8, 8, 1\], got \[2, 9, 9, 1\]"):
        session.run({"image": np.zeros((2, 9, 9, 1), np.float32)})
    with pytest.raises(InputError, match="missing input"):
        session.run({})


def test_an_id_outside_the_vocabulary_is_refused_saying_what_the_graph_said(tf: ModuleType, tmp_path: Path):
    """TensorFlow's error starts 'Graph execution error:' and ends, after the traceback, with the op's own words."""
    import keras

    ids = keras.Input((3,), name="ids", dtype="int64")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 2)(ids))
    keras.Model(ids, keras.layers.Dense(2)(pooled)).save(tmp_path / "ids.keras")
    session = KERAS.open_native(tmp_path / "ids.keras", EngineConfig(warmup=0), LoadOptions())
    with pytest.raises(InputError) as refused:
        session.run({"ids": np.array([[1, 2, 53]], np.int64)})
    assert str(refused.value).startswith("the model refused the input: indices[0,2] = 53 is not in [0, 10) (node ")


def test_a_keras_lambda_layer_loads_only_when_trusted(tf: ModuleType, tmp_path: Path):
    import keras

    value = keras.Input((3,), name="value")
    model = keras.Model(value, keras.layers.Lambda(lambda t: t * 2.0, name="double")(value))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ConfigError, match="trust_pickle=True") as refused:
        KERAS.open_native(path, EngineConfig(), LoadOptions())
    assert "--trust-pickle" in str(refused.value)
    session = KERAS.open_native(path, EngineConfig(), LoadOptions(trust_pickle=True))
    np.testing.assert_array_equal(session.run({"value": np.ones((2, 3), np.float32)})["double"], np.full((2, 3), 2.0))


def test_a_graph_that_reads_or_writes_files_is_refused_before_it_runs(tf: ModuleType, tmp_path: Path):
    """A SavedModel whose function read a file outside its folder and wrote another ran both while it loaded (the
    parity probe runs it); a frozen graph alike. Refused before TensorFlow opens them, unless trusted."""
    secret, written = tmp_path / "secret.txt", tmp_path / "written"
    secret.write_text("not the model's", encoding="utf-8")

    def serve(value: Any) -> dict[str, Any]:
        content = tf.io.read_file(str(secret))
        tf.io.write_file(str(written), content)
        return {"result": value + tf.cast(tf.strings.length(content), tf.float32)}

    leaky = tf.Module()
    leaky.serve = tf.function(serve, input_signature=[tf.TensorSpec([None, 3], tf.float32, name="value")])
    tf.saved_model.save(leaky, str(tmp_path / "leaky"), signatures={"serving_default": leaky.serve})
    frozen = tmp_path / "leaky.pb"
    frozen.write_bytes(leaky.serve.get_concrete_function().graph.as_graph_def().SerializeToString())
    for fmt, path in ((SAVED_MODEL, tmp_path / "leaky"), (FROZEN_GRAPH, frozen)):
        with pytest.raises(ConfigError, match=r"reads, writes or reaches outside the model \(ReadFile, WriteFile\)"):
            fmt.open_native(path, EngineConfig(), LoadOptions())
    assert not written.exists()
    session = SAVED_MODEL.open_native(tmp_path / "leaky", EngineConfig(), LoadOptions(trust_pickle=True))
    np.testing.assert_array_equal(session.run({"value": np.zeros((1, 3), np.float32)})["result"], np.full((1, 3), 15))
    assert written.read_text(encoding="utf-8") == "not the model's"


def test_a_normalization_layer_tf2onnx_leaves_as_inputs_is_served_natively_and_right(tf: ModuleType, tmp_path: Path):
    import keras

    normalization = keras.layers.Normalization()
    normalization.adapt(np.random.default_rng(0).uniform(0, 10, (100, 4)).astype(np.float32))
    value = keras.Input((4,), name="value")
    model = keras.Model(value, keras.layers.Dense(1, name="score")(normalization(value)))
    path = tmp_path / "normalized.keras"
    model.save(path)
    rows = np.random.default_rng(1).uniform(0, 10, (6, 4)).astype(np.float32)

    served = forwardpass.load(path, warmup=0)  # auto: its conversion asks for the layer's mean and variance as inputs
    assert served.serving.engine == "native"
    assert "the converted model refuses inputs the model takes" in served.serving.reason
    assert_matches(served.infer({"value": rows})["score"], model.predict(rows, verbose=0))


def test_a_string_lookup_tf2onnx_cannot_convert_is_served_natively_without_its_tracebacks(
    tf: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    import keras

    colour = keras.Input((1,), dtype="string", name="colour")
    lookup = keras.layers.StringLookup(vocabulary=["red", "green"], output_mode="one_hot")
    model = keras.Model(colour, keras.layers.Dense(2, name="score")(keras.layers.Flatten()(lookup(colour))))
    path = tmp_path / "lookup.keras"
    model.save(path)
    colours = np.array([["red"], ["blue"], ["green"]], dtype=object)

    served = forwardpass.load(path, warmup=0)
    assert served.serving.engine == "native" and served.serving.reason.startswith("auto: conversion refused")
    assert_matches(
        served.infer({"colour": colours})["score"], model.predict(tf.constant(colours.astype(str)), verbose=0)
    )
    assert not [record.getMessage() for record in caplog.records if record.name.startswith("tf2onnx")]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_artefact_is_a_one_line_config_error(trained: Trained, case: Case, damage: str, tmp_path: Path):
    source = trained.folder / case.artefact
    if source.is_dir():
        path = tmp_path / case.artefact
        shutil.copytree(source, path)
        damaged = path / "saved_model.pb"
    else:
        path = damaged = tmp_path / case.artefact
    if damage == "truncated":
        whole = (source / "saved_model.pb" if source.is_dir() else source).read_bytes()
        damaged.write_bytes(whole[: len(whole) // 2])
    else:
        damaged.write_bytes(b"\x00not a model\xff" * 64)
    assert case.format.detect(path)
    for attempt in (
        lambda: case.format.open_native(path, EngineConfig(), LoadOptions()),
        lambda: case.format.convert(path, tmp_path / "out.onnx", LoadOptions(), ConvertOptions()),
    ):
        with pytest.raises(ConfigError) as failure:
            attempt()
        message = str(failure.value)
        assert str(path) in message
        assert case.format.name in message
        assert "\n" not in message
        assert failure.value.exit_code == 2


def test_the_convert_command_writes_onnx_with_provenance_or_fails_in_one_line(trained: Trained, tmp_path: Path):
    command = str(Path(sys.executable).parent / "forwardpass")
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras_home"), "NO_COLOR": "1"}
    made = subprocess.run(
        [command, "convert", str(trained.folder / "frozen.pb"), "-o", str(tmp_path / "out" / "digits")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "out" / "digits.onnx").is_file()
    assert json.loads((tmp_path / "out" / "digits.json").read_text(encoding="utf-8"))["source"]["format"] == "graphdef"

    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes((trained.folder / "model.h5").read_bytes()[:1000])
    refused = subprocess.run(
        [command, "convert", str(damaged), "-o", str(tmp_path / "never")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()  # TensorFlow's own start-up notices included: none
    assert line.startswith(f"error: {damaged}: cannot load as keras: ")


def test_importing_the_tensorflow_formats_imports_no_framework(tmp_path: Path):
    code = "import sys, forwardpass.formats.tensorflow\nassert 'tensorflow' not in sys.modules\n"
    run = [sys.executable, "-c", code]
    result = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_models_opened_in_parallel_threads_all_load_and_leave_stderr_working(trained: Trained, tmp_path: Path):
    """The server's registry opens a repository's models in threads: in a process that had not imported TensorFlow
    yet, a thread got the module half imported by another (AttributeError), which ended `forwardpass serve`."""
    np.save(tmp_path / "held_out.npy", trained.held_out)
    code = (
        "import sys, numpy as np, forwardpass\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "folder, held_out = sys.argv[1], np.load(sys.argv[2])\n"
        "def probs(name):\n"
        "    model = forwardpass.load(f'{folder}/{name}', serve='native', warmup=0)\n"
        "    return next(iter(model.infer({model.session.inputs[0].name: held_out}).values()))\n"
        "with ThreadPoolExecutor(3) as pool:\n"
        "    answers = list(pool.map(probs, ['model.keras', 'saved_model', 'model.h5']))\n"
        "np.save(sys.argv[3], np.stack(answers))\n"
        "print('stderr still reaches the terminal', file=sys.stderr)\n"
    )
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras_home")}
    run = [sys.executable, "-c", code, str(trained.folder), str(tmp_path / "held_out.npy"), str(tmp_path / "out.npy")]
    result = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "stderr still reaches the terminal"
    for probs in np.load(tmp_path / "out.npy"):
        assert_matches(probs, trained.expected)
