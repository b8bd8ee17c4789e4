"""The gRPC codec against tritonclient's own serialization: what the stock client sends decodes exactly, what we
send it reads back exactly, and every malformed message is an InputError naming the problem."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from forwardpass.errors import DTypeError, ForwardpassError, InputError, ShapeError
from forwardpass.server import grpc_codec as codec
from forwardpass.server.proto import grpc_service_pb2 as pb
from forwardpass.server.types import InferResponse, RequestedOutput, Tensor

NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def raw_request(*tensors: tuple[str, str, list[int], bytes]) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, raw in tensors:
        message.inputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_input_contents.append(raw)
    return message


def decode_one(message: pb.ModelInferRequest) -> np.ndarray:
    return codec.decode_infer_request(message).inputs[0].data


def through_tritonclient(response: InferResponse) -> InferResult:
    """Our encoded response, parsed by tritonclient's own message class and result reader."""
    wire = codec.encode_infer_response(response).SerializeToString()
    return InferResult(service_pb2.ModelInferResponse.FromString(wire))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(NUMERIC)).flatmap(
        lambda name: hnp.arrays(NUMERIC[name], hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)).map(
            lambda array: (name, array)
        )
    )
)
def test_raw_numeric_tensors_round_trip_bit_exactly(case: tuple[str, np.ndarray]) -> None:
    datatype, array = case
    decoded = decode_one(raw_request(("x", datatype, list(array.shape), array.tobytes())))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()
    result = through_tritonclient(InferResponse("m", "1", [Tensor("y", datatype, array)]))
    assert result.as_numpy("y").tobytes() == array.tobytes()
    assert result.as_numpy("y").shape == array.shape


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=12) | st.text(max_size=6), min_size=0, max_size=6))
def test_bytes_tensors_read_what_tritonclient_serializes(elements: list[bytes | str]) -> None:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    raw = serialize_byte_tensor(array).item() if array.size else b""
    decoded = decode_one(raw_request(("text", "BYTES", [len(elements)], raw)))
    expected = [element.encode() if isinstance(element, str) else element for element in elements]
    assert list(decoded) == expected
    result = through_tritonclient(InferResponse("m", "1", [Tensor("out", "BYTES", array)]))
    assert list(result.as_numpy("out")) == expected


def test_strings_go_out_as_utf8_elements() -> None:
    labels = np.array([["0.9:3:cat", "ünïcode"]], dtype=object)
    message = codec.encode_infer_response(InferResponse("m", "1", [Tensor("top", "BYTES", labels)]))
    assert list(deserialize_bytes_tensor(message.raw_output_contents[0])) == [b"0.9:3:cat", "ünïcode".encode()]


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("FP32", "fp32_contents", [0.5, -1.25, 3.0, 4.0], np.float32),
        ("FP64", "fp64_contents", [0.1, 0.2, 0.3, 1e300], np.float64),
        ("INT8", "int_contents", [-128, 0, 5, 127], np.int8),
        ("INT32", "int_contents", [-(2**31), 0, 1, 2**31 - 1], np.int32),
        ("INT64", "int64_contents", [-(2**63), 0, 1, 2**63 - 1], np.int64),
        ("UINT16", "uint_contents", [0, 1, 2, 65535], np.uint16),
        ("UINT64", "uint64_contents", [0, 1, 2, 2**64 - 1], np.uint64),
        ("BOOL", "bool_contents", [True, False, False, True], np.bool_),
    ],
)
def test_typed_contents_decode_to_the_declared_dtype(datatype: str, field: str, values: list[Any], dtype: type) -> None:
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype=datatype, shape=[2, 2])
    getattr(tensor.contents, field).extend(values)
    decoded = decode_one(message)
    assert decoded.dtype == np.dtype(dtype) and decoded.shape == (2, 2)
    np.testing.assert_array_equal(decoded.ravel(), np.array(values, dtype=dtype))


def test_typed_bytes_contents_keep_each_element() -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="s", datatype="BYTES", shape=[1, 2]).contents.bytes_contents.extend([b"ab", b"cd"])
    decoded = decode_one(message)
    assert decoded.shape == (1, 2) and list(decoded.ravel()) == [b"ab", b"cd"]


