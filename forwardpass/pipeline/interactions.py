"""A user's interaction history → a multi-hot vector over the model's items (recommendation models)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from forwardpass.config import InteractionsConfig
from forwardpass.errors import DTypeError, InputError, MissingFieldError
from forwardpass.tensor import DataType

__all__ = ["InteractionsPreprocessor"]


class InteractionsPreprocessor:
    def __init__(self, config: InteractionsConfig, input_name: str, items: list[str]) -> None:
        self.input_name = input_name
        self.field = config.field
        self.index = {item: i for i, item in enumerate(items)}
        dtype = DataType.from_name(config.datatype).numpy_dtype
        self._dtype = dtype if dtype is not None else np.dtype(np.float32)

    def __call__(self, raw: object) -> dict[str, np.ndarray]:
        if isinstance(raw, Mapping):
            if self.field not in raw:
                raise MissingFieldError(f"record is missing field '{self.field}' (the items already seen)")
            raw = raw[self.field]
        if not isinstance(raw, list | tuple):
            raise DTypeError(f"expected a list of item ids (or a record with '{self.field}'), got {type(raw).__name__}")
        history = np.zeros(len(self.index), dtype=self._dtype)
        for item in raw:
            position = self.index.get(str(item))
            if position is None:
                raise InputError(
                    f"field '{self.field}': unknown item {item!r}; the model knows {len(self.index)} items"
                )
            history[position] = 1
        return {self.input_name: history}
