"""What every client does alike (HTTP and gRPC, blocking and asyncio) against the real server on 127.0.0.1: answers
equal `Model.infer` in process exactly; the server's refusals become forwardpass errors with its message."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forwardpass.errors import (
    DeadlineExceeded,
    DTypeError,
    InputError,
    NotFoundError,
    ShapeError,
    Unauthenticated,
    Unavailable,
)

CLIENTS = ["http", "http-async", "grpc", "grpc-async"]
TOKEN = "client-s3cret"
ROWS = np.random.default_rng(7).standard_normal((5, 64)).astype(np.float32)


def test_health_and_metadata_describe_the_served_models(client: Any, model: Callable[[str], Any]):
    assert client.is_live() is True
    assert client.is_ready() is True
    assert client.model_ready("mlp") is True
    assert client.model_ready("mlp", version=1) is True
    assert client.model_ready("mlp", version=9) is False
    assert client.model_ready("missing") is False
    server = client.server_metadata()
    assert server["name"] == "forwardpass" and "binary_tensor_data" in server["extensions"]
    metadata = client.metadata("mlp")
    assert metadata["name"] == "mlp" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [spec.to_dict() for spec in model("mlp").inputs]
    assert metadata["outputs"] == [spec.to_dict() for spec in model("mlp").outputs]


@pytest.mark.parametrize("name", ["mlp", "mlp_unbatched"])
def test_infer_equals_model_infer_exactly(client: Any, model: Callable[[str], Any], name: str):
    expected = model(name).infer({"x": ROWS})
    got = client.infer(name, {"x": ROWS}, version=1)
    assert list(got) == list(expected)
    for output, array in expected.items():
        assert got[output].dtype == array.dtype and got[output].shape == array.shape
        np.testing.assert_array_equal(got[output], array)


def test_python_lists_take_the_models_datatype_and_numpy_arrays_their_own(client: Any, model: Callable[[str], Any]):
    """Lists of Python floats (numpy would make them FP64) go as the model's FP32, a model's only input needs no
    name; a float64 numpy array is the caller's choice and goes as FP64, which the server refuses as Triton does."""
    expected = model("mlp").infer({"x": ROWS})["y"]
    np.testing.assert_array_equal(client.infer("mlp", {"x": ROWS.tolist()})["y"], expected)
    np.testing.assert_array_equal(client.infer("mlp", ROWS.tolist())["y"], expected)
    indices = client.infer("gather", [[1], [3]])["y"]  # Python ints as the model's INT64
    np.testing.assert_array_equal(indices, model("gather").infer({"index": np.array([[1], [3]])})["y"])
    with pytest.raises(DTypeError, match="datatype FP64 does not match the model's FP32"):
        client.infer("mlp", {"x": ROWS.astype(np.float64)})
    with pytest.raises(DTypeError, match="input 'index': the values do not all fit the model's INT64"):
        client.infer("gather", {"index": [[0.5]]})


def test_strings_travel_as_bytes_elements(client: Any):
    text = np.array([["a", "bé"], ["", "x" * 300]], dtype=object)
    got = client.infer("strings", {"x": text})["y"]
    assert got.shape == (2, 2) and got.dtype == object
    assert got.tolist() == [[value.encode() for value in row] for row in text.tolist()]


def test_requested_outputs_with_classification_give_triton_strings(client: Any, model: Callable[[str], Any]):
    scores = model("mlp").infer({"x": ROWS[:2]})["y"]
    got = client.infer("mlp", {"x": ROWS[:2]}, outputs=["y"], classification=3)["y"]
    assert got.shape == (2, 3)
    for row, classes in zip(scores, got.tolist(), strict=True):
        best = np.argsort(-row.astype(np.float64), kind="stable")[:3]
        assert classes == [f"{row[i]:f}:{i}:class_{i}".encode() for i in best]


def test_refusals_become_forwardpass_errors_with_the_servers_message(client: Any):
    with pytest.raises(NotFoundError, match="model 'missing' is not loaded"):
        client.infer("missing", {"x": ROWS})
    with pytest.raises(NotFoundError, match="missing"):
        client.metadata("missing")
    with pytest.raises(ShapeError, match=r"input 'x': expected shape \[-1, 64\], got \[5, 3\]"):
        client.infer("mlp", {"x": ROWS[:, :3]})  # the server's own class, named in its error header/metadata
    with pytest.raises(DTypeError, match="input 'x'"):
        client.infer("mlp", {"x": np.full((1, 64), "text", dtype=object)})
    with pytest.raises(InputError, match="has no output 'nope'"):
        client.infer("mlp", {"x": ROWS}, outputs=["nope"])


def test_local_mistakes_are_caught_before_sending(client: Any):
    with pytest.raises(DTypeError, match="complex128 has no V2 datatype"):
        client.infer("mlp", {"x": np.ones((1, 64), dtype=np.complex128)})
    with pytest.raises(InputError, match="classification needs the outputs"):
        client.infer("mlp", {"x": ROWS}, classification=2)


def test_a_request_past_its_timeout_is_dropped_by_the_server(client: Any):
    """The server, not the client, gives up first (the client waits ANSWER_GRACE_S longer) and says why. Its status
    over HTTP, 503, is also a full queue's: the error-class header tells them apart."""
    with pytest.raises(DeadlineExceeded, match=r"'slow' did not answer within 0\.001 s"):
        client.infer("slow", {"x": np.ones((1, 4), np.float32)}, timeout=0.001)
    assert client.infer("slow", {"x": np.ones((1, 4), np.float32)}, timeout=30)["y"].tolist() == [[1.0] * 4]


def test_unload_and_load_through_the_repository_api(client: Any):
    client.unload("add")
    assert client.model_ready("add") is False
    with pytest.raises(NotFoundError):
        client.infer("add", {"x": np.zeros((1, 4), np.float32)})
    client.load("add")
    assert client.model_ready("add") is True
    assert client.infer("add", {"x": np.zeros((1, 4), np.float32)})["y"].tolist() == [[1.0] * 4]


@pytest.fixture(scope="module")
def guarded(repository: Path, serve: Callable[..., Any]) -> Iterator[Any]:
    running = serve(repository, auth_token=TOKEN)
    yield running
    running.stop()


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_bearer_token_is_sent_when_given_and_refused_when_missing_or_wrong(
    kind: str, guarded: Any, connector: Callable[..., Any]
):
    for token, problem in [(None, "missing"), ("wrong", "wrong")]:
        client = connector(kind, guarded, token=token)
        try:
            assert client.is_live() is True  # probes need no credentials
            with pytest.raises(Unauthenticated, match=f"{problem} bearer token"):
                client.infer("mlp", {"x": ROWS})
        finally:
            client.close()
    client = connector(kind, guarded, token=TOKEN)
    try:
        assert client.infer("mlp", {"x": ROWS})["y"].shape == (5, 10)
        assert client.model_ready("mlp") is True
    finally:
        client.close()


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_server_that_is_not_there_is_unavailable(kind: str, free_port: Callable[[], int], connector: Any):
    port = free_port()
    nowhere = type("Nowhere", (), {"url": f"http://127.0.0.1:{port}", "grpc_url": f"127.0.0.1:{port}"})
    client = connector(kind, nowhere, timeout=5)
    try:
        with pytest.raises(Unavailable):
            client.is_live()
    finally:
        client.close()
