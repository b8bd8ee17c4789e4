"""The gRPC transport end to end: the real server (forwardpass.server.app) on 127.0.0.1, the stock tritonclient.

Outputs must equal `Model.infer` in process exactly; bad requests get INVALID_ARGUMENT / NOT_FOUND with a message
naming the problem; a bad request inside a stream fails alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

import forwardpass
from forwardpass.errors import ForwardpassError
from forwardpass.server.proto import grpc_service_pb2 as pb
from forwardpass.server.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.running_server import free_port

LABELS = ["north", "east", "south", "west"]
TOKEN = "s3cret"


def affine_graph(scale: float) -> onnx.GraphProto:
    """scores = x * scale + [0, 1, 2, 3]: FP32 [batch, 4], distinct per version."""
    return helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "bias"], ["scores"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("bias", TensorProto.FLOAT, [4], [0.0, 1.0, 2.0, 3.0]),
        ],
    )


def build_repository(root: Path, save: Callable[..., Path], slow: onnx.GraphProto) -> Path:
    """compass: FP32 with labels, two versions; doubler: INT64 in and out; echo: BYTES in and out; negation: BOOL
    in and out; slow: ~30 ms."""
    compass = {
        "max_batch_size": 8,
        "postprocess": {"kind": "classification", "output": "scores", "activation": "none", "labels": LABELS},
    }
    save(affine_graph(1.0), root / "compass" / "1", compass)
    save(affine_graph(-0.5), root / "compass" / "2")
    doubler = helper.make_graph(
        [helper.make_node("Mul", ["n", "two"], ["doubled"])],
        "doubler",
        [helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch", 3])],
        initializer=[helper.make_tensor("two", TensorProto.INT64, [], [2])],
    )
    save(doubler, root / "doubler" / "1", {"max_batch_size": 4})
    echo = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["batch", 2])],
    )
    save(echo, root / "echo" / "1", {"max_batch_size": 0})  # batching off: its config shows the whole shape
    negation = helper.make_graph(
        [helper.make_node("Not", ["flags"], ["negated"])],
        "negation",
        [helper.make_tensor_value_info("flags", TensorProto.BOOL, ["batch", 3])],
        [helper.make_tensor_value_info("negated", TensorProto.BOOL, ["batch", 3])],
    )
    save(negation, root / "negation" / "1", {"max_batch_size": 4})
    save(slow, root / "slow" / "1")
    return root


def serve_grpc(kit: Any, repository: Path, **overrides: Any) -> Any:
    return kit.serve(repository, grpc_port=free_port(), shutdown_grace_s=1.0, **overrides)


@pytest.fixture(scope="module")
def grpc_repository(tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Path:
    return build_repository(tmp_path_factory.mktemp("grpc-repository"), kit.save, kit.slow_graph())


@pytest.fixture(scope="module")
def grpc_server(grpc_repository: Path, kit: Any) -> Iterator[Any]:
    running = serve_grpc(kit, grpc_repository)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def guarded(grpc_repository: Path, kit: Any) -> Iterator[Any]:
    """A second server with every limit on: a bearer token, 64 KiB per request, 2 calls at once (all of them one
    client's to have); and its access log."""
    running = serve_grpc(
        kit,
        grpc_repository,
        auth_token=TOKEN,
        max_request_bytes=64 * 1024,
        max_concurrent_requests=2,
        max_grpc_calls_per_client=2,
        access_log=True,
    )
    yield running
    running.stop()


@pytest.fixture
def client(grpc_server: Any) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(grpc_server.grpc_address) as connected:
        yield connected


def in_process(
    repository: Path, name: str, inputs: dict[str, np.ndarray], version: int | None = None
) -> dict[str, Any]:
    model = forwardpass.load(name, repository=repository, version=version)
    try:
        return model.infer(inputs)
    finally:
        model.close()


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def rpc_error(call: Callable[..., object], *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


def test_health_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "forwardpass"
    assert {"classification", "model_configuration", "statistics"} <= set(metadata["extensions"])
    assert client.is_model_ready("compass") and client.is_model_ready("compass", "1")
    assert not client.is_model_ready("no_such_model")
    model = client.get_model_metadata("compass", as_json=True)
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert model["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": ["-1", "4"]}]


def test_model_config_is_triton_shaped(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("compass").config
    assert (config.name, config.max_batch_size) == ("compass", 8)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("x", triton.model_config_pb2.TYPE_FP32, [4])
    ]
    assert config.HasField("dynamic_batching")
    unbatched = client.get_model_config("echo").config
    assert unbatched.max_batch_size == 0 and list(unbatched.input[0].dims) == [-1, 2]


def test_statistics_and_repository_index(client: triton.InferenceServerClient) -> None:
    x = np.ones((1, 4), np.float32)
    client.infer("doubler", [infer_input("n", np.ones((1, 3), np.int64), "INT64")])
    client.infer("compass", [infer_input("x", x, "FP32")])
    statistics = client.get_inference_statistics("doubler", as_json=True)["model_stats"]
    assert [entry["name"] for entry in statistics] == ["doubler"]
    assert int(statistics[0]["inference_count"]) >= 1
    assert {entry["name"] for entry in client.get_inference_statistics(as_json=True)["model_stats"]} >= {"compass"}
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(entry["name"], entry.get("version"), entry["state"]) for entry in index} >= {
        ("compass", "1", "READY"),
        ("compass", "2", "READY"),
        ("doubler", "1", "READY"),
    }


