"""HTTP bodies ↔ the data plane's types: KServe V2 JSON, its binary tensor data extension, TF Serving's REST API.

Binary tensor data: the body is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw
tensors, in input (or output) order, each announced by `parameters.binary_data_size`. Fixed-size types are
little-endian; BYTES elements each carry a 4-byte little-endian length prefix. Every malformed body raises an
InputError that names the tensor and the problem; nothing here allocates more than the body declares.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson
import simdjson

from forwardpass.errors import DTypeError, InputError, ShapeError
from forwardpass.server.types import InferRequest, InferResponse, RequestedOutput, Tensor
from forwardpass.tensor import DataType, TensorSpec

if TYPE_CHECKING:
    from forwardpass.server.limits import RequestLimits

__all__ = [
    "checked_booleans",
    "decode_binary_tensor",
    "decode_bytes_elements",
    "decode_infer_request",
    "decode_json",
    "decode_tf_request",
    "encode_bytes_elements",
    "encode_infer_response",
    "encode_json",
    "encode_tf_response",
    "json_numbers",
]

_LENGTH = struct.Struct("<I")
# Which JSON values (numpy kinds after np.asarray) each family of datatypes accepts.
_KINDS = {"b": ("b", "booleans"), "i": ("iu", "integers"), "u": ("iu", "integers"), "f": ("iuf", "numbers")}
# JSON bodies over this size are parsed by simdjson, which reads an input's list of numbers straight into an array:
# orjson makes a Python number of each (150k of them: ~11 ms against ~4 ms); for small bodies orjson is faster.
LARGE_JSON_BYTES = 64 * 1024
# The array an input's JSON numbers are read into, by the numpy kind of its datatype (simdjson's as_buffer types):
# float64 for floats, as np.asarray gives for JSON numbers; int64 or uint64 for integers, so that a fraction or an
# out-of-range value fails the fast path and the general one names it.
_BUFFER_OF_KIND: dict[str, tuple[Literal["d", "i", "u"], np.dtype]] = {
    "f": ("d", np.dtype(np.float64)),
    "i": ("i", np.dtype(np.int64)),
    "u": ("u", np.dtype(np.uint64)),
}


def decode_json(body: bytes, what: str = "request body", *, special_floats: bool = False) -> Any:
    """`body` parsed; InputError naming `what` when it is not JSON. With `special_floats`, the NaN, Infinity and
    -Infinity that Triton's V2 JSON carries (tritonclient writes them for a tensor sent without binary data, Triton
    reads and writes them) are read as those floats."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        special = bytes(body[exc.pos : exc.pos + 9]).lstrip(b"-").startswith((b"NaN", b"Infinity"))
        if special and special_floats:
            return _decode_with_special_floats(body, what)
        if special:
            raise InputError(f"{what}: JSON has no NaN or Infinity ({exc})") from None
        raise InputError(f"{what} is not valid JSON: {exc}") from None


def _decode_with_special_floats(body: bytes, what: str) -> Any:
    """The standard library's parser, which reads NaN, Infinity and -Infinity as Python does (and python-rapidjson):
    only for the bodies orjson refused for one of them, so the usual path keeps orjson's speed."""
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{what} is not valid JSON: {exc}") from None


