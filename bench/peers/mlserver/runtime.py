"""MLServer peer: a custom runtime that runs an ONNX model with ONNX Runtime (one intra-op thread).

MLServer has no ONNX runtime of its own; this is the few lines a user would write. It decodes with MLServer's own
NumpyCodec, so adaptive batching (max_batch_size / max_batch_time in model-settings.json) works unchanged.
Runs in its own virtualenv (mlserver==1.7.1, uvloop==0.21.0, onnxruntime); bench/server.py puts this folder on
PYTHONPATH so that `"implementation": "runtime.OnnxRuntime"` resolves.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        outputs = [
            NumpyCodec.encode_output(name, result) for name, result in zip(self._output_names, results, strict=True)
        ]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