@pytest.mark.parametrize("version", ["", "1", "2"])
def test_fp32_outputs_equal_the_model_in_process(
    client: triton.InferenceServerClient, grpc_repository: Path, version: str
) -> None:
    x = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
    result = client.infer("compass", [infer_input("x", x, "FP32")], model_version=version, request_id="fp32")
    expected = in_process(grpc_repository, "compass", {"x": x}, int(version) if version else None)["scores"]
    assert result.as_numpy("scores").dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("scores"), expected)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("compass", version or "2", "fp32")


def test_int64_outputs_equal_the_model_in_process(client: triton.InferenceServerClient, grpc_repository: Path) -> None:
    n = np.array([[1, -2, 2**40], [0, 7, -(2**50)]], dtype=np.int64)
    result = client.infer("doubler", [infer_input("n", n, "INT64")])
    np.testing.assert_array_equal(
        result.as_numpy("doubled"), in_process(grpc_repository, "doubler", {"n": n})["doubled"]
    )
    assert result.as_numpy("doubled").dtype == np.int64


def test_bytes_tensors_reach_the_model_as_text(client: triton.InferenceServerClient, grpc_repository: Path) -> None:
    text = np.array([["héllo", "world"], ["", "x y"]], dtype=object)
    result = client.infer("echo", [infer_input("text", text, "BYTES")])
    expected = in_process(grpc_repository, "echo", {"text": text})["same"]
    assert [element.decode() for element in result.as_numpy("same").ravel()] == list(expected.ravel())


def test_typed_contents_are_accepted_like_raw_ones(grpc_server: Any, grpc_repository: Path) -> None:
    """Clients other than tritonclient send `contents` instead of raw bytes."""
    request = pb.ModelInferRequest(model_name="compass", model_version="1")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0.5, 1.5, -2.0, 4.0])
    with grpc.insecure_channel(grpc_server.grpc_address) as channel:
        response = GRPCInferenceServiceStub(channel).ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 4)
    x = np.array([[0.5, 1.5, -2.0, 4.0]], np.float32)
    np.testing.assert_array_equal(got, in_process(grpc_repository, "compass", {"x": x}, 1)["scores"])


