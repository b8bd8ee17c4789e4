"""Tabular records: named columns in a fixed order, standardization / min-max, imputation, one-hot categories or
category codes.

A record must hold exactly the model's columns: an absent column or a field that is no column is an error naming it
(a misspelled `BMI` for `bmi` would otherwise score as if the value were missing). `impute` fills null and empty
values only; filling absent columns too takes `impute_absent: true`. A column with `missing: model` gives such a value
to the model as NaN, for models that learnt what to do with one.

Two layouts: the columns fill one [features] input in order (the common case), or — for models that take one
[batch, 1] input per column (skl2onnx's mixed-type pipelines) — each column its own input, text kept as text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from forwardpass.config import TabularColumn, TabularConfig, category_text
from forwardpass.errors import DTypeError, InputError, MissingFieldError
from forwardpass.pipeline.records import PLAIN_NUMBERS, check_fields, is_missing, record_number
from forwardpass.tensor import DataType, TensorSpec

__all__ = ["TabularPreprocessor"]


class TabularPreprocessor:
    def __init__(self, config: TabularConfig, input_name: str, per_column: list[TensorSpec] | None = None) -> None:
        self.columns = config.columns
        self.input_name = input_name
        dtype = DataType.from_name(config.datatype).numpy_dtype
        self._dtype = dtype if dtype is not None else np.dtype(np.float32)
        self.width = sum(len(c.categories) if c.categories else 1 for c in self.columns)
        self._names = [column.name for column in self.columns]
        self._absent_ok = config.impute_absent
        self._unknown_ok = config.unknown_fields == "ignore"
        # One input per column: {column: its input's dtype}; text columns keep their text
        self._per_column = {spec.name: spec.dtype for spec in per_column} if per_column else None
        # All-numeric columns: a record of finite numbers is scaled in one vector operation (the same float64
        # arithmetic, (value - shift) / divisor, as `_scale`); anything else takes the per-column path below.
        self._vectorized = self._per_column is None and all(
            column.categories is None and column.codes is None for column in self.columns
        )
        self._shift, self._divisor = np.array([_shift_and_divisor(column) for column in self.columns]).T
        # The finite values each column takes whose scaled value the input's type holds (the per-column path
        # names the column of any other)
        with np.errstate(over="ignore"):
            reach = _largest(self._dtype) * np.abs(self._divisor)
            edge = float(np.finfo(np.float64).max)
            self._lowest = np.maximum(self._shift - reach, -edge)
            self._highest = np.minimum(self._shift + reach, edge)

    def __call__(self, raw: object) -> dict[str, np.ndarray]:
        if not isinstance(raw, Mapping):
            raise DTypeError(f"expected a record (a mapping of column to value), got {type(raw).__name__}")
        if len(raw) != len(self._names) or not all(name in raw for name in self._names):
            check_fields(raw, self._names, absent_ok=self._absent_ok, unknown_ok=self._unknown_ok)
        if self._per_column is not None:
            return {column.name: self._column(column, raw.get(column.name)) for column in self.columns}
        if self._vectorized:
            values = [raw.get(name) for name in self._names]
            if set(map(type, values)) <= PLAIN_NUMBERS:
                numbers = np.array(values, dtype=np.float64)
                if ((numbers >= self._lowest) & (numbers <= self._highest)).all():  # NaN and inf fail
                    return {self.input_name: ((numbers - self._shift) / self._divisor).astype(self._dtype)}
        features: list[float] = []
        for column in self.columns:
            value = _filled(column, raw.get(column.name))
            if value is _MODELS_MISSING:
                features.append(math.nan)
            elif column.categories is not None:
                features.extend(_one_hot(column, value))
            elif column.codes is not None:
                features.append(_code(column, value))
            else:
                features.append(_scale(column, _number(column.name, value), self._dtype))
        return {self.input_name: np.asarray(features, dtype=self._dtype)}

    def _column(self, column: TabularColumn, value: object) -> np.ndarray:
        """One column's [1] array for its own input: text as text, numbers scaled as declared."""
        value = _filled(column, value)
        assert self._per_column is not None
        dtype = self._per_column[column.name]
        if value is _MODELS_MISSING:
            if dtype is DataType.BYTES:
                raise MissingFieldError(
                    f"column '{column.name}' is empty: the model takes text there, which has no NaN"
                )
            return np.array([math.nan], dtype=dtype.numpy_dtype)
        if dtype is DataType.BYTES:
            return np.array([value if isinstance(value, str) else category_text(value)], dtype=object)
        if column.codes is not None:
            return np.array([_code(column, value)], dtype=dtype.numpy_dtype)
        return np.array([_scale(column, _number(column.name, value), dtype.numpy_dtype)], dtype=dtype.numpy_dtype)


# A missing value the model takes as NaN (`missing: model`)
_MODELS_MISSING = object()


def _filled(column: TabularColumn, value: object) -> object:
    if not is_missing(value):
        return value
    if column.missing == "model":
        return _MODELS_MISSING
    if column.impute is None:
        raise MissingFieldError(f"column '{column.name}' is empty (no impute value declared)")
    return column.impute


def _shift_and_divisor(column: TabularColumn) -> tuple[float, float]:
    if column.transform == "standard":
        return column.mean, column.std
    if column.transform == "minmax":
        return column.min, column.max - column.min
    return 0.0, 1.0


def _number(name: str, value: object) -> float:
    number = record_number(value)
    if number is None:
        raise DTypeError(f"column '{name}': {value!r} is not a number")
    if not math.isfinite(number):
        raise DTypeError(f"column '{name}': {value!r} is not a finite number")
    return number


def _scale(column: TabularColumn, value: float, dtype: np.dtype | None) -> float:
    """The value scaled as declared; refused when the input's type cannot hold it (1e308 as float32 is inf, and a
    model answers inf or NaN for it)."""
    shift, divisor = _shift_and_divisor(column)
    scaled = (value - shift) / divisor
    if not abs(scaled) <= _largest(dtype):
        raise DTypeError(f"column '{column.name}': {value!r} is out of range for {dtype} ({scaled:g} after scaling)")
    return scaled


def _largest(dtype: np.dtype | None) -> float:
    """The largest magnitude a column's input type holds: a float type's, else float64's."""
    floating = dtype is not None and np.issubdtype(dtype, np.floating)
    return float(np.finfo(dtype if floating else np.float64).max)


def _code(column: TabularColumn, value: object) -> float:
    """A category's code: its position in the model's list (a category it never saw is refused, never guessed)."""
    codes = column.codes or []
    try:
        return float(codes.index(category_text(value)))
    except ValueError:
        raise InputError(f"column '{column.name}': {value!r} is not one of {codes}") from None


def _one_hot(column: TabularColumn, value: object) -> list[float]:
    categories = column.categories or []
    if category_text(value) not in categories:
        raise InputError(f"column '{column.name}': {value!r} is not one of {categories}")
    return [1.0 if category_text(value) == category else 0.0 for category in categories]
