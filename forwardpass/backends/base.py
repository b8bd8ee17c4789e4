"""The one small interface every backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from forwardpass.tensor import TensorSpec

__all__ = ["Session"]


class Session(Protocol):
    """A loaded model ready to run. Batch dimension first; knows nothing of protocols or requests."""

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    @property
    def providers(self) -> list[str]:
        """Where it runs, most preferred first (e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"])."""
        ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
