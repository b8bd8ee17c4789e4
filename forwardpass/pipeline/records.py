"""Records (a mapping of field to value, from JSON, CSV, Parquet or a request): the one rule for how a value becomes a
number, what counts as missing, and the check that a record's fields are the model's columns.

Every reader of records — the tabular pipeline, the input schema, drift statistics, explanations — uses these, so a
value means the same number everywhere: ints and floats as they are, booleans as 1 and 0 (JSON `true`, CSV `true`),
numeric text as its number (CSV cells are text); anything else is no number.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

from forwardpass.errors import InputError, MissingFieldError

__all__ = ["PLAIN_NUMBERS", "check_fields", "data_columns", "is_missing", "record_number"]

PLAIN_NUMBERS = frozenset({float, int})  # exactly these types need no conversion (bool is a subclass of int: excluded)
_BOOLEAN_TEXT = {"true": 1.0, "false": 0.0}
# What pandas' to_parquet names an index that is not a plain range (a filtered or sampled frame's): no field
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")


def record_number(value: object) -> float | None:
    """A record's value as a number, or None when it is none (text that is no number, a list, null)."""
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _BOOLEAN_TEXT:
            return _BOOLEAN_TEXT[lowered]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def is_missing(value: object) -> bool:
    """null, empty text, or NaN (a CSV's empty cell, pandas' missing value): what `impute` may fill."""
    if value is None or (isinstance(value, str) and value == ""):
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def data_columns(names: Iterable[str]) -> list[str]:
    """A table's columns less the index pandas stored beside the data (`__index_level_0__`)."""
    return [name for name in names if not _PANDAS_INDEX.fullmatch(name)]


def check_fields(record: Mapping[str, object], columns: Iterable[str], *, absent_ok: bool, unknown_ok: bool) -> None:
    """Refuse a record whose fields are not the columns: an absent column (unless `absent_ok`) or a field that is no
    column (unless `unknown_ok`), named, with the nearest column when it looks like a misspelling."""
    names = list(columns)
    if not unknown_ok:
        known = set(names)
        unknown = [str(field) for field in record if field not in known]
        if unknown:
            raise InputError(
                f"unknown field {_list(unknown)}{_did_you_mean(unknown[0], names)}; the model's columns: "
                f"{_list(names, shown=10)}"
            )
    if not absent_ok:
        absent = [name for name in names if name not in record]
        if absent:
            raise MissingFieldError(
                f"record is missing column {_list(absent)}{_did_you_mean(absent[0], list(map(str, record)))}"
            )


def _list(names: list[str], shown: int = 5) -> str:
    listed = ", ".join(f"'{name}'" for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6) or [
        candidate for candidate in candidates if candidate.lower() == name.lower()
    ]
    return f" (did you mean '{close[0]}'?)" if close else ""
