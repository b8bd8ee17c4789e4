"""The data plane's request and response types, shared by every transport (HTTP, gRPC, in-process).

Transports decode their wire format into these (tensors already as numpy arrays) and encode these back; the
data plane never sees JSON, protobuf or HTTP headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InferRequest", "InferResponse", "RequestedOutput", "Tensor"]


@dataclass(slots=True)
class Tensor:
    """A named tensor with its V2 datatype name ("FP32", "BYTES", ...); `data` already has `shape`."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; `classification` > 0 asks for Triton's "score:index:label" top-K strings."""

    name: str
    binary: bool = False
    classification: int = 0


@dataclass(slots=True)
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None  # None: every output
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    client: str = ""  # who sent it (the peer's address): a sequence id is its own, not every client's


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