def encode_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_infer_request(body: bytes, header_length: int | None, limits: RequestLimits | None = None) -> InferRequest:
    """A V2 infer request: JSON alone, or a JSON header of `header_length` bytes followed by binary tensors. With
    the model's `limits`, each tensor's header is checked against them before its data is decoded."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise InputError(f"Inference-Header-Content-Length {header_length} is outside the {len(body)}-byte body")
    text = body if header_length is None else body[:header_length]
    try:
        if header_length is None and len(body) > LARGE_JSON_BYTES:
            document = _decode_large_json(body)
        else:
            document = decode_json(text, "inference request header", special_floats=True)
    except InputError as exc:
        if header_length is None and not _utf8(body):  # a binary body without the header: "not valid UTF-8" alone
            hint = "a body with binary tensor data needs the Inference-Header-Content-Length header"
            raise InputError(f"{exc}; {hint}") from None
        raise
    booleans = b"true" in text or b"false" in text  # else no list needs looking through for one (microseconds)
    if not isinstance(document, dict):
        raise InputError(f"inference request must be a JSON object, got {type(document).__name__}")
    entries = document.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise InputError("inference request needs 'inputs': a non-empty list of tensors")
    if limits is not None:
        limits.check_count(len(entries))
    binary = memoryview(body)[header_length:] if header_length is not None else None
    offset = 0
    inputs = []
    for index, entry in enumerate(entries):
        name, dtype, shape, parameters = _tensor_header(entry, index)
        if limits is not None:
            limits.check(name, dtype.name, shape)
        size = parameters.get("binary_data_size")
        if size is None:
            if "data" not in entry:
                raise InputError(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
            data = entry["data"]
            if isinstance(data, simdjson.Array):  # a large body's list: read now that its header passed the limits
                data = _numbers(data, dtype)
            data = _from_json(name, dtype, shape, data, booleans)
        else:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InputError(f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}")
            if "data" in entry:  # two values for one tensor: answering either one is a guess
                raise InputError(f"input '{name}' has both 'data' and parameters.binary_data_size; give one")
            if binary is None:
                raise InputError(f"input '{name}' has binary_data_size but no Inference-Header-Content-Length header")
            if offset + size > len(binary):
                raise InputError(
                    f"input '{name}': binary_data_size {size} at offset {offset} goes past the end of the "
                    f"{len(binary)} bytes of binary data"
                )
            data = decode_binary_tensor(name, dtype, shape, binary[offset : offset + size])
            offset += size
        inputs.append(Tensor(name, dtype.name, data, parameters))
    if binary is not None and offset != len(binary):
        raise InputError(
            f"the body has {len(binary)} bytes of binary data but the inputs' binary_data_size add up to {offset}"
        )
    parameters = _parameters(document.get("parameters"), "request")
    requested = document.get("outputs")
    if limits is not None and isinstance(requested, list):
        limits.check_outputs(len(requested))
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):  # "true" or 1 was read as false: JSON answers, unannounced
        raise InputError(f"parameter 'binary_data_output' must be true or false, got {binary_output!r}")
    outputs = _requested_outputs(requested, binary_output)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"request 'id' must be a string, got {type(request_id).__name__}")
    return InferRequest(inputs, outputs, request_id, parameters)


def encode_infer_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The V2 response body and, when any output travels as binary data, the length of its JSON header."""
    binary_default = request.parameters.get("binary_data_output") is True
    binary_of = {output.name: output.binary for output in request.outputs or ()}
    entries = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.data.shape)}
        if binary_of.get(tensor.name, binary_default):
            raw = _to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(tensor.data)
        entries.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    document["outputs"] = entries
    header = encode_json(document)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def decode_tf_request(body: bytes, specs: dict[str, TensorSpec]) -> tuple[dict[str, np.ndarray], bool]:
    """TF Serving's predict body → (arrays by input name, whether it used the row format `instances`), for a model
    whose inputs are `specs`. A true or false for an input that is not BOOL is refused, as V2's JSON refuses it."""
    document = decode_json(body)
    booleans = b"true" in body or b"false" in body  # else no list needs looking through for one
    input_names = list(specs)

    def read(name: str, value: object) -> np.ndarray:
        spec = specs.get(name)  # None: an input the model lacks, which its validation names
        if booleans and spec is not None:
            _refuse_booleans(name, spec.dtype, value)
        return _tf_values(name, value)

    if not isinstance(document, dict):
        raise InputError(f"predict request must be a JSON object, got {type(document).__name__}")
    if ("instances" in document) == ("inputs" in document):
        raise InputError("a TF Serving predict request needs exactly one of 'instances' (rows) or 'inputs' (columns)")
    if "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise InputError("'instances' must be a non-empty list of rows")
        if isinstance(instances[0], dict):
            names = list(instances[0])
            if any(not isinstance(row, dict) or list(row) != names for row in instances):
                raise InputError(f"every instance must be an object with the same keys {names}")
            return {name: read(name, [row[name] for row in instances]) for name in names}, True
        return {_only_input(input_names): read(input_names[0], instances)}, True
    columns = document["inputs"]
    if isinstance(columns, dict):
        return {name: read(name, value) for name, value in columns.items()}, False
    return {_only_input(input_names): read(input_names[0], columns)}, False


