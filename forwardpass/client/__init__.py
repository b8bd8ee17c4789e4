"""Python clients for a forwardpass server (or any KServe V2 / Triton server): numpy arrays in, numpy arrays out.

    from forwardpass.client import InferenceClient

    with InferenceClient("http://127.0.0.1:8000") as client:
        outputs = client.infer("mlp", {"x": batch})                     # binary tensors by default
        answer = client.predict("digits_cnn", Path("samples/digits/digit_0_1579.png"))

`InferenceClient` / `AsyncInferenceClient` speak HTTP, `GrpcInferenceClient` / `AsyncGrpcInferenceClient` gRPC,
with the same methods (`predict` is HTTP only). A server's refusal raises the forwardpass error of its status
(InputError, NotFoundError, Unauthenticated, Overloaded, ...) with the server's message.
"""

from forwardpass.client.grpc import AsyncGrpcInferenceClient, GrpcInferenceClient
from forwardpass.client.http import AsyncInferenceClient, InferenceClient

__all__ = ["AsyncGrpcInferenceClient", "AsyncInferenceClient", "GrpcInferenceClient", "InferenceClient"]
