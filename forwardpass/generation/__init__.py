"""Token-sequence generation for decoder language models exported to ONNX with a KV cache: export, sampling,
incremental detokenization and the continuous-batching decode loop."""

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
