"""Tabular records: named columns in a fixed order, standardization / min-max, imputation, one-hot categories."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from forwardpass.config import TabularColumn, TabularConfig
from forwardpass.errors import DTypeError, InputError, MissingFieldError
from forwardpass.tensor import DataType

__all__ = ["TabularPreprocessor"]


class TabularPreprocessor:
    def __init__(self, config: TabularConfig, input_name: str) -> None:
        self.columns = config.columns
        self.input_name = input_name
        dtype = DataType.from_name(config.datatype).numpy_dtype
        self._dtype = dtype if dtype is not None else np.dtype(np.float32)
        self.width = sum(len(c.categories) if c.categories else 1 for c in self.columns)
        # All-numeric columns: a record of finite numbers is scaled in one vector operation (the same float64
        # arithmetic, (value - shift) / divisor, as `_scale`); anything else takes the per-column path below.
        self._names = [column.name for column in self.columns]
        self._vectorized = all(column.categories is None for column in self.columns)
        self._shift, self._divisor = np.array([_shift_and_divisor(column) for column in self.columns]).T

    def __call__(self, raw: object) -> dict[str, np.ndarray]:
        if not isinstance(raw, Mapping):
            raise DTypeError(f"expected a record (a mapping of column to value), got {type(raw).__name__}")
        if self._vectorized:
            values = [raw.get(name) for name in self._names]
            if set(map(type, values)) <= _PLAIN_NUMBERS:
                numbers = np.array(values, dtype=np.float64)
                if np.isfinite(numbers).all():
                    return {self.input_name: ((numbers - self._shift) / self._divisor).astype(self._dtype)}
        features: list[float] = []
        for column in self.columns:
            value = raw.get(column.name)
            if _is_missing(value):
                if column.impute is None:
                    raise MissingFieldError(f"record is missing column '{column.name}' (no impute value declared)")
                value = column.impute
            if column.categories is not None:
                features.extend(_one_hot(column, value))
            else:
                features.append(_scale(column, _number(column.name, value)))
        return {self.input_name: np.asarray(features, dtype=self._dtype)}


_PLAIN_NUMBERS = {float, int}  # exactly these types: not bool, not numeric text


def _shift_and_divisor(column: TabularColumn) -> tuple[float, float]:
    if column.transform == "standard":
        return column.mean, column.std
    if column.transform == "minmax":
        return column.min, column.max - column.min
    return 0.0, 1.0


def _is_missing(value: object) -> bool:
    if value is None or (isinstance(value, str) and value == ""):
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DTypeError(f"column '{name}': {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DTypeError(f"column '{name}': {value!r} is not a finite number")
    return number


def _scale(column: TabularColumn, value: float) -> float:
    shift, divisor = _shift_and_divisor(column)
    return (value - shift) / divisor


def _one_hot(column: TabularColumn, value: object) -> list[float]:
    categories = column.categories or []
    if str(value) not in categories:
        raise InputError(f"column '{column.name}': {value!r} is not one of {categories}")
    return [1.0 if str(value) == category else 0.0 for category in categories]
