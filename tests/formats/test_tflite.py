"""TFLite: a small Keras model converted by TensorFlow's own TFLiteConverter, run natively (TF Lite interpreter) and
converted to ONNX by tf2onnx; both compared with Keras' own output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import forwardpass
from forwardpass.backends.ort import OrtSession
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError
from forwardpass.formats import ServeMode, detect_format
from forwardpass.formats.base import ConvertOptions, LoadOptions
from forwardpass.formats.convert import convert_with_parity, provenance_path
from forwardpass.formats.tflite import TFLITE, TfliteSession

FEATURES = 6
CLASSES = 3


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """model.tflite (dynamic batch), held-out inputs and Keras' own probabilities for them."""
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax", name="probs")(hidden))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    folder = tmp_path_factory.mktemp("tflite")
    path = folder / "model.tflite"
    path.write_bytes(converter.convert())
    held_out = np.random.default_rng(1).normal(size=(5, FEATURES)).astype(np.float32)
    return path, held_out, model.predict(held_out, verbose=0)


def test_native_runs_equal_keras(tflite_model: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, held_out, expected = tflite_model
    assert detect_format(path).name == "tflite"
    session = TfliteSession(path, EngineConfig())
    assert [spec.shape for spec in session.inputs] == [(-1, FEATURES)]
    (output,) = session.run({session.inputs[0].name: held_out}).values()
    np.testing.assert_allclose(output, expected, atol=1e-6)
    (single,) = session.run({session.inputs[0].name: held_out[:1]}).values()  # another batch size: resized
    np.testing.assert_allclose(single, expected[:1], atol=1e-6)


def test_conversion_keeps_parity_and_records_it(
    tflite_model: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, held_out, expected = tflite_model
    provenance = convert_with_parity(TFLITE, path, tmp_path / "converted", LoadOptions(), ConvertOptions())
    assert provenance["source"]["format"] == "tflite" and provenance["parity"]["max_abs_diff"] <= 1e-4
    assert json.loads(provenance_path(tmp_path / "converted.onnx").read_text())["tool_versions"]["tf2onnx"]
    converted = OrtSession(tmp_path / "converted.onnx", EngineConfig())
    (output,) = converted.run({converted.inputs[0].name: held_out}).values()
    np.testing.assert_allclose(output, expected, atol=1e-5)


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_a_tflite_model_loads_and_predicts(
    tflite_model: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path, serve: str
) -> None:
    path, held_out, expected = tflite_model
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.tflite").write_bytes(path.read_bytes())
    (tmp_path / "config.yaml").write_text(f"source: {{serve: {serve}}}\npostprocess: {{kind: classification}}\n")
    model = forwardpass.load(tmp_path)
    assert model.serving.format == "tflite" and model.serving.engine == serve
    found = model.predict([row for row in held_out])
    assert [p["index"] for p in found] == expected.argmax(axis=1).tolist()


def test_a_corrupt_file_is_refused_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "model.tflite"
    broken.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ConfigError, match="cannot load as tflite") as refused:
        TfliteSession(broken, EngineConfig())
    assert "\n" not in str(refused.value)


def test_a_wrong_shape_is_refused(tflite_model: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = tflite_model
    session = TfliteSession(path, EngineConfig())
    with pytest.raises(InputError):
        session.run({session.inputs[0].name: np.zeros((2, FEATURES + 1), dtype=np.float32)})


@pytest.fixture(scope="module")
def quantized_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], np.ndarray, np.ndarray]:
    """The same Keras classifier as full-integer TF Lite models, int8 and uint8 in and out; held-out rows and
    Keras' own probabilities for them."""
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(hidden))
    calibration = np.random.default_rng(2).normal(size=(64, FEATURES)).astype(np.float32)
    folder = tmp_path_factory.mktemp("quantized")
    paths = {}
    for kind in ("int8", "uint8"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([row[None]] for row in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, kind)
        with pytest.warns(UserWarning, match="Statistics for quantized inputs"):
            paths[kind] = folder / f"{kind}.tflite"
            paths[kind].write_bytes(converter.convert())
    held_out = np.random.default_rng(1).normal(size=(5, FEATURES)).astype(np.float32)
    return paths, held_out, model.predict(held_out, verbose=0)


def interpreter_answer(path: Path, rows: np.ndarray) -> np.ndarray:
    """What TF Lite's interpreter answers for `rows`, quantized by the input's scale and zero point (rounded to the
    nearest, ties to even, as ONNX's QuantizeLinear) and dequantized by the output's."""
    import tensorflow as tf

    with pytest.warns(UserWarning, match="deprecated"):
        interpreter = tf.lite.Interpreter(model_path=str(path))
    (given,), (made,) = interpreter.get_input_details(), interpreter.get_output_details()
    scale, zero_point = given["quantization"]
    limits = np.iinfo(given["dtype"])
    quantized = np.clip(np.rint(rows / np.float32(scale)) + zero_point, limits.min, limits.max).astype(given["dtype"])
    interpreter.resize_tensor_input(given["index"], list(rows.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], quantized)
    interpreter.invoke()
    out_scale, out_zero_point = made["quantization"]
    return (interpreter.get_tensor(made["index"]).astype(np.float32) - out_zero_point) * np.float32(out_scale)


@pytest.mark.parametrize("kind", ["int8", "uint8"])
@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_a_full_integer_model_takes_and_gives_real_values_with_its_scale_and_zero_point(
    quantized_models: tuple[dict[str, Path], np.ndarray, np.ndarray], kind: str, serve: ServeMode, tmp_path: Path
) -> None:
    paths, held_out, keras_probabilities = quantized_models
    path = tmp_path / paths[kind].name
    path.write_bytes(paths[kind].read_bytes())
    model = forwardpass.load(path, serve=serve, warmup=0)
    assert [(spec.dtype.name, spec.shape) for spec in [*model.inputs, *model.outputs]] == [
        ("FP32", (-1, FEATURES)),
        ("FP32", (-1, CLASSES)),
    ]
    (got,) = model.infer({model.inputs[0].name: held_out}).values()
    step = 1 / 256  # the outputs' quantization step: a probability in [0, 1] in 8 bits
    assert np.abs(got - interpreter_answer(path, held_out)).max() <= (0 if serve == "native" else step) + 1e-7
    assert np.abs(got - keras_probabilities).max() <= 8 * step  # what quantizing the model cost


def test_predict_writes_nothing_to_stderr_but_its_own_lines(
    tflite_model: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """TF Lite's C++ announces each XNNPACK delegate on stderr, where predict's one-line errors go."""
    path, held_out, expected = tflite_model
    (tmp_path / "model.tflite").write_bytes(path.read_bytes())
    np.save(tmp_path / "rows.npy", held_out)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "forwardpass"), "predict", "model.tflite", "rows.npy", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [answer["index"] for answer in answers] == expected.argmax(axis=1).tolist()
