"""Triton Python-backend model: one ONNX Runtime session (1 thread) over the batch Triton's dynamic batcher formed.

Triton's C++ ONNX Runtime backend is not on PyPI; this is the Triton we can run here (its C++ HTTP/gRPC frontends
and batcher are the real ones). The backend's stub embeds Python in isolated mode and ignores PYTHONPATH: the
peer virtualenv's site-packages (named in site_packages.txt beside this file) go on sys.path before anything that
needs numpy, Triton's own utilities included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, Path(__file__).with_name("site_packages.txt").read_text().strip())

import triton_python_backend_utils as pb_utils  # Triton's Python backend stub provides it


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        parameters = json.loads(args["model_config"])["parameters"]
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = parameters["onnx_path"]["string_value"]
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.concatenate = np.concatenate

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [pb_utils.get_input_tensor_by_name(request, "input").as_numpy() for request in requests]
        outputs = self.session.run(None, {"input": self.concatenate(inputs)})[0]
        responses, start = [], 0
        for batch in inputs:
            rows = outputs[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("output", rows)]))
        return responses
