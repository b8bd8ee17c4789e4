"""Calibration and eval samples read from the user's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import forwardpass
from forwardpass.precision.samples import read_samples

RECORD = {"age": 54, "sex": 2, "bmi": 36.1, "bp": 115, "s1": 163, "s2": 98.4, "s3": 43, "s4": 4, "s5": 4.68, "s6": 101}


@pytest.mark.parametrize(
    ("name", "text"), [("records.jsonl", json.dumps(RECORD)), ("records.json", json.dumps([RECORD]))]
)
def test_a_byte_order_mark_before_json_records_is_not_data(tmp_path: Path, name: str, text: str) -> None:
    """Windows tools write one: the file was refused ('line 1: not valid JSON')."""
    (tmp_path / name).write_text(text, encoding="utf-8-sig")
    model = forwardpass.load("diabetes")
    try:
        samples = read_samples(model, tmp_path / name, role="calibration")
        assert samples.kind == "records" and len(samples.items) == 1
    finally:
        model.close()
