"""`evaluate` against independent computations: sklearn.metrics on onnxruntime outputs computed here."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper
from PIL import Image

import forwardpass
from forwardpass.errors import InputError
from forwardpass.measure import EvalReport, evaluate, open_dataset
from tests.vad_audio import WAVEFORM_RATE, as_read, recording, write, write_waveform_model

metrics = pytest.importorskip("sklearn.metrics")
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _save(graph: onnx.GraphProto, folder: Path, config: dict[str, Any]) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder


def _floats(name: str, array: np.ndarray) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, array.shape, array.astype(np.float32).ravel())


def _ort(folder: Path, inputs: np.ndarray, output: str | None = None) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None if output is None else [output], {session.get_inputs()[0].name: inputs})[0]
    return result


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real digits classifier (logistic regression weights in a Flatten→Gemm graph) and an ImageFolder of PNGs."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = load_digits()
    pixels, classes = data.images / 16.0, data.target
    # Strong regularization keeps it imperfect, so top-1 < top-3 < 1 and label mix-ups would show.
    clf = LogisticRegression(C=0.0005, max_iter=2000).fit(pixels[:1500].reshape(-1, 64), classes[:1500])
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])],
        "digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[_floats("w", clf.coef_.T), _floats("b", clf.intercept_)],
    )
    root = tmp_path_factory.mktemp("digits")
    image = {"kind": "image", "color": "L"}
    model = _save(
        graph, root / "model", {"max_batch_size": 16, "preprocess": image, "postprocess": _classify(DIGIT_NAMES)}
    )
    folder = root / "test"
    for index in range(1500, 1620):
        path = folder / DIGIT_NAMES[classes[index]] / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(data.images[index] * 255 / 16).astype(np.uint8)).save(path)
    (folder / "three" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "three" / "notes.txt").write_text("not an item", encoding="utf-8")
    return model, folder


def _classify(labels: list[str]) -> dict[str, Any]:
    return {"kind": "classification", "labels": labels}


def _image_truth(folder: Path, model: Path) -> tuple[np.ndarray, np.ndarray]:
    """(true class indices, ORT logits) for every readable image, decoded here with PIL."""
    paths = sorted(p for p in folder.rglob("*.png") if p.name != "broken.png")
    pixels = np.stack([np.asarray(Image.open(p).convert("L"), np.float32) / 255 for p in paths])[:, None]
    return np.array([DIGIT_NAMES.index(p.parent.name) for p in paths]), _ort(model, pixels)


def test_image_folder_top_k_equals_sklearn(digits: tuple[Path, Path]) -> None:
    model_dir, folder = digits
    truth, logits = _image_truth(folder, model_dir)
    expected = {k: metrics.top_k_accuracy_score(truth, logits, k=k, labels=range(10)) for k in (1, 3)}
    assert 0.5 < expected[1] < expected[3] < 1.0  # the model is imperfect: the test can tell a wrong answer

    model = forwardpass.load(model_dir)
    report = evaluate(model, open_dataset(folder), top_k=[3, 1])
    assert report.task == "classification"
    assert report.n == len(truth)
    assert report.metrics["top_k_accuracy"] == {
        "1": pytest.approx(expected[1], abs=1e-12),
        "3": pytest.approx(expected[3], abs=1e-12),
    }
    assert [e.source for e in report.errors] == ["three/broken.png"]
    assert "image" in report.errors[0].error


def test_a_folder_of_sound_files_top_1_equals_sklearn(tmp_path: Path) -> None:
    """An audio classifier (the test waveform model's 3 features as class scores) over sound files at other rates in
    class folders: top-1 accuracy is sklearn's on ONNX Runtime run over the files as the audio kind reads them."""
    folder = write_waveform_model(tmp_path)
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    config["postprocess"] = {"kind": "classification", "labels": ["a", "b", "c"]}
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    data = tmp_path / "data"
    files = []
    for take in range(9):
        path = data / "abc"[take % 3] / f"take{take}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        rate = (16000, 44100)[take % 2]
        files.append(write(path, recording(0.3 + 0.1 * take, rate, 1 + take % 2), rate, "PCM_16"))
    scores = _ort(folder, np.stack([np.pad(as_read(path, WAVEFORM_RATE), (0, 4000))[:4000] for path in files]))
    truth = [take % 3 for take in range(9)]
    expected = metrics.top_k_accuracy_score(truth, scores, k=1, labels=range(3))
    report = evaluate(forwardpass.load(folder, warmup=0), open_dataset(data))
    assert report.n == 9 and not report.errors
    assert report.metrics["top_k_accuracy"]["1"] == pytest.approx(expected, abs=1e-12)


def test_batch_size_does_not_change_the_result(digits: tuple[Path, Path]) -> None:
    model = forwardpass.load(digits[0])
    dataset = open_dataset(digits[1])
    progress: list[int] = []
    one = evaluate(model, dataset, top_k=[1], batch_size=1, on_progress=progress.append)
    many = evaluate(model, dataset, top_k=[1], batch_size=7)
    assert one.metrics == many.metrics and one.n == many.n
    assert sum(progress) == len(dataset)


def test_labels_the_model_cannot_predict_are_refused(digits: tuple[Path, Path], tmp_path: Path) -> None:
    folder = tmp_path / "data"
    for name in ("one", "eleven"):
        (folder / name).mkdir(parents=True)
        source = next((digits[1] / "one").iterdir())
        (folder / name / "a.png").write_bytes(source.read_bytes())
    with pytest.raises(InputError, match="not in model 'model''s label set: 'eleven'"):
        evaluate(forwardpass.load(digits[0]), open_dataset(folder))


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn classifier (4 noisy classes, standardized columns) and regressor (standardized target)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression, Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(loc=[1.0, -2.0, 3.0], scale=[2.0, 1.0, 0.5], size=(400, 3))
    mean, std = x.mean(axis=0), x.std(axis=0)
    scaled = (x - mean) / std
    classes = np.argmax(scaled @ rng.normal(size=(3, 4)) + rng.normal(scale=1.0, size=(400, 4)), axis=1)
    y = x @ np.array([1.5, -2.0, 4.0]) + rng.normal(scale=2.0, size=400)
    y_mean, y_std = float(y.mean()), float(y.std())
    root = tmp_path_factory.mktemp("tabular")
    columns = [{"name": f"f{i}", "transform": "standard", "mean": float(m), "std": float(s)} for i, (m, s) in
               enumerate(zip(mean, std, strict=True))]  # fmt: skip
    for name, estimator, target, postprocess in (
        ("cls", LogisticRegression(max_iter=500), classes, {**_classify(["ant", "bee", "cat", "dog"]), "output":
         "probabilities", "activation": "none"}),
        ("reg", Ridge(alpha=1.0), (y - y_mean) / y_std, {"kind": "regression", "target": {
         "transform": "standard", "mean": y_mean, "std": y_std}}),
    ):  # fmt: skip
        estimator.fit(scaled[:300].astype(np.float32), target[:300])
        options = {id(estimator): {"zipmap": False}} if name == "cls" else None
        onx = convert_sklearn(estimator, initial_types=[("input", FloatTensorType([None, 3]))],
                              target_opset={"": 17, "ai.onnx.ml": 3}, options=options)  # fmt: skip
        (root / name / "1").mkdir(parents=True)
        onnx.save(onx, root / name / "1" / "model.onnx")
        config = {
            "max_batch_size": 32,
            "preprocess": {"kind": "tabular", "columns": columns},
            "postprocess": postprocess,
        }
        (root / name / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    rows = [{**{f"f{i}": float(v) for i, v in enumerate(r)}, "label": c, "target": t}
            for r, c, t in zip(x[300:], classes[300:], y[300:], strict=True)]  # fmt: skip
    with (root / "test.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, ["f0", "f1", "f2", "label"])
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {**{k: row[k] for k in ("f0", "f1", "f2")}, "label": ["ant", "bee", "cat", "dog"][row["label"]]}
            )
        writer.writerow({"f0": "abc", "f1": 1, "f2": 2, "label": "ant"})  # not a number: a bad item
        writer.writerow({"f0": 1, "f1": 1, "f2": 2, "label": ""})  # no label: a bad item
    lines = [json.dumps({k: row[k] for k in ("f0", "f1", "f2", "target")}) for row in rows]
    lines += [
        "{not json",
        json.dumps({"f0": 1.0, "f1": 2.0, "f2": 3.0}),
        json.dumps({**json.loads(lines[0]), "target": "x"}),
    ]
    (root / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    np.save(root / "x.npy", x[300:])
    np.save(root / "classes.npy", classes[300:])
    np.save(root / "y.npy", y[300:])
    return root


def _standardized(root: Path) -> np.ndarray:
    columns = yaml.safe_load((root / "cls" / "config.yaml").read_text())["preprocess"]["columns"]
    x = np.load(root / "x.npy")
    return np.stack([(x[:, i] - c["mean"]) / c["std"] for i, c in enumerate(columns)], axis=1).astype(np.float32)


def test_csv_classification_equals_sklearn(tabular: Path) -> None:
    probabilities = _ort(tabular / "cls", _standardized(tabular), "probabilities")
    truth = np.load(tabular / "classes.npy")
    expected = {k: metrics.top_k_accuracy_score(truth, probabilities, k=k, labels=range(4)) for k in (1, 2)}
    assert 0.4 < expected[1] < expected[2] < 1.0

    report = evaluate(forwardpass.load(tabular / "cls"), open_dataset(tabular / "test.csv"), top_k=[1, 2])
    assert report.n == len(truth)
    assert report.metrics["top_k_accuracy"]["1"] == pytest.approx(expected[1], abs=1e-12)
    assert report.metrics["top_k_accuracy"]["2"] == pytest.approx(expected[2], abs=1e-12)
    assert report.bad == 2
    assert [e.source for e in report.errors] == ["row 101", "row 102"]  # the last two of 102 records


def test_jsonl_regression_equals_sklearn(tabular: Path) -> None:
    target = yaml.safe_load((tabular / "reg" / "config.yaml").read_text())["postprocess"]["target"]
    predicted = _ort(tabular / "reg", _standardized(tabular)).reshape(-1) * target["std"] + target["mean"]
    truth = np.load(tabular / "y.npy")

    report = evaluate(forwardpass.load(tabular / "reg"), open_dataset(tabular / "test.jsonl"))
    assert isinstance(report, EvalReport) and report.task == "regression"
    assert report.n == len(truth)
    assert report.metrics["mae"] == pytest.approx(metrics.mean_absolute_error(truth, predicted), rel=1e-5)
    assert report.metrics["rmse"] == pytest.approx(np.sqrt(metrics.mean_squared_error(truth, predicted)), rel=1e-5)
    assert report.metrics["r2"] == pytest.approx(metrics.r2_score(truth, predicted), rel=1e-5)
    assert 0.5 < report.metrics["r2"] < 1.0
    errors = {e.source: e.error for e in report.errors}
    assert set(errors) == {"line 101", "line 102", "line 103"}
    assert "not valid JSON" in errors["line 101"]
    assert "no 'target' field" in errors["line 102"]
    assert "not a number" in errors["line 103"]
    assert report.to_dict()["mae"] == report.metrics["mae"]


def test_a_batch_of_mixed_shapes_falls_back_to_one_item_at_a_time(tmp_path: Path) -> None:
    """No resize: images of different sizes cannot share a batch; each still gets scored on its own."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["mean"]),
            helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        ],
        "brightness",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[_floats("w", np.array([[-10.0, 10.0]]))],
    )
    config = {"preprocess": {"kind": "image", "color": "L", "mean": [0.5], "std": [0.5]},
              "postprocess": _classify(["dark", "bright"])}  # fmt: skip
    model_dir = _save(graph, tmp_path / "model", config)
    rng = np.random.default_rng(1)
    truth, predicted = [], []
    for index in range(10):
        level = int(rng.integers(0, 256))
        label = ["dark", "bright"][index % 2]  # half of them labelled wrong on purpose
        path = tmp_path / "data" / label / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4 + index, 6), level, np.uint8)).save(path)
        truth.append(label)
        predicted.append("bright" if level / 255 > 0.5 else "dark")
    report = evaluate(forwardpass.load(model_dir), open_dataset(tmp_path / "data"), batch_size=4)
    assert report.bad == 0 and report.n == 10
    assert report.metrics["top_k_accuracy"]["1"] == pytest.approx(metrics.accuracy_score(truth, predicted))


def _identity(tmp_path: Path, postprocess: dict[str, Any]) -> forwardpass.Model:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    return forwardpass.load(_save(graph, tmp_path / "model", {"postprocess": postprocess}))


def test_models_without_labels_to_score_are_refused(tmp_path: Path) -> None:
    model = _identity(tmp_path, {"kind": "raw"})
    (tmp_path / "data.csv").write_text("x,label\n1,a\n", encoding="utf-8")
    with pytest.raises(InputError, match="postprocess kind 'raw'"):
        evaluate(model, open_dataset(tmp_path / "data.csv"))


def test_embedding_recall_at_k_equals_numpy(tmp_path: Path) -> None:
    """The identity model's embedding is its input: recall@K computed here from cosine similarities."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(6, 3))
    pairs = np.repeat(np.arange(6), 2)
    x = (centres[pairs] + rng.normal(scale=0.6, size=(12, 3))).astype(np.float32)
    labels = np.array([f"p{i}" for i in pairs] + ["alone"])
    x = np.vstack([x, rng.normal(size=(1, 3)).astype(np.float32)])  # no match: not a query
    np.savez(tmp_path / "pairs.npz", x=x, label=labels)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1)
    expected = {k: np.mean([np.any(labels[order[i, :k]] == labels[i]) for i in range(12)]) for k in (1, 3)}
    assert 0 < expected[1] < 1  # the noise makes some neighbours wrong: the test can tell

    report = evaluate(_identity(tmp_path, {"kind": "embedding"}), open_dataset(tmp_path / "pairs.npz"), top_k=[1, 3])
    assert report.task == "embedding" and report.n == 13
    assert report.metrics["queries"] == 12
    assert report.metrics["recall_at_k"] == {"1": pytest.approx(expected[1]), "3": pytest.approx(expected[3])}


def _group_table(tabular: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """test.csv plus a 'site' column (three sites of unequal size); returns (path, sites, true class names)."""
    rows = list(csv.DictReader((tabular / "test.csv").read_text().splitlines()))[:-2]
    sites = np.array(["north", "south", "east", "north", "south"] * 20)[: len(rows)]
    path = tabular / "grouped.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, [*rows[0], "site"])
        writer.writeheader()
        writer.writerows({**row, "site": site} for row, site in zip(rows, sites, strict=True))
    return path, sites, np.array([row["label"] for row in rows])


def test_per_class_confusion_and_calibration_equal_sklearn_and_numpy(tabular: Path) -> None:
    names = ["ant", "bee", "cat", "dog"]
    probabilities = _ort(tabular / "cls", _standardized(tabular), "probabilities").astype(np.float64)
    truth = np.array(names)[np.load(tabular / "classes.npy")]
    predicted = np.array(names)[probabilities.argmax(axis=1)]
    report = evaluate(forwardpass.load(tabular / "cls"), open_dataset(tabular / "test.csv"), top_k=[1])
    result = report.metrics

    precision, recall, f1, support = metrics.precision_recall_fscore_support(truth, predicted, labels=names)
    for i, name in enumerate(names):
        assert result["per_class"][name] == {
            "precision": pytest.approx(precision[i]),
            "recall": pytest.approx(recall[i]),
            "f1": pytest.approx(f1[i]),
            "support": support[i],
        }
    assert result["confusion_matrix"] == {
        "labels": names,
        "matrix": metrics.confusion_matrix(truth, predicted, labels=names).tolist(),
    }
    confidence = probabilities.max(axis=1)
    bins = np.minimum((np.ceil(confidence * 10) - 1).astype(int), 9)
    correct = truth == predicted
    ece = sum(np.mean(bins == b) * abs(correct[bins == b].mean() - confidence[bins == b].mean())
              for b in range(10) if np.any(bins == b))  # fmt: skip
    assert result["calibration"]["ece"] == pytest.approx(ece, rel=1e-6)
    assert sum(b["n"] for b in result["calibration"]["bins"]) == len(truth)
    assert result["accuracy"] == result["top_k_accuracy"]["1"]


def test_per_group_metrics_equal_a_hand_split(tabular: Path) -> None:
    path, sites, truth = _group_table(tabular)
    names = ["ant", "bee", "cat", "dog"]
    probabilities = _ort(tabular / "cls", _standardized(tabular), "probabilities")
    ranks = np.argsort(-probabilities, axis=1)
    top1 = np.array(names)[ranks[:, 0]]
    top2_hit = np.array([names.index(t) in r[:2] for t, r in zip(truth, ranks, strict=True)])

    dataset = open_dataset(path, group_by="site")
    report = evaluate(forwardpass.load(tabular / "cls"), dataset, top_k=[1, 2], positive_label="dog")
    groups = report.metrics["groups"]
    accuracy = {}
    for site in ("east", "north", "south"):
        mine = sites == site
        accuracy[site] = float(np.mean(top1[mine] == truth[mine]))
        got = groups["by_group"][site]
        assert got["n"] == int(mine.sum())
        assert got["accuracy"] == pytest.approx(accuracy[site], abs=1e-12)
        assert got["top_1_accuracy"] == pytest.approx(accuracy[site], abs=1e-12)
        assert got["top_2_accuracy"] == pytest.approx(float(np.mean(top2_hit[mine])), abs=1e-12)
        assert got["positive_rate"] == pytest.approx(float(np.mean(top1[mine] == "dog")), abs=1e-12)
    gap = groups["gaps"]["accuracy"]
    assert gap["difference"] == pytest.approx(max(accuracy.values()) - min(accuracy.values()), abs=1e-12)
    assert gap["lowest"] == min(accuracy, key=accuracy.__getitem__)
    assert gap["highest"] == max(accuracy, key=accuracy.__getitem__)
    assert len(set(accuracy.values())) == 3  # different accuracies: a swapped group would show


def test_regression_per_group_equals_sklearn(tabular: Path) -> None:
    target = yaml.safe_load((tabular / "reg" / "config.yaml").read_text())["postprocess"]["target"]
    predicted = _ort(tabular / "reg", _standardized(tabular)).reshape(-1) * target["std"] + target["mean"]
    truth = np.load(tabular / "y.npy")
    x = np.load(tabular / "x.npy")
    half = np.where(np.arange(len(truth)) < 40, "a", "b")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = {"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "target": truth, "half": half}
    pq.write_table(pa.table(table), tabular / "reg.parquet")
    report = evaluate(forwardpass.load(tabular / "reg"), open_dataset(tabular / "reg.parquet", group_by="half"))
    assert report.n == len(truth) and report.bad == 0
    assert report.metrics["mae"] == pytest.approx(metrics.mean_absolute_error(truth, predicted), rel=1e-5)
    for group in ("a", "b"):
        mine = half == group
        got = report.metrics["groups"]["by_group"][group]
        assert got["mae"] == pytest.approx(metrics.mean_absolute_error(truth[mine], predicted[mine]), rel=1e-5)
        assert got["rmse"] == pytest.approx(metrics.root_mean_squared_error(truth[mine], predicted[mine]), rel=1e-5)
        assert got["r2"] == pytest.approx(metrics.r2_score(truth[mine], predicted[mine]), rel=1e-4)


def test_npz_inputs_go_through_the_model(tabular: Path, tmp_path: Path) -> None:
    """A model without preprocessing reads its input rows straight from the .npz; labels may be class indices."""
    model = _identity(tmp_path, {"kind": "classification", "activation": "none"})
    x = np.random.default_rng(2).normal(size=(30, 3)).astype(np.float32)
    labels = np.random.default_rng(3).integers(0, 3, size=30)
    np.savez(tmp_path / "data.npz", inputs=x, label=labels)
    report = evaluate(model, open_dataset(tmp_path / "data.npz"), top_k=[1, 2])
    order = np.argsort(-x, axis=1)
    assert report.metrics["top_k_accuracy"] == {
        "1": float(np.mean(order[:, 0] == labels)),
        "2": float(np.mean([label in row[:2] for label, row in zip(labels, order, strict=True)])),
    }
    np.savez(tmp_path / "bad.npz", inputs=x, label=labels + 5)
    with pytest.raises(InputError, match="not in model 'model''s label set: '5', '6', '7'"):
        evaluate(model, open_dataset(tmp_path / "bad.npz"))


def test_top_k_must_be_positive(digits: tuple[Path, Path]) -> None:
    with pytest.raises(InputError, match="positive"):
        evaluate(forwardpass.load(digits[0]), open_dataset(digits[1]), top_k=[0])


def test_macro_f1_averages_the_classes_in_the_data_or_the_predictions(tabular: Path, tmp_path: Path) -> None:
    """A class neither in the data nor predicted has no F1; counted as 0, it made a model right on every item of
    one class score macro F1 0.25 (0.5 with two classes), overall and per group."""
    names = ["ant", "bee", "cat", "dog"]
    truth = np.array(names)[np.load(tabular / "classes.npy")]
    predicted = np.array(names)[_ort(tabular / "cls", _standardized(tabular), "probabilities").argmax(axis=1)]
    rows = list(csv.DictReader((tabular / "test.csv").read_text().splitlines()))[:-2]
    model = forwardpass.load(tabular / "cls")
    two = np.isin(truth, ["ant", "bee"]) & np.isin(predicted, ["ant", "bee"])
    perfect = (truth == predicted) & (truth == "ant")
    for name, keep in (("two", two), ("perfect", perfect)):
        sites = np.array(["north", "south"] * len(rows))[: int(keep.sum())]
        path = tmp_path / f"{name}.csv"
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, [*rows[0], "site"])
            writer.writeheader()
            kept = [row for row, wanted in zip(rows, keep, strict=True) if wanted]
            writer.writerows({**row, "site": site} for row, site in zip(kept, sites, strict=True))
        result = evaluate(model, open_dataset(path, group_by="site")).metrics
        expected = metrics.f1_score(truth[keep], predicted[keep], average="macro")
        assert result["macro_f1"] == pytest.approx(expected, abs=1e-12)
        for site in ("north", "south"):
            mine = sites == site
            by_site = metrics.f1_score(truth[keep][mine], predicted[keep][mine], average="macro")
            assert result["groups"]["by_group"][site]["macro_f1"] == pytest.approx(by_site, abs=1e-12)
    assert expected == 1.0 and 0 < metrics.f1_score(truth[two], predicted[two], average="macro") < 1


def test_a_parquet_table_pandas_wrote_from_a_filtered_frame_scores_as_its_csv(tabular: Path, tmp_path: Path) -> None:
    """The index pandas stores ('__index_level_0__') was taken for a feature: every item failed, and the refusal
    named the first bad row's own problem ("empty 'label'") instead."""
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(tabular / "test.csv").iloc[:-2]
    frame[frame.label != "ant"].to_parquet(tmp_path / "rows.parquet")
    frame[frame.label != "ant"].to_csv(tmp_path / "rows.csv", index=False)
    model = forwardpass.load(tabular / "cls")
    scored = [evaluate(model, open_dataset(tmp_path / name)) for name in ("rows.parquet", "rows.csv")]
    assert scored[0].bad == 0 and scored[0].n == scored[1].n
    assert scored[0].metrics["per_class"] == scored[1].metrics["per_class"]
    frame.loc[0, "label"] = None  # one row's own problem, then every row failing alike
    frame.assign(f0="abc").to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(InputError, match=rf"\({len(frame)} bad\); {len(frame) - 1} of them: .*'f0'"):
        evaluate(model, open_dataset(tmp_path / "broken.csv"))


def test_grouping_by_the_label_column_gives_each_class_its_recall(tabular: Path) -> None:
    """It was refused: every item 'empty' in the group-by column, as the label was taken out of the record first."""
    report = evaluate(forwardpass.load(tabular / "cls"), open_dataset(tabular / "test.csv", group_by="label"))
    by_group = report.metrics["groups"]["by_group"]
    assert sorted(by_group) == ["ant", "bee", "cat", "dog"]
    for name, figures in report.metrics["per_class"].items():
        assert by_group[name]["accuracy"] == pytest.approx(figures["recall"], abs=1e-12)
        assert by_group[name]["n"] == figures["support"]


def test_a_csv_spelling_integer_classes_as_decimals_is_scored_as_them(tmp_path: Path) -> None:
    """pandas writes an int label column with a gap as 1.0, 2.0: every label was 'not in the label set' (0, 1, 2).
    The identity model predicts the column holding the largest value."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    columns = [{"name": name} for name in ("a", "b", "c")]
    config = {"preprocess": {"kind": "tabular", "columns": columns}, "postprocess": {"kind": "classification"}}
    model = forwardpass.load(_save(graph, tmp_path / "model", config))
    rows = "a,b,c,label\n1,0,0,0.0\n0,1,0,1.0\n0,0,1,1.0\n0,0,1,\n"
    (tmp_path / "gaps.csv").write_text(rows, encoding="utf-8")
    report = evaluate(model, open_dataset(tmp_path / "gaps.csv"))
    assert (report.n, report.bad, report.metrics["accuracy"]) == (3, 1, pytest.approx(2 / 3))
    assert report.metrics["per_class"]["1"]["support"] == 2
    (tmp_path / "halves.csv").write_text("a,b,c,label\n1,0,0,0.5\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"not in model 'model''s label set: '0\.5'"):
        evaluate(model, open_dataset(tmp_path / "halves.csv"))


def test_decision_scores_get_no_calibration(tmp_path: Path) -> None:
    """A LinearSVC has no probabilities: its margins (all within [0, 1] here) were binned as confidences and an
    expected calibration error printed for them, as for a calibrated classifier's probabilities."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.svm import LinearSVC

    features, target = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    classifier = LinearSVC(C=1e-5).fit(features, target)
    assert np.abs(classifier.decision_function(features)).max() < 1.0
    joblib.dump(classifier, tmp_path / "svc.joblib")
    np.savez(tmp_path / "data.npz", input=features, label=target)
    model = forwardpass.load(tmp_path / "svc.joblib", trust_pickle=True, intra_op_threads=1)
    report = evaluate(model, open_dataset(tmp_path / "data.npz"))
    assert dict(report.rows)["top-1 accuracy"] == pytest.approx((classifier.predict(features) == target).mean())
    assert np.isnan(dict(report.rows)["ECE"]) and report.metrics["calibration"]["bins"] == []
