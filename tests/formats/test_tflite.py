"""TFLite: a small Keras model converted by TensorFlow's own TFLiteConverter, run natively (TF Lite interpreter) and
converted to ONNX by tf2onnx; both compared with Keras' own output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import forwardpass
from forwardpass.backends.ort import OrtSession
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError
from forwardpass.formats import detect_format
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
