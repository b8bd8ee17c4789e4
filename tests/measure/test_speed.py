"""bench: random inputs from specs, the raw ONNX Runtime reference, and a quick run (no timing asserts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper

import forwardpass
from forwardpass.errors import DTypeError, InputError
from forwardpass.measure import RawSession, bench, random_inputs
from forwardpass.tensor import DataType, TensorSpec


@pytest.fixture
def two_inputs(tmp_path: Path) -> Path:
    """y = x * cast(mask) on float32 x [batch, n] and int64 mask [batch, n]: a dynamic non-batch dim, two dtypes."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "m"], ["y"])],
        "masked",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "n"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path / "masked"
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    engine = {"intra_op_threads": 2, "graph_optimization": "basic"}
    (folder / "config.yaml").write_text(yaml.safe_dump({"engine": engine}), encoding="utf-8")
    return folder


def test_random_inputs_follow_the_specs() -> None:
    specs = [
        TensorSpec("image", DataType.FP16, (-1, 3, 4, 4)),
        TensorSpec("ids", DataType.INT64, (-1, -1)),
        TensorSpec("flags", DataType.BOOL, (-1, 2)),
    ]
    batch = random_inputs(specs, 5, dynamic_dim=7)
    assert batch["image"].shape == (5, 3, 4, 4) and batch["image"].dtype == np.float16
    assert batch["ids"].shape == (5, 7) and batch["ids"].dtype == np.int64
    assert batch["ids"].min() >= 0 and batch["ids"].max() < 10
    assert batch["flags"].dtype == np.bool_
    for spec in specs:
        spec.validate(batch[spec.name])
    assert np.array_equal(random_inputs(specs, 5)["image"], random_inputs(specs, 5)["image"])  # seeded


def test_random_inputs_refuse_what_they_cannot_make() -> None:
    with pytest.raises(InputError, match="fixed batch size of 1"):
        random_inputs([TensorSpec("x", DataType.FP32, (1, 3))], 8)
    with pytest.raises(DTypeError, match="numeric"):
        random_inputs([TensorSpec("text", DataType.BYTES, (-1,))], 1)


def test_the_raw_session_gets_the_same_options(two_inputs: Path) -> None:
    model = forwardpass.load(two_inputs, intra_op_threads=1, warmup=0)
    assert (model.engine.intra_op_threads, model.engine.graph_optimization) == (1, "basic")  # override + config
    raw = RawSession(model)
    options = raw.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert raw.session.get_providers() == model.session.providers
    feed = random_inputs(model.inputs, 3)
    np.testing.assert_array_equal(raw.run(feed)[0], model.infer(feed)["y"])


def test_bench_gives_both_timings_and_a_ratio(two_inputs: Path) -> None:
    model = forwardpass.load(two_inputs, warmup=0)
    points = bench(model, [1, 4], seconds=0.04, warmup_seconds=0.01, rounds=2)
    assert [p.batch_size for p in points] == [1, 4]
    for point in points:
        for timing in (point.ours, point.raw):
            assert timing.throughput > 0 and len(timing.round_rates) == 2
            assert timing.latency.p50_ms <= timing.latency.p99_ms <= timing.latency.max_ms
        assert point.ratio > 0
        assert set(point.to_dict()) == {"batch_size", "forwardpass", "onnxruntime", "ratio"}


def test_bench_refuses_bad_settings(two_inputs: Path) -> None:
    model = forwardpass.load(two_inputs, warmup=0)
    with pytest.raises(InputError):
        bench(model, [0], seconds=1, warmup_seconds=0)
    with pytest.raises(InputError):
        bench(model, [1], seconds=0, warmup_seconds=0)
