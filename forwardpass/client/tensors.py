"""numpy arrays ↔ KServe V2 tensors on the client side: datatypes from `forwardpass.tensor`, BYTES elements and the
binary tensor data layout from the server's own codec, so both ends read and write the same bytes.

Inputs given as Python values (nested lists, numbers) take the model's declared datatype (`InputTypes`, from its
metadata, read once per client): `[[0.1, 0.2]]` goes as FP32 to an FP32 input, not as the FP64 numpy would make it.
A numpy array goes as its own dtype, the caller's choice (the server refuses one that does not match, naming both).

Outputs come back as numpy arrays of their V2 datatype; BYTES outputs as object arrays of `bytes` (as tritonclient
gives them), whether they travelled as JSON or binary. Arrays decoded from binary data are read-only views of the
answer's bytes (no copy); `array.copy()` gives a writable one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from forwardpass.errors import DTypeError, ForwardpassError, InputError, ShapeError
from forwardpass.server.codec import (
    decode_binary_tensor,
    decode_json,
    encode_bytes_elements,
    encode_json,
    json_numbers,
)
from forwardpass.tensor import DataType

__all__ = [
    "GivenInputs",
    "InputTypes",
    "Inputs",
    "as_tensor",
    "decode_http_response",
    "encode_http_request",
    "from_raw",
    "to_raw",
]

Inputs = Mapping[str, Any]  # input name → array-like (numpy array, nested lists, strings for BYTES)
# What `infer` takes: Inputs, or the values of a model's only input alone
GivenInputs = Inputs | Sequence[Any] | np.ndarray
_Declared = dict[str, DataType]  # a model's input name → its V2 datatype


class InputTypes:
    """Each model's declared input datatypes, read from its metadata on the first call that needs them and kept for
    the client's life (a model reloaded with other datatypes needs a new client)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str | None], _Declared] = {}

    def typed(
        self, model: str, version: str | int | None, inputs: GivenInputs, metadata: Callable[[], Mapping[str, Any]]
    ) -> Inputs:
        """`inputs` with Python values in the model's datatypes; `metadata()` is called only if they need it."""
        if not _needs_types(inputs):
            return inputs  # type: ignore[return-value]  # _needs_types: a mapping of numpy arrays
        key = (model, None if version is None else str(version))
        if key not in self._known:
            self._known[key] = _declared(metadata())
        return _typed(model, inputs, self._known[key])

    async def typed_async(
        self,
        model: str,
        version: str | int | None,
        inputs: GivenInputs,
        metadata: Callable[[], Awaitable[Mapping[str, Any]]],
    ) -> Inputs:
        key = (model, None if version is None else str(version))
        if _needs_types(inputs) and key not in self._known:
            self._known[key] = _declared(await metadata())
        return self.typed(model, version, inputs, lambda: {})  # known now: metadata is not asked again


def _needs_types(inputs: GivenInputs) -> bool:
    if not isinstance(inputs, Mapping):
        return True
    return any(not isinstance(value, np.ndarray) for value in inputs.values())


def _declared(metadata: Mapping[str, Any]) -> _Declared:
    found = {}
    for tensor in metadata.get("inputs", ()):
        member = DataType.__members__.get(tensor.get("datatype", ""))
        if member is not None:
            found[tensor["name"]] = member
    return found


def _typed(model: str, inputs: GivenInputs, declared: _Declared) -> Inputs:
    if not isinstance(inputs, Mapping):
        if len(declared) != 1:
            raise InputError(f"model '{model}' takes inputs {sorted(declared)}: pass a mapping of input name → values")
        inputs = {next(iter(declared)): inputs}
    return {name: _cast(name, value, declared.get(name)) for name, value in inputs.items()}


def _cast(name: str, value: object, datatype: DataType | None) -> object:
    """A Python value as an array of `datatype`; a numpy array, and what has no declared numeric type, as given
    (the server names any mismatch). Integers must keep their values: 300 is no UINT8."""
    if isinstance(value, np.ndarray) or datatype in (None, DataType.BYTES) or datatype.numpy_dtype is None:
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return value  # not rectangular: as_tensor says so
    if array.dtype.kind not in "biuf":
        return value
    cast = array.astype(datatype.numpy_dtype)
    if datatype.numpy_dtype.kind in "biu" and not np.array_equal(cast, array):
        raise DTypeError(f"input '{name}': the values do not all fit the model's {datatype.name}")
    return cast


