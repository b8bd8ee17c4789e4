"""Each schema violation: one line naming the field and the rule."""

from __future__ import annotations

import pytest

from forwardpass.config import InputSchemaConfig
from forwardpass.errors import SchemaError
from forwardpass.quality import SchemaCheck

SCHEMA = SchemaCheck(
    InputSchemaConfig.model_validate(
        {
            "fields": {
                "age": {"type": "integer", "min": 0, "max": 120},
                "income": {"type": "number", "min": 0, "required": False},
                "country": {"type": "string", "categories": ["FR", "DE"]},
                "member": {"type": "boolean", "required": False},
            },
            "allow_extra": False,
        }
    )
)
GOOD = {"age": 40, "income": 1200.5, "country": "FR", "member": True}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"age": 121}, "field 'age': 121 is above the maximum 120 (rule: max)"),
        ({"age": -1}, "field 'age': -1 is below the minimum 0 (rule: min)"),
        ({"age": 4.5}, "field 'age': 4.5 is not a whole number (rule: type integer)"),
        ({"age": "old"}, "field 'age': 'old' is not a number (rule: type number)".replace("number)", "integer)")),
        ({"age": None}, "field 'age': missing (rule: required)"),
        ({"income": -3}, "field 'income': -3 is below the minimum 0 (rule: min)"),
        ({"country": "US"}, "field 'country': 'US' is not one of ['FR', 'DE'] (rule: categories)"),
        ({"country": 7}, "field 'country': 7 is not text (rule: type string)"),
        ({"member": "maybe"}, "field 'member': 'maybe' is not true or false (rule: type boolean)"),
        ({"colour": "red"}, "field 'colour': not in the schema (rule: allow_extra)"),
    ],
)
def test_each_violation_names_field_and_rule(change, message):
    with pytest.raises(SchemaError) as caught:
        SCHEMA(dict(GOOD, **change))
    assert str(caught.value) == message


def test_good_records_pass_and_optional_fields_may_be_missing():
    SCHEMA(GOOD)
    SCHEMA({"age": "40", "country": "DE"})  # CSV cells are text: numeric text is a number
    SCHEMA({"age": 40.0, "country": "DE", "income": ""})


def test_several_violations_share_one_line():
    with pytest.raises(SchemaError) as caught:
        SCHEMA({"age": 200, "country": "US"})
    text = str(caught.value)
    assert "\n" not in text
    assert text == (
        "field 'age': 200 is above the maximum 120 (rule: max); "
        "field 'country': 'US' is not one of ['FR', 'DE'] (rule: categories)"
    )


def test_a_non_record_is_refused():
    with pytest.raises(SchemaError, match="expected a record"):
        SCHEMA([1, 2, 3])


NUMBERS = SchemaCheck(
    InputSchemaConfig.model_validate(
        {
            "fields": {
                "age": {"type": "integer", "min": 0, "max": 120},
                "bmi": {"type": "number", "min": 10.0},
                "dose": {"type": "number", "required": False},
            },
            "allow_extra": False,
        }
    )
)
NUMBERS_GOOD = {"age": 40, "bmi": 22.5, "dose": 0.0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({}, None),
        ({"age": 120.0, "bmi": 10}, None),  # bounds are inclusive; a whole float is an integer
        ({"age": "41"}, None),  # numeric text, as CSV cells come
        ({"dose": None}, None),
        ({"age": 120.5}, "field 'age': 120.5 is not a whole number (rule: type integer)"),
        ({"age": 121}, "field 'age': 121 is above the maximum 120 (rule: max)"),
        ({"bmi": 9.99}, "field 'bmi': 9.99 is below the minimum 10 (rule: min)"),
        ({"bmi": True}, "field 'bmi': True is not a number (rule: type number)"),
        ({"bmi": float("inf")}, "field 'bmi': inf is not a number (rule: type number)"),
        ({"bmi": float("nan")}, "field 'bmi': missing (rule: required)"),
        ({"extra": 1.0}, "field 'extra': not in the schema (rule: allow_extra)"),
    ],
)
def test_records_of_numbers_get_the_same_verdicts_as_field_by_field(change, message):
    """A numbers-only schema checks plain numbers in one vector pass; its verdicts are the per-field ones."""
    record = {**NUMBERS_GOOD, **change}
    if message is None:
        NUMBERS(record)
        return
    with pytest.raises(SchemaError) as caught:
        NUMBERS(record)
    assert str(caught.value) == message
