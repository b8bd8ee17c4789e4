"""MLPerf LoadGen's four scenarios around a tiny model in process, performance and accuracy mode, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import forwardpass
from forwardpass.errors import InputError
from forwardpass.measure.mlperf import SCENARIOS, InProcess, OverHttp, Sample, parse_summary, run_scenarios
from tests.measure.conftest import Served

pytest.importorskip("mlperf_loadgen")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> forwardpass.Model:
    """4 features → 3 classes (a fixed linear layer)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    folder = tmp_path_factory.mktemp("mlperf") / "linear"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(onnx_model.SerializeToString())
    (folder / "config.yaml").write_text("max_batch_size: 16\n", encoding="utf-8")
    return forwardpass.load(folder)


def test_four_scenarios_run_and_their_summaries_are_kept(model: forwardpass.Model, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    weights = model.infer({"x": np.eye(4, dtype=np.float32)})["logits"]  # the model's own matrix
    truth = (x @ weights).argmax(axis=1)
    labels = truth.copy()
    labels[:10] = (labels[:10] + 1) % 3  # a quarter wrong on purpose: accuracy 0.75, not 1
    samples = [Sample({"x": row}, int(label)) for row, label in zip(x, labels, strict=True)]

    results = run_scenarios(
        InProcess(model), samples, tmp_path, modes=("performance", "accuracy"), seconds=0.3, classify=True
    )
    assert [(r.scenario, r.mode) for r in results] == [(s, m) for s in SCENARIOS for m in ("performance", "accuracy")]
    for result in results:
        folder = Path(result.folder)
        assert folder.parent == tmp_path and (folder / "mlperf_log_detail.txt").is_file()
        if result.mode == "performance":
            assert result.summary == (folder / "mlperf_log_summary.txt").read_text()
            assert f"Scenario : {result.scenario}" in result.summary
            assert result.result in ("VALID", "INVALID") and result.metric is not None and result.metric > 0
        else:
            assert result.samples == len(samples)
            assert result.accuracy == pytest.approx(0.75)
    by_scenario = {r.scenario: r for r in results if r.mode == "performance"}
    # the two scenarios whose validity does not hang on a latency bound of a noisy machine
    assert by_scenario["Offline"].result == "VALID" and by_scenario["SingleStream"].result == "VALID"
    assert by_scenario["Offline"].metric_name == "Samples per second"
    assert by_scenario["Server"].settings["server_target_qps"] > 0


def test_parse_summary_reads_key_value_lines() -> None:
    text = "Scenario : Offline\nSamples per second: 1234.5\nResult is : VALID\n  Min duration satisfied : Yes\n"
    assert parse_summary(text) == {
        "Scenario": "Offline",
        "Samples per second": "1234.5",
        "Result is": "VALID",
        "Min duration satisfied": "Yes",
    }


def test_unknown_scenarios_and_missing_labels_are_refused(model: forwardpass.Model, tmp_path: Path) -> None:
    samples = [Sample({"x": np.zeros(4, np.float32)})]
    with pytest.raises(InputError, match="unknown MLPerf scenario"):
        run_scenarios(InProcess(model), samples, tmp_path, scenarios=["Batch"])
    with pytest.raises(InputError, match="labelled samples"):
        run_scenarios(InProcess(model), samples, tmp_path, modes=("accuracy",), classify=True)


def test_scenarios_against_a_server_log_its_true_answers(served: Served, tmp_path: Path) -> None:
    """Over HTTP to `forwardpass serve`: the answers LoadGen logs in accuracy mode equal ONNX Runtime's, here."""
    import onnxruntime as ort

    x = np.random.default_rng(2).standard_normal((24, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(served.model_file), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    samples = [Sample({"x": row}) for row in x]
    with OverHttp(served.http, "mlp", connections=2) as system:
        results = run_scenarios(
            system,
            samples,
            tmp_path,
            scenarios=["SingleStream", "Offline"],
            modes=("performance", "accuracy"),
            seconds=0.3,
        )
    performance = [r for r in results if r.mode == "performance"]
    assert [r.scenario for r in performance] == ["SingleStream", "Offline"]
    assert all("Result is : " in r.summary and r.metric and r.metric > 0 for r in performance)
    for result in (r for r in results if r.mode == "accuracy"):
        logged = json.loads((Path(result.folder) / "mlperf_log_accuracy.json").read_text())
        assert sorted(entry["qsl_idx"] for entry in logged) == list(range(len(samples)))
        for entry in logged:
            answer = np.frombuffer(bytes.fromhex(entry["data"]), np.float32)
            np.testing.assert_allclose(answer, expected[entry["qsl_idx"]], rtol=1e-5, atol=1e-6)
