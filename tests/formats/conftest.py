"""Fixtures the format tests share."""

from __future__ import annotations

import pytest

from tests.formats.categorical_data import Categorical, categorical_data


@pytest.fixture(scope="session")
def categorical() -> Categorical:
    return categorical_data()
