"""The HTTP transport end to end: the real server on 127.0.0.1, the stock `tritonclient.http` (JSON and binary
tensors), TF Serving's REST API, the pipeline endpoint, the repository API, statistics, metrics, auth, limits."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper
from PIL import Image
from starlette.routing import Match, Route
from tritonclient.utils import InferenceServerException

import forwardpass
from forwardpass.server.http import INFER_PATHS, infer_target

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


@pytest.fixture(scope="module")
def mlp(repository: Path) -> forwardpass.Model:
    return forwardpass.load("mlp", repository=repository)


def mlp_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    return body["error"]


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "forwardpass"
    assert {"binary_tensor_data", "classification", "model_repository", "statistics"} <= set(metadata["extensions"])


def test_model_metadata_and_triton_config(client):
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "2")
    metadata = client.get_model_metadata("mlp")
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [64]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 256
    assert config["instance_group"][0]["count"] == 1
    assert config["version_policy"] == {"all": {}}
    unbatched = client.get_model_config("mlp_unbatched", "1")
    assert unbatched["version_policy"] == {"latest": {"num_versions": 1}}
    assert unbatched["max_batch_size"] == 0
    assert unbatched["input"][0]["dims"] == [-1, 64]
    assert "dynamic_batching" not in unbatched


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_infer_equals_the_model_in_process_exactly(client, mlp, binary_in, binary_out):
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    expected = mlp.infer({"x": x})["y"]
    result = client.infer("mlp", [mlp_input(x, binary_in)], outputs=[triton.InferRequestedOutput("y", binary_out)])
    np.testing.assert_array_equal(result.as_numpy("y"), expected)
    assert result.get_response()["model_version"] == "1"
    everything = client.infer("mlp_unbatched", [mlp_input(x, binary_in)], request_id="r-42")  # all outputs, binary
    np.testing.assert_array_equal(everything.as_numpy("y"), expected)
    assert everything.get_response()["id"] == "r-42"


@pytest.mark.parametrize("binary", [False, True])
def test_infer_answers_with_the_headers_the_starlette_route_sent(server, binary):
    x = np.ones((1, 64), np.float32)
    body = orjson.dumps(v2("x", [1, 64], x.ravel().tolist()))
    headers = {}
    if binary:
        header = orjson.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 256}}
                ],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            }
        )
        body, headers = header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}
    response = httpx.post(f"{server.url}/v2/models/mlp/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    sent = [name for name, _ in response.headers.raw if name not in (b"date", b"server")]
    if binary:
        assert sent == [b"inference-header-content-length", b"content-length", b"content-type"]
        assert response.headers["content-type"] == "application/octet-stream"
        length = int(response.headers["inference-header-content-length"])
        assert orjson.loads(response.content[:length])["outputs"][0]["parameters"] == {"binary_data_size": 40}
    else:
        assert sent == [b"content-length", b"content-type"]
        assert response.headers["content-type"] == "application/json"
        assert len(orjson.loads(response.content)["outputs"][0]["data"]) == 10
    assert int(response.headers["content-length"]) == len(response.content)


PATHS = [
    "/v2/models/mlp/infer",
    "/v2/models/mlp/versions/1/infer",
    "/v2/models/versions/infer",
    "/v2/models/m.v2-x/versions/latest/infer",
    "/v2/models//infer",
    "/v2/models/infer",
    "/v2/models/mlp/versions//infer",
    "/v2/models/mlp/versions/1/2/infer",
    "/v2/models/mlp/version/1/infer",
    "/v2/models/mlp/infer/",
    "/v2/models/mlp/inferx",
    "/v2/models/a/b/infer",
    "/v2/model/mlp/infer",
    "/v1/models/mlp/infer",
]


@pytest.mark.parametrize("path", PATHS)
def test_infer_first_recognises_exactly_the_paths_of_the_routers_infer_routes(path):
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    routed = None
    for template in INFER_PATHS:
        match, child = Route(template, lambda request: None, methods=["POST"]).matches(scope)
        if match is Match.FULL:
            routed = child["path_params"]["model"], child["path_params"].get("version")
    assert infer_target(path) == routed


def test_the_router_keeps_infer_for_other_methods_and_a_path_only_it_matches(server):
    assert httpx.get(f"{server.url}/v2/models/mlp/infer").status_code == 405
    body = orjson.dumps(v2("x", [1, 64], [0.5] * 64))
    straight = httpx.post(f"{server.url}/v2/models/mlp/infer", content=body)
    # Starlette's route pattern ends in `$`, which matches before a final line break: the router serves that path
    routed = httpx.post(f"{server.url}/v2/models/mlp/infer%0A", content=body)
    assert routed.status_code == straight.status_code == 200
    assert routed.json() == straight.json()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v2/models/mlp/infer", "POST"),
        ("DELETE", "/v2/health/live", "GET, HEAD"),
        ("PUT", "/v2/repository/index", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
    ],
)
def test_a_known_path_asked_with_another_method_is_refused_in_the_json_error_shape(server, method, path, allowed):
    # Starlette answered 'Method Not Allowed' in plain text, where every other error (and Triton's 405) is JSON
    response = httpx.request(method, server.url + path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.headers["content-type"] == "application/json"
    assert error_of(response) == f"{method} is not allowed on {path}; use {allowed}"


def test_an_openai_path_asked_with_another_method_is_refused_in_openais_error_shape(server):
    response = httpx.get(f"{server.url}/v1/embeddings")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    error = response.json()["error"]
    assert error["message"] == "GET is not allowed on /v1/embeddings; use POST"
    assert error["type"] == "invalid_request_error" and error["code"] == 405


def test_infer_past_the_in_flight_limit_is_refused_with_503_and_counted(tmp_path, kit):
    kit.save(kit.slow_graph(), tmp_path / "slow" / "1", {"max_batch_size": 0})  # ~30 ms a pass
    limited = kit.serve(tmp_path, max_concurrent_requests=1)
    body = orjson.dumps(v2("x", [1, 4], [0.5] * 4))

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=limited.url, timeout=30) as session:
            return await asyncio.gather(*(session.post("/v2/models/slow/infer", content=body) for _ in range(8)))

    try:
        responses = asyncio.run(together())
        metrics = httpx.get(f"{limited.url}/metrics").text
    finally:
        limited.stop()
    refused = [response for response in responses if response.status_code == 503]
    assert refused and len(refused) < len(responses) and {r.status_code for r in responses} == {200, 503}
    assert all("1 requests in progress, its limit" in error_of(response) for response in refused)
    assert all(response.headers["Retry-After"] == "1" for response in refused)
    assert f'forwardpass_request_failures_total{{code="503",model=""}} {len(refused)}.0' in metrics


def test_gzip_and_deflate_request_bodies(client, mlp):
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("mlp", [mlp_input(x, True)], request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("y"), mlp.infer({"x": x})["y"])


@pytest.mark.parametrize("binary", [False, True])
def test_classification_extension_gives_triton_style_strings(client, mlp, kit, binary):
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    scores = mlp.infer({"x": x})["y"]
    result = client.infer(
        "mlp", [mlp_input(x, True)], outputs=[triton.InferRequestedOutput("y", binary, class_count=3)]
    )
    got = result.as_numpy("y")
    assert got.shape == (2, 3)
    for row, answer in zip(scores, got, strict=True):
        best = np.argsort(-row, kind="stable")[:3]
        expected = [f"{float(row[i]):f}:{i}:{kit.mlp_labels[i]}" for i in best]
        assert [value.decode() if isinstance(value, bytes) else value for value in answer] == expected


UNOFFERED_CALLS = [
    (lambda client: client.get_system_shared_memory_status(), "system shared memory"),
    (lambda client: client.register_system_shared_memory("region", "/key", 16), "system shared memory"),
    (lambda client: client.unregister_cuda_shared_memory(), "CUDA shared memory"),
    (lambda client: client.get_trace_settings(model_name="mlp"), "trace settings"),
    (lambda client: client.update_log_settings({"log_verbose_level": 1}), "log settings"),
    (lambda client: client.get_log_settings(), "log settings"),
    (lambda client: client.update_trace_settings(model_name="mlp", settings={"trace_rate": "1"}), "trace settings"),
]


@pytest.mark.parametrize(("call", "feature"), UNOFFERED_CALLS)
def test_unoffered_triton_features_are_refused_naming_them(client, call, feature):
    with pytest.raises(InferenceServerException) as caught:  # perf_analyzer --shared-memory stops with this message
        call(client)
    assert caught.value.status() == "400"
    assert f"{feature} is not supported by this server" in caught.value.message()


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_tensors_round_trip(client, binary):
    words = np.array([["héllo", "world"], ["", "ünïcode ✓"]], dtype=object)
    tensor = triton.InferInput("x", [2, 2], "BYTES")
    tensor.set_data_from_numpy(np.vectorize(lambda s: s.encode())(words).astype(object), binary_data=binary)
    result = client.infer("strings", [tensor], outputs=[triton.InferRequestedOutput("y", binary)])
    got = result.as_numpy("y")
    assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in got] == words.tolist()


def test_versions_statistics_and_the_repository_api(client, server):
    x = np.ones((1, 4), dtype=np.float32)
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(3):
        client.infer("add", [tensor], model_version="1")
    with pytest.raises(InferenceServerException, match="model 'add' has no version '9'") as unknown:
        client.infer("add", [tensor], model_version="9")
    assert unknown.value.status() == "404"
    wrong = triton.InferInput("x", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"expected shape \[-1, 4\], got \[1, 3\]"):
        client.infer("add", [wrong])
    stats = client.get_inference_statistics("add")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("add", "1")]
    assert stats[0]["inference_stats"]["success"]["count"] >= 3
    assert stats[0]["inference_stats"]["fail"]["count"] >= 1
    assert stats[0]["inference_count"] >= 3 and stats[0]["execution_count"] >= 1
    assert {s["name"] for s in client.get_inference_statistics()["model_stats"]} >= {"add"}
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["add"]["state"] == "READY"
    client.unload_model("add")
    assert not client.is_model_ready("add")
    unloaded = [row for row in client.get_model_repository_index() if row["name"] == "add"]
    assert unloaded == [{"name": "add", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    with pytest.raises(InferenceServerException, match="not loaded") as gone:
        client.infer("add", [tensor])
    assert gone.value.status() == "404"
    client.load_model("add")
    assert client.is_model_ready("add")
    np.testing.assert_array_equal(client.infer("add", [tensor]).as_numpy("y"), x + 1)


def test_async_infer_with_triton_request_options_and_statistics_that_add_up(tmp_path, kit, mlp):
    """tritonclient's async_infer with a string sequence_id, a priority and a timeout (microseconds) on a model that
    keeps no state: answers equal the model's; then the statistics add up: every request is counted once in success,
    queue and each compute stage, its stages take no longer than the whole, executions are the batch_stats' sum."""
    kit.save(kit.mlp_graph(), tmp_path / "mlp" / "1", {"max_batch_size": 8})
    own = kit.serve(tmp_path)
    rows = [RNG.standard_normal((1 + index % 3, 64)).astype(np.float32) for index in range(6)]
    try:
        client = triton.InferenceServerClient(own.address, concurrency=6)
        pending = [
            client.async_infer(
                "mlp", [mlp_input(x, True)], request_id=f"r{i}", sequence_id="s-1", priority=1, timeout=10_000_000
            )
            for i, x in enumerate(rows)
        ]
        for i, (x, call) in enumerate(zip(rows, pending, strict=True)):
            result = call.get_result(timeout=30)
            assert result.get_response()["id"] == f"r{i}"
            np.testing.assert_array_equal(result.as_numpy("y"), mlp.infer({"x": x})["y"])
        with pytest.raises(InferenceServerException) as load:
            client.load_model("mlp", config='{"max_batch_size": 2}', files={"file:1/model.onnx": b"onnx"})
        assert load.value.status() == "400"
        assert "['config', 'file:1/model.onnx'] are not supported" in load.value.message()
        (stats,) = client.get_inference_statistics("mlp")["model_stats"]
        client.close()
        # async_infer's gevent pool must be collected on this thread: a later collection on a server thread makes
        # gevent raise in the client's __del__, failing whichever test runs then
        del client, pending, result
        gc.collect()
    finally:
        own.stop()
    counted = stats["inference_stats"]
    stages = ("queue", "compute_input", "compute_infer", "compute_output")
    assert {name: counted[name]["count"] for name in ("success", *stages)} == dict.fromkeys(("success", *stages), 6)
    assert counted["fail"]["count"] == 0
    assert sum(counted[name]["ns"] for name in stages) <= counted["success"]["ns"] + len(stages) * 6  # ns truncated
    assert stats["inference_count"] == sum(len(x) for x in rows)
    batches = stats["batch_stats"]
    assert stats["execution_count"] == sum(batch["compute_infer"]["count"] for batch in batches) <= 6
    assert sum(batch["batch_size"] * batch["compute_infer"]["count"] for batch in batches) == stats["inference_count"]


