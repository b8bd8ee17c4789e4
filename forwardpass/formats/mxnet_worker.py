"""The MXNet side of the MXNet format: a standalone script run by the isolated interpreter, never by forwardpass.

mxnet 1.9.1 imports only with numpy < 1.24, so it lives in a virtual environment of its own (see mxnet.py). This
script runs there as a long-lived child process and answers requests read from stdin, one at a time:

    open      {"symbol", "params"}                     -> {"inputs": [names], "outputs": [names]}
    describe  {"shapes", "dtypes"}                     -> {"outputs": {name: {"shape", "dtype"}}}  (-1: dynamic)
    run       + one array per input                    -> one array per output
    export    {"shapes", "dtypes", "output", "opset"}  -> {"versions": {package: version}}  (writes an ONNX file)

A failed request answers {"error": one line, "file": the file at fault or null} and the process keeps serving.

Framing (both directions): one JSON header line, then the raw C-order bytes of each array the header lists as
{"name", "dtype", "shape"}. No pickle: only plain numeric arrays cross. It imports nothing from forwardpass, and
forwardpass imports only the framing functions from it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import IO, Any

import numpy as np

__all__ = ["onnx_output_name", "read_message", "write_message"]

Arrays = dict[str, np.ndarray]


def write_message(stream: IO[bytes], header: dict[str, Any], arrays: Arrays) -> None:
    contiguous = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    listed = [{"name": name, "dtype": a.dtype.str, "shape": list(a.shape)} for name, a in contiguous.items()]
    stream.write(json.dumps({**header, "arrays": listed}).encode() + b"\n")
    for array in contiguous.values():
        stream.write(array.tobytes())
    stream.flush()


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], Arrays]:
    """The next message; EOFError when the other side closed the stream."""
    line = stream.readline()
    if not line:
        raise EOFError("the stream closed")
    header: dict[str, Any] = json.loads(line)
    arrays: Arrays = {}
    for listed in header.pop("arrays", []):
        dtype = np.dtype(listed["dtype"])
        if dtype.hasobject:
            raise ValueError(f"array '{listed['name']}': object arrays cannot cross the process boundary")
        shape = tuple(int(dim) for dim in listed["shape"])
        buffer = bytearray(math.prod(shape) * dtype.itemsize)
        _read_into(stream, buffer)
        arrays[listed["name"]] = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return header, arrays


def _read_into(stream: IO[bytes], buffer: bytearray) -> None:
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        chunk = stream.read(len(buffer) - filled)
        if not chunk:
            raise EOFError("the stream closed in the middle of an array")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)


def onnx_output_name(mxnet_name: str) -> str:
    """The name mxnet's ONNX exporter gives an output ('dense0_fwd_output' -> 'dense0_fwd'); native runs use it too,
    so that native and converted outputs compare by name."""
    if mxnet_name.endswith("_output"):
        return mxnet_name[: -len("_output")]
    if mxnet_name[:-1].endswith("_output") and mxnet_name[-1].isdigit():
        return mxnet_name[: -len("_output0")] + mxnet_name[-1]
    return mxnet_name


class _RequestError(Exception):
    def __init__(self, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.file = file


class _Model:
    """One symbol + params pair, loaded once; answers describe / run / export."""

    def __init__(self, symbol_file: str, params_file: str) -> None:
        import mxnet as mx

        self._mx = mx
        try:
            self.symbol = mx.sym.load(symbol_file)
        except Exception as exc:
            raise _RequestError(f"not a readable MXNet symbol file ({_reason(exc)})", symbol_file) from None
        try:
            saved = mx.nd.load(params_file)
        except Exception as exc:
            raise _RequestError(f"corrupt or truncated MXNet params file ({_reason(exc)})", params_file) from None
        if not isinstance(saved, dict):
            raise _RequestError("an MXNet params file of unnamed arrays; Gluon export() writes named ones", params_file)
        self.params = {name[4:] if name.startswith(("arg:", "aux:")) else name: value for name, value in saved.items()}
        self.input_names = [name for name in self.symbol.list_inputs() if name not in self.params]
        self.output_names = [onnx_output_name(name) for name in self.symbol.list_outputs()]
        inputs = [mx.sym.var(name) for name in self.input_names]
        self.block = mx.gluon.SymbolBlock(self.symbol, inputs)
        try:
            self.block.collect_params().load_dict(saved, mx.cpu(), cast_dtype=True, dtype_source="saved")
        except Exception as exc:
            raise _RequestError(f"MXNet params do not match the symbol file ({_reason(exc)})", params_file) from None
        self.block.hybridize(static_alloc=True)

    def describe(self, shapes: dict[str, list[int]], dtypes: dict[str, str]) -> dict[str, Any]:
        """Output shapes and dtypes; a dimension that moves when the inputs' dynamic ones do is dynamic (-1)."""
        ones = self._output_shapes(shapes, 1)
        twos = self._output_shapes(shapes, 2)
        _, types, _ = self.symbol.infer_type(**{name: np.dtype(dtypes[name]) for name in self.input_names})
        return {
            name: {
                "shape": [a if a == b else -1 for a, b in zip(one, two, strict=True)],
                "dtype": np.dtype(kind).name,
            }
            for name, one, two, kind in zip(self.output_names, ones, twos, types, strict=True)
        }

    def _output_shapes(self, shapes: dict[str, list[int]], dynamic: int) -> list[tuple[int, ...]]:
        known = {name: value.shape for name, value in self.params.items()}
        concrete = {name: tuple(dynamic if dim == -1 else dim for dim in shapes[name]) for name in self.input_names}
        try:
            _, outputs, _ = self.symbol.infer_shape(**known, **concrete)
        except Exception as exc:
            raise _RequestError(f"input_shapes do not fit the MXNet symbol ({_reason(exc)})") from None
        return [tuple(shape) for shape in outputs]

    def run(self, arrays: Arrays) -> Arrays:
        mx = self._mx
        missing = [name for name in self.input_names if name not in arrays]
        if missing:
            raise _RequestError(f"missing input(s) {missing}")
        feed = [mx.nd.array(arrays[name], dtype=arrays[name].dtype) for name in self.input_names]
        try:
            results = self.block(*feed)
            listed = results if isinstance(results, list | tuple) else [results]
            return {name: result.asnumpy() for name, result in zip(self.output_names, listed, strict=True)}
        except Exception as exc:
            raise _RequestError(f"MXNet refused the input ({_reason(exc)})") from None

    def export(self, shapes: dict[str, list[int]], dtypes: dict[str, str], output: str, opset: int) -> None:
        """mx.onnx.export_model's own steps, with the opset it asks for: export_model labels the graph with the
        installed onnx's newest opset while writing opset-13 operators, which newer opsets reject."""
        from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
        from onnx import helper

        in_shapes = [tuple(1 if dim == -1 else dim for dim in shapes[name]) for name in self.input_names]
        dynamic = [tuple(None if dim == -1 else dim for dim in shapes[name]) for name in self.input_names]
        in_types = [helper.np_dtype_to_tensor_dtype(np.dtype(dtypes[name])) for name in self.input_names]
        try:
            graph = MXNetGraph().create_onnx_graph_proto(
                self.symbol,
                self.params,
                in_shapes,
                in_types,
                opset_version=opset,
                dynamic=True,
                dynamic_input_shapes=dynamic,
            )
        except Exception as exc:
            raise _RequestError(f"MXNet's ONNX exporter failed ({_reason(exc)})") from None
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="mxnet")
        with open(output, "wb") as file:
            file.write(model.SerializeToString())