def test_classification_gives_triton_score_index_label_strings(
    client: triton.InferenceServerClient, grpc_repository: Path
) -> None:
    x = np.array([[0.0, 5.0, 1.0, 0.0], [9.0, 0.0, 0.0, 0.0]], np.float32)
    wanted = [triton.InferRequestedOutput("scores", class_count=2)]
    result = client.infer("compass", [infer_input("x", x, "FP32")], model_version="1", outputs=wanted)
    top = result.as_numpy("scores")
    assert top.shape == (2, 2)
    scores = in_process(grpc_repository, "compass", {"x": x}, 1)["scores"]
    for row, entries in zip(scores, top, strict=True):
        best = np.argsort(-row, kind="stable")[:2]
        parsed = [entry.decode().split(":") for entry in entries]
        assert [int(index) for _, index, _ in parsed] == best.tolist()
        assert [label for _, _, label in parsed] == [LABELS[i] for i in best]
        assert [float(score) for score, _, _ in parsed] == pytest.approx(row[best].tolist(), abs=1e-5)


def test_streaming_answers_in_order_and_a_bad_request_fails_alone(client: triton.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[triton.InferResult | None, InferenceServerException | None]] = queue.Queue()
    good = infer_input("x", np.ones((1, 4), np.float32), "FP32")
    wrong_shape = infer_input("x", np.ones((1, 5), np.float32), "FP32")
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for index in range(6):
            client.async_stream_infer("compass", [wrong_shape if index == 3 else good], request_id=f"r{index}")
    finally:
        client.stop_stream()
    received = [answers.get(timeout=10) for _ in range(6)]
    for index, (result, error) in enumerate(received):
        if index == 3:
            assert result is None and error is not None and "shape" in error.message()
        else:
            assert error is None and result is not None
            assert result.get_response().id == f"r{index}"
            np.testing.assert_array_equal(result.as_numpy("scores"), [[-0.5, 0.5, 1.5, 2.5]])


def test_every_stream_answer_is_marked_final_as_triton_marks_it(grpc_server: Any) -> None:
    """Triton puts triton_final_response on each ModelStreamInfer answer, true on a request's last one (a model that
    is not decoupled answers once): a client that asks for enable_empty_final_response reads it to know a request
    done; an error answer is a request's last one too."""
    good = pb.ModelInferRequest(model_name="compass", id="good")
    good.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0.5, 1.5, -2.0, 4.0])
    asked = pb.ModelInferRequest()
    asked.CopyFrom(good)
    asked.id = "asked"
    asked.parameters["triton_enable_empty_final_response"].bool_param = True
    bad = pb.ModelInferRequest(model_name="compass", id="bad")
    bad.inputs.add(name="x", datatype="FP32", shape=[1, 5]).contents.fp32_contents.extend([0.0] * 5)
    with grpc.insecure_channel(grpc_server.grpc_address) as channel:
        answers = list(GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([good, asked, bad]), timeout=10))
    assert [answer.infer_response.id for answer in answers] == ["good", "asked", "bad"]
    assert [bool(answer.error_message) for answer in answers] == [False, False, True]
    for answer in answers:
        assert answer.infer_response.parameters["triton_final_response"].bool_param is True


def test_stream_answers_keep_request_order_when_later_requests_finish_first(
    client: triton.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[triton.InferResult | None, InferenceServerException | None]] = queue.Queue()
    x = infer_input("x", np.ones((1, 4), np.float32), "FP32")
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("slow", [x], request_id="slow")
        for index in range(3):
            client.async_stream_infer("compass", [x], request_id=f"fast{index}")
    finally:
        client.stop_stream()
    received = [answers.get(timeout=10) for _ in range(4)]
    assert [error for _, error in received] == [None] * 4
    assert [result.get_response().id for result, _ in received if result] == ["slow", "fast0", "fast1", "fast2"]


def test_asyncio_client_works_too(grpc_server: Any) -> None:
    async def ask() -> np.ndarray:
        async with triton_aio.InferenceServerClient(grpc_server.grpc_address) as client:
            assert await client.is_model_ready("doubler")
            result = await client.infer("doubler", [infer_input("n", np.arange(6).reshape(2, 3), "INT64")])
            return result.as_numpy("doubled")

    np.testing.assert_array_equal(asyncio.run(ask()), np.arange(6).reshape(2, 3) * 2)