def test_tf_serving_predict_rows_and_columns(server, mlp):
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    expected = mlp.infer({"x": x})["y"]
    rows = httpx.post(f"{server.url}/v1/models/mlp:predict", json={"instances": x.tolist()})
    assert rows.status_code == 200, rows.text
    np.testing.assert_array_equal(np.asarray(rows.json()["predictions"], dtype=np.float32), expected)
    named = httpx.post(
        f"{server.url}/v1/models/mlp/versions/1:predict", json={"instances": [{"x": r} for r in x.tolist()]}
    )
    np.testing.assert_array_equal(np.asarray(named.json()["predictions"], dtype=np.float32), expected)
    columns = httpx.post(f"{server.url}/v1/models/mlp:predict", json={"inputs": {"x": x.tolist()}})
    np.testing.assert_array_equal(np.asarray(columns.json()["outputs"], dtype=np.float32), expected)
    status = httpx.get(f"{server.url}/v1/models/mlp").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    both = httpx.post(f"{server.url}/v1/models/mlp:predict", json={"instances": [], "inputs": []})
    assert both.status_code == 400 and "exactly one of" in error_of(both)


def test_tf_serving_refuses_an_answer_of_nan_or_infinity_rather_than_sending_null(server):
    """Inputs near FP32's largest overflow the MLP's sums to inf and NaN: the predictions came back as nulls, 200."""
    huge = httpx.post(f"{server.url}/v1/models/mlp:predict", json={"instances": [[3e38] * 64]})
    assert huge.status_code == 400, huge.text
    assert "output 'y' holds NaN or infinity, which JSON cannot carry" in error_of(huge)


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        ("add", {"instances": [[True, False, True, True]]}, "input 'x': FP32 data must be numbers"),
        ("add", {"instances": [[True, 0.5, 1, 2]]}, "input 'x': FP32 data must be numbers"),
        ("add", {"instances": [{"x": [1, 2, 3, False]}]}, "input 'x': FP32 data must be numbers"),
        ("add", {"inputs": {"x": [[1, 2, 3, True]]}}, "input 'x': FP32 data must be numbers"),
        ("gather", {"inputs": [[True]]}, "input 'index': INT64 data must be integers"),
        ("strings", {"instances": [["a", True]]}, "input 'x': BYTES data must be strings"),
    ],
)
def test_tf_serving_refuses_booleans_for_a_numeric_or_string_input_as_v2_does(server, model, body, message):
    """true was read as 1.0 (and as 'True' for a string input), answered 200; V2's JSON refuses it, and so does TF
    Serving ('is not of expected type')."""
    refused = httpx.post(f"{server.url}/v1/models/{model}:predict", json=body)
    assert refused.status_code == 400, refused.text
    assert error_of(refused) == f"{message}, got a boolean among them"
    v2_refused = httpx.post(f"{server.url}/v2/models/add/infer", json=v2("x", [1, 4], [1, 2, 3, True]))
    assert error_of(v2_refused) == "input 'x': FP32 data must be numbers, got a boolean among them"


