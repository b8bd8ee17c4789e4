"""The KServe Python SDK (kserve 0.21: InferenceRESTClient with the v2 protocol, InferenceGRPCClient, InferRequest)
against the real server on 127.0.0.1: its answers equal the model run in process exactly, over REST (JSON and binary
tensors) and gRPC. The SDK lives in a virtualenv of its own, .build/clients/kserve, built once by uv from
tests/server/kserve-requirements.txt (wheels only) and reused; tests/server/kserve_sdk.py drives it as a subprocess."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

import forwardpass
from tests.running_server import free_port, loaded_once

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
VENV = ROOT / ".build" / "clients" / "kserve"
RNG = np.random.default_rng(11)
ROWS = RNG.standard_normal((3, 64)).astype(np.float32)


def kserve_python() -> Path:
    """The SDK virtualenv's interpreter, the virtualenv built first when absent: into a sibling folder renamed into
    place when complete, so that an interrupted build is never taken for a built one."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    building = VENV.with_name(f"kserve.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    uv = Path(sys.executable).parent / "uv"
    environment = {**os.environ, "UV_CACHE_DIR": str(ROOT / ".build" / "cache" / "uv")}
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, building], check=True, env=environment, timeout=60)
    requirements = HERE / "kserve-requirements.txt"
    install: list[str | Path] = [uv, "pip", "install", "-q", "--python", building / "bin" / "python"]
    install += ["--only-binary", ":all:"]
    subprocess.run([*install, "-r", requirements], check=True, env=environment, timeout=300)
    try:
        building.rename(VENV)
    except OSError:  # another session built it meanwhile
        shutil.rmtree(building)
    return python


@pytest.fixture(scope="module")
def server(repository: Path, kit) -> Iterator[Any]:
    """The server of the module's repository, gRPC on too."""
    running = kit.serve(repository, grpc_port=free_port())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def answers(server) -> dict[tuple[str, str], Any]:
    """The SDK's answer to each of CALLS over each transport, {(call's name, transport): answer}: all sent by one
    process (importing kserve takes seconds)."""
    named = [(name, transport) for name in CALLS for transport in TRANSPORTS] + [(name, "v1") for name in V1_CALLS]
    calls = [{**(CALLS | V1_CALLS)[name], "transport": transport} for name, transport in named]
    plan = {"rest": server.address, "grpc": server.grpc_address, "calls": calls}
    done = subprocess.run(
        [kserve_python(), HERE / "kserve_sdk.py"], input=json.dumps(plan), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return dict(zip(named, json.loads(done.stdout), strict=True))


@pytest.fixture(scope="module")
def repository(repository: Path, kit) -> Path:
    """The shared models and two of the datatypes they lack: FP16 (y = x + x) and BOOL (y = not x)."""
    for name, onnx_type, operator in [("half", TensorProto.FLOAT16, "Add"), ("flags", TensorProto.BOOL, "Not")]:
        graph = helper.make_graph(
            [helper.make_node(operator, ["x", "x"] if operator == "Add" else ["x"], ["y"])],
            name,
            [helper.make_tensor_value_info("x", onnx_type, ["batch", 3])],
            [helper.make_tensor_value_info("y", onnx_type, ["batch", 3])],
        )
        kit.save(graph, repository / name / "1", {"max_batch_size": 8})
    return repository


@pytest.fixture(scope="module")
def in_process(repository: Path) -> Iterator[Callable[[str], forwardpass.Model]]:
    """The served models loaded in this process, once each: the reference every answer must equal."""
    yield from loaded_once(repository)


def tensor(name: str, datatype: str, array: np.ndarray, binary: bool) -> dict[str, Any]:
    data = array.tolist()
    if datatype == "BYTES":
        data = [[value.decode() for value in row] for row in data]
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data, "binary": binary}


