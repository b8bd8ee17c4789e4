"""The floor: the thinnest KServe V2 server worth measuring. Starlette + orjson, ONNX Runtime inline on the event loop,
no validation, no batching, no metrics. JSON tensors and the binary tensor data extension.

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


def create_app(model: str, name: str) -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    output_names = [output.name for output in session.get_outputs()]

    async def infer(request: Request) -> Response:
        body = await request.body()
        header_length = int(request.headers.get(HEADER_LENGTH, len(body)))
        header = orjson.loads(body[:header_length])
        feeds, offset = {}, header_length
        for tensor in header["inputs"]:
            dtype = np.dtype(DTYPES[tensor["datatype"]])
            size = tensor.get("parameters", {}).get("binary_data_size")
            if size is None:
                array = np.asarray(tensor["data"], dtype=dtype)
            else:
                array = np.frombuffer(body, dtype, count=size // dtype.itemsize, offset=offset)
                offset += size
            feeds[tensor["name"]] = array.reshape(tensor["shape"])
        results = session.run(output_names, feeds)
        binary = HEADER_LENGTH in request.headers
        outputs = [
            {"name": output, "datatype": V2_NAMES[result.dtype], "shape": list(result.shape)}
            | ({"parameters": {"binary_data_size": result.nbytes}} if binary else {"data": result.ravel()})
            for output, result in zip(output_names, results, strict=True)
        ]
        answer = orjson.dumps({"model_name": name, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
        if not binary:
            return Response(answer, media_type="application/json")
        headers = {HEADER_LENGTH: str(len(answer))}
        return Response(b"".join([answer, *(r.tobytes() for r in results)]), headers=headers)

    async def ready(request: Request) -> Response:
        return Response(b"")

    return Starlette(
        routes=[Route(f"/v2/models/{name}/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)]
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