def test_tf_serving_binary_values_travel_as_b64(server):
    pairs = [["héllo", "wörld"], ["a", "b"]]
    b64 = [[{"b64": base64.b64encode(text.encode()).decode()} for text in row] for row in pairs]
    answer = httpx.post(f"{server.url}/v1/models/strings:predict", json={"instances": b64})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == pairs
    for bad, problem in [([[{"b64": "@@"}, {"b64": "QQ=="}]], "not valid base64"), ([[{"x": 1}, 2]], "b64")]:
        refused = httpx.post(f"{server.url}/v1/models/strings:predict", json={"instances": bad})
        assert refused.status_code == 400 and problem in error_of(refused)


def test_a_model_answering_one_string_per_item_answers_every_route(tmp_path, kit):
    """A row of a [batch] string output is one str, not an array: /predict and TF Serving's rows answered 500."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"]), helper.make_node("Identity", ["text"], ["again"])],
        "names",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info(name, TensorProto.STRING, ["batch"]) for name in ("same", "again")],
    )
    kit.save(graph, tmp_path / "names" / "1", {"max_batch_size": 4})
    own = kit.serve(tmp_path)
    try:
        one = httpx.post(f"{own.url}/v2/models/names/predict", json={"text": "héllo"})
        assert one.status_code == 200, one.text
        assert one.json() == {"outputs": {"same": "héllo", "again": "héllo"}}
        rows = httpx.post(f"{own.url}/v1/models/names:predict", json={"instances": ["héllo", "b"]})
        assert rows.status_code == 200, rows.text
        assert rows.json() == {"predictions": [{"same": t, "again": t} for t in ("héllo", "b")]}
    finally:
        own.stop()


def test_tf_serving_rows_give_each_instance_its_values_or_refuse(tmp_path, kit):
    """A per-instance value came back as [value] (TF Serving answers the value), and an output with no row per
    instance (a total over the batch, rank 0) ended the rows answer in a TypeError, 500."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["largest"], axes=[1], keepdims=0),  # one value per instance
            helper.make_node("ArgMax", ["x"], ["where"], axis=1, keepdims=0),  # INT64: no numpy scalar orjson takes
            helper.make_node("ReduceMax", ["x"], ["overall"], keepdims=0),  # one value for the whole batch
        ],
        "maxima",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("largest", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("where", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("x_again", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("overall", TensorProto.FLOAT, []),
        ],
    )
    graph.node.append(helper.make_node("Identity", ["x"], ["x_again"]))
    kit.save(graph, tmp_path / "maxima" / "1", {"max_batch_size": 0})
    del graph.output[3]  # without the whole batch's value: every output has a row per instance
    kit.save(graph, tmp_path / "per_row" / "1", {"max_batch_size": 4})
    own = kit.serve(tmp_path)
    try:
        rows = httpx.post(f"{own.url}/v1/models/per_row:predict", json={"instances": [[1, 2], [4, 3]]})
        assert rows.json() == {
            "predictions": [
                {"largest": 2.0, "where": 1, "x_again": [1.0, 2.0]},
                {"largest": 4.0, "where": 0, "x_again": [4.0, 3.0]},
            ]
        }
        refused = httpx.post(f"{own.url}/v1/models/maxima:predict", json={"instances": [[1, 2], [4, 3]]})
        assert refused.status_code == 400, refused.text
        assert "hold no one row per instance; ask with 'inputs' (columns)" in error_of(refused)
        columns = httpx.post(f"{own.url}/v1/models/maxima:predict", json={"inputs": [[1, 2], [4, 3]]})
        outputs = {"largest": [2.0, 4.0], "where": [1, 0], "x_again": [[1.0, 2.0], [4.0, 3.0]], "overall": 4.0}
        assert columns.json()["outputs"] == outputs
    finally:
        own.stop()


def test_the_pipeline_endpoint_answers_a_model_without_a_batch_dimension(tmp_path, kit):
    """An output whose first dimension is not the batch ([4, N]) leaves a model unbatched, its items whole: /predict
    stacked them all the same, and every request was refused (ONNX Runtime's 'Invalid rank for input: x Got: 3')."""
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0])],
        "transpose",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, "N"])],
    )
    kit.save(graph, tmp_path / "transpose" / "1")
    own = kit.serve(tmp_path)
    x = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    try:
        answer = httpx.post(f"{own.url}/v2/models/transpose/predict", json={"x": x})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"outputs": {"t": np.transpose(x).tolist()}}
    finally:
        own.stop()


