"""inputs[].max_shape on a real server: a dimension over its bound is refused from the tensor's header, before its
data is decoded, on V2 HTTP (JSON and binary) and gRPC; the bounds also bound the body."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest

from forwardpass.server.limits import HEADER_BYTES, JSON_BYTES_PER_ELEMENT
from forwardpass.server.proto import grpc_service_pb2 as pb
from forwardpass.server.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.running_server import RunningServer, free_port, serve
from tests.server.conftest import bounded_negate

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
