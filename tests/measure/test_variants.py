"""Precision variants: the repository's versions, told apart by the precision.json beside each artefact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forwardpass.errors import InputError, NotFoundError
from forwardpass.measure.variants import precision_of, variants
from tests.conftest import AddModel


def test_versions_are_picked_by_their_precision_json(tmp_path: Path, add_model: AddModel) -> None:
    for version, precision in ((1, None), (2, "int8"), (3, "fp16"), (4, "int8")):
        add_model(tmp_path / "m" / str(version) / "model.onnx", constant=float(version))
        if precision:
            (tmp_path / "m" / str(version) / "precision.json").write_text(json.dumps({"precision": precision}))
    assert variants("m", ["fp32", "int8", "fp16"], tmp_path) == {"fp32": 1, "int8": 4, "fp16": 3}
    assert precision_of(tmp_path / "m" / "2") == "int8" and precision_of(tmp_path / "m" / "1") == "fp32"
    with pytest.raises(NotFoundError, match=r"no int4 version; it has fp32 \(version 1\), fp16 \(version 3\)"):
        variants("m", ["int4"], tmp_path)


def test_a_broken_precision_json_is_an_input_error(tmp_path: Path, add_model: AddModel) -> None:
    add_model(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "1" / "precision.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="precision"):
        variants("m", ["fp32"], tmp_path)
