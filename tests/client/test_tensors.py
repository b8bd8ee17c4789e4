"""The client's tensor encoding read back by the server's own decoder, and malformed answers refused cleanly."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from forwardpass.client.tensors import decode_http_response, encode_http_request
from forwardpass.errors import ForwardpassError
from forwardpass.server.codec import decode_infer_request

INPUTS: dict[str, np.ndarray] = {
    "image": np.arange(24, dtype=np.float16).reshape(2, 3, 4),
    "ids": np.array([[1, -2], [3, 2**40]], dtype=np.int64),
    "mask": np.array([True, False]),
    "text": np.array(["héllo", "", "x" * 70], dtype=object),
}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_the_server_decodes_what_the_client_encodes(binary: bool):
    body, header_length = encode_http_request(INPUTS, ["out"], binary, 3, {"timeout": 5})
    assert (header_length is not None) == binary
    request = decode_infer_request(body, header_length)
    for tensor in request.inputs:
        sent = INPUTS[tensor.name]
        assert list(tensor.data.shape) == list(sent.shape)
        if tensor.datatype == "BYTES":
            assert [value if isinstance(value, str) else value.decode() for value in tensor.data.tolist()] == list(sent)
        else:
            assert tensor.data.dtype == sent.dtype
            np.testing.assert_array_equal(tensor.data, sent)
    assert [t.datatype for t in request.inputs] == ["FP16", "INT64", "BOOL", "BYTES"]
    assert request.outputs is not None and request.outputs[0].binary is binary
    assert request.outputs[0].classification == 3 and request.parameters == {"timeout": 5}


def test_nan_and_infinity_go_both_ways_in_json():
    """Written as NaN, Infinity and -Infinity (as Triton and tritonclient do): orjson wrote null, read as NaN."""
    special = np.array([np.inf, -np.inf, np.nan, 0.5], np.float32)
    body, header_length = encode_http_request({"x": special}, None, False, 0, {})
    assert b"[Infinity, -Infinity, NaN, 0.5]" in body
    [tensor] = decode_infer_request(body, header_length).inputs
    np.testing.assert_array_equal(tensor.data, special)
    output = {"name": "y", "datatype": "FP32", "shape": [4], "data": tensor.data}
    answer = orjson.dumps({"outputs": [output]}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert b"null" in answer  # what orjson alone writes
    answer = answer.replace(b"[null,null,null,0.5]", b"[Infinity, -Infinity, NaN, 0.5]")
    np.testing.assert_array_equal(decode_http_response(answer, None)["y"], special)


def test_without_requested_outputs_binary_asks_for_binary_outputs():
    body, header_length = encode_http_request({"x": np.zeros(2, np.float32)}, None, True, 0, {})
    assert decode_infer_request(body, header_length).parameters == {"binary_data_output": True}


def answer(outputs: list[dict[str, object]], binary: bytes = b"") -> tuple[bytes, int | None]:
    header = orjson.dumps({"model_name": "m", "model_version": "1", "outputs": outputs})
    return header + binary, len(header) if binary else None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            answer([{"name": "y", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}], b"1234"),
            "past the end",
        ),
        (
            answer([{"name": "y", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 4}}], b"1234"),
            "needs 12 bytes",
        ),
        (answer([{"name": "y", "datatype": "BF16", "shape": [1], "data": [1.0]}]), "'BF16', which numpy cannot hold"),
        (answer([{"name": "y", "datatype": "FP32", "shape": [3], "data": [1.0]}]), "ValueError"),
        (
            answer(
                [{"name": "y", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4}}],
                b"\x09\x00\x00\x00",
            ),
            "InputError",
        ),
        ((b"<html>oops</html>", None), "not valid JSON"),
        ((b'{"outputs": 3}', None), "TypeError"),
        ((b"{}", 9), "outside the 2-byte body"),
    ],
)
def test_a_malformed_answer_raises_one_clear_error(body: tuple[bytes, int | None], problem: str):
    with pytest.raises(ForwardpassError, match=f"not a valid V2 inference response: .*{problem}"):
        decode_http_response(*body)


def test_binary_answers_decode_without_copying():
    values = np.arange(6, dtype=np.float32)
    body, header_length = answer(
        [{"name": "y", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}}], values.tobytes()
    )
    decoded = decode_http_response(body, header_length)["y"]
    np.testing.assert_array_equal(decoded, values.reshape(2, 3))
    assert not decoded.flags.writeable  # a view of the answer's bytes
