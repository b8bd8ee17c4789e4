"""The V2 JSON codec's two readers: a large body (simdjson, numbers straight into an array) decodes to exactly what
the small-body reader (orjson) gives, and refuses exactly what it refuses."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from forwardpass.errors import ForwardpassError
from forwardpass.server.codec import LARGE_JSON_BYTES, _decode_large_json, _numbers, decode_infer_request
from forwardpass.tensor import DataType


def _request(data: object, datatype: str = "FP32", shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "x", "datatype": datatype, "shape": shape if shape is not None else [2], "data": data}
    return {"inputs": [tensor], **extra}


def _large(body: bytes) -> bytes:
    """The same document, made large with trailing whitespace."""
    return body + b" " * (LARGE_JSON_BYTES + 1 - len(body))


def _decoded(body: bytes) -> tuple[Any, ...]:
    """What decoding gives, comparable across readers: every input's name, dtype, shape and values, or the error."""
    try:
        request = decode_infer_request(body, None)
    except ForwardpassError as exc:
        return type(exc).__name__, str(exc)
    inputs = [(t.name, t.datatype, t.data.dtype.str, t.data.shape, t.data.tolist()) for t in request.inputs]
    return inputs, request.outputs, request.id, request.parameters


DOCUMENTS = {
    "flat floats": _request([1, 2.5, -3e-7, 4], shape=[2, 2]),
    "nested floats": _request([[1, 2], [3, 4.5]], shape=[2, 2]),
    "ragged nesting": _request([[1, 2], [3]], shape=[3]),
    "a boolean among floats": _request([1, True, 2], shape=[3]),
    "a string among floats": _request([1, "2"]),
    "a null among floats": _request([1, None]),
    "too few values": _request([1, 2], shape=[3]),
    "over FP16's range": _request([1e300, 2], datatype="FP16"),
    "FP64 keeps every digit": _request([0.1234567890123456789, 1e-300], datatype="FP64"),
    "INT32": _request([-5, 7], datatype="INT32"),
    "INT64 past 2**53": _request([2**53 + 1, -(2**62)], datatype="INT64"),
    "over INT8's range": _request([1, 300], datatype="INT8"),
    "a fraction in INT8": _request([1, 2.5], datatype="INT8"),
    "negative UINT8": _request([1, -1], datatype="UINT8"),
    "BOOL": _request([True, False], datatype="BOOL"),
    "BYTES": _request(["a", "b"], datatype="BYTES"),
    "an empty tensor": _request([], shape=[0]),
    "an unknown datatype": _request([1, 2], datatype="XX"),
    "data that is an object": _request({"a": 1}),
    "outputs, id and parameters": _request(
        [1, 2], outputs=[{"name": "y", "parameters": {"binary_data": True}}], id="q", parameters={"a": 1}
    ),
    "no inputs": {"inputs": []},
    "inputs as an object": {"inputs": {"x": [1]}},
    "an input that is a number": {"inputs": [5]},
    "a list, not an object": [1, 2],
}