def encode_tf_response(response: InferResponse, rows: bool) -> bytes:
    outputs = {tensor.name: _finite(tensor.name, tensor.data) for tensor in response.outputs}
    if rows:
        if len(outputs) == 1:
            return encode_json({"predictions": _to_nested(next(iter(outputs.values())))})
        counts = {value.shape[0] if value.ndim else -1 for value in outputs.values()}
        if len(counts) != 1 or -1 in counts:  # a row each would drop or mix values: min() cut the longer ones
            shapes = {name: list(value.shape) for name, value in outputs.items()}
            raise InputError(
                f"the outputs {shapes} hold no one row per instance; ask with 'inputs' (columns) for them whole"
            )
        rows_out = [{name: _to_nested(value[i, ...]) for name, value in outputs.items()} for i in range(counts.pop())]
        return encode_json({"predictions": rows_out})
    if len(outputs) == 1:
        return encode_json({"outputs": _to_nested(next(iter(outputs.values())))})
    return encode_json({"outputs": {name: _to_nested(value) for name, value in outputs.items()}})


def decode_bytes_elements(buffer: memoryview | bytes, name: str, count: int) -> list[bytes]:
    """BYTES tensor data: each element a 4-byte little-endian length then that many bytes; `count` of them (a
    ShapeError as soon as the data holds more or fewer: 16 M empty elements cost nothing when 8 are expected)."""
    elements: list[bytes] = []
    offset = 0
    end = len(buffer)
    while offset < end:
        if len(elements) == count:
            raise ShapeError(f"input '{name}': its shape needs {count} BYTES elements, the data holds more")
        if offset + 4 > end:
            raise InputError(f"input '{name}': BYTES data ends inside an element's 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += 4
        if offset + length > end:
            raise InputError(f"input '{name}': BYTES element of {length} bytes goes past the end of its data")
        elements.append(bytes(buffer[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise ShapeError(f"input '{name}': its shape needs {count} BYTES elements, the data holds {len(elements)}")
    return elements


def encode_bytes_elements(values: np.ndarray) -> bytes:
    parts = []
    for value in values.reshape(-1).tolist():
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _decode_large_json(body: bytes) -> Any:
    """A large V2 JSON body as `decode_json` gives it, except that each input's `data` list stays simdjson's: once
    the tensor's header has passed the model's limits, `_numbers` reads a list of numbers straight into an array."""
    try:
        document = simdjson.Parser().parse(body)  # one parser per body: a parser holds one document at a time
    except (ValueError, RuntimeError):  # not JSON, or JSON simdjson does not take (integers past 64 bits, nesting
        # past 1024, NaN): orjson reads it or says what is wrong
        return decode_json(body, "inference request header", special_floats=True)
    if not isinstance(document, simdjson.Object) or _repeats_a_key(document):
        return _plain(document)
    plain = {key: _plain(document[key]) for key in document if key != "inputs"}
    if "inputs" in document:
        inputs = document["inputs"]
        plain["inputs"] = (
            [_input_entry(entry) for entry in inputs] if isinstance(inputs, simdjson.Array) else _plain(inputs)
        )
    return plain


def _input_entry(entry: object) -> Any:
    if not isinstance(entry, simdjson.Object) or _repeats_a_key(entry):
        return _plain(entry)
    plain = {key: _plain(entry[key]) for key in entry if key != "data"}
    if "data" in entry:
        data = entry["data"]
        plain["data"] = data if isinstance(data, simdjson.Array) else _plain(data)  # a list: read by `_numbers`
    return plain


def _repeats_a_key(value: simdjson.Object) -> bool:
    """Indexing finds a repeated key's first value; orjson keeps the last: such an object is read whole instead."""
    keys = list(value.keys())
    return len(set(keys)) != len(keys)


def _numbers(data: simdjson.Array, dtype: DataType) -> Any:
    """A large body's list of numbers as an array, read by simdjson without a Python object per number; any other
    list (of other values, or nested) as the Python list `_from_json` checks."""
    buffer = _BUFFER_OF_KIND.get(dtype.numpy_dtype.kind) if dtype.numpy_dtype is not None else None
    if buffer is None:
        return data.as_list()
    of_type, numbers_dtype = buffer
    try:
        numbers = np.frombuffer(data.as_buffer(of_type=of_type), numbers_dtype)
    except (TypeError, ValueError):  # not all numbers, or not of this kind: the general path says which
        return data.as_list()
    # as_buffer flattens nested lists: as many numbers as elements means a flat list (nested ones keep the general
    # path's rectangular check; only empty lists inside one could balance the count: read as its numbers in order)
    return numbers if len(numbers) == len(data) else data.as_list()


def _plain(value: object) -> Any:
    """A simdjson value as the Python value orjson gives."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _tensor_header(entry: object, index: int) -> tuple[str, DataType, list[int], dict[str, Any]]:
    if not isinstance(entry, dict):
        raise InputError(f"inputs[{index}] must be an object with name, datatype, shape and data")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"inputs[{index}] needs a 'name' string")
    datatype = entry.get("datatype")
    if not isinstance(datatype, str):
        raise DTypeError(f"input '{name}' needs a 'datatype' string such as \"FP32\"")
    dtype = DataType.from_name(datatype)
    shape = entry.get("shape")
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise ShapeError(f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}")
    return name, dtype, shape, _parameters(entry.get("parameters"), f"input '{name}'")


def _parameters(value: object, owner: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{owner}: 'parameters' must be an object, got {type(value).__name__}")
    return value


def _requested_outputs(value: object, binary_default: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputError(f"'outputs' must be a list of {{\"name\": ...}} objects, got {type(value).__name__}")
    outputs = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError(f"outputs[{index}] must be an object with a 'name' string")
        parameters = _parameters(entry.get("parameters"), f"output '{entry['name']}'")
        binary = parameters.get("binary_data", binary_default)
        classification = parameters.get("classification", 0)
        if not isinstance(binary, bool):
            raise InputError(f"output '{entry['name']}': binary_data must be true or false, got {binary!r}")
        if isinstance(classification, bool) or not isinstance(classification, int) or classification < 0:
            raise InputError(
                f"output '{entry['name']}': classification must be a non-negative integer, got {classification!r}"
            )
        outputs.append(RequestedOutput(entry["name"], binary, classification))
    return outputs or None  # none asked for: every output, as KServe V2 says and gRPC (no [] there) does


def decode_binary_tensor(
    name: str, dtype: DataType, shape: list[int], buffer: memoryview | bytes, role: str = "input"
) -> np.ndarray:
    """One tensor's bytes in the binary data extension's layout → a read-only array of `shape` (no copy for numbers);
    ShapeError when the bytes do not fit the shape. `role` names the tensor in errors: "input" or "output"."""
    count = math.prod(shape)
    if dtype is DataType.BYTES:
        elements = decode_bytes_elements(buffer, name, count)
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    numpy_dtype = _numpy_dtype(name, dtype)
    expected = count * numpy_dtype.itemsize
    if len(buffer) != expected:
        raise ShapeError(
            f"{role} '{name}': {dtype.name} shape {shape} needs {expected} bytes, binary_data_size is {len(buffer)}"
        )
    try:
        array = np.frombuffer(buffer, dtype=numpy_dtype.newbyteorder("<")).reshape(shape)
    except ValueError as exc:  # numpy's own limits: more than 64 dimensions, a dimension past intp
        raise ShapeError(f"{role} '{name}': shape {shape} is not valid here ({exc})"[:200]) from None
    return checked_booleans(name, array, role)


def checked_booleans(name: str, array: np.ndarray, role: str = "input") -> np.ndarray:
    """`array` itself, refused when it is BOOL read from bytes other than 0 and 1: numpy takes the byte 2 for True,
    but ONNX Runtime's kernels read the byte (Not gives True for it, Cast gives 2), a wrong answer."""
    if array.dtype.kind == "b" and array.size:
        largest = int(array.view(np.uint8).max())
        if largest > 1:
            raise DTypeError(f"{role} '{name}': BOOL bytes must be 0 (false) or 1 (true), got {largest}")
    return array


def _from_json(name: str, dtype: DataType, shape: list[int], data: object, booleans: bool) -> np.ndarray:
    """An input's JSON `data` as an array of `shape`; `booleans`: the body has a true or false somewhere."""
    count = math.prod(shape)
    if dtype is DataType.BYTES:
        return _strings(name, data, shape, count)
    numpy_dtype = _numpy_dtype(name, dtype)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise ShapeError(f"input '{name}': 'data' is not a rectangular array of numbers") from None
    if array.size != count:
        raise ShapeError(f"input '{name}': shape {shape} needs {count} values, 'data' holds {array.size}")
    if count:
        accepted, described = _KINDS[numpy_dtype.kind]
        if array.dtype.kind not in accepted and numpy_dtype.kind in "iu" and array.dtype.kind in "fO":
            array = _wide_integers(name, dtype, data, array)
        if array.dtype.kind not in accepted:
            raise DTypeError(f"input '{name}': {dtype.name} data must be {described}, got {_describe(array)}")
        if booleans:
            _refuse_booleans(name, dtype, data)
        if numpy_dtype.kind in "iu":
            limits = np.iinfo(numpy_dtype)
            if array.min() < limits.min or array.max() > limits.max:
                raise DTypeError(f"input '{name}': a value is outside the {dtype.name} range")
    with np.errstate(over="ignore"):
        cast = array.astype(numpy_dtype, copy=False)
    # an infinity the JSON did not write (Infinity) is a number past the datatype's range (1e39 as FP32), refused as
    # the Python API and TF Serving's route refuse it, not answered for as inf
    if numpy_dtype.kind == "f" and (np.isinf(cast) & ~np.isinf(array)).any():
        raise DTypeError(f"input '{name}': values beyond the range of {dtype.name}")
    try:
        return cast.reshape(shape)
    except ValueError as exc:  # numpy's own limits: more than 64 dimensions, a dimension past intp
        raise ShapeError(f"input '{name}': shape {shape} is not valid here ({exc})"[:200]) from None


def _utf8(body: bytes) -> bool:
    try:
        bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _wide_integers(name: str, dtype: DataType, data: object, array: np.ndarray) -> np.ndarray:
    """JSON integers that numpy read as floats or objects (one past int64 beside small ones; past 64 bits, which
    orjson reads as floats): exactly, in the integer `dtype`, or refused as outside its range; `array` itself when
    the data holds anything else (fractions, strings), which the caller names."""
    values = np.asarray(data, dtype=object)
    flat = values.reshape(-1).tolist()
    if not all(type(value) in (int, float) for value in flat):
        return array
    limits = np.iinfo(dtype.numpy_dtype)
    if any(value < limits.min or value > limits.max for value in flat):
        raise DTypeError(f"input '{name}': a value is outside the {dtype.name} range")
    if not all(type(value) is int for value in flat):
        return array
    return np.array(flat, dtype=dtype.numpy_dtype).reshape(values.shape)


def _refuse_booleans(name: str, dtype: DataType, data: object) -> None:
    """Refuses JSON true or false in the data of an input that is not BOOL: numpy reads them among numbers as 1 and
    0, a list of them alone casts to any number type, and among strings they read as 'True': each a type confusion
    answered as if the client had sent that."""
    if dtype is not DataType.BOOL and _holds_a_boolean(data):
        if dtype is DataType.BYTES:
            described = "strings"
        else:  # BF16 has no numpy type: its values are numbers
            described = _KINDS[dtype.numpy_dtype.kind if dtype.numpy_dtype is not None else "f"][1]
        raise DTypeError(f"input '{name}': {dtype.name} data must be {described}, got a boolean among them")


def _holds_a_boolean(data: object) -> bool:
    """Whether JSON data (lists, nested or not) holds true or false: among numbers numpy reads them as 1 and 0. An
    array (a large body's numbers, read by simdjson) holds none."""
    lists = [data]
    while lists:
        value = lists.pop()
        if isinstance(value, bool):
            return True
        if isinstance(value, list):
            if value and isinstance(value[0], list):  # rows: np.asarray found them rectangular
                lists.extend(value)
            elif bool in map(type, value):
                return True
    return False


def _strings(name: str, data: object, shape: list[int], count: int) -> np.ndarray:
    flat: list[object] = []
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif isinstance(value, str):
            flat.append(value)
        else:
            raise DTypeError(f"input '{name}': BYTES data must be strings, got {type(value).__name__}")
    if len(flat) != count:
        raise ShapeError(f"input '{name}': shape {shape} needs {count} values, 'data' holds {len(flat)}")
    array = np.empty(count, dtype=object)
    array[:] = flat
    try:
        return array.reshape(shape)
    except ValueError as exc:
        raise ShapeError(f"input '{name}': shape {shape} is not valid here ({exc})"[:200]) from None


def _numpy_dtype(name: str, dtype: DataType) -> np.dtype:
    if dtype.numpy_dtype is None:
        raise DTypeError(f"input '{name}': {dtype.name} tensors are not supported over HTTP; send FP32 or FP16")
    return dtype.numpy_dtype


def _describe(array: np.ndarray) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers with fractions", "U": "strings"}.get(
        array.dtype.kind, "mixed or nested values"
    )


def _to_binary(tensor: Tensor) -> bytes:
    data = tensor.data
    if data.dtype.kind == "O":
        return encode_bytes_elements(data)
    return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()


def _to_json(data: np.ndarray) -> object:
    if data.dtype.kind in "OSU":
        return [_text(value) for value in data.reshape(-1).tolist()]
    return json_numbers(data)


def json_numbers(data: np.ndarray) -> object:
    """A numeric array as V2 JSON `data` (flat), for orjson to write. NaN, Infinity and -Infinity are written so,
    as Triton writes them and tritonclient reads them: orjson would write null, which comes back as NaN (an inf
    too)."""
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        return orjson.Fragment(json.dumps(data.reshape(-1).tolist()))
    return np.ascontiguousarray(data).reshape(-1)


def _finite(name: str, data: np.ndarray) -> np.ndarray:
    """`data`, refused when it holds NaN or infinity: JSON has neither, and orjson writes null, which clients read
    as NaN (an inf came back as NaN)."""
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        message = f"output '{name}' holds NaN or infinity, which JSON cannot carry"
        raise InputError(f"{message}; ask for it as V2 binary data (over HTTP), or use gRPC")
    return data


def _to_nested(data: np.ndarray) -> object:
    if data.dtype.kind in "OSU":
        return np.vectorize(_text, otypes=[object])(data).tolist()
    # a 0-d array (an instance's one value) as its scalar: ascontiguousarray made it [value]; item(), as orjson takes
    # no numpy.longlong (ONNX Runtime's int64) scalar
    return data.item() if data.ndim == 0 else np.ascontiguousarray(data)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _tf_values(name: str, value: object) -> np.ndarray:
    if _holds_b64(value):
        return _tf_binary_array(name, value)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise ShapeError(f"input '{name}': not a rectangular array") from None
    if array.dtype.kind == "U":
        return array.astype(object)
    if array.dtype.kind not in "biuf":
        raise DTypeError(f"input '{name}': values must be numbers or strings of one rectangular shape")
    return array


def _holds_b64(value: object) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, dict)


def _tf_binary_array(name: str, value: object) -> np.ndarray:
    """TF Serving's binary values, {"b64": "<base64>"} wherever a string may stand, as an object array of bytes."""
    leaves: list[bytes] = []

    def shape_of(node: object) -> object:
        if isinstance(node, list):
            return [shape_of(child) for child in node]
        if not (isinstance(node, dict) and node.keys() == {"b64"} and isinstance(node["b64"], str)):
            raise DTypeError(f'input \'{name}\': a binary value must be {{"b64": "<base64 text>"}}, got {node!r}'[:200])
        try:
            leaves.append(base64.b64decode(node["b64"], validate=True))
        except binascii.Error:
            raise InputError(f"input '{name}': a \"b64\" value is not valid base64") from None
        return 0

    try:
        shape = np.asarray(shape_of(value)).shape
    except ValueError:
        raise ShapeError(f"input '{name}': not a rectangular array") from None
    except RecursionError:
        raise ShapeError(f"input '{name}': nested too deep") from None
    array = np.empty(len(leaves), dtype=object)
    array[:] = leaves
    return array.reshape(shape)


def _only_input(input_names: list[str]) -> str:
    if len(input_names) != 1:
        raise InputError(f"the model takes inputs {input_names}: name them (objects keyed by input name)")
    return input_names[0]
