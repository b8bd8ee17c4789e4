"""The data plane in process: its JSON forms parse into Triton's protobuf messages (what the gRPC transport sends),
and infer/predict give the model's own answers, with errors from the forwardpass tree only."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from google.protobuf import json_format
from onnx import TensorProto, helper, numpy_helper

import forwardpass
from forwardpass.errors import DeadlineExceeded, ForwardpassError, InputError, NotFoundError
from forwardpass.registry import ModelRegistry
from forwardpass.repository import Repository
from forwardpass.server.dataplane import DataPlane
from forwardpass.server.proto import grpc_service_pb2, model_config_pb2
from forwardpass.server.settings import ServerSettings
from forwardpass.server.types import InferRequest, RequestedOutput, Tensor


@pytest_asyncio.fixture
async def dataplane(repository: Path) -> AsyncIterator[DataPlane]:
    registry = ModelRegistry(Repository(repository))
    plane = DataPlane(registry, ServerSettings(repository=repository, http_port=0, grpc_port=0))
    await registry.load_all()
    yield plane
    await registry.close()


def x_request(x: np.ndarray, outputs: list[RequestedOutput] | None = None, **parameters: object) -> InferRequest:
    return InferRequest([Tensor("x", "FP32", x)], outputs, "id-1", dict(parameters))


@pytest.mark.asyncio
async def test_config_and_statistics_parse_into_triton_protobufs(dataplane: DataPlane):
    for name in ("mlp", "mlp_unbatched", "strings", "digits_cnn"):
        config = json_format.ParseDict(dataplane.model_config(name), model_config_pb2.ModelConfig())
        assert config.name == name
    config = json_format.ParseDict(dataplane.model_config("strings"), model_config_pb2.ModelConfig())
    assert config.input[0].data_type == model_config_pb2.TYPE_STRING and list(config.input[0].dims) == [2]
    await dataplane.infer("mlp", None, x_request(np.zeros((2, 64), np.float32)))
    statistics = json_format.ParseDict(dataplane.model_statistics("mlp"), grpc_service_pb2.ModelStatisticsResponse())
    (mlp,) = statistics.model_stats
    assert mlp.inference_count >= 2 and mlp.inference_stats.success.count >= 1
    assert mlp.batch_stats[0].compute_infer.count >= 1
    metadata = json_format.ParseDict(dataplane.model_metadata("mlp"), grpc_service_pb2.ModelMetadataResponse())
    assert list(metadata.inputs[0].shape) == [-1, 64]
    for row in await dataplane.repository_index():
        json_format.ParseDict(row, grpc_service_pb2.RepositoryIndexResponse.ModelIndex())
    json_format.ParseDict(dataplane.server_metadata(), grpc_service_pb2.ServerMetadataResponse())


@pytest.mark.asyncio
async def test_infer_and_predict_give_the_models_own_answers(dataplane: DataPlane, repository: Path):
    model = forwardpass.load("mlp", repository=repository)
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    response = await dataplane.infer("mlp", "1", x_request(x))
    assert (response.model_name, response.model_version, response.id) == ("mlp", "1", "id-1")
    np.testing.assert_array_equal(response.outputs[0].data, model.infer({"x": x})["y"])
    prediction = await dataplane.predict("mlp", None, x[0].tolist(), {"top_k": "2"})
    assert prediction == model.predict(x[0], top_k=2)


@pytest.mark.asyncio
async def test_classification_of_an_unbatched_model_is_one_top_k_list(dataplane: DataPlane, repository: Path):
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    scores = forwardpass.load("mlp_unbatched", repository=repository).infer({"x": x})["y"].ravel()
    response = await dataplane.infer("mlp_unbatched", None, x_request(x, [RequestedOutput("y", classification=2)]))
    best = np.argsort(-scores, kind="stable")[:2]
    assert response.outputs[0].datatype == "BYTES"
    assert response.outputs[0].data.tolist() == [f"{float(scores[i]):f}:{i}" for i in best]  # no labels: no suffix


@pytest.mark.asyncio
async def test_classification_of_one_score_per_row_answers_every_row(tmp_path: Path, kit: Any):
    """A batched output of shape [batch] (one score per row, as a classifier's label output) is classified row by
    row, as Triton does: [batch, 1], not the top entry of the whole batch."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)],
        "row_sums",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    kit.save(graph, tmp_path / "row_sums" / "1", {"max_batch_size": 8})
    registry = ModelRegistry(Repository(tmp_path))
    plane = DataPlane(registry, ServerSettings(repository=tmp_path, http_port=0, grpc_port=0))
    await registry.load_all()
    try:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        wanted = [RequestedOutput("total", classification=1)]
        response = await plane.infer("row_sums", None, x_request(x, wanted))
    finally:
        await registry.close()
    assert response.outputs[0].data.tolist() == [[f"{float(total):f}:0"] for total in x.sum(axis=1)]


@pytest.mark.asyncio
async def test_errors_come_from_the_forwardpass_tree(dataplane: DataPlane):
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(NotFoundError):
        await dataplane.infer("nope", None, x_request(x))
    with pytest.raises(InputError, match="given twice"):
        await dataplane.infer("mlp", None, InferRequest([Tensor("x", "FP32", x), Tensor("x", "FP32", x)]))
    with pytest.raises(InputError, match="classification"):
        await dataplane.infer(
            "strings",
            None,
            InferRequest(
                [Tensor("x", "BYTES", np.array([["a", "b"]], dtype=object))], [RequestedOutput("y", classification=1)]
            ),
        )
    with pytest.raises(InputError, match="'timeout' must be a positive number"):
        await dataplane.infer("mlp", None, x_request(x, timeout="soon"))
    with pytest.raises(InputError, match="'top_k' must be a positive integer"):
        await dataplane.predict("mlp", None, x[0].tolist(), {"top_k": 0})
    with pytest.raises(InputError, match="'top_k' must be a positive integer"):  # a digit int() does not read
        await dataplane.predict("mlp", None, x[0].tolist(), {"top_k": "\u00b2"})
    with pytest.raises(InputError, match="not a rectangular array"):
        await dataplane.predict("mlp", None, [[[1.0], [1.0, 2.0]]], {})
    with pytest.raises(InputError, match=r"expected shape \[64\], got \[1\]"):  # a list of rows: each row checked
        await dataplane.predict("mlp", None, [[1.0], [1.0, 2.0]], {})
    assert not dataplane.model_ready("mlp", "7")


class RecordThatBreaksReading(dict[str, Any]):
    """A record with every column, whose reading raises TypeError: what a bug inside a preprocessor (or a library
    it calls) raises, through the preprocessing's own code path."""

    def get(self, key: object, default: object = None) -> object:
        raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'float'")


@pytest.mark.asyncio
@pytest.mark.parametrize("inline", [True, False])
async def test_an_unexpected_error_in_preprocessing_is_a_logged_500_not_a_400(
    dataplane: DataPlane, caplog: pytest.LogCaptureFixture, inline: bool
):
    record = RecordThatBreaksReading.fromkeys(["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"], 1.0)
    with caplog.at_level(logging.ERROR, "forwardpass.server.dataplane"), pytest.raises(ForwardpassError) as raised:
        await dataplane.predict("diabetes", None, record, {}, inline=inline)
    assert not isinstance(raised.value, InputError) and raised.value.http_status == 500
    assert "TypeError: unsupported operand" in str(raised.value)
    (logged,) = [entry for entry in caplog.records if "failed unexpectedly" in entry.getMessage()]
    assert logged.exc_info is not None and logged.exc_info[0] is TypeError  # the traceback is in the log
    with pytest.raises(InputError, match="column 'age': 'old' is not a number"):  # the caller's fault stays a 4xx
        await dataplane.predict("diabetes", None, {**record, "age": "old"}, {}, inline=inline)


@pytest.mark.asyncio
async def test_a_request_past_its_timeout_fails_with_deadline_exceeded(tmp_path: Path, kit):
    kit.save(kit.slow_graph(), tmp_path / "slow" / "1", {"max_batch_size": 0})
    registry = ModelRegistry(Repository(tmp_path))
    plane = DataPlane(registry, ServerSettings(repository=tmp_path, http_port=0, grpc_port=0))
    await registry.load_all()
    request = InferRequest([Tensor("x", "FP32", np.ones((1, 4), np.float32))], parameters={"timeout": 1})  # 1 µs
    with pytest.raises(DeadlineExceeded, match="did not answer within"):
        await plane.infer("slow", None, request)
    await registry.close()