def as_tensor(name: str, value: object) -> tuple[DataType, np.ndarray]:
    """An input as (V2 datatype, numpy array); strings and bytes become BYTES."""
    try:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"input '{name}': not a rectangular array ({exc})") from None
    if array.dtype.kind in "SUO":
        return DataType.BYTES, array
    try:
        return DataType.from_numpy(array.dtype), array
    except DTypeError:
        supported = ", ".join(d.numpy_dtype.name for d in DataType if d.numpy_dtype is not None)
        raise DTypeError(
            f"input '{name}': numpy {array.dtype.name} has no V2 datatype; use one of {supported}"
        ) from None


def to_raw(datatype: DataType, array: np.ndarray) -> bytes:
    """The V2 binary layout: little-endian values, or BYTES elements each after a 4-byte little-endian length."""
    if datatype is DataType.BYTES:
        return encode_bytes_elements(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """An output's binary data, read by the server's own decoder; bytes that do not fit are a malformed answer."""
    try:
        return decode_binary_tensor(name, _datatype(name, datatype), list(shape), raw, role="output")
    except InputError as exc:  # the decoder's ShapeError, or the BYTES layout check
        raise _malformed(f"{type(exc).__name__}: {exc}") from None


def encode_http_request(
    inputs: Inputs,
    outputs: Sequence[str] | None,
    binary: bool,
    classification: int,
    parameters: Mapping[str, Any],
) -> tuple[bytes, int | None]:
    """A V2 infer body and, with `binary`, the length of its JSON header (the Inference-Header-Content-Length)."""
    entries = []
    chunks: list[bytes] = []
    for name, value in inputs.items():
        datatype, array = as_tensor(name, value)
        entry: dict[str, Any] = {"name": name, "datatype": datatype.name, "shape": list(array.shape)}
        if binary:
            raw = to_raw(datatype, array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(name, datatype, array)
        entries.append(entry)
    document: dict[str, Any] = {"inputs": entries}
    request_parameters = dict(parameters)
    if outputs is not None or classification:
        if outputs is None:
            raise InputError("classification needs the outputs to classify: pass outputs=[...] too")
        output_parameters: dict[str, Any] = {"binary_data": binary}
        if classification:
            output_parameters["classification"] = classification
        document["outputs"] = [{"name": name, "parameters": output_parameters} for name in outputs]
    elif binary:
        request_parameters["binary_data_output"] = True
    if request_parameters:
        document["parameters"] = request_parameters
    header = encode_json(document)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def decode_http_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """A V2 infer answer (JSON, or a JSON header of `header_length` bytes and binary tensors) → arrays by name."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise _malformed(f"Inference-Header-Content-Length {header_length} is outside the {len(body)}-byte body")
    try:
        header = body if header_length is None else body[:header_length]
        document = decode_json(header, "the server's answer", special_floats=True)
        entries = document["outputs"]
        binary = memoryview(body)[header_length or len(body) :]
        offset = 0
        results = {}
        for entry in entries:
            name, datatype, shape = entry["name"], entry["datatype"], entry["shape"]
            size = (entry.get("parameters") or {}).get("binary_data_size")
            if size is None:
                results[name] = _from_json(name, datatype, shape, entry["data"])
                continue
            if offset + size > len(binary):
                raise _malformed(f"output '{name}' of {size} bytes goes past the end of the answer")
            results[name] = from_raw(name, datatype, shape, binary[offset : offset + size])
            offset += size
    except (KeyError, TypeError, ValueError, InputError) as exc:  # InputError: the codec's BYTES layout checks
        raise _malformed(f"{type(exc).__name__}: {exc}") from None
    return results


def _json_data(name: str, datatype: DataType, array: np.ndarray) -> object:
    if datatype is not DataType.BYTES:
        return json_numbers(array)
    try:
        return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in array.reshape(-1)]
    except UnicodeDecodeError:
        raise InputError(
            f"input '{name}': a BYTES element is not UTF-8 text, which JSON cannot carry; send binary"
        ) from None


def _from_json(name: str, datatype: str, shape: Sequence[int], data: Sequence[Any]) -> np.ndarray:
    dtype = _datatype(name, datatype)
    if dtype is DataType.BYTES:
        array = np.empty(len(data), dtype=object)
        array[:] = [value.encode("utf-8") for value in data]
        return array.reshape(shape)
    return np.asarray(data, dtype=dtype.numpy_dtype).reshape(shape)


def _datatype(name: str, datatype: str) -> DataType:
    member = DataType.__members__.get(datatype)
    if member is None or member.numpy_dtype is None:
        raise _malformed(f"output '{name}' has datatype '{datatype}', which numpy cannot hold")
    return member


def _malformed(problem: str) -> ForwardpassError:
    return ForwardpassError(f"the server's answer is not a valid V2 inference response: {problem}")
