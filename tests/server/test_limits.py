"""inputs[].max_shape on a real server: a dimension over its bound is refused from the tensor's header, before its
data is decoded, on V2 HTTP (JSON and binary) and gRPC; the bounds also bound the body."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper
from websockets.sync.client import connect

from forwardpass.server.limits import HEADER_BYTES, JSON_BYTES_PER_ELEMENT
from forwardpass.server.proto import grpc_service_pb2 as pb
from forwardpass.server.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.running_server import RunningServer, free_port, serve
from tests.server.conftest import bounded_negate, save

REFUSAL = "input 'x' dimension 2 is 100000, over its limit of 16 (inputs[].max_shape in model 'wide''s config)"
MAX_BATCH = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("repository")
    bounded_negate(repository / "wide", [-1, 2, 16], MAX_BATCH)
    running = serve(repository, grpc_port=free_port())
    yield running
    running.stop()


def infer(server: RunningServer, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/wide/infer", content=body, headers=headers, timeout=30)


def test_a_width_within_the_bound_runs(server: RunningServer) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 16], "data": [1.0] * 32}]}
    response = infer(server, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [-1.0] * 32


def test_json_over_the_bound_is_refused_before_its_data_is_read(server: RunningServer) -> None:
    # data that is no list at all: decoding it would be a different error, so the refusal came from the header
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 100_000], "data": "never decoded"}]}
    response = infer(server, json.dumps(body).encode())
    assert response.status_code == 400
    assert response.json()["error"] == REFUSAL


def test_binary_over_the_bound_is_refused_before_its_data_is_read(server: RunningServer) -> None:
    # binary_data_size 0 for 200,000 elements: reading the data would fail on its size, so the header was refused
    entry = {"name": "x", "datatype": "FP32", "shape": [1, 2, 100_000], "parameters": {"binary_data_size": 0}}
    header = json.dumps({"inputs": [entry]}).encode()
    response = infer(server, header, **{"inference-header-content-length": str(len(header))})
    assert response.status_code == 400
    assert response.json()["error"] == REFUSAL


def test_the_bounds_bound_the_body(server: RunningServer) -> None:
    largest = HEADER_BYTES + MAX_BATCH * 2 * 16 * JSON_BYTES_PER_ELEMENT  # every dimension now has a bound
    response = infer(server, b" " * (largest + 1))
    assert response.status_code == 413, response.text


def test_grpc_over_the_bound_is_invalid_argument(server: RunningServer) -> None:
    message = pb.ModelInferRequest(model_name="wide")
    message.inputs.add(name="x", datatype="FP32", shape=[1, 2, 100_000])
    message.raw_input_contents.append(np.zeros((1, 2, 100_000), np.float32).tobytes())
    with grpc.insecure_channel(server.grpc_address) as channel, pytest.raises(grpc.RpcError) as refused:
        GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == REFUSAL


ANSWER_LIMIT = 2**20  # bytes: the test server's max_response_bytes
ANSWER_REFUSAL = (
    "model 'fill' answers 4,194,304 bytes (output 'y': 4,194,304), over the server's max_response_bytes of "
    "1,048,576; ask for fewer rows or outputs"
)


@pytest.fixture(scope="module")
def filler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """y = a [n] FP32 tensor of 0.5 for an input [n]: a 16-byte request asks for an answer of any size."""
    value = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.5])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["n"], ["y"], value=value)],
        "fill",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["length"])],
    )
    repository = tmp_path_factory.mktemp("repository")
    save(graph, repository / "fill" / "1", {"max_batch_size": 0})
    running = serve(repository, grpc_port=free_port(), max_response_bytes=ANSWER_LIMIT)
    yield running
    running.stop()


def fill_request(length: int, binary: bool = False) -> dict[str, object]:
    output = {"name": "y", "parameters": {"binary_data": binary}}
    return {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [length]}], "outputs": [output]}


@pytest.mark.parametrize("binary", [False, True])
def test_an_answer_over_max_response_bytes_is_refused_before_it_is_encoded(filler: RunningServer, binary: bool):
    """A ConstantOfShape fed [1e9] answered 4 GB (3 GB resident for 1 GB of it): an answer is bounded as a request
    is, and refused naming both sizes; one at the bound is answered."""
    url = f"{filler.url}/v2/models/fill/infer"
    refused = httpx.post(url, json=fill_request(ANSWER_LIMIT, binary), timeout=30)
    assert refused.status_code == 400
    assert refused.json() == {"error": ANSWER_REFUSAL}
    answered = httpx.post(url, json=fill_request(ANSWER_LIMIT // 4, binary), timeout=30)
    assert answered.status_code == 200, answered.text
    refused_tf = httpx.post(f"{filler.url}/v1/models/fill:predict", json={"inputs": [ANSWER_LIMIT]}, timeout=30)
    assert refused_tf.status_code == 400 and refused_tf.json() == {"error": ANSWER_REFUSAL}


def test_grpc_and_websocket_answers_over_max_response_bytes_are_refused(filler: RunningServer) -> None:
    message = pb.ModelInferRequest(model_name="fill")
    message.inputs.add(name="n", datatype="INT64", shape=[1])
    message.raw_input_contents.append(np.array([ANSWER_LIMIT], np.int64).tobytes())
    with grpc.insecure_channel(filler.grpc_address) as channel, pytest.raises(grpc.RpcError) as refused:
        GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == ANSWER_REFUSAL
    with connect(f"ws://127.0.0.1:{filler.port}/v2/models/fill/stream") as websocket:
        websocket.send(json.dumps({"id": "big", **fill_request(ANSWER_LIMIT)}))
        assert json.loads(websocket.recv(timeout=30)) == {"id": "big", "error": ANSWER_REFUSAL}