def array_of(output: dict[str, Any]) -> np.ndarray:
    if output["datatype"] == "BYTES":
        values = [base64.b64decode(value) for value in output["data"]]
        return np.array(values, dtype=object).reshape(output["shape"])
    dtype = forwardpass.DataType[output["datatype"]].numpy_dtype
    return np.array(output["data"], dtype=dtype).reshape(output["shape"])


def assert_equal_exactly(answer: dict[str, Any], expected: dict[str, np.ndarray]) -> None:
    assert "error" not in answer, answer
    assert sorted(answer["outputs"]) == sorted(expected)
    for name, array in expected.items():
        if array.dtype == object:  # the model's str elements travel as their UTF-8 bytes
            array = np.vectorize(lambda value: value.encode() if isinstance(value, str) else value, otypes=[object])(
                array
            )
        got = array_of(answer["outputs"][name])
        assert got.dtype == array.dtype and got.shape == array.shape, (name, got.dtype, got.shape)
        np.testing.assert_array_equal(got, array)


TRANSPORTS = ["rest", "grpc"]
TEXT = np.array([[b"a", "bé".encode()], [b"", b"x" * 300]], dtype=object)
INDICES = np.array([[1], [9], [0]], dtype=np.int64)
HALVES = np.array([[0.5, -1.25, 65504 / 2], [1e-3, 0, 3]], dtype=np.float16)
FLAGS = np.array([[True, False, True]])


