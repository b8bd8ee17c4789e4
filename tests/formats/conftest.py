"""Fixtures the format tests share."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.formats.categorical_data import Categorical, categorical_data


@pytest.fixture(scope="session")
def categorical() -> Categorical:
    return categorical_data()


@pytest.fixture(scope="module")
def tf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """TensorFlow, imported with Keras' folder in tmp (Keras writes one when imported)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
        patch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow

        yield tensorflow
