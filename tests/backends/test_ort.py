"""OrtSession: real ONNX Runtime sessions — providers, thread and graph options, warm-up, specs, load and run errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from forwardpass.backends.ort import OrtSession, choose_providers
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError
from forwardpass.tensor import DataType, TensorSpec


@pytest.fixture(scope="module")
def adder(tmp_path_factory: pytest.TempPathFactory, add_model) -> Path:
    return add_model(tmp_path_factory.mktemp("ort") / "adder.onnx", constant=2.5, width=3)


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def reshaper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = Reshape(x, shape, allowzero=1): all-zero warm-up inputs fail in ONNX Runtime (shape [0, 0], 4 values)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1)],
        "reshape",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
    )
    return save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path_factory.mktemp("ort") / "r.onnx"
    )


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two inputs of different types, a fixed and a symbolic dim, two outputs."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["ids_f", "weights"], ["scaled"]),
            helper.make_node("ReduceSum", ["scaled"], ["total"], keepdims=0),
        ],
        "multi",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5]),
            helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["batch", 5]),
        ],
        [
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 5]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return save(model, tmp_path_factory.mktemp("ort") / "multi.onnx")


def test_runs_and_matches_numpy(adder: Path):
    session = OrtSession(adder, EngineConfig(warmup=0))
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    out = session.run({"x": x})
    assert list(out) == ["y"]
    np.testing.assert_array_equal(out["y"], x + np.float32(2.5))


def test_specs_come_from_the_model(multi: Path):
    session = OrtSession(multi, EngineConfig(warmup=0))
    assert session.inputs == [
        TensorSpec("ids", DataType.INT64, (-1, 5)),
        TensorSpec("weights", DataType.FP32, (-1, 5)),
    ]
    assert session.outputs == [TensorSpec("scaled", DataType.FP32, (-1, 5)), TensorSpec("total", DataType.FP32, ())]
    ids = np.arange(10, dtype=np.int64).reshape(2, 5)
    weights = np.full((2, 5), 0.5, np.float32)
    out = session.run({"ids": ids, "weights": weights})
    assert list(out) == ["scaled", "total"]
    np.testing.assert_allclose(out["total"], ids.sum() * 0.5)


def test_providers_are_chosen_automatically(adder: Path):
    available = ort.get_available_providers()
    chosen = choose_providers("auto")
    assert chosen, "there is always somewhere to run"
    assert chosen[-1] == "CPUExecutionProvider"
    assert set(chosen) <= set(available)
    if "CUDAExecutionProvider" in available:
        assert chosen.index("CUDAExecutionProvider") < chosen.index("CPUExecutionProvider")
    session = OrtSession(adder, EngineConfig(warmup=0))
    assert session.providers == session._session.get_providers()
    assert session.providers[-1] == "CPUExecutionProvider"
    assert set(session.providers) <= set(chosen)


def test_explicit_providers(adder: Path):
    session = OrtSession(adder, EngineConfig(providers=["CPUExecutionProvider"], warmup=0))
    assert session.providers == ["CPUExecutionProvider"]


def test_unavailable_provider_is_a_config_error():
    with pytest.raises(ConfigError, match=r"NoSuchExecutionProvider.*available"):
        choose_providers(["NoSuchExecutionProvider", "CPUExecutionProvider"])


@pytest.mark.parametrize(("intra", "inter"), [(1, 1), (2, 3)])
def test_thread_options_are_applied(adder: Path, intra: int, inter: int):
    session = OrtSession(adder, EngineConfig(intra_op_threads=intra, inter_op_threads=inter, warmup=0))
    options = session._session.get_session_options()
    assert options.intra_op_num_threads == intra
    assert options.inter_op_num_threads == inter


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("disable", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ],
)
def test_graph_optimization_is_applied(adder: Path, level: str, expected: ort.GraphOptimizationLevel):
    session = OrtSession(adder, EngineConfig(graph_optimization=level, warmup=0))  # type: ignore[arg-type]
    assert session._session.get_session_options().graph_optimization_level == expected


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_warmup_runs_real_forward_passes(reshaper: Path, warmup: int, caplog: pytest.LogCaptureFixture):
    """Zeros are an invalid shape for this model, so each warm-up pass that really reaches ORT logs its refusal."""
    with caplog.at_level(logging.DEBUG, logger="forwardpass.backends.ort"):
        session = OrtSession(reshaper, EngineConfig(warmup=warmup))
    skipped = [r for r in caplog.records if "warm-up skipped" in r.getMessage()]
    assert len(skipped) == warmup
    # the session still loads and serves real inputs
    out = session.run({"x": np.arange(4, dtype=np.float32).reshape(2, 2), "shape": np.array([4, 1], np.int64)})
    assert out["y"].shape == (4, 1)


def test_warmup_succeeds_quietly_on_a_normal_model(multi: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.DEBUG, logger="forwardpass.backends.ort"):
        OrtSession(multi, EngineConfig(warmup=2))
    assert not [r for r in caplog.records if "warm-up" in r.getMessage()]


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a protobuf at all \x00\xff\x10", "truncated"],
    ids=["empty", "garbage", "truncated"],
)
def test_corrupt_model_is_a_config_error_naming_the_path(tmp_path: Path, adder: Path, content: bytes | str):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content if isinstance(content, bytes) else adder.read_bytes()[:40])
    with pytest.raises(ConfigError) as info:
        OrtSession(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_model_file_is_a_config_error_naming_the_path(tmp_path: Path):
    path = tmp_path / "absent.onnx"
    with pytest.raises(ConfigError, match=r"absent\.onnx"):
        OrtSession(path)


def test_a_folder_instead_of_a_file(tmp_path: Path):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"model\.onnx"):
        OrtSession(folder)


def test_bad_input_at_run_time_is_an_input_error(adder: Path):
    session = OrtSession(adder, EngineConfig(warmup=0))
    with pytest.raises(InputError, match="refused the input"):
        session.run({"x": np.zeros((2, 7), np.float32)})
    with pytest.raises(InputError):
        session.run({"x": np.zeros((2, 3), np.float64)})


@pytest.fixture(scope="module")
def echo_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return save(model, tmp_path_factory.mktemp("echo") / "model.onnx")


def test_bytes_elements_reach_a_string_model_as_text_not_as_their_repr(echo_text: Path):
    session = OrtSession(echo_text, EngineConfig(warmup=0))
    out = session.run({"text": np.array([b"caf\xc3\xa9", "plain"], dtype=object)})
    assert out["same"].tolist() == ["café", "plain"]


def test_bytes_that_are_not_utf8_are_an_input_error_naming_the_tensor(echo_text: Path):
    session = OrtSession(echo_text, EngineConfig(warmup=0))
    with pytest.raises(InputError, match=r"'text'.*UTF-8"):
        session.run({"text": np.array([b"\xff"], dtype=object)})


def test_bfloat16_inputs_and_outputs_go_in_and_come_back_as_float32(tmp_path: Path):
    """ONNX Runtime's Python API takes no numpy array for a BF16 input and gives none back for a BF16 output."""
    nodes = [
        helper.make_node("Cast", ["scores"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["values"], ["halved"], to=TensorProto.BFLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "bfloat16_io",
        [
            helper.make_tensor_value_info("scores", TensorProto.BFLOAT16, ["batch", 3]),
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("as_float", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("halved", TensorProto.BFLOAT16, ["batch", 3]),
        ],
    )
    path = tmp_path / "bfloat16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    session = OrtSession(path, EngineConfig(warmup=0))
    assert [(spec.name, spec.dtype) for spec in session.inputs] == [
        ("scores", DataType.FP32),
        ("values", DataType.FP32),
    ]
    assert [spec.dtype for spec in session.outputs] == [DataType.FP32, DataType.FP32]

    values = np.array([[1.0, 0.1, -3.3], [1e-3, 65504.0, 2.0]], np.float32)
    rounded = np.array([[1.0, 0.10009765625, -3.296875], [0.00099945068359375, 65536.0, 2.0]], np.float32)
    got = session.run({"scores": values, "values": values})
    np.testing.assert_array_equal(got["as_float"], rounded)  # to the nearest bfloat16, as ONNX's Cast rounds
    np.testing.assert_array_equal(got["halved"], rounded)


def test_a_model_with_bf16_tensors_and_string_inputs_is_refused_at_load(tmp_path: Path):
    """Only OrtValues carry BF16 through ONNX Runtime's Python API, and it makes none from strings: such a model
    loaded, then failed every request with a RuntimeError (a 500 from the server)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["words"], ["same"]), helper.make_node("Identity", ["scores"], ["kept"])],
        "bfloat16_and_text",
        [
            helper.make_tensor_value_info("words", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("scores", TensorProto.BFLOAT16, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("same", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("kept", TensorProto.BFLOAT16, ["batch"]),
        ],
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match=r"string input\(s\) \['words'\].*BF16 tensor\(s\) \['scores', 'kept'\]"):
        OrtSession(path, EngineConfig(warmup=0))