BAD_INFERENCES = [
    ("no_such_model", "", "x", (1, 4), "FP32", "NOT_FOUND", "no_such_model"),
    ("compass", "9", "x", (1, 4), "FP32", "NOT_FOUND", "version '9'"),
    ("compass", "", "y", (1, 4), "FP32", "INVALID_ARGUMENT", "unknown input(s) ['y']"),
    ("compass", "", "x", (1, 3), "FP32", "INVALID_ARGUMENT", "expected shape [-1, 4], got [1, 3]"),
    ("compass", "", "x", (4,), "FP32", "INVALID_ARGUMENT", "expected shape [-1, 4], got [4]"),
    ("doubler", "", "n", (1, 3), "FP64", "INVALID_ARGUMENT", "input 'n'"),
]


@pytest.mark.parametrize(("model", "version", "name", "shape", "datatype", "status", "words"), BAD_INFERENCES)
def test_bad_inferences_get_a_status_and_a_message(
    client: triton.InferenceServerClient,
    model: str,
    version: str,
    name: str,
    shape: tuple[int, ...],
    datatype: str,
    status: str,
    words: str,
) -> None:
    array = np.ones(shape, dtype=np.float64 if datatype == "FP64" else np.float32)
    error = rpc_error(client.infer, model, [infer_input(name, array, datatype)], model_version=version)
    assert error.status() == f"StatusCode.{status}"
    assert words in error.message()


def refused_requests(running: Any, model: str) -> float:
    """forwardpass_request_failures_total for 400s of `model`, read from the server's /metrics."""
    exposition = httpx.get(f"http://127.0.0.1:{running.port}/metrics").text
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "forwardpass_request_failures_total" and sample.labels == {"model": model, "code": "400"}:
                return sample.value
    return 0.0


