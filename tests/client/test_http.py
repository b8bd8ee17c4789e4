"""What only the HTTP clients do: V2 JSON as well as binary tensors, and the pipeline endpoint (`predict`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forwardpass.client import AsyncInferenceClient, InferenceClient
from forwardpass.errors import InputError, NotFoundError

ROWS = np.random.default_rng(11).standard_normal((4, 64)).astype(np.float32)
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
RECORD = {
    "age": 54.0,
    "sex": 2.0,
    "bmi": 36.1,
    "bp": 115.0,
    "s1": 163.0,
    "s2": 98.4,
    "s3": 43.0,
    "s4": 4.0,
    "s5": 4.68,
    "s6": 101.0,
}


@pytest.fixture(params=["http", "http-async"])
def client(request: pytest.FixtureRequest, server: Any, connector: Callable[..., Any]) -> Iterator[Any]:
    connected = connector(request.param, server)
    yield connected
    connected.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_json_and_binary_answers_equal_model_infer_exactly(client: Any, model: Callable[[str], Any], binary: bool):
    expected = model("mlp").infer({"x": ROWS})["y"]
    got = client.infer("mlp", {"x": ROWS}, binary=binary)["y"]
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    strings = client.infer("strings", {"x": [["a", "bé"]]}, binary=binary)["y"]
    assert strings.tolist() == [[b"a", "bé".encode()]]


def test_nan_and_infinity_travel_in_binary_and_in_json(client: Any, model: Callable[[str], Any]):
    """In JSON as NaN, Infinity and -Infinity, as Triton writes them: they went as null, and were refused."""
    special = np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32)
    expected = model("add").infer({"x": special})["y"]
    for binary in (True, False):
        np.testing.assert_array_equal(client.infer("add", {"x": special}, binary=binary)["y"], expected)


def test_bytes_that_are_not_text_need_binary(client: Any):
    with pytest.raises(InputError, match="not UTF-8 text, which JSON cannot carry"):
        client.infer("strings", {"x": np.array([[b"\xff", b"a"]], dtype=object)}, binary=False)


def test_predict_runs_the_models_pipeline_on_the_server(client: Any, model: Callable[[str], Any]):
    image = SAMPLES / "digits" / "digit_4_1023.png"
    assert client.predict("digits_cnn", image) == model("digits_cnn").predict(image.read_bytes())
    top_two = client.predict("digits_cnn", image.read_bytes(), top_k=2, version=1)
    assert [entry["label"] for entry in top_two["top_k"]] == [
        entry["label"] for entry in model("digits_cnn").predict(image.read_bytes(), top_k=2)["top_k"]
    ]
    assert client.predict("diabetes", RECORD) == model("diabetes").predict(RECORD)


def test_predict_refusals_name_the_problem(client: Any):
    with pytest.raises(InputError, match="not an image this model can read"):
        client.predict("digits_cnn", b"certainly not a PNG")
    with pytest.raises(NotFoundError, match=r"cannot read .*absent\.png"):
        client.predict("digits_cnn", Path("absent.png"))
    with pytest.raises(InputError, match="predict takes image bytes, a Path, text or a record"):
        client.predict("digits_cnn", 42)


@pytest.mark.parametrize("kind", ["http", "http-async"])
def test_a_kept_alive_connection_the_server_closed_is_replaced_unseen(
    kind: str, repository: Path, serve: Callable[..., Any], connector: Callable[..., Any]
):
    """The server restarts on the same port: the client's idle connection to the old one is dead, and the next call
    goes out on a fresh connection instead of failing."""
    zeros = {"x": np.zeros((1, 4), np.float32)}
    first = serve(repository)
    client = connector(kind, first)
    try:
        assert client.infer("add", zeros)["y"].tolist() == [[1.0] * 4]
        first.stop()
        second = serve(repository, http_port=first.port)
        try:
            assert client.infer("add", zeros)["y"].tolist() == [[1.0] * 4]
        finally:
            second.stop()
    finally:
        client.close()


def test_a_bare_host_and_port_means_http():
    assert InferenceClient("127.0.0.1:8000").url == "http://127.0.0.1:8000"
    assert AsyncInferenceClient("https://example.org/prefix/").url == "https://example.org/prefix"