def digit_image(fmt: str) -> bytes:
    pixels = (np.random.default_rng(3).random((16, 16)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_pipeline_endpoint_answers_an_image_like_model_predict(server, repository, fmt, content_type):
    image = digit_image(fmt)
    expected = forwardpass.load("digits_cnn", repository=repository).predict(image, top_k=3)
    response = httpx.post(
        f"{server.url}/v2/models/digits_cnn/predict?top_k=3", content=image, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [(c["label"], c["index"]) for c in answer["top_k"]] == [(c["label"], c["index"]) for c in expected["top_k"]]
    np.testing.assert_allclose(
        [c["score"] for c in answer["top_k"]], [c["score"] for c in expected["top_k"]], rtol=1e-6
    )


def test_pipeline_endpoint_answers_a_record_and_refuses_corrupt_images(server, repository):
    record = {"age": 50, "sex": 1, "bmi": 31.5, "bp": 90, "s1": 180, "s2": 100, "s3": 50, "s4": 4, "s5": 4.6, "s6": 90}
    expected = forwardpass.load("diabetes", repository=repository).predict(record)
    answer = httpx.post(f"{server.url}/v2/models/diabetes/predict", json=record)
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"] == pytest.approx(expected["value"], rel=1e-6)
    corrupt = httpx.post(
        f"{server.url}/v2/models/digits_cnn/predict",
        content=b"\x89PNG not really",
        headers={"Content-Type": "image/png"},
    )
    assert corrupt.status_code == 400
    assert "not an image" in error_of(corrupt)
    wrong_kind = httpx.post(
        f"{server.url}/v2/models/diabetes/predict", content=b"hi", headers={"Content-Type": "text/csv"}
    )
    assert wrong_kind.status_code == 400 and "record" in error_of(wrong_kind)


@pytest.mark.parametrize("text", ["/etc/passwd", "samples/digits/digit_4_1023.png", "../models/x.png"])
def test_text_sent_to_an_image_model_is_never_opened_as_a_server_path(server, text: str):
    answer = httpx.post(
        f"{server.url}/v2/models/digits_cnn/predict", content=text, headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 400
    assert "send its bytes" in error_of(answer) and text not in error_of(answer)


def v2(name: str, shape: list[int], data: object, datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


BAD_REQUESTS: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("/v2/models/mlp/infer", b"{not json", {}, 400, "not valid JSON"),
    # a raw tensor sent without the header was told only that it is 'not valid UTF-8'
    ("/v2/models/mlp/infer", bytes(range(256)), {}, 400, "needs the Inference-Header-Content-Length header"),
    # NaN and Infinity are read (tritonclient writes them, Triton reads them), but no integer is one
    *(
        (
            "/v2/models/gather/infer",
            b'{"inputs": [{"name": "index", "datatype": "INT64", "shape": [1, 1], "data": [%s]}]}' % value,
            {},
            400,
            message,
        )
        for value, message in (
            (b"NaN", "INT64 data must be integers"),
            (b"Infinity", "outside the INT64 range"),
            (b"-Infinity", "outside the INT64 range"),
        )
    ),
    ("/v2/models/add/infer", b'{"inputs": [{"name": "x", "data": [NaN, 1, [}', {}, 400, "not valid JSON"),
    ("/v2/models/mlp/infer", orjson.dumps({"inputs": []}), {}, 400, "non-empty list"),
    # a request-level binary_data_output of "true" was read as false, where an output's binary_data was refused
    (
        "/v2/models/mlp/infer",
        orjson.dumps({**v2("x", [1, 64], [0.0] * 64), "parameters": {"binary_data_output": "true"}}),
        {},
        400,
        "parameter 'binary_data_output' must be true or false, got 'true'",
    ),
    ("/v2/models/mlp/infer", orjson.dumps(v2("z", [1, 64], [0.0] * 64)), {}, 400, "unknown input(s) ['z']"),
    (
        "/v2/models/mlp/infer",
        orjson.dumps(v2("x", [1, 32], [0.0] * 32)),
        {},
        400,
        "expected shape [-1, 64], got [1, 32]",
    ),
    ("/v2/models/mlp/infer", orjson.dumps(v2("x", [1, 64], [0.0] * 63)), {}, 400, "needs 64 values, 'data' holds 63"),
    ("/v2/models/mlp/infer", orjson.dumps(v2("x", [1, 64], ["a"] * 64)), {}, 400, "FP32 data must be numbers"),
    # 1e39 became inf in FP32 and the model answered for it, 200; the Python API and TF Serving's route refused it
    ("/v2/models/add/infer", orjson.dumps(v2("x", [1, 4], [1e39, 1, 2, 3])), {}, 400, "beyond the range of FP32"),
    ("/v2/models/mlp/infer", orjson.dumps(v2("x", [1, 64], [0] * 64, "FP99")), {}, 400, "unknown data type 'FP99'"),
    (
        "/v2/models/mlp/infer",
        orjson.dumps(v2("x", [1, 64], ["a"] * 64, "BYTES")),
        {},
        400,
        "datatype BYTES does not match the model's FP32",
    ),
    ("/v2/models/mlp/infer", orjson.dumps(v2("x", [0, 64], [])), {}, 400, "0 rows"),
    (
        "/v2/models/mlp/infer",
        orjson.dumps({**v2("x", [1, 64], [0.0] * 64), "outputs": [{"name": "nope"}]}),
        {},
        400,
        "has no output 'nope'",
    ),
    ("/v2/models/gather/infer", orjson.dumps(v2("index", [1, 1], [99], "INT64")), {}, 400, "refused the input"),
    ("/v2/models/nope/infer", orjson.dumps(v2("x", [1, 64], [0.0] * 64)), {}, 404, "model 'nope' is not loaded"),
    ("/v2/models/mlp/versions/3/infer", orjson.dumps(v2("x", [1, 64], [0.0] * 64)), {}, 404, "no version '3'"),
    ("/v2/models/mlp/nothing", b"{}", {}, 404, "no such endpoint"),
    # a line break in what the message repeats is shown escaped: the message was cut there ("model 'a")
    ("/v2/models/a%0Ab/infer", b"{}", {}, 404, "model 'a\\nb' is not loaded"),
    ("/v2/repository/models/a%0Ab/load", b"", {}, 400, "'a\\nb' is not a valid model name"),
    # the repository calls' bodies: a load given a path was 200, a 'ready' of "yes" read as false
    ("/v2/repository/models/mlp/load", b'{"parameters": {"path": "/etc"}}', {}, 400, "['path'] are not supported"),
    ("/v2/repository/models/mlp/load", b'{"parameters": [1]}', {}, 400, "[1] are not supported"),
    ("/v2/repository/models/mlp/unload", b'{"parameters": {"force": true}}', {}, 400, "['force'] are not supported"),
    ("/v2/repository/models/mlp/load", b'{"paramters": {}}', {}, 400, "unknown fields ['paramters']"),
    ("/v2/repository/index", b'{"ready": "yes"}', {}, 400, "'ready' must be true or false"),
    ("/v2/repository/index", b'{"ready": true, "x": "%s"}' % (b"a" * 2**20), {}, 413, "over the limit of 65536"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_4xx_naming_the_problem(server, path, body, headers, status, message):
    response = httpx.post(server.url + path, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in error_of(response)


def binary_request(size: int, declared_size: int, header_length: int | None = None) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": declared_size}}
            ]
        }
    )
    length = len(header) if header_length is None else header_length
    return header + bytes(size), {"Inference-Header-Content-Length": str(length)}


@pytest.mark.parametrize(
    ("size", "declared", "header_length", "message"),
    [
        (256, 10_000, None, "goes past the end"),
        (100, 100, None, "needs 256 bytes, binary_data_size is 100"),
        (300, 256, None, "add up to 256"),
        (256, 256, 10**6, "outside the"),
        (256, 256, 3, "not valid JSON"),
    ],
)
def test_lying_binary_headers_get_a_400(server, size, declared, header_length, message):
    body, headers = binary_request(size, declared, header_length)
    response = httpx.post(f"{server.url}/v2/models/mlp/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert message in error_of(response)


def test_an_input_with_both_json_data_and_binary_data_is_refused(server):
    """Two values for one tensor: the binary one was answered and the JSON 'data' silently dropped (gRPC refuses
    typed contents beside raw ones the same way)."""
    parameters = {"binary_data_size": 256}
    entry = {"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64, "parameters": parameters}
    header = orjson.dumps({"inputs": [entry]})
    headers = {"Inference-Header-Content-Length": str(len(header))}
    response = httpx.post(f"{server.url}/v2/models/mlp/infer", content=header + bytes(256), headers=headers)
    assert response.status_code == 400, response.text
    assert error_of(response) == "input 'x' has both 'data' and parameters.binary_data_size; give one"


def test_metrics_cover_requests_failures_stages_batches_and_queues(server, client):
    client.infer("mlp", [mlp_input(np.zeros((1, 64), np.float32), True)])
    httpx.post(f"{server.url}/v2/models/mlp/infer", content=b"{")
    text = httpx.get(f"{server.url}/metrics").text
    assert 'forwardpass_requests_total{model="mlp",version="1"}' in text
    assert 'forwardpass_request_failures_total{code="400",model="mlp"}' in text
    for stage in ("queue", "preprocess", "inference", "postprocess"):
        assert f'stage="{stage}"' in text
    assert 'forwardpass_batch_size_bucket{le="1.0",model="mlp",version="1"}' in text
    assert 'forwardpass_queue_depth{model="mlp",version="1"} 0.0' in text


def test_oversized_bodies_get_413_before_they_are_read(repository, kit):
    small = kit.serve(repository, max_request_bytes=1000)
    try:
        declared = httpx.post(f"{small.url}/v2/models/mlp/infer", content=b"x" * 5000)
        assert declared.status_code == 413 and "over the limit of 1000" in error_of(declared)

        def chunks():
            yield from (b"y" * 400 for _ in range(5))

        streamed = httpx.post(f"{small.url}/v2/models/mlp/infer", content=chunks())  # no Content-Length
        assert streamed.status_code == 413
        bomb = httpx.post(
            f"{small.url}/v2/models/mlp/infer", content=_gzip(b"0" * 100_000), headers={"Content-Encoding": "gzip"}
        )
        assert bomb.status_code == 413 and "decompresses" in error_of(bomb)
    finally:
        small.stop()


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def test_a_bearer_token_guards_everything_but_health(repository, kit):
    guarded = kit.serve(repository, auth_token="s3cret")
    try:
        anonymous = triton.InferenceServerClient(guarded.address)
        assert anonymous.is_server_live() and anonymous.is_server_ready()
        with pytest.raises(InferenceServerException, match="missing bearer token") as missing:
            anonymous.get_model_metadata("mlp")
        assert missing.value.status() == "401"
        with pytest.raises(InferenceServerException, match="wrong bearer token"):
            anonymous.infer(
                "mlp", [mlp_input(np.zeros((1, 64), np.float32), True)], headers={"Authorization": "Bearer no"}
            )
        assert httpx.get(f"{guarded.url}/metrics").status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        result = anonymous.infer("mlp", [mlp_input(np.zeros((1, 64), np.float32), True)], headers=good)
        assert result.as_numpy("y").shape == (1, 10)
    finally:
        guarded.stop()


def test_the_access_log_writes_one_json_line_per_request(repository, kit, caplog):
    caplog.set_level(logging.INFO, logger="forwardpass.access")
    logged = kit.serve(repository, access_log=True)
    try:
        httpx.get(f"{logged.url}/v2/models/mlp")
        httpx.post(f"{logged.url}/v2/models/mlp/infer", content=orjson.dumps(v2("x", [1, 64], [0.5] * 64)))
        httpx.post(f"{logged.url}/v2/models/mlp/versions/1/infer", content=b"{")
    finally:
        logged.stop()
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "forwardpass.access"]
    assert [(line["method"], line["path"], line["status"]) for line in lines[-3:]] == [
        ("GET", "/v2/models/mlp", 200),
        ("POST", "/v2/models/mlp/infer", 200),
        ("POST", "/v2/models/mlp/versions/1/infer", 400),
    ]
    assert all(line["ms"] > 0 and line["client"] == "127.0.0.1" for line in lines[-3:])


def test_a_client_that_pipelines_requests_and_leaves_costs_no_error_log(server, caplog):
    """uvicorn marks only the last request it parsed as disconnected when a connection drops; the pipelined one
    then running wrote its answer to the closed socket: 'Exception in ASGI application' with a traceback, per
    request, for a client that merely went away."""
    caplog.set_level(logging.ERROR, logger="uvicorn.error")
    body = orjson.dumps(v2("x", [1, 64], [0.5] * 64))
    head = f"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            connection.sendall((head + body) * 3)
            assert connection.recv(12) == b"HTTP/1.1 200"
    assert httpx.post(f"{server.url}/v2/models/mlp/infer", content=body).status_code == 200
    assert [record.getMessage() for record in caplog.records if record.name == "uvicorn.error"] == []


def test_an_empty_outputs_list_answers_every_output_as_over_grpc(server, mlp):
    """KServe V2 and Triton answer every output when none is asked for; '"outputs": []' was answered with no
    output at all over HTTP (gRPC, whose repeated field cannot tell [] from absent, answered them all)."""
    x = RNG.standard_normal((1, 64)).astype(np.float32)
    body = {**v2("x", [1, 64], x.ravel().tolist()), "outputs": []}
    response = httpx.post(f"{server.url}/v2/models/mlp/infer", content=orjson.dumps(body))
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert output["name"] == "y"
    np.testing.assert_array_equal(np.array(output["data"], np.float32), mlp.infer({"x": x})["y"].ravel())


def test_nan_and_infinity_travel_in_json_as_triton_writes_them(client):
    """tritonclient writes NaN, Infinity and -Infinity in a JSON tensor and reads them in an answer, as Triton does
    (its server PR 3870): the request was refused as not JSON, and an answer's inf and -inf went out as null, read
    back as NaN."""
    special = np.array([[np.inf, -np.inf, np.nan, 0.5]], np.float32)
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(special, binary_data=False)
    for binary in (False, True):
        result = client.infer("add", [tensor], outputs=[triton.InferRequestedOutput("y", binary_data=binary)])
        np.testing.assert_array_equal(result.as_numpy("y"), special + 1)
