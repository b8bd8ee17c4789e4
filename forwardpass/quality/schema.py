"""The config's `input_schema:` checked on each raw record before preprocessing.

Every violation names the field and the rule it breaks; all of a record's violations come in one line:
    field 'age': 130 is above the maximum 120 (rule: max); field 'sex': missing (rule: required)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from forwardpass.config import FieldSchema, InputSchemaConfig, category_text
from forwardpass.errors import SchemaError
from forwardpass.pipeline.records import PLAIN_NUMBERS, record_number

__all__ = ["SchemaCheck"]

SHOWN = 5  # violations named in the one line; the rest are counted


class SchemaCheck:
    def __init__(self, config: InputSchemaConfig) -> None:
        self.fields = config.fields
        self.allow_extra = config.allow_extra
        # A schema of number / integer fields without categories checks a record of finite numbers in a few vector
        # operations; a record that fails them (or holds anything else) is checked field by field for the message.
        self._names = list(self.fields)
        self._vectorized = all(
            rule.type in ("number", "integer") and rule.categories is None for rule in self.fields.values()
        )
        self._min = np.array([-np.inf if rule.min is None else rule.min for rule in self.fields.values()])
        self._max = np.array([np.inf if rule.max is None else rule.max for rule in self.fields.values()])
        self._integer = np.array([rule.type == "integer" for rule in self.fields.values()])

    def __call__(self, raw: object) -> None:
        if not isinstance(raw, Mapping):
            raise SchemaError(f"expected a record with fields {sorted(self.fields)}, got {type(raw).__name__}")
        if self._vectorized and self._passes(raw):
            return
        problems = [problem for name, rule in self.fields.items() if (problem := _check(name, rule, raw.get(name)))]
        if not self.allow_extra:
            problems += [
                f"field '{name}': not in the schema (rule: allow_extra)" for name in raw if name not in self.fields
            ]
        if len(problems) > SHOWN:
            problems = [*problems[:SHOWN], f"and {len(problems) - SHOWN} more violations"]
        if problems:
            raise SchemaError("; ".join(problems))

    def _passes(self, raw: Mapping[str, object]) -> bool:
        """True when every field holds a finite int or float within its bounds (and whole where it must be), and
        the record has no field beyond the schema unless allowed: then `_check` would find nothing either."""
        values = [raw.get(name) for name in self._names]
        if not set(map(type, values)) <= PLAIN_NUMBERS:
            return False
        if not self.allow_extra and len(raw) != len(values):  # every field is there: more keys are extra ones
            return False
        numbers = np.array(values, dtype=np.float64)
        fine = np.isfinite(numbers) & (numbers >= self._min) & (numbers <= self._max)
        if self._integer.any():
            fine &= ~self._integer | (numbers == np.floor(numbers))
        return bool(fine.all())


def _missing(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _check(name: str, rule: FieldSchema, value: object) -> str | None:
    if _missing(value):
        return f"field '{name}': missing (rule: required)" if rule.required else None
    if rule.type in ("number", "integer"):
        number = _as_number(value)
        if number is None:
            return f"field '{name}': {value!r} is not a number (rule: type {rule.type})"
        if rule.type == "integer" and not number.is_integer():
            return f"field '{name}': {value!r} is not a whole number (rule: type integer)"
        if rule.min is not None and number < rule.min:
            return f"field '{name}': {value!r} is below the minimum {rule.min:g} (rule: min)"
        if rule.max is not None and number > rule.max:
            return f"field '{name}': {value!r} is above the maximum {rule.max:g} (rule: max)"
    elif rule.type == "boolean" and not isinstance(value, bool) and str(value).lower() not in ("true", "false"):
        return f"field '{name}': {value!r} is not true or false (rule: type boolean)"
    elif rule.type == "string" and not isinstance(value, str):
        return f"field '{name}': {value!r} is not text (rule: type string)"
    if rule.categories is not None and category_text(value) not in rule.categories:
        return f"field '{name}': {value!r} is not one of {rule.categories} (rule: categories)"
    return None


def _as_number(value: object) -> float | None:
    """A finite number by the one rule records follow (`record_number`), but a boolean is no number to a schema:
    its `number` and `integer` types check what was sent, not what the model will make of it."""
    if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false")):
        return None
    number = record_number(value)
    return number if number is not None and math.isfinite(number) else None
