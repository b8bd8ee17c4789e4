"""`forwardpass eval` and `forwardpass bench` through the command's entry point, on a tiny repository built here."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper
from PIL import Image

from forwardpass.cli import main
from tests.measure.standin import standin_server

metrics = pytest.importorskip("sklearn.metrics")
LABELS = ["cat", "dog", "bird"]


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


Cli = Callable[..., Done]


@dataclass(frozen=True)
class Repo:
    root: Path
    files: Path  # the command's working folder


def _save(root: Path, name: str, model: onnx.ModelProto, config: dict[str, Any]) -> None:
    (root / name / "1").mkdir(parents=True)
    onnx.save(model, root / name / "1" / "model.onnx")
    (root / name / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def _graph_model(nodes: list[onnx.NodeProto], inputs: list[Any], outputs: list[Any], weights: dict[str, np.ndarray]):
    initializers = [
        helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel()) for k, v in weights.items()
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializers), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _sklearn(estimator: Any, width: int) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    initial = [("input", FloatTensorType([None, width]))]
    onx: onnx.ModelProto = convert_sklearn(
        estimator, initial_types=initial, target_opset={"": 17, "ai.onnx.ml": 3}, options=options
    )
    return onx


def _session(repository: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def measure_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """img_cls: 8x8 grayscale → Gemm → 3 logits; tab_cls / tab_reg: scikit-learn; vec_raw: no postprocessing."""
    from sklearn.linear_model import LogisticRegression, Ridge

    root = tmp_path_factory.mktemp("repository")
    rng = np.random.default_rng(0)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])]
    cnn = _graph_model(nodes, [image], [logits], {"w": rng.normal(size=(64, 3)) * 0.3, "b": rng.normal(size=3)})
    preprocess = {"kind": "image", "color": "L", "resize": [8, 8], "mean": [0.5], "std": [0.5]}
    _save(root, "img_cls", cnn, {"preprocess": preprocess, "postprocess": {"kind": "classification", "labels": LABELS}})

    x = rng.normal(loc=[1.0, -2.0, 5.0], scale=[1.0, 2.0, 3.0], size=(300, 3))
    mean, std = x.mean(axis=0), x.std(axis=0)
    classes = np.argmax((x - mean) / std @ rng.normal(size=(3, 3)), axis=1)
    clf = LogisticRegression(max_iter=500).fit(((x - mean) / std).astype(np.float32), classes)
    columns = [
        {"name": n, "transform": "standard", "mean": float(m), "std": float(s)}
        for n, m, s in zip("abc", mean, std, strict=True)
    ]
    postprocess = {"kind": "classification", "output": "probabilities", "activation": "none", "labels": LABELS}
    _save(
        root,
        "tab_cls",
        _sklearn(clf, 3),
        {"preprocess": {"kind": "tabular", "columns": columns}, "postprocess": postprocess},
    )

    y = x[:, 0] * 3.0 - x[:, 1] + 10.0
    y_mean, y_std = float(y.mean()), float(y.std())
    reg = Ridge(alpha=0.1).fit(x[:, :2].astype(np.float32), (y - y_mean) / y_std)
    target = {"transform": "standard", "mean": y_mean, "std": y_std}
    tabular = {"kind": "tabular", "columns": [{"name": "x1"}, {"name": "x2"}]}
    _save(
        root,
        "tab_reg",
        _sklearn(reg, 2),
        {"preprocess": tabular, "postprocess": {"kind": "regression", "target": target}},
    )

    vec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", w]) for n, w in (("x", 4), ("y", 6))]
    matmul = _graph_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], vec[:1], vec[1:], {"w": rng.normal(size=(4, 6))}
    )
    _save(root, "vec_raw", matmul, {})
    return Repo(root, tmp_path_factory.mktemp("files"))


@pytest.fixture
def fp(measure_repo: Repo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """`fp("eval", "tab_cls", "data.csv")`: the `forwardpass` entry point, run in the files folder on the repository."""
    monkeypatch.setenv("FORWARDPASS_REPOSITORY", str(measure_repo.root))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(measure_repo.files)

    def run(*args: str | Path) -> Done:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["forwardpass", *map(str, args)])
        with pytest.raises(SystemExit) as exited:
            main()
        out, err = capsys.readouterr()
        return Done(int(exited.value.code or 0), out, err)

    return run


@pytest.fixture(scope="module")
def tables(measure_repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out tables for tab_cls (labels: names) and tab_reg (target), written from a fixed random draw."""
    folder = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(7)
    x = rng.normal(loc=[1.0, -2.0, 5.0], scale=[1.0, 2.0, 3.0], size=(80, 3))
    labels = rng.choice(LABELS, size=80)  # partly wrong labels: accuracy well below 1
    with (folder / "cls.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "b", "c", "label"])
        writer.writerows([*row, label] for row, label in zip(x.tolist(), labels, strict=True))
    target = x[:, 0] * 3.0 - x[:, 1] + 10.0 + rng.normal(scale=0.5, size=80)
    with (folder / "reg.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["x1", "x2", "target"])
        writer.writerows([*row[:2], t] for row, t in zip(x.tolist(), target.tolist(), strict=True))
        writer.writerow(["oops", 1.0, 2.0])
    return folder


def test_eval_csv_classification_equals_sklearn(fp: Cli, measure_repo: Repo, tables: Path) -> None:
    rows = list(csv.DictReader((tables / "cls.csv").read_text().splitlines()))
    columns = yaml.safe_load((measure_repo.root / "tab_cls" / "config.yaml").read_text())["preprocess"]["columns"]
    x = np.array([[(float(r[c["name"]]) - c["mean"]) / c["std"] for c in columns] for r in rows], np.float32)
    probabilities = _session(measure_repo.root, "tab_cls").run(["probabilities"], {"input": x})[0]
    truth = [LABELS.index(r["label"]) for r in rows]
    expected = {k: metrics.top_k_accuracy_score(truth, probabilities, k=k, labels=range(3)) for k in (1, 2)}

    done = fp("eval", "tab_cls", tables / "cls.csv", "--top-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["n"] == 80 and report["bad"] == 0 and report["task"] == "classification"
    assert report["top_k_accuracy"]["1"] == pytest.approx(expected[1], abs=1e-12)
    assert report["top_k_accuracy"]["2"] == pytest.approx(expected[2], abs=1e-12)


def test_eval_csv_regression_equals_sklearn(fp: Cli, measure_repo: Repo, tables: Path) -> None:
    rows = list(csv.DictReader((tables / "reg.csv").read_text().splitlines()))[:-1]
    target = yaml.safe_load((measure_repo.root / "tab_reg" / "config.yaml").read_text())["postprocess"]["target"]
    x = np.array([[float(r["x1"]), float(r["x2"])] for r in rows], np.float32)
    predicted = (
        _session(measure_repo.root, "tab_reg").run(None, {"input": x})[0].reshape(-1) * target["std"] + target["mean"]
    )
    truth = [float(r["target"]) for r in rows]

    done = fp("eval", "tab_reg", tables / "reg.csv", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["task"] == "regression" and report["n"] == len(rows)
    assert report["mae"] == pytest.approx(metrics.mean_absolute_error(truth, predicted), rel=1e-5)
    assert report["rmse"] == pytest.approx(np.sqrt(metrics.mean_squared_error(truth, predicted)), rel=1e-5)
    assert report["r2"] == pytest.approx(metrics.r2_score(truth, predicted), rel=1e-5)
    assert report["bad"] == 1 and report["errors"][0]["item"] == f"row {len(rows) + 1}"


def test_eval_image_folder_table(fp: Cli, measure_repo: Repo, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(12, 8, 8), dtype=np.uint8)
    labels = [LABELS[i % 3] for i in range(12)]
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        (tmp_path / label).mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / label / f"{index:02}.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    order = sorted(range(12), key=lambda i: (labels[i], f"{i:02}"))
    x = ((pixels[order].astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    logits = _session(measure_repo.root, "img_cls").run(None, {"image": x})[0]
    top1 = metrics.accuracy_score([LABELS.index(labels[i]) for i in order], logits.argmax(axis=1))

    done = fp("eval", "img_cls", tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["top_k_accuracy"] == {"1": pytest.approx(top1, abs=1e-12)}

    done = fp("eval", "img_cls", tmp_path, "--top-k", "3", "--batch-size", "5")
    assert done.returncode == 0, done.stderr
    assert "top-1 accuracy" in done.stdout and "top-3 accuracy" in done.stdout and "1.0000" in done.stdout
    assert "bad item dog/broken.png" in done.stdout


def test_bench_json_is_sane(fp: Cli) -> None:
    done = fp(
        "bench", "vec_raw", "--batch-size", "1,4", "--duration", "0.2", "--warmup", "0", "--threads", "1", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["kind"] == "bench" and report["model"] == "vec_raw"
    assert report["settings"]["threads"] == [1] and report["settings"]["batch_sizes"] == [1, 4]
    assert {"cpu", "logical_cores", "isa", "onnxruntime", "numpy", "python", "providers", "gpu"} <= set(
        report["machine"]
    )
    assert [(r["batch_size"], r["threads"], r["precision"]) for r in report["results"]] == [
        (1, 1, "fp32"),
        (4, 1, "fp32"),
    ]
    for result in report["results"]:
        assert result["ratio"] > 0
        for engine in ("forwardpass", "onnxruntime"):
            latency = result[engine]["latency_ms"]
            assert result[engine]["throughput"] > 0
            assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


def test_bench_table(fp: Cli) -> None:
    done = fp("bench", "img_cls", "--batch-size", "2", "--duration", "0.2", "--warmup", "0")
    assert done.returncode == 0, done.stderr
    assert "machine:" in done.stdout and "ours/raw" in done.stdout
    assert "ours" in done.stdout and "raw ORT" in done.stdout and "Model.infer" in done.stdout


def _image_folder(folder: Path, count: int = 12) -> list[str]:
    rng = np.random.default_rng(3)
    labels = [LABELS[i % 3] for i in range(count)]
    for index, label in enumerate(labels):
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(folder / label / f"{index:02}.png")
    return labels


def test_eval_out_writes_report_and_plots(fp: Cli, tmp_path: Path) -> None:
    _image_folder(tmp_path / "data")
    done = fp("eval", "img_cls", tmp_path / "data", "--top-k", "2", "--output", tmp_path / "report")
    assert done.returncode == 0, done.stderr
    assert "per class" in done.stdout and "report:" in done.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["kind"] == "eval" and report["n"] == 12
    assert set(report["per_class"]) == set(LABELS) and len(report["confusion_matrix"]["matrix"]) == 3
    for name in report["plots"]:
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report" / "report.md").read_text().startswith("# eval: img_cls")


def test_eval_group_by_prints_groups_and_gaps(fp: Cli, tables: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader((tables / "cls.csv").read_text().splitlines()))
    with (tmp_path / "grouped.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, [*rows[0], "site"])
        writer.writeheader()
        writer.writerows({**row, "site": "ab"[i % 2]} for i, row in enumerate(rows))
    done = fp("eval", "tab_cls", tmp_path / "grouped.csv", "--group-by", "site", "--json")
    assert done.returncode == 0, done.stderr
    groups = json.loads(done.stdout)["groups"]
    assert {group: values["n"] for group, values in groups["by_group"].items()} == {"a": 40, "b": 40}
    assert "accuracy" in groups["gaps"]
    done = fp("eval", "tab_cls", tmp_path / "grouped.csv", "--group-by", "site")
    assert "per site" in done.stdout and "largest gap in accuracy" in done.stdout


@pytest.fixture
def variant_repo(measure_repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """img_cls with a real int8 version 2 (ONNX Runtime's dynamic quantization) marked by its precision.json."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = tmp_path / "repository"
    (root / "img_cls" / "1").mkdir(parents=True)
    for name in ("config.yaml", "1/model.onnx"):
        (root / "img_cls" / name).write_bytes((measure_repo.root / "img_cls" / name).read_bytes())
    (root / "img_cls" / "2").mkdir()
    quantize_dynamic(
        root / "img_cls" / "1" / "model.onnx", root / "img_cls" / "2" / "model.onnx", weight_type=QuantType.QInt8
    )
    (root / "img_cls" / "2" / "precision.json").write_text(json.dumps({"precision": "int8", "source": "1"}))
    monkeypatch.setenv("FORWARDPASS_REPOSITORY", str(root))
    return root


def test_bench_precisions_with_accuracy_beside_speed(fp: Cli, variant_repo: Path, tmp_path: Path) -> None:
    _image_folder(tmp_path / "data")
    out = tmp_path / "out"
    done = fp(
        "bench",
        "img_cls",
        "--precision",
        "fp32,int8",
        "--batch-size",
        "1,4",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--eval",
        tmp_path / "data",
        "--output",
        out,
    )
    assert done.returncode == 0, done.stderr
    assert "accuracy beside speed" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert [(r["precision"], r["version"], r["batch_size"]) for r in report["results"]] == [
        ("fp32", 1, 1),
        ("fp32", 1, 4),
        ("int8", 2, 1),
        ("int8", 2, 4),
    ]
    accuracy = report["accuracy"]["by_precision"]
    assert set(accuracy) == {"fp32", "int8"} and accuracy["int8"]["version"] == 2
    assert all(0 <= entry["value"] <= 1 and entry["throughput"] > 0 for entry in accuracy.values())
    assert "accuracy_vs_throughput.png" in report["plots"]
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    done = fp("bench", "img_cls", "--precision", "int4", "--duration", "0.2")
    assert done.returncode == 2 and "no int4 version" in done.stderr


def test_bench_mlperf_keeps_loadgen_summary(fp: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = fp(
        "bench",
        "vec_raw",
        "--batch-size",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--mlperf",
        "Offline,SingleStream",
        "--output",
        out,
        "--json",
    )
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)["mlperf"]
    assert [r["scenario"] for r in runs] == ["Offline", "SingleStream"]
    for run in runs:
        assert "Result is : " in run["summary"] and run["result"] in ("VALID", "INVALID")
        assert (Path(run["folder"]) / "mlperf_log_summary.txt").read_text() == run["summary"]
    assert "## MLPerf LoadGen" in (out / "report.md").read_text()


def test_bench_url_figures_match_the_servers_own_count(fp: Cli, tmp_path: Path) -> None:
    """The count is the server's exactly; the throughput is that count over a window that holds every measured
    request the server saw on one connection (a connection belongs to one client process, whose window it is inside)
    and that fits inside the command's own run: orderings of events, not a tolerance on two clocks' rates."""
    with standin_server() as server:
        called = time.perf_counter()
        done = fp(
            "bench",
            "--url",
            f"http://127.0.0.1:{server.port}",
            "--model",
            "standin",
            "--concurrency",
            "3",
            "--encoding",
            "json",
            "--clients",
            "2",
            "--duration",
            "1.5",
            "--output",
            tmp_path,
            "--json",
        )
        returned = time.perf_counter()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (run,) = report["server"]["runs"]
    measured = server.arrivals[-run["requests"] :]  # the probes before the start signal come first
    assert run["reported"] and run["requests"] == server.served - 3 and run["errors"] == 0  # 3 probes
    assert run["throughput"] == pytest.approx(run["requests"] / run["seconds"], rel=1e-9)
    spans = [
        max(at for c, at in measured if c == connection) - min(at for c, at in measured if c == connection)
        for connection in {c for c, _ in measured}
    ]
    assert len(spans) == 3  # one connection per unit of concurrency
    assert max(spans) <= run["seconds"] <= returned - called
    assert run["mode"] == "closed" and run["load"] == 3 and run["processes"] == 2
    assert "server_latency_vs_throughput.png" in json.loads((tmp_path / "report.json").read_text())["plots"]


def test_compare_two_bench_reports(fp: Cli, tmp_path: Path) -> None:
    for name in ("one", "two"):
        done = fp(
            "bench", "vec_raw", "--batch-size", "1,2", "--duration", "0.1", "--warmup", "0", "--output", tmp_path / name
        )
        assert done.returncode == 0, done.stderr
    done = fp("compare", tmp_path / "one", tmp_path / "two" / "report.json", "--output", tmp_path / "cmp")
    assert done.returncode == 0, done.stderr
    assert "one" in done.stdout and "two" in done.stdout and "fp32" in done.stdout
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_batch_sizes_over_the_models_max_batch_size(fp: Cli, measure_repo: Repo, tmp_path: Path) -> None:
    """bench timed batch 8 of the bundled ocr_cls (max_batch_size 6) without a word: a figure for batches that the
    model's server refuses ('over the model's max_batch_size; split it') and that no forward pass of it runs."""
    _save(tmp_path, "vec_max4", onnx.load(measure_repo.root / "vec_raw" / "1" / "model.onnx"), {"max_batch_size": 4})
    done = fp("bench", "vec_max4", "-r", tmp_path, "--batch-size", "1,8", "--duration", "0.1", "--warmup", "0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: batch size 8 is over model 'vec_max4''s max_batch_size of 4: a forward pass of it never holds more "
        "items; time batch sizes up to 4"
    ]
    assert "measured" not in done.stdout + done.stderr  # refused before batch 1 was timed
    within = fp("bench", "vec_max4", "-r", tmp_path, "--batch-size", "4", "--duration", "0.1", "--warmup", "0")
    assert within.returncode == 0, within.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("eval", "tab_cls", "missing.csv"), "no data set at"),
        (("eval", "tab_cls", "table.csv", "--top-k", "0"), "--top-k"),
        (("eval", "tab_cls", "table.csv", "--label-column", "species"), "no column 'species'"),
        (("eval", "vec_raw", "table.csv"), "declares no task"),
        (("bench", "vec_raw", "--batch-size", "x"), "--batch-size"),
        (("bench", "vec_raw", "--duration", "0"), "--duration"),
        (("eval", "img_cls", "empty"), "holds no images"),
        (("eval", "tab_cls", "zebra.csv"), "not in model 'tab_cls''s label set: 'zebra'"),
        (("eval", "tab_cls", "table.csv", "--group-by", "site"), "no column 'site' to group by"),
        (("bench", "--url", "http://127.0.0.1:9", "--model", "vec_raw", "--duration", "0.1"), "does not answer"),
        (("bench", "--url", "grpc://127.0.0.1:9", "--model", "vec_raw", "--duration", "0.1"), "does not answer"),
        (("bench", "vec_raw", "--mlperf", "Batch"), "unknown scenario"),
        (("bench",), "name the model"),
        (("compare", "nothing.json", "table.csv"), "no report at"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(fp: Cli, measure_repo: Repo, args: tuple[str, ...], message: str) -> None:
    (measure_repo.files / "table.csv").write_text("a,b,c,label\n1,2,3,cat\n", encoding="utf-8")
    (measure_repo.files / "zebra.csv").write_text("a,b,c,label\n1,2,3,cat\n1,2,3,zebra\n", encoding="utf-8")
    (measure_repo.files / "empty").mkdir(exist_ok=True)
    done = fp(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error:") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["eval", "bench", "compare"])
def test_help_teaches_by_example(fp: Cli, command: str) -> None:
    done = fp(command, "--help")
    assert done.returncode == 0
    assert f"forwardpass {command} " in done.stdout and "Examples" in done.stdout
