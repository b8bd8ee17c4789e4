"""TabularPreprocessor: fixed column order, scaling equal to scikit-learn's, imputation, one-hot, per-column errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from forwardpass.config import TabularColumn, TabularConfig
from forwardpass.errors import DTypeError, InputError, MissingFieldError
from forwardpass.pipeline.tabular import TabularPreprocessor

COLUMNS = ["age", "bmi", "bp", "glucose"]
TRAIN = np.array(
    [[25.0, 22.1, 80.0, 90.0], [61.0, 31.4, 95.0, 140.0], [43.0, 27.0, 70.0, 101.0], [33.0, 35.2, 88.0, 180.0]]
)
NEW = np.array([[50.0, 24.0, 77.0, 120.0], [19.0, 40.5, 101.0, 65.0], [70.0, 18.0, 60.0, 210.0]])


def preprocessor(columns: list[TabularColumn], datatype: str = "FP32", **options: object) -> TabularPreprocessor:
    config = TabularConfig.model_validate({"kind": "tabular", "columns": columns, "datatype": datatype, **options})
    return TabularPreprocessor(config, "features")


def records(rows: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(COLUMNS, map(float, row), strict=True)) for row in rows]


def test_columns_follow_the_config_not_the_record():
    pre = preprocessor([TabularColumn(name=name) for name in ["c", "a", "b"]])
    forward = pre({"a": 1, "b": 2, "c": 3})["features"]
    backward = pre({"c": 3, "b": 2, "a": 1})["features"]
    np.testing.assert_array_equal(forward, [3.0, 1.0, 2.0])
    np.testing.assert_array_equal(backward, forward)


def test_a_field_that_is_no_column_is_refused_with_the_nearest_column():
    pre = preprocessor([TabularColumn(name=name) for name in ["age", "bmi"]])
    with pytest.raises(InputError, match=r"unknown field 'BMI' \(did you mean 'bmi'\?\)"):
        pre({"age": 1, "BMI": 2})
    with pytest.raises(InputError, match="unknown field 'extra'"):
        pre({"age": 1, "bmi": 2, "extra": 3})
    ignoring = preprocessor([TabularColumn(name=name) for name in ["age", "bmi"]], unknown_fields="ignore")
    assert ignoring({"age": 1, "bmi": 2, "extra": "ignored"})["features"].tolist() == [1.0, 2.0]


def test_output_dtype_and_width():
    pre = preprocessor([TabularColumn(name="x"), TabularColumn(name="y", categories=["a", "b", "c"])], "FP64")
    out = pre({"x": 2, "y": "b"})["features"]
    assert out.dtype == np.float64
    assert out.shape == (4,) == (pre.width,)


def test_standard_scaling_equals_sklearn():
    scaler = StandardScaler().fit(TRAIN)
    pre = preprocessor(
        [
            TabularColumn(name=name, transform="standard", mean=float(mean), std=float(std))
            for name, mean, std in zip(COLUMNS, scaler.mean_, scaler.scale_, strict=True)
        ]
    )
    got = np.stack([pre(record)["features"] for record in records(NEW)])
    np.testing.assert_allclose(got, scaler.transform(NEW).astype(np.float32), rtol=1e-6, atol=1e-6)


def test_minmax_scaling_equals_sklearn():
    scaler = MinMaxScaler().fit(TRAIN)
    pre = preprocessor(
        [
            TabularColumn(name=name, transform="minmax", min=float(low), max=float(high))
            for name, low, high in zip(COLUMNS, scaler.data_min_, scaler.data_max_, strict=True)
        ]
    )
    got = np.stack([pre(record)["features"] for record in records(NEW)])
    np.testing.assert_allclose(got, scaler.transform(NEW).astype(np.float32), rtol=1e-6, atol=1e-6)


IMPUTED = [
    TabularColumn(name="age", transform="standard", mean=40.0, std=10.0, impute=40.0),
    TabularColumn(name="bmi", impute=25.5),
]


@pytest.mark.parametrize("missing", [None, "", float("nan"), np.float64("nan"), np.float32("nan")])
def test_impute_fills_null_and_empty_values(missing: object):
    np.testing.assert_allclose(preprocessor(IMPUTED)({"age": 50, "bmi": missing})["features"], [1.0, 25.5])


def test_an_absent_column_is_an_error_even_with_an_impute_value_unless_opted_in():
    with pytest.raises(MissingFieldError, match="missing column 'bmi'"):
        preprocessor(IMPUTED)({"age": 50})
    with pytest.raises(MissingFieldError, match="missing column 'age', 'bmi'"):
        preprocessor(IMPUTED)({})
    np.testing.assert_allclose(preprocessor(IMPUTED, impute_absent=True)({"age": 50})["features"], [1.0, 25.5])


def test_impute_a_category():
    pre = preprocessor([TabularColumn(name="sex", categories=["f", "m"], impute="f")])
    assert pre({"sex": None})["features"].tolist() == [1.0, 0.0]
    assert pre({"sex": "m"})["features"].tolist() == [0.0, 1.0]


def test_numbers_as_strings_and_bools_are_accepted():
    pre = preprocessor([TabularColumn(name="a"), TabularColumn(name="b"), TabularColumn(name="c")])
    np.testing.assert_allclose(pre({"a": "3.5", "b": True, "c": "false"})["features"], [3.5, 1.0, 0.0])


def test_one_hot_categories():
    pre = preprocessor(
        [
            TabularColumn(name="colour", categories=["red", "green", "blue"]),
            TabularColumn(name="n"),
            TabularColumn(name="size", categories=["1", "2"]),
        ]
    )
    out = pre({"colour": "blue", "n": 7, "size": 2})["features"]
    assert out.tolist() == [0.0, 0.0, 1.0, 7.0, 0.0, 1.0]


def test_a_coded_category_is_its_position_in_the_list_and_an_unseen_one_is_refused():
    pre = preprocessor([TabularColumn(name="size", codes=["10", "20", "30"]), TabularColumn(name="n")])
    assert pre({"size": 30, "n": 7})["features"].tolist() == [2.0, 7.0]
    assert pre({"size": 20.0, "n": 7})["features"].tolist() == [1.0, 7.0]  # the number 20.0 is the category "20"
    with pytest.raises(InputError, match=r"column 'size': 2 is not one of \['10', '20', '30'\]"):
        pre({"size": 2, "n": 7})  # a code sent as the value is no category of the model's


def test_unknown_category_names_the_column():
    pre = preprocessor([TabularColumn(name="colour", categories=["red", "green"])])
    with pytest.raises(InputError) as info:
        pre({"colour": "purple"})
    assert "'colour'" in str(info.value)
    assert "'purple'" in str(info.value)
    assert "red" in str(info.value)


@pytest.mark.parametrize("value", ["abc", [1, 2], {"x": 1}, float("inf"), "-inf", np.array([1.0, 2.0])])
def test_non_numbers_are_dtype_errors_naming_the_column(value: object):
    pre = preprocessor([TabularColumn(name="age"), TabularColumn(name="glucose")])
    with pytest.raises(DTypeError, match="'glucose'"):
        pre({"age": 3, "glucose": value})


def test_missing_column_without_impute_names_it():
    pre = preprocessor([TabularColumn(name="age"), TabularColumn(name="glucose")])
    for record in ({"age": 3}, {"age": 3, "glucose": None}, {"age": 3, "glucose": ""}, {"age": 3, "glucose": math.nan}):
        with pytest.raises(MissingFieldError, match="'glucose'"):
            pre(record)


@pytest.mark.parametrize("raw", [[1.0, 2.0], "age=3", 5, None])
def test_a_non_record_is_refused(raw: object):
    with pytest.raises(InputError, match="record"):
        preprocessor([TabularColumn(name="age")])(raw)


def test_degenerate_scales_are_refused_by_the_config():
    with pytest.raises(ValueError, match="std must not be 0"):
        TabularColumn(name="a", transform="standard", std=0)
    with pytest.raises(ValueError, match="max must differ from min"):
        TabularColumn(name="a", transform="minmax", min=1, max=1)


def test_records_of_plain_numbers_scale_exactly_as_column_by_column():
    """Floats and ints take the vectorized path; the same values as text take the per-column one: equal bits."""
    pre = preprocessor(
        [
            TabularColumn(name="age", transform="standard", mean=41.3, std=13.7),
            TabularColumn(name="bmi", transform="minmax", min=15.0, max=45.5),
            TabularColumn(name="bp"),
            TabularColumn(name="glucose", transform="standard", mean=100.1, std=33.3, impute=100.0),
        ],
        "FP64",
    )
    rng = np.random.default_rng(0)
    for row in rng.normal(50, 30, size=(200, 4)):
        numbers = dict(zip(COLUMNS, [int(row[0]), *map(float, row[1:])], strict=True))
        texts = {name: repr(value) for name, value in numbers.items()}
        np.testing.assert_array_equal(pre(numbers)["features"], pre(texts)["features"])
    imputed = pre({"age": 30, "bmi": 20.0, "bp": 80, "glucose": float("nan")})["features"]
    assert imputed[3] == (100.0 - 100.1) / 33.3


@pytest.mark.parametrize("value", [1e308, -1e39, "4e38"])
def test_a_number_the_input_type_cannot_hold_is_refused_naming_the_column(value: object):
    """1e308 is finite in JSON and Python but inf as float32: the model would answer inf or NaN for it."""
    pre = preprocessor([TabularColumn(name="age"), TabularColumn(name="glucose", transform="standard", std=0.5)])
    with pytest.raises(DTypeError, match=r"column 'glucose': .* is out of range for float32"):
        pre({"age": 3.0, "glucose": value})
    assert pre({"age": 3.0, "glucose": 1e38})["features"][1] == np.float32(2e38)  # scaled, still a float32
    assert pre({"age": 1e38, "glucose": 0.0})["features"][0] == np.float32(1e38)


def test_float64_columns_take_what_float32_cannot():
    pre = preprocessor([TabularColumn(name="age")], "FP64")
    assert pre({"age": 1e308})["features"][0] == 1e308


@pytest.mark.parametrize("missing", [None, "", float("nan")])
def test_a_column_whose_model_takes_missing_values_gives_it_nan(missing: object):
    """XGBoost's and LightGBM's trees learnt a branch for a missing value: it is the model's own answer, no guess."""
    columns = [
        TabularColumn(name="age", transform="standard", mean=40.0, std=10.0, missing="model"),
        TabularColumn(name="size", codes=["10", "20"], missing="model"),
    ]
    assert np.isnan(preprocessor(columns)({"age": missing, "size": missing})["features"]).all()
    np.testing.assert_allclose(preprocessor(columns)({"age": 50, "size": 20})["features"], [1.0, 1.0])
    with pytest.raises(DTypeError, match="'age': inf is not a finite number"):
        preprocessor(columns)({"age": math.inf, "size": 20})
    with pytest.raises(MissingFieldError, match="missing column 'size'"):
        preprocessor(columns)({"age": 50})


def test_a_missing_value_is_the_models_or_imputed_not_both():
    with pytest.raises(ValueError, match="impute or missing: model, not both"):
        TabularColumn(name="age", impute=40.0, missing="model")
    with pytest.raises(ValueError, match="one-hot"):
        TabularColumn(name="sex", categories=["f", "m"], missing="model")