def infer(model: str, inputs: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    return {"call": "infer", "model": model, "inputs": inputs, **options}


CALLS: dict[str, dict[str, Any]] = {
    "live": {"call": "server_live"},
    "ready": {"call": "server_ready"},
    "mlp ready": {"call": "model_ready", "model": "mlp"},
    "missing ready": {"call": "model_ready", "model": "missing"},
    **{
        f"mlp {binary_in} {binary_out}": infer(
            "mlp", [tensor("x", "FP32", ROWS, binary_in)], id="r-7", binary_output=binary_out
        )
        for binary_in in (False, True)
        for binary_out in (False, True)
    },
    **{
        f"strings {binary}": infer("strings", [tensor("x", "BYTES", TEXT, binary)], binary_output=binary)
        for binary in (False, True)
    },
    **{
        f"gather {binary}": infer("gather", [tensor("index", "INT64", INDICES, binary)], binary_output=binary)
        for binary in (False, True)
    },
    "half": infer("half", [tensor("x", "FP16", HALVES, True)], binary_output=True),
    **{f"flags {binary}": infer("flags", [tensor("x", "BOOL", FLAGS, binary)]) for binary in (False, True)},
    "classes": infer(
        "mlp",
        [tensor("x", "FP32", ROWS, True)],
        outputs=[{"name": "y", "binary": False, "parameters": {"classification": 2}}],
        parameters={"tenant": "a", "attempt": 2, "cached": False},
    ),
    "float64": infer("mlp", [tensor("x", "FP64", ROWS.astype(np.float64), True)]),
    "unknown model": infer("nothing", [tensor("x", "FP32", ROWS, False)]),
    "unknown output": infer("mlp", [tensor("x", "FP32", ROWS, False)], outputs=[{"name": "z", "binary": False}]),
    "version 1": infer("mlp", [tensor("x", "FP32", ROWS, True)], version="1"),
    "version 9": infer("mlp", [tensor("x", "FP32", ROWS, True)], version="9"),
}
EXPECTED = {  # the call's name: the model, its inputs
    **{f"mlp {i} {o}": ("mlp", {"x": ROWS}) for i in (False, True) for o in (False, True)},
    **{f"strings {binary}": ("strings", {"x": TEXT}) for binary in (False, True)},
    **{f"gather {binary}": ("gather", {"index": INDICES}) for binary in (False, True)},
    "half": ("half", {"x": HALVES}),
    **{f"flags {binary}": ("flags", {"x": FLAGS}) for binary in (False, True)},
}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_health_calls_answer(answers, transport):
    assert [answers[name, transport] for name in ("live", "ready", "mlp ready", "missing ready")] == [
        True,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", EXPECTED)
def test_infer_equals_the_model_in_process_exactly(answers, in_process, name, transport):
    model, inputs = EXPECTED[name]
    assert_equal_exactly(answers[name, transport], in_process(model).infer(inputs))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_request_id_comes_back(answers, transport):
    answer = answers["mlp False False", transport]
    assert answer["id"] == "r-7"
    # the SDK reads a REST answer's model_version nowhere (InferResponse.from_bytes drops it), gRPC's it keeps
    assert answer["model_version"] == (None if transport == "rest" else "1")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_requested_classification_and_request_parameters(answers, in_process, transport):
    """A requested output's classification parameter gives Triton's "score:index:label" strings; parameters the
    server does not know travel without effect, as Triton lets them."""
    answer = answers["classes", transport]
    scores = in_process("mlp").infer({"x": ROWS})["y"]
    got = array_of(answer["outputs"]["y"])
    assert got.shape == (3, 2)
    for row, classes in zip(scores, got.tolist(), strict=True):
        best = np.argsort(-row.astype(np.float64), kind="stable")[:2]
        assert classes == [f"{row[i]:f}:{i}:class_{i}".encode() for i in best]


REFUSALS = {  # the call's name: (HTTP status, gRPC code, words of the message)
    "float64": (400, "INVALID_ARGUMENT", "datatype FP64 does not match the model's FP32"),
    "unknown model": (404, "NOT_FOUND", "nothing"),
    "unknown output": (400, "INVALID_ARGUMENT", "'z'"),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", REFUSALS)
def test_refusals_reach_the_sdk_with_their_status_and_message(answers, name, transport):
    status, code, words = REFUSALS[name]
    answer = answers[name, transport]
    assert answer["status"] == (status if transport == "rest" else code), answer
    assert words in answer["error"]


V1_CALLS: dict[str, dict[str, Any]] = {
    "v1 ready": {"call": "model_ready", "model": "mlp"},
    "v1 missing ready": {"call": "model_ready", "model": "missing"},
    "v1 predict": {"call": "infer", "model": "mlp", "instances": ROWS.tolist()},
    "v1 live": {"call": "server_live"},
}


def test_kserve_v1_protocol_readiness_and_predictions(answers, in_process):
    """KServe's V1 protocol shares TF Serving's paths: GET /v1/models/<m> answers its {"name", "ready"} beside TF
    Serving's model_version_status (the SDK read no "ready" there and called a served model not ready)."""
    assert answers["v1 ready", "v1"] is True
    assert answers["v1 missing ready", "v1"]["status"] == 404
    predictions = np.array(answers["v1 predict", "v1"]["predictions"], dtype=np.float32)
    np.testing.assert_array_equal(predictions, in_process("mlp").infer({"x": ROWS})["y"])


def test_kserve_v1_liveness_is_not_offered_at_the_root(answers):
    """A known limitation (README): KServe V1's liveness is GET / answering {"status": "alive"}, and / is the page
    to try the models in a browser; the V2 liveness (/v2/health/live) answers the SDK's V2 client (above)."""
    assert answers["v1 live", "v1"]["status"] == "not JSON"


def test_a_requested_version_reaches_the_server_over_grpc_only(answers, in_process):
    """InferRequest(model_version=...) goes in gRPC's ModelInferRequest; the SDK's REST client posts to
    /v2/models/<m>/infer whatever the version (a limitation of the SDK): the latest version answers."""
    expected = in_process("mlp").infer({"x": ROWS})
    for name in ("version 1", "version 9"):
        assert_equal_exactly(answers[name, "rest"], expected)
    assert_equal_exactly(answers["version 1", "grpc"], expected)
    unknown = answers["version 9", "grpc"]
    assert unknown["status"] == "NOT_FOUND" and "model 'mlp' has no version '9'" in unknown["error"]
