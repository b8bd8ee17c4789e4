"""What every source format implements: recognise its artefact, run it natively, convert it to ONNX.

A format module never imports its framework at module level: `import forwardpass` must not import torch,
tensorflow or mxnet. Each imports its framework inside the functions, through `require()`, so that a missing
framework becomes one line naming the extra to install.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig
from forwardpass.errors import MissingExtraError
from forwardpass.formats.facts import ModelFacts

__all__ = ["ConvertOptions", "Format", "LoadOptions", "descriptor_silenced", "require"]


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """What a user may say about a non-ONNX artefact (CLI flags / `forwardpass.load` keywords / config `source:`)."""

    trust_pickle: bool = False  # pickles run code when loaded: refused unless the user says they trust the file
    signature: str | None = None  # TF SavedModel signature (default: serving_default)
    input_names: list[str] | None = None  # frozen GraphDef: inputs/outputs when they can't be inferred
    output_names: list[str] | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # formats that don't record shapes (-1 = dynamic)
    input_dtypes: dict[str, str] = field(default_factory=dict)  # V2 names, e.g. {"input": "FP32"}


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    opset: int = 17
    tolerance: float = 1e-4  # max abs diff allowed by the parity check (FP32)
    parity_samples: int = 32


class Format(Protocol):
    """One source format. `name` is what reports show ("torchscript", "savedmodel", ...); `extra` is the pip extra;
    `detect_rank` places it in detection order (lower asks first: formats that claim generic suffixes such as `.json`
    or `.pb` rank after the specific ones; the built-in ranks are 10 to 120, see pyproject.toml's entry points)."""

    name: str
    extra: str
    detect_rank: int

    def detect(self, path: Path) -> bool:
        """True when `path` (a file or a folder) is an artefact of this format. Cheap: never loads the framework."""
        ...

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> Session:
        """A Session that runs the artefact with its own framework (batch dimension first, numpy in and out)."""
        ...

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        """Write an ONNX model to `output` with the field's converter; return provenance (tool versions, opset)."""
        ...

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        """What the artefact records beyond its tensors (task, classes, feature names); empty facts when nothing."""
        ...


def require(module: str, extra: str) -> ModuleType:
    """Import an optional framework, or raise the one-line 'pip install forwardpass[extra]' error."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module, extra) from None


@contextlib.contextmanager
def descriptor_silenced(descriptor: int) -> Iterator[None]:
    """The process's file `descriptor` (1: standard output, 2: standard error) sent to /dev/null for the block:
    frameworks' native code writes there past every Python logger."""
    (sys.stdout if descriptor == 1 else sys.stderr).flush()
    saved = os.dup(descriptor)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), descriptor)
            yield
    finally:
        os.dup2(saved, descriptor)
        os.close(saved)
