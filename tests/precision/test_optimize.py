"""`optimize` end to end on real models and real data: accuracy kept, claims re-measured, budgets, atomic output."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import forwardpass
from forwardpass.errors import InputError, NotFoundError
from forwardpass.measure.datasets import open_dataset
from forwardpass.measure.evaluate import evaluate
from forwardpass.precision import OptimizeRequest, optimize
from forwardpass.precision.optimize import Precision
from forwardpass.repository import Repository
from tests.precision.digits_resnet import DigitsData

DATA = Path(__file__).resolve().parents[2] / "data"


def _top1(model: forwardpass.Model, data: Path) -> float:
    return 100 * float(evaluate(model, open_dataset(data)).metrics["top_k_accuracy"]["1"])


def _request(repo: Path, name: str, precision: Precision, **options: Any) -> OptimizeRequest:
    """Speed is not what these tests check (the bundled digits CNN runs INT8 at about FP32's speed, either side of
    it): slower variants are allowed unless a test says otherwise."""
    options = {"allow_slower": True, **options}
    return OptimizeRequest(
        model=name, repository=repo, precision=precision, seconds=0.2, calibration_limit=64, **options
    )


def test_int8_digits_cnn_keeps_top1_and_its_claim_is_remeasured(digits_repo: Path, digits: DigitsData) -> None:
    report = optimize(
        _request(digits_repo, "digits_cnn", "int8", calibration=digits.train, eval_data=DATA / "digits" / "test")
    )
    assert report.version == 2
    record = json.loads((report.destination / "precision.json").read_text())
    assert record["precision"] == "int8"
    assert record["source"] == {**record["source"], "model": "digits_cnn", "version": 1}
    assert set(record["layers"].values()) == {"int8"}
    assert record["calibration"]["items"] == 64  # the limit asked for
    assert record["evaluation"]["metric"] == "top-1 accuracy on the labels (%)"
    measured = record["measured"]
    assert measured["original"]["score"] - measured["optimized"]["score"] <= 1.0
    assert measured["optimized"]["size_bytes"] < measured["original"]["size_bytes"]
    assert measured["optimized"]["throughput"] > 0 and measured["original"]["latency_ms_p50"] > 0
    fresh = forwardpass.load("digits_cnn", repository=digits_repo, precision="int8")
    assert fresh.version == 2
    assert _top1(fresh, DATA / "digits" / "test") == pytest.approx(measured["optimized"]["score"], abs=1e-9)
    repository = Repository(digits_repo)
    assert repository.precisions("digits_cnn") == {1: "fp32", 2: "int8"}
    assert repository.derived_from("digits_cnn") == {2: 1}
    assert forwardpass.load("digits_cnn", repository=digits_repo, precision="fp32").version == 1
    assert (report.destination / "precision.png").read_bytes()[:4] == b"\x89PNG"
    config = digits_repo / "digits_cnn" / "config.yaml"
    config.write_text(config.read_text() + "precision: fp32\n")  # a server config pinning the FP32 variant
    assert forwardpass.load("digits_cnn", repository=digits_repo).version == 1
    assert forwardpass.load("digits_cnn", repository=digits_repo, version=2).version == 2


def test_int8_resnet_style_cnn_keeps_top1_within_a_point(resnet_repo: Path, digits: DigitsData, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(resnet_repo, repo)
    report = optimize(_request(repo, "resnet", "int8", calibration=digits.train, eval_data=digits.test, plot=False))
    assert report.original.score > 80  # it learned something: the comparison means something
    assert report.original.score - report.chosen.score <= 1.0
    assert _top1(forwardpass.load(report.destination / "model.onnx"), digits.test) == pytest.approx(report.chosen.score)


def test_auto_picks_the_fastest_candidate_within_budget(digits_repo: Path, digits: DigitsData) -> None:
    report = optimize(
        _request(
            digits_repo,
            "digits_cnn",
            "auto",
            calibration=digits.train,
            eval_data=DATA / "digits" / "test",
            max_accuracy_drop=0.5,
        )
    )
    labels = [c.label for c in report.candidates]
    assert {"fp32", "fp16", "int8"} <= set(labels)
    assert "int8-dynamic" not in labels  # a CNN: dynamic INT8 convolutions are never tried
    assert report.chosen.drop <= 0.5
    qualified = [c for c in report.candidates if c.within_budget]
    assert all(report.chosen.throughput >= c.throughput for c in qualified)
    record = json.loads((report.destination / "precision.json").read_text())
    assert len(record["candidates"]) == len(report.candidates) + 1  # the original too


def test_auto_falls_back_to_mixed_precision_ranked_by_sensitivity(digits_repo: Path, digits: DigitsData) -> None:
    """A model with raw outputs (no postprocess) scored without labels: the metric is cosine similarity to FP32,
    which full INT8 cannot keep to 0.001 points. The search tries each layer alone in FP32, then adds layers back
    in order of sensitivity."""
    _raw_outputs(digits_repo)
    report = optimize(
        _request(digits_repo, "digits_cnn", "auto", calibration=digits.train, max_accuracy_drop=0.001, plot=False)
    )
    assert report.metric == "cosine similarity to the original (x 100)"
    labels = [c.label for c in report.candidates]
    int8 = next(c for c in report.candidates if c.label == "int8")
    assert not int8.within_budget
    mixed = [c for c in report.candidates if c.precision == "mixed"]
    assert any(label.startswith("int8 except ") for label in labels)
    assert all("fp32" in c.layers.values() and "int8" in c.layers.values() for c in mixed)
    assert report.chosen.within_budget


def _raw_outputs(repo: Path) -> None:
    """digits_cnn without its postprocess: raw scores, compared by cosine similarity (which INT8 always moves)."""
    config = repo / "digits_cnn" / "config.yaml"
    settings = yaml.safe_load(config.read_text())
    del settings["postprocess"]
    config.write_text(yaml.safe_dump(settings))


def _versions(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "digits_cnn").iterdir())


def test_mismatched_calibration_data_is_refused_and_nothing_is_written(digits_repo: Path, tmp_path: Path) -> None:
    before = _versions(digits_repo)
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\nworld\n")
    with pytest.raises(InputError, match=r"calibration data .* does not match model .digits_cnn."):
        optimize(_request(digits_repo, "digits_cnn", "int8", calibration=texts))
    assert _versions(digits_repo) == before


def test_empty_calibration_set_is_refused(digits_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no items"):
        optimize(_request(digits_repo, "digits_cnn", "int8", calibration=tmp_path / "empty"))
    assert _versions(digits_repo) == ["1", "config.yaml", "labels.txt", "metrics.json"]


def test_an_impossible_budget_is_refused_and_nothing_is_written(digits_repo: Path, digits: DigitsData) -> None:
    _raw_outputs(digits_repo)
    with pytest.raises(InputError, match=r"no candidate keeps the drop in cosine similarity .* within 0\.0"):
        optimize(_request(digits_repo, "digits_cnn", "int8", calibration=digits.train, max_accuracy_drop=0.0))
    assert _versions(digits_repo) == ["1", "config.yaml", "labels.txt", "metrics.json"]


def test_output_folder_is_a_loadable_model(digits_repo: Path, digits: DigitsData, tmp_path: Path) -> None:
    out = tmp_path / "digits_fp16"
    report = optimize(_request(digits_repo, "digits_cnn", "fp16", eval_data=DATA / "digits" / "test", output=out))
    assert report.destination == out and report.version is None
    model = forwardpass.load(out)
    assert model.predict(next((DATA / "digits" / "test" / "3").iterdir()))["label"] in {str(d) for d in range(10)}
    assert _versions(digits_repo) == ["1", "config.yaml", "labels.txt", "metrics.json"]
    with pytest.raises(InputError, match="already exists"):
        optimize(_request(digits_repo, "digits_cnn", "fp16", eval_data=DATA / "digits" / "test", output=out))


def test_load_names_the_precisions_a_model_has(digits_repo: Path) -> None:
    with pytest.raises(NotFoundError, match=r"no int4 version \(versions: 1: fp32\).*forwardpass optimize"):
        forwardpass.load("digits_cnn", repository=digits_repo, precision="int4")


def test_unlabelled_data_scores_a_classifier_by_top1_agreement_and_says_so(digits_repo: Path, tmp_path: Path) -> None:
    flat = tmp_path / "unlabelled"
    flat.mkdir()
    for index, image in enumerate(sorted((DATA / "digits" / "test").rglob("*.png"))[:40]):
        shutil.copyfile(image, flat / f"{index:03d}.png")
    report = optimize(_request(digits_repo, "digits_cnn", "fp16", eval_data=flat, plot=False))
    assert report.metric == "top-1 agreement with the original (%)"
    assert report.original.score == 100.0  # the original agrees with itself on every item
    record = json.loads((report.destination / "precision.json").read_text())
    assert record["evaluation"] == {**record["evaluation"], "metric_key": "top1_agreement", "items": 40}
    assert "accuracy" not in record["measured"]["optimized"]


def test_a_variant_slower_than_its_source_is_refused_with_the_ratio_unless_asked_for(
    digits_repo: Path, digits: DigitsData
) -> None:
    """Dynamic INT8 convolutions (ConvInteger) run several times slower than FP32 on a CPU."""
    request = _request(digits_repo, "digits_cnn", "int8-dynamic", eval_data=DATA / "digits" / "test", plot=False)
    with pytest.raises(
        InputError, match=r"int8-dynamic runs at 0\.\d\dx the throughput of the original .*--allow-slower"
    ):
        optimize(replace(request, allow_slower=False))
    assert _versions(digits_repo) == ["1", "config.yaml", "labels.txt", "metrics.json"]
    assert optimize(request).version == 2


def scaled_classifier(repo: Path, scale: float) -> Path:
    """A softmax classifier "big" whose hidden activations reach about 20 x `scale` (3e4: past FP16's range, 65504),
    and labelled .npz data on which FP32 scores 100 %."""
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((16, 32)) * scale).astype(np.float32)
    w2 = (rng.standard_normal((32, 4)) / scale).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["z"]),
            helper.make_node("Softmax", ["z"], ["y"], axis=-1),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "big" / "1").mkdir(parents=True)
    onnx.save(model, repo / "big" / "1" / "model.onnx")
    x = rng.standard_normal((64, 16)).astype(np.float32)
    data = repo.parent / "big.npz"
    np.savez(data, x=x, label=(x @ w1 @ w2).argmax(1))
    return data


def test_fp16_that_overflows_is_refused_not_written_as_the_default_version(tmp_path: Path) -> None:
    """No --max-accuracy-drop used to mean any drop: this FP16 variant scored far below FP32 and became version 2."""
    repo = tmp_path / "repo"
    data = scaled_classifier(repo, 3e4)
    with pytest.raises(InputError, match=r"fp16 moves the outputs by up to .* \(fp16 is held to 0\.01.*nothing was"):
        optimize(_request(repo, "big", "fp16", eval_data=data, plot=False))
    assert sorted(p.name for p in (repo / "big").iterdir()) == ["1"]


def test_bf16_traces_the_model_on_the_eval_items_when_no_calibration_is_given(tmp_path: Path) -> None:
    """It asked for '--calibration DATA or --eval DATA' although --eval was given."""
    repo = tmp_path / "repo"
    data = scaled_classifier(repo, 1.0)
    report = optimize(_request(repo, "big", "bf16", eval_data=data, plot=False))
    assert report.version == 2 and report.chosen.precision == "bf16"


def test_fp16_of_a_classifier_with_a_class_name_output_is_checked_on_its_scores(tmp_path: Path) -> None:
    """skl2onnx's classifiers give class names (strings) beside the probabilities: 18b0319's output check took
    their absolute value (TypeError traceback)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    classifier = LogisticRegression(max_iter=500).fit(x, names)
    options = {id(classifier): {"zipmap": False}}
    graph = convert_sklearn(classifier, initial_types=[("input", FloatTensorType([None, 4]))], options=options)
    (tmp_path / "repo" / "iris" / "1").mkdir(parents=True)
    onnx.save(graph, tmp_path / "repo" / "iris" / "1" / "model.onnx")
    np.savez(tmp_path / "iris.npz", input=x.astype(np.float32), label=names)
    report = optimize(_request(tmp_path / "repo", "iris", "fp16", eval_data=tmp_path / "iris.npz", plot=False))
    assert report.version == 2 and report.chosen.drop == pytest.approx(0.0, abs=1.0)
