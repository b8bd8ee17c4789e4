"""What one request to a model may be, known from the model alone and checked before its body is decoded.

Each transport looks the model up first (an unknown model is a 404 before any byte of the body is parsed), then
checks every tensor's header (name, datatype, shape) against `RequestLimits` before it decodes that tensor's data:
so a request batch over `max_batch_size`, a datatype the model does not take (Triton's rule: the request's V2
datatype must be the model's), a shape that cannot fit or a dimension over its config bound (inputs[].max_shape)
costs microseconds, not a decode. `max_body_bytes` bounds the body itself when the model's inputs have a bounded
size per row (fixed, or bounded by max_shape): larger bodies are refused (413) unread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forwardpass.config import ImageConfig
from forwardpass.errors import DecodeError, DTypeError, InputError, PayloadTooLarge, ShapeError
from forwardpass.tensor import DataType, TensorSpec

if TYPE_CHECKING:
    from forwardpass.registry import Served

__all__ = ["MAX_ECHO", "RequestLimits", "clip"]

# The longest piece of a request (a name, a value) an error message repeats.
MAX_ECHO = 64
# Bytes a JSON number may take, separators and brackets included ("-1.2345678901234567e-308, " is 26): the bound on
# a JSON body is this per element; binary bodies are smaller.
JSON_BYTES_PER_ELEMENT = 48
# Room for the JSON header around the data: names, shapes, parameters, requested outputs.
HEADER_BYTES = 64 * 1024
# An image model's default pixel limit: this many times its input's pixels (a 224 x 224 model takes up to 20 MP,
# a phone photo), never under MIN_IMAGE_PIXELS; preprocess.max_pixels in its config overrides it.
PIXELS_PER_INPUT_PIXEL = 400
MIN_IMAGE_PIXELS = 4_000_000


@dataclass(frozen=True, slots=True)
class RequestLimits:
    model: str
    version: str  # the served version these limits are of: refusals count on it
    specs: dict[str, TensorSpec]  # the inputs clients send, by name
    max_rows: int  # the most rows one request may carry; 0: the model takes no batch dimension (its shape rules)
    max_body_bytes: int | None  # None: no bound from the model (strings, or dimensions of any size)
    outputs: int = 0  # how many outputs the model has: a request may ask for no more
    sequences: bool = False  # a stateful model: requests carry sequence ids, each client's own
    max_pixels: int | None = None  # an image model's bound on an image's pixels, before it is decoded

    def check_size(self, size: int) -> None:
        """A whole request of `size` bytes, already received (a stream's message), against `max_body_bytes`."""
        if self.max_body_bytes is not None and size > self.max_body_bytes:
            raise PayloadTooLarge(
                f"a request of {size} bytes is over model '{self.model}''s limit of {self.max_body_bytes} bytes"
            )

    def check_outputs(self, count: int) -> None:
        if count > self.outputs:
            raise InputError(f"the request asks for {count} outputs; model '{self.model}' has {self.outputs}")

    @classmethod
    def of(cls, served: Served) -> RequestLimits:
        specs = {spec.name: spec for spec in served.inputs}
        max_rows = 1 if served.sequencer is not None else served.max_batch_size  # a sequence step is one row
        bound = _body_bound(specs.values(), max_rows)
        stateful = served.sequencer is not None
        pixels = _pixel_bound(served)
        return cls(served.name, served.version, specs, max_rows, bound, len(served.outputs), stateful, pixels)

    def check_image(self, width: int, height: int) -> None:
        """An image's size, from its header, against the model's pixel bound."""
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise DecodeError(
                f"a {width}x{height} image is over model '{self.model}''s limit of {self.max_pixels:,} pixels "
                f"({PIXELS_PER_INPUT_PIXEL}x its input's): send it smaller, or set preprocess.max_pixels in its config"
            )

    def check_count(self, count: int) -> None:
        """Before reading any tensor: a request with more tensors than the model has inputs is refused whole."""
        if count > len(self.specs):
            raise InputError(f"the request has {count} inputs; model '{self.model}' takes {len(self.specs)}")

    def check(self, name: str, datatype: str, shape: list[int]) -> TensorSpec:
        """One tensor's header against the model's input of that name; the data is not looked at."""
        spec = self.specs.get(name)
        if spec is None:
            raise InputError(f"model '{self.model}': unknown input(s) {[clip(name)]}; it takes {list(self.specs)}")
        if datatype != spec.dtype.name:
            raise DTypeError(
                f"input '{name}': datatype {clip(datatype)} does not match the model's {spec.dtype.name}; "
                f"send {spec.dtype.name}"
            )
        expected = spec.shape
        if len(shape) != len(expected):
            raise ShapeError(f"input '{name}': expected shape {list(expected)}, got {clip(str(shape))}")
        for got, want in zip(shape, expected):  # noqa: B905 -- lengths checked above; hot path
            if want != -1 and want != got:
                raise ShapeError(f"input '{name}': expected shape {list(expected)}, got {clip(str(shape))}")
        if spec.bound is not None:
            spec.bound.check(name, shape)
        if self.max_rows and shape and shape[0] > self.max_rows:
            if self.sequences:  # not max_batch_size: the model's config may allow more rows, across sequences
                raise InputError(
                    f"input '{name}': a sequence step carries one row, this one {shape[0]}; send them as steps"
                )
            raise InputError(
                f"input '{name}': a batch of {shape[0]} rows is over model '{self.model}''s max_batch_size of "
                f"{self.max_rows}; split the request"
            )
        return spec


def clip(text: str) -> str:
    """`text`, cut to MAX_ECHO characters: what an error may repeat of a request."""
    return text if len(text) <= MAX_ECHO else f"{text[:MAX_ECHO]}… ({len(text)} characters)"


def _pixel_bound(served: Served) -> int | None:
    """PIXELS_PER_INPUT_PIXEL x the image input's spatial size (dimensions over 4: not batch-of-one, not channels);
    None when the config sets its own max_pixels, or the model takes images of any size."""
    config = served.model.config.preprocess
    if not isinstance(config, ImageConfig) or "max_pixels" in config.model_fields_set:
        return None
    name = config.input or served.model.inputs[0].name
    spec = next(spec for spec in served.model.inputs if spec.name == name)
    spatial = [dim for dim in spec.shape[1:] if dim < 0 or dim > 4]
    if len(spatial) != 2 or min(spatial) < 0:
        return None
    return min(config.max_pixels, max(MIN_IMAGE_PIXELS, PIXELS_PER_INPUT_PIXEL * math.prod(spatial)))


def _body_bound(specs: Iterable[TensorSpec], max_rows: int) -> int | None:
    elements = 0
    for spec in specs:
        dims = _largest(spec)[1:] if max_rows else _largest(spec)
        if spec.dtype is DataType.BYTES or any(dim < 0 for dim in dims):
            return None
        elements += max(1, max_rows) * math.prod(dims)
    return HEADER_BYTES + elements * JSON_BYTES_PER_ELEMENT


def _largest(spec: TensorSpec) -> tuple[int, ...]:
    """The largest shape the input may take: a dynamic dimension at its config bound (-1 where it has none)."""
    if spec.bound is None:
        return spec.shape
    return tuple(limit if size == -1 else size for size, limit in zip(spec.shape, spec.bound.limits, strict=True))
