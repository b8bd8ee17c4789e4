"""A DataFrame with categories, as users fit tree models on them: the data the format tests of categorical
features share, and how they read a classifier's answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Categorical:
    frame: Any  # pandas DataFrame: a number, a numeric category (10/20/30) and a text one
    target: Any
    held_out: Any  # its first rows, as a DataFrame the framework predicts on
    records: list[dict[str, object]]  # the same rows as a user sends them


def categorical_data() -> Categorical:
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = 300
    frame = pd.DataFrame(
        {
            "amount": rng.normal(size=rows),
            "size": pd.Categorical(rng.choice([10, 20, 30], rows)),
            "colour": pd.Categorical(rng.choice(["red", "green", "blue"], rows), categories=["red", "green", "blue"]),
        }
    )
    target = (((frame["size"] == 20) ^ (frame["colour"] == "green")) | (frame["amount"] > 1)).astype(int)
    held_out = frame.iloc[:12]
    records: list[dict[str, object]] = [
        {"amount": float(row.amount), "size": int(row.size), "colour": str(row.colour)} for row in held_out.itertuples()
    ]
    return Categorical(frame, target, held_out, records)


def class_scores(answers: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Each answer's scores in class order (its top_k holds every class of a small classifier)."""
    return np.array([[entry["score"] for entry in sorted(a["top_k"], key=lambda e: e["index"])] for a in answers])
