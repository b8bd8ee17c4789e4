"""KServe V2 protobuf messages ↔ the data plane's types: the gRPC wire format and nothing else.

Inputs come as `raw_input_contents` (little-endian bytes; BYTES elements each prefixed by a 4-byte little-endian
length, as tritonclient sends by default) or as typed `contents`. Outputs always go out as `raw_output_contents`,
one entry per output in order, as Triton answers. Every malformed message raises an InputError naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from forwardpass.errors import DTypeError, ForwardpassError, InputError, ShapeError
from forwardpass.server.codec import checked_booleans, decode_bytes_elements, encode_bytes_elements
from forwardpass.server.proto import grpc_service_pb2 as pb
from forwardpass.server.proto import model_config_pb2
from forwardpass.server.types import InferRequest, InferResponse, RequestedOutput, Tensor
from forwardpass.tensor import DataType

if TYPE_CHECKING:
    from forwardpass.server.limits import RequestLimits

__all__ = [
    "decode_infer_request",
    "decode_parameters",
    "encode_infer_response",
    "encode_model_config",
    "encode_model_metadata",
    "encode_model_statistics",
    "encode_repository_index",
    "encode_server_metadata",
]

# The typed `contents` field that carries each datatype (FP16 has none: it travels as raw bytes only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# Each V2 datatype numpy has, with the little-endian dtype of its wire bytes: looked up three times per tensor, so
# built once (Enum.__members__ and newbyteorder each cost more than the lookup).
WIRE_DATATYPES = {
    member.name: (member, member.numpy_dtype.newbyteorder("<")) for member in DataType if member.numpy_dtype is not None
}
Message = TypeVar("Message", bound=ProtoMessage)


def decode_infer_request(message: pb.ModelInferRequest, limits: RequestLimits | None = None) -> InferRequest:
    """A ModelInferRequest → InferRequest with every input as a numpy array of its declared datatype and shape.
    With the model's `limits`, each tensor's header is checked against them before its data is decoded."""
    raw = message.raw_input_contents
    if limits is not None:
        limits.check_count(len(message.inputs))
    if raw and len(raw) != len(message.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; give one each")
    inputs: list[Tensor] = []
    seen: set[str] = set()
    for index, tensor in enumerate(message.inputs):
        if tensor.name in seen:
            raise InputError(f"input '{tensor.name}' is given more than once")
        seen.add(tensor.name)
        parameters = decode_parameters(tensor.parameters) if tensor.parameters else {}
        if "shared_memory_region" in parameters:
            raise InputError(f"input '{tensor.name}': shared memory is not supported; send the data in the request")
        if limits is not None:
            _datatype(tensor.name, tensor.datatype)  # a name that is no V2 datatype is refused as such first
            limits.check(tensor.name, tensor.datatype, list(tensor.shape))
        data = _decode_input(tensor, raw[index] if raw else None)
        inputs.append(Tensor(tensor.name, tensor.datatype, data, parameters))
    if limits is not None:
        limits.check_outputs(len(message.outputs))
    outputs = [_decode_requested_output(output) for output in message.outputs] or None
    parameters = decode_parameters(message.parameters) if message.parameters else {}
    return InferRequest(inputs, outputs, message.id or None, parameters)


def _decode_input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    name = tensor.name
    datatype, dtype = _datatype(name, tensor.datatype)
    shape = list(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise ShapeError(f"input '{name}': shape {shape} has a negative dimension")
    count = math.prod(shape)
    typed = tensor.contents.ByteSize() > 0
    if raw is not None and typed:
        raise InputError(f"input '{name}' has both typed contents and raw_input_contents; give one")
    if raw is not None:
        flat = _decode_raw(name, datatype, dtype, raw, count)
    elif typed:
        flat = _decode_contents(name, datatype, dtype, tensor.contents, count)
    elif count == 0:
        flat = np.empty(0, dtype=dtype)
    else:
        raise InputError(f"input '{name}' has no data; give contents or raw_input_contents")
    try:
        return flat.reshape(shape)
    except ValueError as exc:  # numpy's own limits: more than 64 dimensions, a dimension past intp
        raise ShapeError(f"input '{name}': shape {shape} is not valid here ({exc})") from None


def _datatype(name: str, datatype: str) -> tuple[DataType, np.dtype]:
    """The V2 datatype and its little-endian numpy dtype; BF16, which numpy lacks, is refused."""
    found = WIRE_DATATYPES.get(datatype)
    if found is None:
        raise DTypeError(f"tensor '{name}': unsupported datatype '{datatype}'; use one of {', '.join(WIRE_DATATYPES)}")
    return found


def _decode_raw(name: str, datatype: DataType, dtype: np.dtype, raw: bytes, count: int) -> np.ndarray:
    if datatype is DataType.BYTES:
        elements = decode_bytes_elements(raw, name, count)
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array
    if len(raw) != count * dtype.itemsize:
        raise InputError(
            f"input '{name}': raw contents hold {len(raw)} bytes; shape and {datatype.name} need "
            f"{count * dtype.itemsize} ({count} elements of {dtype.itemsize} bytes)"
        )
    return checked_booleans(name, np.frombuffer(raw, dtype=dtype))


def _decode_contents(
    name: str, datatype: DataType, dtype: np.dtype, contents: pb.InferTensorContents, count: int
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype.name)
    if field is None:
        raise InputError(f"input '{name}': {datatype.name} has no typed contents field; send raw_input_contents")
    values = getattr(contents, field)
    if len(values) != count:
        raise InputError(f"input '{name}': {field} holds {len(values)} values; its shape needs {count}")
    if datatype is DataType.BYTES:
        elements = np.empty(count, dtype=object)
        elements[:] = list(values)
        return elements
    if dtype.kind not in "iu" or field in ("int64_contents", "uint64_contents"):
        return np.array(values, dtype=dtype)
    # int_contents and uint_contents are 32 bits wide: values must fit the narrower declared type.
    wide = np.array(values, dtype=np.int64)
    limits = np.iinfo(dtype)
    if wide.size and (wide.min() < limits.min or wide.max() > limits.max):
        raise InputError(f"input '{name}': {field} has values outside the range of {datatype.name}")
    return wide.astype(dtype)


def _decode_requested_output(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    parameters = decode_parameters(output.parameters)
    if "shared_memory_region" in parameters:
        raise InputError(f"output '{output.name}': shared memory is not supported")
    classification = parameters.get("classification", 0)
    if isinstance(classification, bool) or not isinstance(classification, int) or classification < 0:
        raise InputError(f"output '{output.name}': classification must be a non-negative integer count")
    return RequestedOutput(output.name, binary=True, classification=classification)


def decode_parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            decoded[key] = getattr(parameter, choice)
    return decoded


def _encode_parameters(values: Mapping[str, Any], target: MutableMapping[str, pb.InferParameter]) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        else:
            target[key].string_param = str(value)


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    if response.parameters:  # reaching an empty map of the message costs more than the check
        _encode_parameters(response.parameters, message.parameters)
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters:
            _encode_parameters(tensor.parameters, output.parameters)
        message.raw_output_contents.append(_raw_contents(tensor))
    return message


def _raw_contents(tensor: Tensor) -> bytes:
    datatype, dtype = _datatype(tensor.name, tensor.datatype)
    if datatype is DataType.BYTES:
        return encode_bytes_elements(tensor.data)
    return tensor.data.astype(dtype, copy=False).tobytes()


def encode_server_metadata(metadata: Mapping[str, Any]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=metadata["name"], version=str(metadata["version"]), extensions=list(metadata.get("extensions", []))
    )


def encode_model_metadata(metadata: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """The V2 JSON metadata (name, versions, platform, inputs, outputs) as its protobuf message."""

    def tensors(specs: list[Mapping[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
            for spec in specs
        ]

    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=[str(version) for version in metadata.get("versions", [])],
        platform=metadata.get("platform", ""),
        inputs=tensors(metadata.get("inputs", [])),
        outputs=tensors(metadata.get("outputs", [])),
    )


def encode_model_config(config: Mapping[str, Any]) -> pb.ModelConfigResponse:
    """Triton's model configuration in its JSON form → ModelConfigResponse; fields the proto lacks are dropped."""
    return pb.ModelConfigResponse(config=_parse(config, model_config_pb2.ModelConfig(), "model configuration"))


def encode_model_statistics(statistics: Mapping[str, Any]) -> pb.ModelStatisticsResponse:
    return _parse(statistics, pb.ModelStatisticsResponse(), "model statistics")


def _parse(data: Mapping[str, Any], message: Message, what: str) -> Message:
    try:
        parsed: Message = json_format.ParseDict(data, message, ignore_unknown_fields=True)
        return parsed
    except json_format.ParseError as exc:
        # The data plane built this dict: a mismatch is the server's fault, not the caller's.
        raise ForwardpassError(f"{what} does not fit Triton's protobuf message: {exc}") from None


def encode_repository_index(entries: Sequence[Mapping[str, Any]], ready_only: bool) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=entry["name"],
                version=str(entry.get("version") or ""),
                state=entry.get("state", ""),
                reason=entry.get("reason") or "",
            )
            for entry in entries
            if not ready_only or entry.get("state") == "READY"
        ]
    )
