"""Tensor types and specs: ONE table that maps KServe V2 names, numpy, ONNX, torch and TensorFlow dtypes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from forwardpass.errors import DTypeError, InputError, NonFiniteError, ShapeError

__all__ = ["FLOATS", "DataType", "ShapeBound", "TensorSpec", "as_array", "as_text"]


class DataType(Enum):
    """V2 name = (numpy dtype or None, ONNX Runtime type string, torch name, TensorFlow name)."""

    BOOL = ("bool", "tensor(bool)", "bool", "bool")
    UINT8 = ("uint8", "tensor(uint8)", "uint8", "uint8")
    UINT16 = ("uint16", "tensor(uint16)", "uint16", "uint16")
    UINT32 = ("uint32", "tensor(uint32)", "uint32", "uint32")
    UINT64 = ("uint64", "tensor(uint64)", "uint64", "uint64")
    INT8 = ("int8", "tensor(int8)", "int8", "int8")
    INT16 = ("int16", "tensor(int16)", "int16", "int16")
    INT32 = ("int32", "tensor(int32)", "int32", "int32")
    INT64 = ("int64", "tensor(int64)", "int64", "int64")
    FP16 = ("float16", "tensor(float16)", "float16", "float16")
    FP32 = ("float32", "tensor(float)", "float32", "float32")
    FP64 = ("float64", "tensor(double)", "float64", "float64")
    BF16 = (None, "tensor(bfloat16)", "bfloat16", "bfloat16")
    BYTES = ("object", "tensor(string)", None, "string")

    def __init__(self, numpy_name: str | None, onnx_name: str, torch_name: str | None, tf_name: str | None) -> None:
        self.numpy_dtype = np.dtype(numpy_name) if numpy_name else None
        self.onnx_name = onnx_name
        self.torch_name = torch_name
        self.tf_name = tf_name

    @classmethod
    def from_name(cls, name: str) -> DataType:
        """A V2 name ("FP32"), an ONNX Runtime type ("tensor(float)") or a numpy name ("float32")."""
        found = _BY_ANY_NAME.get(name) or _BY_ANY_NAME.get(name.upper())
        if found is None:
            raise DTypeError(f"unknown data type '{name}'; use one of {', '.join(d.name for d in cls)}")
        return found

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DataType:
        found = _BY_NUMPY_DTYPE.get(dtype)  # once per output of every answer: dtype.name is slow Python in numpy
        if found is not None:
            return found
        if dtype.kind in "SUO":
            return cls.BYTES
        return cls.from_name(dtype.name)


FLOATS = frozenset({DataType.FP16, DataType.FP32, DataType.FP64, DataType.BF16})

_BY_ANY_NAME: dict[str, DataType] = {}
_BY_NUMPY_DTYPE: dict[np.dtype, DataType] = {}
for _member in DataType:
    _BY_ANY_NAME[_member.name] = _member
    _BY_ANY_NAME[_member.onnx_name] = _member
    if _member.numpy_dtype is not None and _member is not DataType.BYTES:
        _BY_ANY_NAME[_member.numpy_dtype.name] = _member
        _BY_NUMPY_DTYPE[_member.numpy_dtype] = _member


@dataclass(frozen=True, slots=True)
class ShapeBound:
    """The largest each dimension of an input may be (-1: no bound), from its config's inputs[].max_shape: a
    dynamic dimension (an image's width) otherwise lets one small request cost any memory the model makes of it."""

    model: str
    limits: tuple[int, ...]
    first: int = 0  # the dimension limits[0] bounds in a request's tensor: 1 for an item without its batch dimension

    def check(self, name: str, shape: Sequence[int]) -> None:
        """A tensor's shape (rank already checked) against the bounds; the data is not looked at."""
        for index, (size, limit) in enumerate(zip(shape, self.limits)):  # noqa: B905 -- rank checked by the caller
            if limit != -1 and size > limit:
                raise ShapeError(
                    f"input '{name}' dimension {index + self.first} is {size}, over its limit of {limit} "
                    f"(inputs[].max_shape in model '{self.model}''s config)"
                )

    def unbatched(self) -> ShapeBound:
        return ShapeBound(self.model, self.limits[1:], self.first + 1)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor the model takes or gives; -1 marks a dynamic dimension (the first is the batch)."""

    name: str
    dtype: DataType
    shape: tuple[int, ...]
    allow_nonfinite: bool = True
    bound: ShapeBound | None = None  # an input's config bound on its dimensions

    def validate(self, value: object) -> np.ndarray:
        """Return `value` as an array of this spec's dtype and shape, or raise an InputError naming the tensor."""
        array = value if isinstance(value, np.ndarray) else as_array(self.name, value)
        expected = self.dtype.numpy_dtype
        if expected is not None and array.dtype != expected:
            array = self._cast(array, expected)
        if array.ndim != len(self.shape):
            raise ShapeError(f"input '{self.name}': expected shape {list(self.shape)}, got {list(array.shape)}")
        for got, want in zip(array.shape, self.shape):  # noqa: B905 -- lengths checked above; hot path
            if want != -1 and got != want:
                raise ShapeError(f"input '{self.name}': expected shape {list(self.shape)}, got {list(array.shape)}")
        if self.bound is not None:
            self.bound.check(self.name, array.shape)
        if not self.allow_nonfinite and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise NonFiniteError(f"input '{self.name}' contains NaN or infinity, which this model's config forbids")
        return array

    def _cast(self, array: np.ndarray, expected: np.dtype) -> np.ndarray:
        """Casts that keep every value: float64 → float32, int → float, int → a narrower int when values fit."""
        if expected.kind == "O" and array.dtype.kind in "SU":
            return array.astype(object)
        source = array.dtype.kind
        if source == "f" == expected.kind:
            with np.errstate(over="ignore"):
                narrowed = array.astype(expected)
            if np.isinf(narrowed).sum() != np.isinf(array).sum():
                raise DTypeError(f"input '{self.name}': values beyond the range of {self.dtype.name} ({expected.name})")
            return narrowed
        if (source in "biu" and expected.kind == "f") or (source == "b" == expected.kind):
            return array.astype(expected)
        if source in "biu" and expected.kind in "iu":
            limits = np.iinfo(expected)
            if array.size == 0 or (array.min() >= limits.min and array.max() <= limits.max):
                return array.astype(expected)
        raise DTypeError(f"input '{self.name}': expected {self.dtype.name} ({expected.name}), got {array.dtype.name}")

    def unbatched(self) -> TensorSpec:
        """The spec of one item: the batch dimension dropped."""
        bound = self.bound.unbatched() if self.bound is not None else None
        return TensorSpec(self.name, self.dtype, self.shape[1:], self.allow_nonfinite, bound)

    def to_dict(self) -> dict[str, object]:
        """The V2 metadata form: {"name", "datatype", "shape"}."""
        return {"name": self.name, "datatype": self.dtype.name, "shape": list(self.shape)}


def as_array(name: str, value: object) -> np.ndarray:
    """`np.asarray`, with a ragged nesting refused as a ShapeError naming the tensor."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"input '{name}': not a rectangular array ({exc})") from None


def as_text(name: str, array: np.ndarray) -> np.ndarray:
    """A string tensor with its bytes elements as UTF-8 text (ONNX Runtime would silently store a bytes object's
    repr, "b'...'"); the array itself when it holds no bytes."""
    if array.dtype.kind != "O" or not any(isinstance(element, bytes) for element in array.flat):
        return array
    text = np.empty(array.shape, dtype=object)
    try:
        text.flat[:] = [element.decode() if isinstance(element, bytes) else element for element in array.flat]
    except UnicodeDecodeError:
        raise InputError(f"input '{name}': a BYTES element is not UTF-8 text, which this model needs") from None
    return text