def _reason(exc: BaseException) -> str:
    """The human part of an error. MXNet's carry a C++ backtrace whose last line reads like
    'MXNetError: [12:00:00] ../src/x.cc:151: Check failed: header == kMagic: Invalid NDArray file format'."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    reason = re.sub(r"MXNetError: |\[[\d:]+\] \S+:\d+: ", "", reason)
    reason = re.sub(r"Check failed: .*: ", "", reason)
    return reason.split(". ", 1)[0]


def _versions() -> dict[str, str]:
    import mxnet
    import onnx

    return {"mxnet": mxnet.__version__, "onnx": onnx.__version__, "numpy": np.__version__}


def _answer(
    model: _Model | None, header: dict[str, Any], arrays: Arrays
) -> tuple[_Model | None, dict[str, Any], Arrays]:
    operation = header.get("op")
    if operation == "open":
        model = _Model(header["symbol"], header["params"])
        return model, {"inputs": model.input_names, "outputs": model.output_names}, {}
    if model is None:
        raise _RequestError(f"'{operation}' before 'open'")
    if operation == "describe":
        return model, {"outputs": model.describe(header["shapes"], header["dtypes"])}, {}
    if operation == "run":
        return model, {}, model.run(arrays)
    if operation == "export":
        model.export(header["shapes"], header["dtypes"], header["output"], header["opset"])
        return model, {"versions": _versions()}, {}
    raise _RequestError(f"unknown request '{operation}'")


def answer_requests(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Answer each request read from `requests` on `replies`, in order, until `requests` ends."""
    model: _Model | None = None
    while True:
        try:
            header, arrays = read_message(requests)
        except EOFError:
            return
        try:
            model, reply, results = _answer(model, header, arrays)
        except _RequestError as exc:
            reply, results = {"error": str(exc), "file": exc.file}, {}
        write_message(replies, reply, results)


def main() -> None:
    # Replies go to the original stdout; anything a library prints goes to stderr instead of corrupting the stream.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    answer_requests(sys.stdin.buffer, replies)
    replies.close()
    os._exit(0)  # every reply is flushed; skipping mxnet's engine teardown saves ~0.3 s per session closed


if __name__ == "__main__":
    main()
