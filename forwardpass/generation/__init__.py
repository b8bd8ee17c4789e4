"""Token-sequence generation for decoder language models exported to ONNX with a KV cache: export, sampling,
incremental detokenization and the continuous-batching decode loop."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forwardpass.generation.engine import Generator, Listener, Ticket, TokenEvent, TokenStream
    from forwardpass.generation.loader import open_generator
    from forwardpass.generation.sampling import SamplingParams
    from forwardpass.generation.text import IncrementalText, StopStrings, TextCodec

__all__ = [
    "Generator",
    "IncrementalText",
    "Listener",
    "SamplingParams",
    "StopStrings",
    "TextCodec",
    "Ticket",
    "TokenEvent",
    "TokenStream",
    "open_generator",
]

# Imported on first use: the decode loop pulls in tokenizers and jinja2, which a server of ONNX models never needs
# (~0.1 s of its start-up), and the server's modules import this package's light parts (sampling, text).
_MODULE_OF = {
    "Generator": "engine",
    "Listener": "engine",
    "Ticket": "engine",
    "TokenEvent": "engine",
    "TokenStream": "engine",
    "open_generator": "loader",
    "SamplingParams": "sampling",
    "IncrementalText": "text",
    "StopStrings": "text",
    "TextCodec": "text",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