def test_request_fields_and_requested_outputs_are_carried() -> None:
    message = raw_request(("x", "FP32", [1, 2], np.zeros(2, np.float32).tobytes()))
    message.id = "req-7"
    message.parameters["priority"].int64_param = 2
    message.parameters["sequence_start"].bool_param = True
    message.parameters["tag"].string_param = "a"
    message.outputs.add(name="probs").parameters["classification"].int64_param = 3
    message.outputs.add(name="logits")
    request = codec.decode_infer_request(message)
    assert request.id == "req-7"
    assert request.parameters == {"priority": 2, "sequence_start": True, "tag": "a"}
    assert request.outputs == [RequestedOutput("probs", True, 3), RequestedOutput("logits", True, 0)]
    assert codec.decode_infer_request(raw_request()).outputs is None


def test_response_carries_names_versions_ids_and_parameters() -> None:
    response = InferResponse(
        "m", "2", [Tensor("y", "INT64", np.arange(6).reshape(2, 3), {"note": "x"})], "req-1", {"batched": True}
    )
    message = codec.encode_infer_response(response)
    assert (message.model_name, message.model_version, message.id) == ("m", "2", "req-1")
    assert message.parameters["batched"].bool_param is True
    assert message.outputs[0].parameters["note"].string_param == "x"
    assert list(message.outputs[0].shape) == [2, 3]


def test_outputs_are_sent_in_their_declared_datatype() -> None:
    result = through_tritonclient(InferResponse("m", "1", [Tensor("y", "FP32", np.array([0.5, 1.5], np.float64))]))
    assert result.as_numpy("y").dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("y"), [0.5, 1.5])


BAD_REQUESTS = [
    (raw_request(("x", "FP32", [2, 2], b"\0" * 12)), InputError, "hold 12 bytes; shape and FP32 need 16"),
    (raw_request(("x", "FP42", [1], b"\0" * 4)), DTypeError, "unsupported datatype 'FP42'"),
    (raw_request(("x", "BF16", [1], b"\0" * 2)), DTypeError, "unsupported datatype 'BF16'"),
    (raw_request(("x", "float32", [1], b"\0" * 4)), DTypeError, "unsupported datatype 'float32'"),
    (raw_request(("x", "FP32", [-1, 4], b"\0" * 16)), ShapeError, "negative dimension"),
    (raw_request(("x", "FP32", [1] * 70, b"\0" * 4)), ShapeError, "is not valid"),
    (raw_request(("x", "FP32", [2**40, 2**40], b"\0" * 4)), InputError, "hold 4 bytes"),
    (raw_request(("x", "FP32", [1], b"\0" * 4), ("x", "FP32", [1], b"\0" * 4)), InputError, "more than once"),
    (raw_request(("s", "BYTES", [2], b"\x02\0\0\0ab\x05\0\0\0abc")), InputError, "past the end"),
    (raw_request(("s", "BYTES", [1], b"\x02\0\0\0abXX")), InputError, "needs 1 BYTES elements, the data holds more"),
    (raw_request(("s", "BYTES", [3], b"\x00\0\0\0\x00\0\0\0")), ShapeError, "needs 3 BYTES elements"),
    (raw_request(("s", "BYTES", [2**50], b"\x00\0\0\0")), ShapeError, "the data holds 1"),
]


@pytest.mark.parametrize(("message", "error", "words"), BAD_REQUESTS, ids=[words for _, _, words in BAD_REQUESTS])
def test_malformed_raw_inputs_are_input_errors_naming_the_tensor(
    message: pb.ModelInferRequest, error: type[InputError], words: str
) -> None:
    with pytest.raises(error, match=words) as caught:
        codec.decode_infer_request(message)
    assert "'x'" in str(caught.value) or "'s'" in str(caught.value)
    assert caught.value.grpc_code == "INVALID_ARGUMENT"