@pytest.mark.parametrize("document", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_a_large_body_decodes_as_a_small_one(document: object) -> None:
    body = orjson.dumps(document)
    assert len(body) < LARGE_JSON_BYTES
    assert _decoded(_large(body)) == _decoded(body)


@pytest.mark.parametrize(
    ("data", "datatype"),
    [([2**63, 1], "INT64"), ([2**64 - 1, 0], "INT64"), ([2**64, 0], "UINT64"), ([-(2**64), 0], "INT64")],
)
def test_an_integer_past_the_datatypes_range_is_named_so(data: list[int], datatype: str) -> None:
    """JSON integers past 64 bits reach numpy as floats (orjson), others as floats beside small ones: refused as out
    of range, not as fractions."""
    writable = min(data) >= -(2**63) and max(data) < 2**64  # what orjson writes
    body = orjson.dumps(_request(data, datatype)) if writable else _request_text(data, datatype)
    for read in (body, _large(body)):
        error, message = _decoded(read)
        assert error == "DTypeError" and f"outside the {datatype} range" in message, message


def test_uint64_values_past_int64_beside_small_ones_arrive_exactly() -> None:
    """numpy reads [2**64 - 1, 0] as float64 (2**64 - 1 becomes 2**64): such UINT64 data was refused as fractions."""
    body = orjson.dumps(_request([[2**64 - 1, 0], [2**63, 7]], "UINT64", shape=[2, 2]))
    for read in (body, _large(body)):
        (tensor,) = decode_infer_request(read, None).inputs
        assert tensor.data.dtype == np.uint64 and tensor.data.tolist() == [[2**64 - 1, 0], [2**63, 7]]


def _request_text(data: list[int], datatype: str) -> bytes:
    """A request orjson cannot write (an integer past 64 bits), as its JSON text."""
    tensor = f'{{"name": "x", "datatype": "{datatype}", "shape": [{len(data)}], "data": {data}}}'
    return f'{{"inputs": [{tensor}]}}'.encode()


@pytest.mark.parametrize(
    ("data", "datatype"),
    [([1, True, 2.5], "FP32"), ([[101, 2000], [False, 3]], "INT64"), ([0, 1, True], "UINT8")],
)
def test_a_boolean_among_numbers_is_refused_not_read_as_one(data: list[Any], datatype: str) -> None:
    """numpy reads true among numbers as 1: Triton refuses a JSON boolean in numeric data, as every-boolean data is."""
    body = orjson.dumps(_request(data, datatype, shape=list(np.shape(data))))
    for read in (body, _large(body)):
        error, message = _decoded(read)
        assert error == "DTypeError" and f"{datatype} data must be" in message and "boolean" in message, message


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}],'
        b' "inputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [3]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2], "data": [3, 4]}]}',
    ],
    ids=["inputs twice", "data twice"],
)
def test_a_repeated_key_means_its_last_value_for_both_readers(body: bytes) -> None:
    assert _decoded(_large(body)) == _decoded(body)


def test_a_large_list_of_numbers_arrives_exactly() -> None:
    values = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    body = orjson.dumps(_request(values.ravel().tolist(), shape=list(values.shape)))
    assert len(body) > LARGE_JSON_BYTES
    decoded = decode_infer_request(body, None).inputs[0].data
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values)


TENSOR_HEAD = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], '
UNUSUAL_BODIES = {
    "a number past FP64": TENSOR_HEAD + b'"data": [2e400]}]}',
    "a bracket too many": TENSOR_HEAD + b'"data": [1]]}',
    "Infinity, as Triton's JSON writes it": TENSOR_HEAD + b'"data": [Infinity]}]}',
    "a second document": TENSOR_HEAD + b'"data": [1]}]} {"inputs": []}',
    "not UTF-8": b'{"inputs": [{"name": "\xff", "datatype": "FP32", "shape": [1], "data": [1]}]}',
    "nested past 1024": TENSOR_HEAD + b'"data": ' + b"[" * 2000 + b"1" + b"]" * 2000 + b"}]}",
    # simdjson refuses integers past 64 bits; JSON allows them and orjson reads them as floats
    "an integer past 64 bits": TENSOR_HEAD + b'"data": [123456789012345678901234567890]}]}',
    "an integer past 64 bits in parameters": TENSOR_HEAD
    + b'"data": [1]}], "parameters": {"a": 12345678901234567890123}}',
}


@pytest.mark.parametrize("body", UNUSUAL_BODIES.values(), ids=UNUSUAL_BODIES.keys())
def test_a_large_body_the_fast_parser_refuses_is_read_or_refused_as_a_small_one(body: bytes) -> None:
    decoded = _decoded(_large(body))
    assert decoded == _decoded(body)
    if isinstance(decoded[0], str):  # refused: a 400 with one line
        assert decoded[0] == "InputError" and "\n" not in str(decoded[1])


def test_the_large_reader_reads_a_flat_list_of_numbers_as_an_array() -> None:
    body = _large(orjson.dumps(_request([1.5, 2.5])))
    data = _numbers(_decode_large_json(body)["inputs"][0]["data"], DataType.FP32)
    assert isinstance(data, np.ndarray)  # no Python float per number: the point of the large reader
    assert data.tolist() == [1.5, 2.5]
