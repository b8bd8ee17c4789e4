"""LitServe peer: the same ONNX model behind LitServe, speaking a V2-shaped JSON body on the V2 infer path so that the
load generator sends every server the same request. ONNX Runtime with one intra-op thread.

Usage: python bench/peers/litserve_server.py MODEL.onnx --name NAME --port PORT [--max-batch-size N --batch-timeout S]
(runs in its own virtualenv: litserve, onnxruntime)
"""

from __future__ import annotations

import argparse
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
V2_NAMES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}


class OnnxApi(ls.LitAPI):
    def __init__(self, model: str, name: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=f"/v2/models/{name}/infer"
        )
        self.model = model
        self.name = name

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    # No annotations on decode_request's `request` and encode_response's return: LitServe turns them into the
    # FastAPI endpoint's types (query parameters, response-model validation); without them it reads the JSON body.
    def decode_request(self, request, **kwargs: Any) -> np.ndarray:  # type: ignore[no-untyped-def]
        tensor = request["inputs"][0]
        return np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]]).reshape(tensor["shape"])

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(inputs)

    def predict(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output[:, None])

    def encode_response(self, output: np.ndarray, **kwargs: Any):  # type: ignore[no-untyped-def]
        return {
            "model_name": self.name,
            "outputs": [
                {
                    "name": self.output_name,
                    "datatype": V2_NAMES[output.dtype],
                    "shape": list(output.shape),
                    "data": output.ravel().tolist(),
                }
            ],
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=1)
    parser.add_argument("--batch-timeout", type=float, default=0.0)
    args = parser.parse_args()
    api = OnnxApi(args.model, args.name, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