def test_structural_mistakes_are_input_errors() -> None:
    message = raw_request(("x", "FP32", [1], b"\0" * 4))
    message.inputs.add(name="y", datatype="FP32", shape=[1])
    with pytest.raises(InputError, match="raw_input_contents has 1 entries for 2 inputs"):
        codec.decode_infer_request(message)

    both = raw_request(("x", "FP32", [1], b"\0" * 4))
    both.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InputError, match="both typed contents and raw"):
        codec.decode_infer_request(both)

    empty = pb.ModelInferRequest(model_name="m")
    empty.inputs.add(name="x", datatype="FP32", shape=[3])
    with pytest.raises(InputError, match="'x' has no data"):
        codec.decode_infer_request(empty)

    wrong_field = pb.ModelInferRequest(model_name="m")
    wrong_field.inputs.add(name="x", datatype="FP32", shape=[2]).contents.int_contents.extend([1, 2])
    with pytest.raises(InputError, match="fp32_contents holds 0 values; its shape needs 2"):
        codec.decode_infer_request(wrong_field)

    overflow = pb.ModelInferRequest(model_name="m")
    overflow.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    with pytest.raises(InputError, match="outside the range of INT8"):
        codec.decode_infer_request(overflow)

    half = pb.ModelInferRequest(model_name="m")
    half.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InputError, match="FP16 has no typed contents field"):
        codec.decode_infer_request(half)

    shared = raw_request(("x", "FP32", [1], b"\0" * 4))
    shared.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(InputError, match="shared memory is not supported"):
        codec.decode_infer_request(shared)

    negative_top_k = raw_request(("x", "FP32", [1], b"\0" * 4))
    negative_top_k.outputs.add(name="y").parameters["classification"].int64_param = -1
    with pytest.raises(InputError, match="classification must be a non-negative integer"):
        codec.decode_infer_request(negative_top_k)


def test_zero_element_tensors_need_no_data() -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[0, 4])
    assert decode_one(message).shape == (0, 4)


TENSOR = st.builds(
    lambda name, datatype, shape, raw, typed: (name, datatype, shape, raw, typed),
    st.sampled_from(["x", "s", ""]),
    st.sampled_from([*NUMERIC, "BYTES", "BF16", "FP8", ""]),
    st.lists(st.integers(-3, 2**62), max_size=5) | st.lists(st.integers(0, 4), max_size=5),
    st.none() | st.binary(max_size=64),
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(TENSOR, max_size=3), st.booleans())
def test_arbitrary_messages_decode_or_raise_only_input_errors(
    tensors: list[tuple[Any, ...]], raw_for_all: bool
) -> None:
    message = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, raw, typed in tensors:
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        tensor.contents.int_contents.extend(typed)
        if raw is not None and raw_for_all:
            message.raw_input_contents.append(raw)
    try:
        request = codec.decode_infer_request(message)
    except InputError:
        return
    for tensor, sent in zip(request.inputs, message.inputs, strict=True):
        assert list(tensor.data.shape) == list(sent.shape)


def test_server_side_documents_convert_to_the_proto_messages() -> None:
    config = codec.encode_model_config(
        {
            "name": "tiny",
            "platform": "onnxruntime_onnx",
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
            "dynamic_batching": {"preferred_batch_size": [4], "max_queue_delay_microseconds": 100},
            "a_field_triton_does_not_have": {"nested": 1},
        }
    ).config
    assert (config.name, config.max_batch_size, list(config.input[0].dims)) == ("tiny", 8, [4])
    assert config.dynamic_batching.max_queue_delay_microseconds == 100

    statistics = codec.encode_model_statistics(
        {"model_stats": [{"name": "tiny", "version": "1", "inference_count": 5, "inference_stats": {}}]}
    )
    assert statistics.model_stats[0].inference_count == 5

    metadata = codec.encode_model_metadata(
        {"name": "tiny", "versions": [1, "2"], "platform": "onnxruntime_onnx", "inputs": [], "outputs": []}
    )
    assert list(metadata.versions) == ["1", "2"]

    index = codec.encode_repository_index(
        [{"name": "a", "version": 1, "state": "READY"}, {"name": "b", "state": "UNAVAILABLE", "reason": "boom"}],
        ready_only=True,
    )
    assert [(model.name, model.version) for model in index.models] == [("a", "1")]

    with pytest.raises(ForwardpassError, match="model configuration does not fit") as caught:
        codec.encode_model_config({"max_batch_size": "many"})
    assert caught.value.grpc_code == "INTERNAL"