def test_malformed_messages_are_invalid_arguments(grpc_server: Any, client: triton.InferenceServerClient) -> None:
    refused_before = refused_requests(grpc_server, "compass")
    short = pb.ModelInferRequest(model_name="compass")
    short.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    short.raw_input_contents.append(b"\0" * 10)
    unknown_type = pb.ModelInferRequest(model_name="compass")
    unknown_type.inputs.add(name="x", datatype="FLOAT", shape=[1, 4])
    unknown_type.raw_input_contents.append(b"\0" * 16)
    unknown_output = pb.ModelInferRequest(model_name="compass")
    unknown_output.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    unknown_output.raw_input_contents.append(b"\0" * 16)
    unknown_output.outputs.add(name="logits")
    with grpc.insecure_channel(grpc_server.grpc_address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        for message, words in [
            (short, "raw contents hold 10 bytes"),
            (unknown_type, "unsupported datatype 'FLOAT'"),
            (unknown_output, "no output 'logits'"),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(message)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in caught.value.details()
    assert refused_requests(grpc_server, "compass") == refused_before + 3  # each counts on its model
    assert client.is_server_live()
    ok = client.infer("compass", [infer_input("x", np.zeros((1, 4), np.float32), "FP32")])
    np.testing.assert_array_equal(ok.as_numpy("scores"), [[0.0, 1.0, 2.0, 3.0]])


def test_a_token_is_needed_on_every_rpc_but_health(guarded: Any) -> None:
    x = np.ones((1, 4), np.float32)
    with triton.InferenceServerClient(guarded.grpc_address) as client:
        assert client.is_server_live() and client.is_server_ready()
        for call, args in [
            (client.get_server_metadata, ()),
            (client.is_model_ready, ("compass",)),
            (client.get_model_config, ("compass",)),
            (client.infer, ("compass", [infer_input("x", x, "FP32")])),
            (client.get_system_shared_memory_status, ()),  # not offered, but nobody learns it without the token
        ]:
            error = rpc_error(call, *args)
            assert error.status() == "StatusCode.UNAUTHENTICATED" and "bearer token" in error.message()
        wrong = rpc_error(client.get_server_metadata, headers={"authorization": "Bearer nope"})
        assert wrong.status() == "StatusCode.UNAUTHENTICATED" and "wrong" in wrong.message()
        headers = {"authorization": f"Bearer {TOKEN}"}
        result = client.infer("compass", [infer_input("x", x, "FP32")], headers=headers)
        np.testing.assert_array_equal(result.as_numpy("scores"), [[-0.5, 0.5, 1.5, 2.5]])

        answers: queue.Queue[InferenceServerException | None] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put(error))
        with contextlib.suppress(InferenceServerException):  # refused at once: the stream may be closed already
            client.async_stream_infer("compass", [infer_input("x", x, "FP32")])
        error = answers.get(timeout=10)
        client.stop_stream()
        assert error is not None and "UNAUTHENTICATED" in str(error.status())


def test_oversized_messages_are_refused(guarded: Any) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    big = np.zeros((4096, 4), np.float32)  # 64 KiB of data plus the message around it
    with triton.InferenceServerClient(guarded.grpc_address) as client:
        error = rpc_error(client.infer, "compass", [infer_input("x", big, "FP32")], headers=headers)
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert client.is_model_ready("compass", headers=headers)


def test_calls_beyond_the_concurrency_limit_are_refused_at_once(guarded: Any) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}

    async def burst() -> list[str]:
        async with triton_aio.InferenceServerClient(guarded.grpc_address) as client:
            x = infer_input("x", np.ones((1, 4), np.float32), "FP32")
            calls = [client.infer("slow", [x], headers=headers) for _ in range(12)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        return [str(o.status()) if isinstance(o, InferenceServerException) else "OK" for o in outcomes]

    outcomes = collections.Counter(asyncio.run(burst()))
    assert set(outcomes) == {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, outcomes
    with triton.InferenceServerClient(guarded.grpc_address) as client:
        assert client.is_model_ready("slow", headers=headers)


def test_models_unload_and_load_over_grpc(guarded: Any) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    with triton.InferenceServerClient(guarded.grpc_address) as client:
        client.unload_model("doubler", headers=headers)
        assert not client.is_model_ready("doubler", headers=headers)
        index = client.get_model_repository_index(headers=headers, as_json=True)["models"]
        unloaded = [m for m in index if m["name"] == "doubler"]
        assert unloaded == [{"name": "doubler", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
        error = rpc_error(
            client.infer, "doubler", [infer_input("n", np.ones((1, 3), np.int64), "INT64")], headers=headers
        )
        assert error.status() == "StatusCode.NOT_FOUND"
        client.load_model("doubler", headers=headers)
        assert client.is_model_ready("doubler", headers=headers)
        unknown = rpc_error(client.load_model, "no_such_model", headers=headers)
        assert unknown.status() == "StatusCode.NOT_FOUND"
        with_config = rpc_error(client.load_model, "doubler", headers=headers, config='{"max_batch_size": 2}')
        assert with_config.status() == "StatusCode.INVALID_ARGUMENT" and "not supported" in with_config.message()


def test_corrupt_messages_and_unoffered_rpcs_get_proper_codes(grpc_server: Any) -> None:
    with grpc.insecure_channel(grpc_server.grpc_address) as channel:
        corrupt = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            corrupt(b"\xff\xff\xff")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid inference.ModelInferRequest" in caught.value.details()
        shared_memory = channel.unary_unary("/inference.GRPCInferenceService/SystemSharedMemoryStatus")
        with pytest.raises(grpc.RpcError) as caught:
            shared_memory(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


UNOFFERED_CALLS = [
    (lambda client: client.get_system_shared_memory_status(), "system shared memory"),
    (lambda client: client.register_system_shared_memory("region", "/key", 16), "system shared memory"),
    (lambda client: client.unregister_cuda_shared_memory(), "CUDA shared memory"),
    (lambda client: client.get_trace_settings(), "trace settings"),
    (lambda client: client.update_log_settings({"log_verbose_level": 1}), "log settings"),
    (lambda client: client.get_log_settings(), "log settings"),
    (lambda client: client.update_trace_settings(settings={"trace_rate": "1"}), "trace settings"),
]


@pytest.mark.parametrize(("call", "feature"), UNOFFERED_CALLS)
def test_unoffered_triton_features_are_refused_naming_them(
    client: triton.InferenceServerClient, call: Callable[[triton.InferenceServerClient], object], feature: str
) -> None:
    error = rpc_error(call, client)  # perf_analyzer --shared-memory system stops with this message
    assert error.status() == "StatusCode.UNIMPLEMENTED"
    assert f"{feature} is not supported by this server" in error.message()


def test_a_stream_cancelled_midway_leaves_the_server_serving(client: triton.InferenceServerClient) -> None:
    answers: queue.Queue[object] = queue.Queue()
    x = infer_input("x", np.ones((1, 4), np.float32), "FP32")
    for _ in range(3):
        client.start_stream(callback=lambda result, error: answers.put(error))
        for index in range(40):
            client.async_stream_infer("compass", [x], request_id=str(index))
        client.stop_stream(cancel_requests=True)
    assert client.is_server_ready()
    np.testing.assert_array_equal(client.infer("compass", [x]).as_numpy("scores"), [[-0.5, 0.5, 1.5, 2.5]])


def test_a_call_past_its_deadline_is_given_up_not_finished_for_nobody(client: triton.InferenceServerClient) -> None:
    """When a call ends before its answer (here its 5 ms deadline passes while the ~30 ms model runs), the server
    cancels the work waiting for it: the model's success count moves only for the call that waited. On a loaded
    machine the cancel can reach the server after the answer (then both count), so a few tries, one of which must
    show it; without the cancel every try counts both."""
    x = infer_input("x", np.ones((1, 4), np.float32), "FP32")

    def answered() -> int:
        success = client.get_inference_statistics("slow", as_json=True)["model_stats"][0]["inference_stats"]["success"]
        return int(success.get("count", 0))

    moved = []
    for _ in range(5):
        before = answered()
        late = rpc_error(client.infer, "slow", [x], client_timeout=0.005)
        assert late.status() == "StatusCode.DEADLINE_EXCEEDED"
        client.infer("slow", [x])  # after the late call's pass: the model has one instance, and passes run in order
        moved.append(answered() - before)
        if moved[-1] == 1:
            break
    assert moved[-1] == 1, moved


FUZZ_MODELS = {
    "compass": ("x", "FP32", 4, "scores"),
    "doubler": ("n", "INT64", 3, "doubled"),
    "echo": ("text", "BYTES", 2, "same"),
}
FUZZ_DATATYPES = ["FP32", "INT64", "BYTES", "FP16", "INT8", "BOOL", "UINT64", "BF16", "FP33", "fp32", ""]
ITEM_SIZE = {"FP32": 4, "INT64": 8, "FP16": 2, "INT8": 1, "BOOL": 1, "UINT64": 8}
FAULTS = [
    "garbage",
    "model",
    "version",
    "input_name",
    "datatype",
    "shape",
    "raw_length",
    "raw_random",
    "typed",
    "no_input",
    "extra_input",
    "raw_count",
    "output",
    "classification",
    "anything",
]


def raw_data(datatype: str, count: int) -> bytes:
    if datatype == "BYTES":
        return b"\x02\0\0\0ab" * count
    return b"\x01" * count * ITEM_SIZE.get(datatype, 4)


@st.composite
def infer_messages(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A valid ModelInferRequest for one of the models, then none, one or two faults put into it."""
    model = draw(st.sampled_from(sorted(FUZZ_MODELS)))
    name, datatype, width, output = FUZZ_MODELS[model]
    message = pb.ModelInferRequest(model_name=model, model_version=draw(st.sampled_from(["", "1"])))
    message.id = draw(st.text(max_size=8))
    rows = draw(st.integers(1, 3))
    tensor = message.inputs.add(name=name, datatype=datatype, shape=[rows, width])
    message.raw_input_contents.append(raw_data(datatype, rows * width))
    if draw(st.booleans()):
        wanted = message.outputs.add(name=output)
        if model != "echo" and draw(st.booleans()):
            wanted.parameters["classification"].int64_param = draw(st.integers(1, 6))
    faults = draw(st.lists(st.sampled_from(FAULTS), max_size=2))
    for fault in faults:
        if fault == "garbage":
            return draw(st.binary(max_size=64)), faults
        if fault == "model":
            message.model_name = draw(st.sampled_from(["no_such_model", "", "compass/../x", "ÿ"]))
        elif fault == "version":
            message.model_version = draw(st.sampled_from(["7", "v1", "-1", "01x", " "]))
        elif fault == "input_name":
            tensor.name = draw(st.sampled_from(["", "zz", "x" if name != "x" else "n"]))
        elif fault == "datatype":
            tensor.datatype = draw(st.sampled_from([d for d in FUZZ_DATATYPES if d != datatype]))
        elif fault == "shape":
            tensor.ClearField("shape")
            tensor.shape.extend(draw(st.lists(st.integers(-2, 2**40), max_size=4)))
        elif fault == "raw_length":
            message.raw_input_contents[0] = message.raw_input_contents[0][: draw(st.integers(0, 7))]
        elif fault == "raw_random":
            message.raw_input_contents[0] = draw(st.binary(max_size=96))
        elif fault == "typed":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8)))
        elif fault == "no_input":
            message.ClearField("inputs")
        elif fault == "extra_input":
            message.inputs.add(name=draw(st.sampled_from(["extra", name])), datatype=datatype, shape=[1, width])
            message.raw_input_contents.append(raw_data(datatype, width))
        elif fault == "raw_count":
            message.raw_input_contents.append(b"\0" * 4)
        elif fault == "output":
            message.outputs.add(name=draw(st.sampled_from(["nope", "", name])))
        elif fault == "classification":
            message.outputs.add(name=output).parameters["classification"].int64_param = draw(st.integers(-3, 0))
        else:
            tensor.datatype = draw(st.sampled_from(FUZZ_DATATYPES))
            tensor.ClearField("shape")
            tensor.shape.extend(draw(st.lists(st.integers(0, 5), max_size=3)))
            message.raw_input_contents[0] = draw(st.binary(max_size=64))
    return message.SerializeToString(), faults


def test_fuzzed_requests_get_only_client_error_codes_and_the_server_keeps_answering(
    grpc_server: Any, client: triton.InferenceServerClient
) -> None:
    """2,000 generated requests: the valid ones succeed, every other one is INVALID_ARGUMENT or NOT_FOUND."""
    seen: collections.Counter[str] = collections.Counter()
    with grpc.insecure_channel(grpc_server.grpc_address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(infer_messages())
        def send(case: tuple[bytes, list[str]]) -> None:
            raw, faults = case
            try:
                infer(raw, timeout=10)
                seen["OK"] += 1
            except grpc.RpcError as error:
                seen[error.code().name] += 1
                assert faults, f"a valid request failed: {error.code()} {error.details()}"
                assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), error.details()
                assert error.details() and "\n" not in error.details()

        send()
    assert seen["INVALID_ARGUMENT"] > 500 and seen["NOT_FOUND"] > 50 and seen["OK"] > 200, seen
    x = infer_input("x", np.ones((1, 4), np.float32), "FP32")
    np.testing.assert_array_equal(client.infer("compass", [x]).as_numpy("scores"), [[-0.5, 0.5, 1.5, 2.5]])


def test_the_access_log_has_one_json_line_per_call(guarded: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="forwardpass.access")
    with triton.InferenceServerClient(guarded.grpc_address) as client:
        client.is_server_live()
        rpc_error(client.get_server_metadata)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(record.getMessage()) for record in caplog.records if record.name == "forwardpass.access"]

    # An aborted call's status reaches the client before the server's handler returns and writes its line.
    deadline = time.monotonic() + 10
    while len(lines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(line["path"], line["status"]) for line in lines()] == [
        ("/inference.GRPCInferenceService/ServerLive", "OK"),
        ("/inference.GRPCInferenceService/ServerMetadata", "UNAUTHENTICATED"),
    ]
    assert all(line["protocol"] == "grpc" and line["ms"] >= 0 and "127.0.0.1" in line["client"] for line in lines())


def every_error_class(base: type[ForwardpassError] = ForwardpassError) -> list[type[ForwardpassError]]:
    return [base, *(found for sub in base.__subclasses__() for found in every_error_class(sub))]


@pytest.mark.parametrize("error_class", every_error_class(), ids=lambda error_class: error_class.__name__)
def test_every_error_class_names_a_real_grpc_status(error_class: type[ForwardpassError]) -> None:
    """A misspelt code would fall back to INTERNAL without a word."""
    assert error_class.grpc_code in grpc.StatusCode.__members__


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_bool_bytes_other_than_0_and_1_are_refused_not_misread(grpc_server: Any, transport: str) -> None:
    """numpy reads the byte 2 as True; ONNX Runtime's Not gave True for it too, and Cast gave 2: a wrong answer with
    status 200. Such a tensor is refused naming the byte; 0 and 1 are answered."""
    module: Any = triton if transport == "grpc" else triton_http
    address = grpc_server.grpc_address if transport == "grpc" else grpc_server.address
    with module.InferenceServerClient(address) as connected:

        def negate(raw: bytes) -> np.ndarray:
            tensor = module.InferInput("flags", [1, 3], "BOOL")
            tensor.set_data_from_numpy(np.frombuffer(raw, np.bool_).reshape(1, 3))
            return connected.infer("negation", [tensor]).as_numpy("negated")

        assert negate(b"\x01\x00\x01").tolist() == [[False, True, False]]
        error = rpc_error(negate, b"\x02\x00\x01")
    assert "input 'flags': BOOL bytes must be 0 (false) or 1 (true), got 2" in str(error)


def test_a_bf16_models_metadata_names_the_datatype_every_transport_takes(tmp_path: Path, kit: Any) -> None:
    """numpy has no bfloat16: a model's BF16 tensors travel as FP32 (rounded to the nearest bfloat16 on the way in,
    widened exactly on the way out). Metadata and config on both transports say FP32, FP32 is answered on each,
    and BF16 is refused naming what to send: what metadata says is what the server takes."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "bfloat16_identity",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 4])],
    )
    kit.save(graph, tmp_path / "bf16" / "1", {"max_batch_size": 4})
    running = serve_grpc(kit, tmp_path)
    x = np.array([[1.0, 1.00390625, 3.14159, -2.5]], np.float32)
    rounded = np.array([[1.0, 1.0, 3.140625, -2.5]], np.float32)  # each the nearest bfloat16
    try:
        # the HTTP client closed here: its gevent pool, closed by the collector later, raised in another thread
        with (
            triton.InferenceServerClient(running.grpc_address) as grpc_client,
            triton_http.InferenceServerClient(running.address) as http_client,
        ):
            metadata = [http_client.get_model_metadata("bf16"), grpc_client.get_model_metadata("bf16", as_json=True)]
            for described in metadata:
                assert [t["datatype"] for t in described["inputs"] + described["outputs"]] == ["FP32", "FP32"]
            config = http_client.get_model_config("bf16")
            assert [t["data_type"] for t in config["input"] + config["output"]] == ["TYPE_FP32", "TYPE_FP32"]
            for binary in (False, True):
                sent = triton_http.InferInput("x", [1, 4], "FP32")
                sent.set_data_from_numpy(x, binary_data=binary)
                answer = http_client.infer("bf16", [sent])
                assert answer.get_output("y")["datatype"] == "FP32"
                np.testing.assert_array_equal(answer.as_numpy("y"), rounded)
            answer = grpc_client.infer("bf16", [infer_input("x", x, "FP32")])
            assert answer.get_output("y").datatype == "FP32"
            np.testing.assert_array_equal(answer.as_numpy("y"), rounded)
            bf16 = triton_http.InferInput("x", [1, 4], "BF16")
            bf16.set_data_from_numpy(x, binary_data=True)
            with pytest.raises(InferenceServerException, match="datatype BF16 does not match the model's FP32"):
                http_client.infer("bf16", [bf16])
            with pytest.raises(InferenceServerException, match="unsupported datatype 'BF16'"):
                grpc_client.infer("bf16", [infer_input("x", x, "BF16")])
    finally:
        running.stop()
