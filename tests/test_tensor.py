"""The dtype table and TensorSpec.validate, checked against numpy, ONNX and a real ONNX Runtime session."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from forwardpass.errors import DTypeError, NonFiniteError, ShapeError
from forwardpass.tensor import DataType, TensorSpec, as_array

# V2 name -> ONNX TensorProto element type, written out here independently of forwardpass's table.
ONNX_ELEMENT = {
    "BOOL": onnx.TensorProto.BOOL,
    "UINT8": onnx.TensorProto.UINT8,
    "UINT16": onnx.TensorProto.UINT16,
    "UINT32": onnx.TensorProto.UINT32,
    "UINT64": onnx.TensorProto.UINT64,
    "INT8": onnx.TensorProto.INT8,
    "INT16": onnx.TensorProto.INT16,
    "INT32": onnx.TensorProto.INT32,
    "INT64": onnx.TensorProto.INT64,
    "FP16": onnx.TensorProto.FLOAT16,
    "FP32": onnx.TensorProto.FLOAT,
    "FP64": onnx.TensorProto.DOUBLE,
    "BF16": onnx.TensorProto.BFLOAT16,
    "BYTES": onnx.TensorProto.STRING,
}


def test_table_covers_the_v2_types():
    assert {member.name for member in DataType} == set(ONNX_ELEMENT)


@pytest.mark.parametrize("member", list(DataType), ids=lambda m: m.name)
def test_round_trip_through_every_name(member: DataType):
    assert DataType.from_name(member.name) is member
    assert DataType.from_name(member.name.lower()) is member
    assert DataType.from_name(member.onnx_name) is member
    if member.numpy_dtype is not None:
        assert DataType.from_numpy(member.numpy_dtype) is member
        if member is not DataType.BYTES:
            assert DataType.from_name(member.numpy_dtype.name) is member


@pytest.mark.parametrize("member", [m for m in DataType if m.numpy_dtype is not None], ids=lambda m: m.name)
def test_numpy_dtype_agrees_with_onnx(member: DataType):
    expected = helper.tensor_dtype_to_np_dtype(ONNX_ELEMENT[member.name])
    assert member.numpy_dtype == expected


def test_onnx_type_strings_are_what_onnxruntime_reports():
    """One Identity per type; ONNX Runtime's own NodeArg.type must equal the table's ONNX name."""
    nodes, inputs, outputs = [], [], []
    for member in DataType:
        element = ONNX_ELEMENT[member.name]
        nodes.append(helper.make_node("Identity", [f"in_{member.name}"], [f"out_{member.name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{member.name}", element, [2]))
        outputs.append(helper.make_tensor_value_info(f"out_{member.name}", element, [2]))
    model = helper.make_model(
        helper.make_graph(nodes, "types", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reported = {arg.name.removeprefix("in_"): arg.type for arg in session.get_inputs()}
    assert reported == {member.name: member.onnx_name for member in DataType}


def test_torch_names_are_torch_dtypes():
    torch = pytest.importorskip("torch")
    for member in DataType:
        if member.torch_name is not None:
            assert isinstance(getattr(torch, member.torch_name), torch.dtype), member


def test_text_arrays_map_to_bytes():
    assert DataType.from_numpy(np.dtype("U7")) is DataType.BYTES
    assert DataType.from_numpy(np.dtype("S3")) is DataType.BYTES
    assert DataType.from_numpy(np.dtype(object)) is DataType.BYTES


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DTypeError, match=r"unknown data type 'complex64'.*FP32"):
        DataType.from_name("complex64")


# --- TensorSpec.validate -------------------------------------------------------------------------------------------

IMAGE = TensorSpec("image", DataType.FP32, (-1, 3, 4, 4))


def test_conforming_array_passes_unchanged():
    array = np.zeros((2, 3, 4, 4), np.float32)
    out = IMAGE.validate(array)
    assert out.dtype == np.float32
    assert out.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_dynamic_dimension_takes_any_size(batch: int):
    assert IMAGE.validate(np.ones((batch, 3, 4, 4), np.float32)).shape[0] == batch


@pytest.mark.parametrize(
    "shape",
    [(3, 4, 4), (1, 3, 4, 4, 1), (1, 1, 4, 4), (1, 3, 4, 5), ()],
    ids=["rank-too-small", "rank-too-big", "channels", "width", "scalar"],
)
def test_shape_mismatch_names_tensor_expected_and_got(shape: tuple[int, ...]):
    with pytest.raises(ShapeError) as info:
        IMAGE.validate(np.zeros(shape, np.float32))
    message = str(info.value)
    assert "'image'" in message
    assert "[-1, 3, 4, 4]" in message
    assert str(list(shape)) in message


def test_ragged_nested_list_is_a_shape_error():
    with pytest.raises(ShapeError, match="'v'"):
        TensorSpec("v", DataType.FP32, (-1, -1)).validate([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize(
    ("values", "target"),
    [
        (np.array([[0.5, -2.0, 3.0]], np.float64), DataType.FP32),
        (np.array([[0.5, -2.0, 3.0]], np.float32), DataType.FP64),
        (np.array([[0.5, -2.0, 3.0]], np.float16), DataType.FP32),
        (np.array([[1, -2, 3]], np.int64), DataType.FP32),
        (np.array([[1, 0, 1]], np.bool_), DataType.FP32),
        (np.array([[1, 2, 3]], np.int32), DataType.INT64),
    ],
    ids=["f64-f32", "f32-f64", "f16-f32", "i64-f32", "bool-f32", "i32-i64"],
)
def test_safe_or_intended_casts_are_applied(values: np.ndarray, target: DataType):
    out = TensorSpec("x", target, (-1, 3)).validate(values)
    assert out.dtype == target.numpy_dtype
    np.testing.assert_allclose(out.astype(np.float64), values.astype(np.float64), rtol=1e-6)


def test_python_lists_are_accepted():
    out = TensorSpec("x", DataType.FP32, (-1, 2)).validate([[1.0, 2.5]])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1.0, 2.5]])


@pytest.mark.parametrize("target", [DataType.INT64, DataType.INT32, DataType.UINT8])
def test_float_to_integer_is_refused(target: DataType):
    with pytest.raises(DTypeError) as info:
        TensorSpec("ids", target, (-1,)).validate(np.array([1.5, 2.0]))
    message = str(info.value)
    assert "'ids'" in message
    assert target.name in message
    assert "float64" in message


@pytest.mark.parametrize("value", [np.array(["1.0", "2.0"]), ["a", "b"], np.array([b"1", b"2"])])
def test_text_to_number_is_refused(value: object):
    with pytest.raises(DTypeError, match=r"'x'.*FP32"):
        TensorSpec("x", DataType.FP32, (-1,)).validate(value)


def test_text_to_bytes_tensor_is_accepted():
    out = TensorSpec("s", DataType.BYTES, (-1,)).validate(["hello", "world"])
    assert out.dtype == object
    assert out.tolist() == ["hello", "world"]


def test_integer_values_that_do_not_fit_are_refused():
    """int64 → int32 is a 'same_kind' cast in numpy, but 2**40 would silently wrap around to 0."""
    with pytest.raises(DTypeError, match="'ids'"):
        TensorSpec("ids", DataType.INT32, (-1,)).validate(np.array([1, 2**40], dtype=np.int64))


def test_signed_to_unsigned_is_refused():
    with pytest.raises(DTypeError, match="'pixels'"):
        TensorSpec("pixels", DataType.UINT8, (-1,)).validate(np.array([-1, 300], dtype=np.int64))


def test_integer_values_that_fit_are_cast():
    out = TensorSpec("ids", DataType.INT32, (-1,)).validate(np.array([0, 7, -(2**31)], dtype=np.int64))
    assert out.dtype == np.int32
    assert out.tolist() == [0, 7, -(2**31)]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_refused_when_forbidden(bad: float):
    strict = TensorSpec("x", DataType.FP32, (-1, 2), allow_nonfinite=False)
    with pytest.raises(NonFiniteError, match="'x'"):
        strict.validate(np.array([[1.0, bad]], np.float32))


def test_nonfinite_allowed_by_default():
    strict = TensorSpec("x", DataType.FP32, (-1,), allow_nonfinite=False)
    lenient = TensorSpec("x", DataType.FP32, (-1,))
    assert np.isnan(lenient.validate(np.array([np.nan], np.float32))).all()
    assert np.isinf(lenient.validate(np.array([np.inf]))).all()
    assert strict.validate(np.array([1.0, -2.0])).tolist() == [1.0, -2.0]


@pytest.mark.parametrize("allow_nonfinite", [True, False])
def test_values_beyond_the_narrower_float_are_refused_not_turned_into_infinity(allow_nonfinite: bool):
    spec = TensorSpec("x", DataType.FP32, (-1,), allow_nonfinite=allow_nonfinite)
    with pytest.raises(DTypeError, match=r"'x'.*beyond the range of FP32"):
        spec.validate(np.array([1.0, 1e300]))  # finite in float64, inf once cast to float32


def test_ragged_nesting_is_a_shape_error_naming_the_tensor():
    with pytest.raises(ShapeError, match=r"'x'.*not a rectangular array"):
        as_array("x", [[1.0, 2.0], [3.0]])


def test_unbatched_and_to_dict():
    spec = TensorSpec("x", DataType.INT64, (-1, 8), allow_nonfinite=False)
    assert spec.unbatched() == TensorSpec("x", DataType.INT64, (8,), allow_nonfinite=False)
    assert spec.to_dict() == {"name": "x", "datatype": "INT64", "shape": [-1, 8]}
