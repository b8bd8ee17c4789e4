"""The floor: the thinnest KServe V2 server worth measuring. Starlette + orjson, ONNX Runtime inline on the event loop,
no validation, no batching, no metrics. JSON tensors and the binary tensor data extension; the model's metadata and
Triton-style config and the server's metadata as fixed documents (perf_analyzer reads them before it sends load), and
the count of answered requests.

Usage: python bench/peers/thin.py MODEL.onnx --name NAME --port PORT
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
V2_NAMES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}
HEADER_LENGTH = "inference-header-content-length"
SERVER_METADATA = orjson.dumps({"name": "thin", "version": "1", "extensions": ["binary_tensor_data"]})  # GET /v2


def load_session(model: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def model_documents(session: ort.InferenceSession, name: str) -> tuple[bytes, bytes]:
    """`GET /v2/models/<name>` (V2 metadata) and `GET /v2/models/<name>/config` (Triton's ModelConfig), as JSON. The
    config announces batches of up to 32 along the model's first (dynamic) dimension, so that perf_analyzer sends
    one sample per request as [1, ...]; this server runs each request on its own."""
    v2_type = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int32)": "INT32", "tensor(int64)": "INT64"}

    def shape(value: ort.NodeArg) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in value.shape]

    def described(values: list[ort.NodeArg]) -> list[dict[str, object]]:
        return [{"name": v.name, "datatype": v2_type[v.type], "shape": shape(v)} for v in values]

    def configured(values: list[ort.NodeArg]) -> list[dict[str, object]]:
        return [{"name": v.name, "data_type": f"TYPE_{v2_type[v.type]}", "dims": shape(v)[1:]} for v in values]

    inputs, outputs = session.get_inputs(), session.get_outputs()
    metadata = {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx"}
    metadata |= {"inputs": described(inputs), "outputs": described(outputs)}
    config = {"name": name, "max_batch_size": 32, "input": configured(inputs), "output": configured(outputs)}
    return orjson.dumps(metadata), orjson.dumps(config)


class V2Model:
    """One ONNX model's V2 infer step, independent of the web framework: request body in, answer body out."""

    def __init__(self, model: str, name: str) -> None:
        self.session = load_session(model)
        self.name = name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.metadata, self.config = model_documents(self.session, name)
        self.answered = 0  # infer requests answered: a benchmark divides the server's CPU time by it

    def answered_document(self) -> bytes:
        """`GET /answered`: the number of infer requests answered so far."""
        return str(self.answered).encode()

    def infer(self, body: bytes, header_length: str | None) -> tuple[bytes, int | None]:
        """The answer to a V2 infer request and, when it is binary (as the request was: `header_length` is the
        request's Inference-Header-Content-Length header, None without one), the length of its JSON header."""
        json_length = len(body) if header_length is None else int(header_length)
        header = orjson.loads(body[:json_length])
        feeds, offset = {}, json_length
        for tensor in header["inputs"]:
            dtype = np.dtype(DTYPES[tensor["datatype"]])
            size = tensor.get("parameters", {}).get("binary_data_size")
            if size is None:
                array = np.asarray(tensor["data"], dtype=dtype)
            else:
                array = np.frombuffer(body, dtype, count=size // dtype.itemsize, offset=offset)
                offset += size
            feeds[tensor["name"]] = array.reshape(tensor["shape"])
        results = self.session.run(self.output_names, feeds)
        self.answered += 1
        binary = header_length is not None
        outputs = [
            {"name": output, "datatype": V2_NAMES[result.dtype], "shape": list(result.shape)}
            | ({"parameters": {"binary_data_size": result.nbytes}} if binary else {"data": result.ravel()})
            for output, result in zip(self.output_names, results, strict=True)
        ]
        answer = orjson.dumps({"model_name": self.name, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
        if not binary:
            return answer, None
        return b"".join([answer, *(r.tobytes() for r in results)]), len(answer)


def create_app(model: str, name: str) -> Starlette:
    served = V2Model(model, name)

    async def infer(request: Request) -> Response:
        answer, json_length = served.infer(await request.body(), request.headers.get(HEADER_LENGTH))
        if json_length is None:
            return Response(answer, media_type="application/json")
        return Response(answer, headers={HEADER_LENGTH: str(json_length)})

    async def ready(request: Request) -> Response:
        return Response(b"")

    async def server_metadata(request: Request) -> Response:
        return Response(SERVER_METADATA, media_type="application/json")

    async def answered(request: Request) -> Response:
        return Response(served.answered_document())

    async def model_metadata(request: Request) -> Response:
        return Response(served.metadata, media_type="application/json")

    async def model_config(request: Request) -> Response:
        return Response(served.config, media_type="application/json")

    return Starlette(
        routes=[
            Route(f"/v2/models/{name}/infer", infer, methods=["POST"]),  # first: the route every request takes
            Route("/v2/health/ready", ready),
            Route("/v2", server_metadata),
            Route("/answered", answered),
            Route(f"/v2/models/{name}", model_metadata),
            Route(f"/v2/models/{name}/config", model_config),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.model, args.name), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
